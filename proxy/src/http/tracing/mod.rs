//! Tracing for the connection manager: the sampling decision (kept in `x-request-id` as
//! Envoy's UUID extension keeps it), the B3 context sent upstream, and the connection
//! manager's span (ingress SERVER or egress CLIENT), reported to Zipkin when sampled. An
//! unsampled request costs the decision and the propagated headers, nothing more.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/tracing

pub mod b3;
mod span;
pub mod zipkin;

pub use span::{ActiveSpan, RequestFacts, TracedBody};

/// Carries a sampled request's span on its response, from the router to the connection.
#[derive(Clone)]
pub struct TraceSlot(Arc<std::sync::Mutex<Option<Box<ActiveSpan>>>>);

impl TraceSlot {
    pub fn new(span: Box<ActiveSpan>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(span))))
    }

    pub fn take(&self) -> Option<Box<ActiveSpan>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
pub use zipkin::Reporters;

use crate::config::route::Route;
use crate::config::tracing::{Fraction, HcmTracing, Sampling};
use crate::stats::{Counter, Store};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
pub static X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");

/// Why a request is traced (Envoy's `Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

/// `http.<prefix>.tracing.*`.
#[derive(Debug)]
struct TracingStats {
    random_sampling: Arc<Counter>,
    service_forced: Arc<Counter>,
    client_enabled: Arc<Counter>,
    not_traceable: Arc<Counter>,
}

/// A connection manager's tracing as it runs: its config, stats and Zipkin reporter.
#[derive(Debug)]
pub struct HcmTracer {
    pub config: Arc<HcmTracing>,
    stats: TracingStats,
    reporter: Option<Arc<zipkin::Reporter>>,
}

impl HcmTracer {
    pub fn new(
        config: &Arc<HcmTracing>,
        store: &Store,
        stat_prefix: &str,
        reporters: &Reporters,
    ) -> Self {
        let c = |s: &str| store.counter(&format!("http.{stat_prefix}.tracing.{s}"));
        Self {
            config: config.clone(),
            stats: TracingStats {
                random_sampling: c("random_sampling"),
                service_forced: c("service_forced"),
                client_enabled: c("client_enabled"),
                not_traceable: c("not_traceable"),
            },
            reporter: config.zipkin.as_ref().and_then(|z| reporters.get(z, store)),
        }
    }

    /// Decides, marks `x-request-id`, propagates the context upstream and, when sampled,
    /// starts the span. Runs once the route is known (its sampling and decorator apply;
    /// without a route, the connection manager's sampling).
    pub fn start(&self, headers: &mut HeaderMap, route: Option<&Route>) -> Started {
        let reason = self.decide(headers, route);
        let mut started = Started::default();
        let decorator = route.and_then(|r| r.tracing.as_deref());
        let mut operation = decorator.and_then(|d| d.operation.as_deref());
        if self.config.egress {
            // Egress: the decorator names the callee's server span too.
            if let (Some(op), Some(d)) = (operation, decorator) {
                if d.propagate {
                    if let Ok(v) = HeaderValue::from_str(op) {
                        headers.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
                    }
                }
            }
        }
        let mut incoming_operation = None;
        if !self.config.egress {
            // Ingress: a caller's decorator names this span, and goes no further.
            if let Some(v) = headers.remove(&X_ENVOY_DECORATOR_OPERATION) {
                if !v.is_empty() {
                    incoming_operation = Some(v);
                    operation = None;
                }
            }
            if let (Some(op), Some(d)) = (operation, decorator) {
                if d.propagate {
                    started.response_operation = HeaderValue::from_str(op).ok();
                }
            }
        }
        if self.reporter.is_none() {
            return started;
        }
        let traced = reason != Reason::NotTraceable;
        let Ok(extracted) = b3::extract(headers) else {
            // Envoy traces nothing for a request whose context it cannot read.
            return started;
        };
        let zipkin = self.config.zipkin.as_deref();
        let shared_context = zipkin.is_some_and(|z| z.shared_span_context);
        let sampled = extracted.sampled.unwrap_or(traced);
        let (ctx, shared) = match extracted.context {
            None => {
                let id = crate::random::next_u64();
                let high = zipkin
                    .is_some_and(|z| z.trace_id_128bit)
                    .then(crate::random::next_u64);
                let ctx = b3::Context {
                    trace_high: high,
                    trace: id,
                    span: id,
                    parent: None,
                };
                (ctx, !self.config.egress && shared_context)
            }
            Some(caller) if !self.config.egress && shared_context => (caller, true),
            Some(caller) => (
                b3::Context {
                    parent: Some(caller.span),
                    span: crate::random::next_u64(),
                    ..caller
                },
                false,
            ),
        };
        b3::inject(headers, &ctx, sampled, extracted.single);
        if sampled {
            started.sampled = Some(Sampled {
                ctx,
                shared,
                operation: incoming_operation
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .or_else(|| operation.map(str::to_string)),
            });
        }
        started
    }

    /// The span of a sampled request, from the request as tracing left it.
    pub fn span(
        &self,
        sampled: Sampled,
        route: Option<&Route>,
        headers: &HeaderMap,
        request: span::RequestFacts<'_>,
    ) -> Option<Box<ActiveSpan>> {
        let reporter = self.reporter.clone()?;
        // Without a decorator, a span is named by the request's host (Envoy's default).
        let name = sampled
            .operation
            .unwrap_or_else(|| request.host.to_string());
        Some(Box::new(ActiveSpan::new(
            &self.config,
            route,
            reporter,
            sampled.ctx,
            sampled.shared,
            name,
            headers,
            request,
        )))
    }

    /// Envoy's `mutateTracingRequestHeader`: a trace already decided (the request id's mark)
    /// stands; else a client trace id, a forced trace, or the random draw (on the request id,
    /// so every hop agrees) decide; the overall fraction can still veto.
    fn decide(&self, headers: &mut HeaderMap, route: Option<&Route>) -> Reason {
        let sampling = match route
            .and_then(|r| r.tracing.as_deref())
            .and_then(|t| t.sampling.as_ref())
        {
            Some(r) => Sampling {
                client: r.client,
                random: r.random,
                overall: r.overall,
            },
            None => self.config.sampling,
        };
        let Some(rid) = headers.get(&crate::http::forwarding::X_REQUEST_ID) else {
            self.stats.not_traceable.inc();
            return Reason::NotTraceable;
        };
        let bytes = rid.as_bytes();
        // The first 8 hex digits, modulo 10000, are the request's draw.
        let Some(draw) = std::str::from_utf8(bytes.get(..8).unwrap_or(b""))
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .map(|v| v % 10_000)
        else {
            self.stats.not_traceable.inc();
            return Reason::NotTraceable;
        };
        let mut reason = current_reason(bytes);
        let before = reason;
        if reason == Reason::NotTraceable {
            if headers.contains_key(&X_CLIENT_TRACE_ID)
                && sampling
                    .client
                    .admits(crate::random::below(sampling.client.denominator.max(1)))
            {
                reason = Reason::ClientForced;
            } else if headers.contains_key(&X_ENVOY_FORCE_TRACE) {
                reason = Reason::ServiceForced;
            } else if sampling.random.admits(draw) {
                reason = Reason::Sampling;
            }
        }
        if reason != Reason::NotTraceable && !sampling.overall.admits(draw) {
            reason = Reason::NotTraceable;
        }
        if reason != before && self.config.pack_trace_reason && bytes.len() == 36 {
            let mut id = [0u8; 36];
            id.copy_from_slice(bytes);
            id[14] = match reason {
                Reason::Sampling => b'9',
                Reason::ServiceForced => b'a',
                Reason::ClientForced => b'b',
                Reason::NotTraceable => b'4',
            };
            if let Ok(v) = HeaderValue::from_bytes(&id) {
                headers.insert(crate::http::forwarding::X_REQUEST_ID.clone(), v);
            }
        }
        match reason {
            Reason::NotTraceable => &self.stats.not_traceable,
            Reason::Sampling => &self.stats.random_sampling,
            Reason::ServiceForced => &self.stats.service_forced,
            Reason::ClientForced => &self.stats.client_enabled,
        }
        .inc();
        reason
    }
}

/// The trace mark of a UUID request id (its 15th character).
fn current_reason(rid: &[u8]) -> Reason {
    if rid.len() != 36 {
        return Reason::NotTraceable;
    }
    match rid[14] {
        b'9' => Reason::Sampling,
        b'a' => Reason::ServiceForced,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

/// A sampled request's context, before its span is made.
#[derive(Debug)]
pub struct Sampled {
    ctx: b3::Context,
    shared: bool,
    operation: Option<String>,
}

/// What starting a trace leaves for the response.
#[derive(Debug, Default)]
pub struct Started {
    /// Set when the request is sampled (a span is to be made).
    pub sampled: Option<Sampled>,
    /// `x-envoy-decorator-operation` on an ingress response (the route's decorator).
    pub response_operation: Option<HeaderValue>,
}

impl Fraction {
    /// Used by tests: a fraction of ten thousand.
    #[cfg(test)]
    fn per_ten_thousand(n: u64) -> Fraction {
        Fraction {
            numerator: n,
            denominator: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_marks_read_as_envoy_writes_them() {
        assert_eq!(
            current_reason(b"11111111-2222-9333-8444-555555555555"),
            Reason::Sampling
        );
        assert_eq!(
            current_reason(b"11111111-2222-4333-8444-555555555555"),
            Reason::NotTraceable
        );
        assert!(Fraction::per_ten_thousand(1).admits(0));
        assert!(!Fraction::per_ten_thousand(0).admits(0));
    }
}
