//! The fault injection filter at request time: after the route is chosen and before the
//! router, each fault filter of the chain may delay the request, abort it with a status, or
//! throttle its response body — by its own settings or the route's override, for the share of
//! requests its percentages draw.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter

use super::local_reply::local_reply;
use super::router::{Outcome, ResponseBody};
use super::throttle::Throttled;
use crate::config::fault::{
    AbortSource, Chance, DelaySource, FaultSettings, Percentage, RateSource, MILLION,
};
use crate::config::hcm::FaultFilter;
use crate::config::per_filter::{PerFilter, PerFilterConfigs};
use crate::format::ResponseFlags;
use crate::stats::{Counter, Gauge, Store};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

static DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
static DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
static ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
static ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
static ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
static THROUGHPUT: HeaderName = HeaderName::from_static("x-envoy-fault-throughput-response");
static THROUGHPUT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-throughput-response-percentage");
static DOWNSTREAM_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");
static DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");

/// `http.<stat_prefix>.fault.*`, shared by every fault filter of a connection manager (Envoy
/// names them alike, so they are the same stats).
#[derive(Debug)]
pub struct FaultStats {
    prefix: String,
    store: Arc<Store>,
    delays_injected: Arc<Counter>,
    aborts_injected: Arc<Counter>,
    response_rl_injected: Arc<Counter>,
    faults_overflow: Arc<Counter>,
    active_faults: Arc<Gauge>,
}

/// The levels of the chosen route that may override a filter, most specific first.
pub struct RouteLevels<'a> {
    pub levels: [&'a PerFilterConfigs; 3],
    /// The cluster the request goes to, for `upstream_cluster` (None for direct responses
    /// and redirects, which no upstream-restricted fault applies to).
    pub cluster: Option<&'a str>,
}

/// What the filters decided for a request that goes on.
#[derive(Default)]
pub struct Injected {
    /// DI when a delay was injected.
    pub flags: ResponseFlags,
    /// The response throttle (and the active-fault count it holds), if one was drawn.
    active: Option<ActiveFault>,
    rate_bytes_per_second: Option<u64>,
    /// Delays injected so far, by all the filters.
    delays: u32,
}

impl Injected {
    /// Wraps the response body when a throttle was drawn or a fault is still active.
    pub fn wrap(self, response: &mut http::Response<ResponseBody>) {
        let Some(active) = self.active else {
            return;
        };
        let body = std::mem::replace(response.body_mut(), super::router::empty_body());
        *response.body_mut() = Throttled::new(body, self.rate_bytes_per_second, active).boxed();
    }
}

/// One injected fault, counted in `active_faults` until dropped (when the response ends).
pub struct ActiveFault(Arc<Gauge>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl FaultStats {
    /// The stats of a connection manager with fault filters (none without: Envoy creates
    /// them with the filter).
    pub fn new(filters: &[FaultFilter], store: &Arc<Store>, stat_prefix: &str) -> Option<Self> {
        if filters.is_empty() {
            return None;
        }
        let prefix = format!("http.{stat_prefix}.fault.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        Some(FaultStats {
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            response_rl_injected: c("response_rl_injected"),
            faults_overflow: c("faults_overflow"),
            active_faults: store.gauge(&format!("{prefix}active_faults")),
            store: store.clone(),
            prefix,
        })
    }
}

/// Runs the connection manager's fault filters in order: Ok with what goes on with the
/// request, or Err with the abort reply. Delays are slept here.
pub async fn apply(
    filters: &[FaultFilter],
    stats: &FaultStats,
    route: &RouteLevels<'_>,
    headers: &HeaderMap,
    server: &HeaderValue,
    metadata: &mut crate::metadata::DynamicMetadata,
) -> Result<Injected, Outcome> {
    let mut injected = Injected::default();
    for filter in filters {
        let settings = match route.levels.iter().find_map(|l| l.get(&filter.name)) {
            Some(PerFilter::Disabled) => continue,
            Some(PerFilter::Fault(s)) => s,
            // Another filter's type under this name is not this filter's override.
            None | Some(PerFilter::Rbac(_) | PerFilter::Jwt(_)) if filter.disabled_by_default => {
                continue
            }
            None | Some(PerFilter::Rbac(_) | PerFilter::Jwt(_)) => &filter.settings,
        };
        let delays_before = injected.delays;
        let abort = apply_one(settings, route, headers, stats, &mut injected).await;
        // Envoy emits the settings' metadata under the filter's name when this filter delays
        // or aborts the request.
        if abort.is_some() || injected.delays != delays_before {
            if let Some(fields) = &settings.filter_metadata {
                metadata.merge(filter.name.clone(), fields.clone());
            }
        }
        if let Some(abort) = abort {
            let grpc_request = super::grpc_reply::is_grpc(headers);
            return Err(abort_outcome(abort, injected.flags, grpc_request, server));
        }
    }
    Ok(injected)
}

/// The status an abort answers with.
struct AbortReply {
    status: StatusCode,
    grpc_status: Option<u32>,
    body: bytes::Bytes,
}

async fn apply_one(
    s: &FaultSettings,
    route: &RouteLevels<'_>,
    headers: &HeaderMap,
    stats: &FaultStats,
    injected: &mut Injected,
) -> Option<AbortReply> {
    if s.upstream_cluster
        .as_deref()
        .is_some_and(|want| route.cluster != Some(want))
    {
        return None;
    }
    if !s.downstream_nodes.is_empty()
        && !header_str(headers, &DOWNSTREAM_NODE)
            .is_some_and(|node| s.downstream_nodes.iter().any(|n| n == node))
    {
        return None;
    }
    if !s.headers.iter().all(|m| m.matches(headers)) {
        return None;
    }
    let downstream_cluster = s
        .downstream_cluster_stats
        .then(|| header_str(headers, &DOWNSTREAM_CLUSTER))
        .flatten()
        .filter(|c| !c.is_empty());
    let count_per_cluster = |stat: &str| {
        if let Some(cluster) = downstream_cluster {
            let name = format!("{}{cluster}.{stat}", stats.prefix);
            stats.store.counter(&name).inc();
        }
    };

    if let Some(limit) = &s.rate_limit {
        let kbps = match limit.source {
            RateSource::Fixed(kbps) => Some(kbps),
            RateSource::Header => header_u64(headers, &THROUGHPUT).filter(|k| *k > 0),
        };
        if let Some(kbps) = kbps {
            if drawn(&limit.chance, headers, &THROUGHPUT_PERCENTAGE)
                && try_activate(s, stats, injected)
            {
                stats.response_rl_injected.inc();
                injected.rate_bytes_per_second = Some(kbps.saturating_mul(1024));
            }
        }
    }

    if let Some(delay) = &s.delay {
        if drawn(&delay.chance, headers, &DELAY_PERCENTAGE) {
            let configured = match delay.source {
                DelaySource::Fixed(d) => Some(d.as_millis() as u64),
                DelaySource::Header => header_u64(headers, &DELAY_REQUEST),
            };
            let ms = configured.map(|ms| delay.runtime_ms.unwrap_or(ms));
            // Only a delay longer than zero is injected.
            if let Some(ms) = ms.filter(|ms| *ms > 0) {
                if try_activate(s, stats, injected) {
                    stats.delays_injected.inc();
                    count_per_cluster("delays_injected");
                    injected.delays += 1;
                    injected.flags = injected
                        .flags
                        .with(ResponseFlags::named("DI").unwrap_or_default());
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
    }

    let abort = s.abort.as_ref()?;
    if !drawn(&abort.chance, headers, &ABORT_PERCENTAGE) {
        return None;
    }
    let http_status = match abort.source {
        AbortSource::Http(status) => Some(status.as_u16() as u64),
        AbortSource::Grpc(_) => None,
        AbortSource::Header => {
            header_u64(headers, &ABORT_REQUEST).filter(|s| (200..600).contains(s))
        }
    }
    .map(|status| abort.runtime_http_status.unwrap_or(status));
    let reply = match http_status {
        Some(status) => AbortReply {
            status: u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())?,
            grpc_status: None,
            body: abort.body.clone(),
        },
        None => {
            let grpc = match abort.source {
                AbortSource::Grpc(status) => Some(u64::from(status)),
                AbortSource::Header => header_u64(headers, &ABORT_GRPC_REQUEST),
                AbortSource::Http(_) => None,
            }?;
            let grpc = abort.runtime_grpc_status.unwrap_or(grpc);
            AbortReply {
                status: StatusCode::OK,
                grpc_status: Some(u32::try_from(grpc).unwrap_or(u32::MAX)),
                body: abort.body.clone(),
            }
        }
    };
    if !try_activate(s, stats, injected) {
        return None;
    }
    stats.aborts_injected.inc();
    count_per_cluster("aborts_injected");
    Some(reply)
}

/// Counts this request as one active fault (once), unless `max_active_faults` are already
/// active: then `faults_overflow` counts it and no fault is injected.
fn try_activate(s: &FaultSettings, stats: &FaultStats, injected: &mut Injected) -> bool {
    if injected.active.is_some() {
        return true;
    }
    if s.max_active_faults
        .is_some_and(|max| stats.active_faults.value() >= max)
    {
        stats.faults_overflow.inc();
        return false;
    }
    stats.active_faults.inc();
    injected.active = Some(ActiveFault(stats.active_faults.clone()));
    true
}

/// Whether this request draws the fault: the runtime's percentage when a runtime layer sets
/// one, else the configured percentage, which a percentage header may lower (never raise).
fn drawn(chance: &Chance, headers: &HeaderMap, percentage_header: &HeaderName) -> bool {
    let per_million = chance.runtime_per_million.unwrap_or_else(|| {
        let Percentage {
            numerator,
            denominator: _,
        } = chance.percentage;
        let numerator = header_u64(headers, percentage_header)
            .map_or(numerator, |from_header| from_header.min(numerator));
        chance.percentage.per_million(numerator)
    });
    per_million >= MILLION || crate::random::below(MILLION) < per_million
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

/// The abort's local reply: the HTTP status with the body; a gRPC status abort answers in
/// gRPC form (which the connection manager also gives any local reply to a gRPC request).
fn abort_outcome(
    reply: AbortReply,
    flags: ResponseFlags,
    grpc_request: bool,
    server: &HeaderValue,
) -> Outcome {
    let mut response = local_reply(reply.status, reply.body.clone(), server);
    if let (Some(grpc_status), true) = (reply.grpc_status, grpc_request) {
        super::grpc_reply::set_grpc_status(&mut response, grpc_status, &reply.body);
    }
    let mut outcome = Outcome {
        response,
        flag: None,
        upstream: None,
        info: Default::default(),
    };
    outcome.info.response_flags = flags.with(ResponseFlags::named("FI").unwrap_or_default());
    outcome.info.response_code_details = Some("fault_filter_abort".into());
    outcome
}
