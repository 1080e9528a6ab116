//! Remote JWKS: fetched with a GET through the provider's cluster (Outrigger's own pool, as any
//! upstream request), cached for `cache_duration`. Without `async_fetch`, the first request
//! that needs the keys fetches them and waits, as Envoy's; with it, a task fetches them off the
//! request path when the listener starts and again whenever they expire (after a failure, every
//! `failed_refetch_duration`), and requests fetch only while no set was ever obtained.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto#extensions-filters-http-jwt-authn-v3-remotejwks

use super::jwks::{self, Jwks};
use super::JwtStats;
use crate::config::jwt_authn::RemoteJwks;
use crate::stats::responses::Origin;
use crate::upstream::UpstreamBody;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex, Weak};
use tokio::time::Instant;

/// A provider's fetched keys and when they expire (None: kept until replaced, for keys the
/// async fetcher maintains).
#[derive(Debug)]
pub struct RemoteCache {
    pub config: Arc<RemoteJwks>,
    current: Mutex<Option<(Arc<Jwks>, Option<Instant>)>>,
}

/// The largest JWKS document read; more is a failed fetch.
const MAX_BODY: usize = 1 << 20;

impl RemoteCache {
    pub fn new(config: &Arc<RemoteJwks>, stats: &Arc<JwtStats>) -> Arc<Self> {
        let cache = Arc::new(Self {
            config: config.clone(),
            current: Mutex::new(None),
        });
        if let (Some(retry), Ok(handle)) =
            (config.async_fetch, tokio::runtime::Handle::try_current())
        {
            handle.spawn(refresh(Arc::downgrade(&cache), stats.clone(), retry));
        }
        cache
    }

    /// The cached keys, unless expired.
    pub fn get(&self) -> Option<Arc<Jwks>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((keys, expiry)) if expiry.is_none_or(|at| Instant::now() < at) => {
                Some(keys.clone())
            }
            _ => None,
        }
    }

    fn set(&self, keys: Arc<Jwks>, expiry: Option<Instant>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((keys, expiry));
    }

    /// Fetches the keys for a request, counting the outcome; cached for `cache_duration`.
    pub async fn fetch(&self, stats: &JwtStats) -> Option<Arc<Jwks>> {
        match fetch(&self.config).await {
            Ok(keys) => {
                stats.jwks_fetch_success.inc();
                let keys = Arc::new(keys);
                self.set(
                    keys.clone(),
                    Some(Instant::now() + self.config.cache_duration),
                );
                Some(keys)
            }
            Err(e) => {
                tracing::debug!(target: "jwt", "Jwks remote fetch from {} failed: {e}", self.config.uri);
                stats.jwks_fetch_failed.inc();
                None
            }
        }
    }
}

/// The async fetcher: keeps the keys fresh while the cache (its listener) lives.
async fn refresh(cache: Weak<RemoteCache>, stats: Arc<JwtStats>, retry: std::time::Duration) {
    loop {
        let Some(c) = cache.upgrade() else { return };
        let config = c.config.clone();
        drop(c);
        let wait = match fetch(&config).await {
            Ok(keys) => {
                stats.jwks_fetch_success.inc();
                let Some(c) = cache.upgrade() else { return };
                c.set(Arc::new(keys), None);
                config.cache_duration
            }
            Err(e) => {
                tracing::debug!(target: "jwt", "Jwks async fetch from {} failed: {e}", config.uri);
                stats.jwks_fetch_failed.inc();
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn fetch(config: &RemoteJwks) -> Result<Jwks, String> {
    tokio::time::timeout(config.timeout, get(config))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn get(config: &RemoteJwks) -> Result<Jwks, String> {
    let cluster = config
        .cluster
        .get()
        .ok_or_else(|| format!("cluster {} not found", config.cluster_name))?;
    let host = cluster
        .choose_host(None, None, None)
        .ok_or_else(|| "no healthy host".to_string())?;
    let path = config
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(host.authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    let body: UpstreamBody = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let authority = config.uri.authority().map_or("", |a| a.as_str());
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(uri)
        .header(http::header::HOST, authority)
        .body(body)
        .map_err(|e| e.to_string())?;
    let use_h2 = cluster.config.protocol == crate::config::cluster::UpstreamProtocol::Http2;
    let response = cluster
        .pool
        .send(
            &host,
            request,
            use_h2,
            crate::config::circuit_breakers::Priority::Default,
            Default::default(),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    // Envoy's async client marks its requests internal.
    cluster
        .stats
        .responses
        .completed(response.status(), Origin::Internal);
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    jwks::parse(&body).map_err(|s| s.message().to_string())
}
