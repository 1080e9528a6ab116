//! Every TLS context in use, as Envoy's context manager knows them: what `/certs` lists, each
//! listener's and cluster's `ssl.certificate.<name>.expiration_unix_time_seconds` gauges, and
//! `server.days_until_first_cert_expiring`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats#tls-statistics,
//! https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/statistics#server
//! and https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--certs. Which
//! certificates count and how they are named was read from Envoy 1.40 running the same
//! configurations (`tests/tests/tls_cert_stats.rs`).
//!
//! A context is registered when its listener or cluster is built and forgotten once dropped.
//! Its certificates are read from their sources at each refresh: inline ones never change, SDS
//! ones change when the control plane rotates them (the xDS applier refreshes right after),
//! and the days left shrink with time (refreshed at Envoy's stats flush interval).

use super::{ClientTls, ServerTls};
use crate::config::tls::{
    CertificateSource, CommonTls, LoadedCertificate, Secret, Validation, ValidationSource,
};
use crate::stats::{Gauge, Store};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// `days_until_first_cert_expiring` when no context holds a certificate (Envoy's `uint32_t`
/// maximum).
const NO_CERTIFICATE: u64 = u32::MAX as u64;

/// How often the days left are recomputed: Envoy's default `stats_flush_interval`, at which it
/// updates its server stats.
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The registry of TLS contexts.
pub struct ContextManager {
    store: Arc<Store>,
    entries: Mutex<Vec<Entry>>,
    days_until_first: Arc<Gauge>,
}

impl std::fmt::Debug for ContextManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextManager").finish_non_exhaustive()
    }
}

enum Context {
    Server(Weak<ServerTls>),
    Client(Weak<ClientTls>),
}

/// Keeps a live context's spec while its certificates are read.
enum Live {
    Server(Arc<ServerTls>),
    Client(Arc<ClientTls>),
}

impl Live {
    fn common(&self) -> &CommonTls {
        match self {
            Live::Server(s) => &s.spec.common,
            Live::Client(c) => &c.spec.common,
        }
    }
}

impl Context {
    fn upgrade(&self) -> Option<Live> {
        match self {
            Context::Server(w) => w.upgrade().map(Live::Server),
            Context::Client(w) => w.upgrade().map(Live::Client),
        }
    }
}

struct Entry {
    context: Context,
    /// `listener.<scope>.` or `cluster.<name>.`.
    prefix: Arc<str>,
    /// This context's expiry gauges, by certificate name.
    gauges: Vec<(String, Arc<Gauge>)>,
}

/// A context's certificates now: its CA bundle and its own chain, each under the name Envoy's
/// stats give it (the SDS secret's name, else `unnamed_ca_cert_<hash>` / `unnamed_cert_<hash>`).
pub struct Certificates {
    pub ca: Option<(String, Arc<Validation>)>,
    pub own: Option<(String, Arc<LoadedCertificate>)>,
}

impl Certificates {
    /// None while a secret the context needs has not arrived: Envoy has no context then.
    fn of(common: &CommonTls) -> Option<Certificates> {
        let own = match &common.certificate {
            None => None,
            Some(CertificateSource::Inline(c)) => {
                Some((format!("unnamed_cert_{}", c.origin.hash), c.clone()))
            }
            Some(CertificateSource::Sds(slot)) => match slot.get().as_deref() {
                Some(Secret::Certificate(c)) => Some((slot.name.to_string(), c.clone())),
                _ => return None,
            },
        };
        let sds = |slot: &crate::config::slots::Slot<Secret>| match slot.get().as_deref() {
            Some(Secret::Validation(v)) => Some(v.clone()),
            _ => None,
        };
        let ca = match &common.validation {
            None => None,
            Some(ValidationSource::Inline(v)) => {
                Some((format!("unnamed_ca_cert_{}", v.ca_origin.hash), v.clone()))
            }
            Some(ValidationSource::Sds(slot)) => Some((slot.name.to_string(), sds(slot)?)),
            Some(ValidationSource::Combined { default, sds: slot }) => {
                let over = sds(slot)?;
                let ca = if over.trusted_ca.is_empty() {
                    default.clone()
                } else {
                    over
                };
                Some((slot.name.to_string(), ca))
            }
        };
        // A validation context without trust anchors has no CA certificate to show.
        let ca = ca.filter(|(_, v)| !v.trusted_ca.is_empty());
        Some(Certificates { ca, own })
    }

    /// Each certificate set's name and expiry: the leaf's, and the CA bundle's earliest (both
    /// as Envoy 1.40 sets its gauges).
    fn expiries(&self) -> impl Iterator<Item = (&str, u64)> {
        let ca = self.ca.as_ref().and_then(|(name, v)| {
            let earliest = v.ca_info.iter().map(|c| c.expiry_unix()).min()?;
            Some((name.as_str(), earliest))
        });
        let own = self.own.as_ref().and_then(|(name, c)| {
            let leaf = c.leaf.as_ref()?;
            Some((name.as_str(), leaf.expiry_unix()))
        });
        ca.into_iter().chain(own)
    }

    /// The fewest whole days any of its certificates has left (every CA of the bundle
    /// counts); None when it has none.
    fn days_left(&self, now: SystemTime) -> Option<u64> {
        let ca = self.ca.iter().flat_map(|(_, v)| v.ca_info.iter());
        let own = self.own.iter().filter_map(|(_, c)| c.leaf.as_ref());
        ca.chain(own).map(|c| c.days_left(now)).min()
    }
}

impl ContextManager {
    pub fn new(store: Arc<Store>) -> Self {
        let days_until_first = store.gauge("server.days_until_first_cert_expiring");
        days_until_first.set(NO_CERTIFICATE);
        // OCSP stapling is not implemented (acknowledged in `config/fields.rs`): Envoy reports
        // 0 when no context holds a staple.
        store
            .gauge("server.seconds_until_first_ocsp_response_expiring")
            .set(0);
        Self {
            store,
            entries: Mutex::new(Vec::new()),
            days_until_first,
        }
    }

    pub(super) fn add_server(&self, tls: &Arc<ServerTls>) {
        let prefix = tls.stats.scope();
        self.add(Context::Server(Arc::downgrade(tls)), prefix);
    }

    pub(super) fn add_client(&self, tls: &Arc<ClientTls>) {
        let prefix = tls.stats.scope();
        self.add(Context::Client(Arc::downgrade(tls)), prefix);
    }

    /// Registers a context and sets its gauges. A new context can only bring the first expiry
    /// closer, so the server gauge is lowered without walking the others (a push of a
    /// thousand clusters stays linear).
    fn add(&self, context: Context, prefix: Arc<str>) {
        let mut entry = Entry {
            context,
            prefix,
            gauges: Vec::new(),
        };
        let days = self.update(&mut entry, SystemTime::now());
        if let Some(days) = days.flatten() {
            if days < self.days_until_first.value() {
                self.days_until_first.set(days);
            }
        }
        self.lock().push(entry);
    }

    /// Re-reads every context's certificates: after an SDS secret changed, and periodically
    /// for the days left. Contexts that are gone are forgotten, and so are their gauges when
    /// no other context of the scope sets them.
    pub fn refresh(&self) {
        let now = SystemTime::now();
        let mut first = NO_CERTIFICATE;
        let mut gone = Vec::new();
        {
            let mut entries = self.lock();
            entries.retain_mut(|entry| match self.update(entry, now) {
                Some(days) => {
                    first = first.min(days.unwrap_or(NO_CERTIFICATE));
                    true
                }
                None => {
                    gone.push((entry.prefix.clone(), std::mem::take(&mut entry.gauges)));
                    false
                }
            });
        }
        self.days_until_first.set(first);
        for (prefix, gauges) in gone {
            for (name, gauge) in gauges {
                drop(gauge);
                self.store
                    .remove_if_unreferenced(&gauge_name(&prefix, &name));
            }
        }
    }

    /// Sets `entry`'s gauges from its certificates now. None: the context is gone;
    /// Some(None): it holds no certificate (or waits for a secret).
    fn update(&self, entry: &mut Entry, now: SystemTime) -> Option<Option<u64>> {
        let live = entry.context.upgrade()?;
        let Some(certs) = Certificates::of(live.common()) else {
            return Some(None);
        };
        for (name, expiry) in certs.expiries() {
            let gauge = match entry.gauges.iter().find(|(n, _)| n == name) {
                Some((_, g)) => g.clone(),
                None => {
                    let g = self.store.gauge(&gauge_name(&entry.prefix, name));
                    entry.gauges.push((name.to_string(), g.clone()));
                    g
                }
            };
            gauge.set(expiry);
        }
        Some(certs.days_left(now))
    }

    /// The certificates of every live context, in registration order (Envoy's order is its
    /// hash set's).
    pub fn certificates(&self) -> Vec<Certificates> {
        self.lock()
            .iter()
            .filter_map(|e| e.context.upgrade())
            .filter_map(|live| Certificates::of(live.common()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn gauge_name(prefix: &str, certificate: &str) -> String {
    format!("{prefix}ssl.certificate.{certificate}.expiration_unix_time_seconds")
}
