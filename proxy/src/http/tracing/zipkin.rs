//! The Zipkin reporter: finished spans are queued (bounded) off the request path, batched,
//! and POSTed as Zipkin v2 JSON to the collector cluster through the cluster's own pool. A
//! dead or slow collector costs dropped reports, counted, never a blocked request or
//! unbounded memory.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/trace/v3/zipkin.proto
//! (stats `tracing.zipkin.*`: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/tracing)

use crate::config::tracing::ZipkinSettings;
use crate::stats::responses::Origin;
use crate::stats::{Counter, Store};
use crate::upstream::UpstreamBody;
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Spans waiting for the reporter; past this, spans are dropped (counted in `reports_dropped`).
const QUEUE: usize = 4096;
/// Reports in flight to the collector at once; a batch that finds them all busy is dropped.
const IN_FLIGHT: usize = 4;

/// A span as it is reported.
#[derive(Debug)]
pub struct FinishedSpan {
    pub trace_high: Option<u64>,
    pub trace: u64,
    pub id: u64,
    pub parent: Option<u64>,
    pub name: String,
    /// SERVER (ingress) or CLIENT (egress).
    pub server: bool,
    pub shared: bool,
    /// Microseconds since the epoch, and the span's length in microseconds.
    pub start_us: u64,
    pub duration_us: u64,
    pub local_address: Option<IpAddr>,
    pub service_name: Arc<str>,
    pub tags: Vec<(&'static str, String)>,
    /// Custom tags (names chosen by configuration).
    pub custom: Vec<(Arc<str>, String)>,
}

#[derive(Debug)]
struct ZipkinStats {
    spans_sent: Arc<Counter>,
    timer_flushed: Arc<Counter>,
    reports_skipped_no_cluster: Arc<Counter>,
    reports_sent: Arc<Counter>,
    reports_dropped: Arc<Counter>,
    /// Exported as Envoy does; its client reports connection failures and timeouts as local
    /// replies (dropped reports), so nothing here counts a failure.
    #[allow(dead_code)]
    reports_failed: Arc<Counter>,
}

impl ZipkinStats {
    fn new(store: &Store) -> Self {
        let c = |s: &str| store.counter(&format!("tracing.zipkin.{s}"));
        Self {
            spans_sent: c("spans_sent"),
            timer_flushed: c("timer_flushed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
        }
    }
}

/// One collector's reporter; connection managers with the same collector share it.
#[derive(Debug)]
pub struct Reporter {
    tx: mpsc::Sender<FinishedSpan>,
    stats: Arc<ZipkinStats>,
}

impl Reporter {
    /// Queues a span; never waits. A full queue drops it.
    pub fn report(&self, span: FinishedSpan) {
        if self.tx.try_send(span).is_err() {
            self.stats.reports_dropped.inc();
        }
    }
}

/// A collector: its cluster, endpoint and host.
type CollectorKey = (String, String, String);

/// The reporters of the process, by collector (cluster, endpoint, host): Envoy keeps one
/// Zipkin driver per distinct configuration.
#[derive(Debug, Default)]
pub struct Reporters {
    by_collector: std::sync::Mutex<Vec<(CollectorKey, Arc<Reporter>)>>,
}

impl Reporters {
    /// The reporter for `settings`, started on first use. None outside a runtime.
    pub fn get(&self, settings: &Arc<ZipkinSettings>, store: &Store) -> Option<Arc<Reporter>> {
        let key = (
            settings.cluster_name.clone(),
            settings.endpoint.clone(),
            settings.hostname.clone(),
        );
        let mut all = self.by_collector.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, r)) = all.iter().find(|(k, _)| *k == key) {
            return Some(r.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ZipkinStats::new(store));
        handle.spawn(run(rx, settings.clone(), stats.clone()));
        let reporter = Arc::new(Reporter { tx, stats });
        all.push((key, reporter.clone()));
        Some(reporter)
    }
}

/// Batches spans: a report goes when `min_flush_spans` are buffered or the flush timer fires.
async fn run(
    mut rx: mpsc::Receiver<FinishedSpan>,
    settings: Arc<ZipkinSettings>,
    stats: Arc<ZipkinStats>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buffer = Vec::with_capacity(settings.min_flush_spans);
    let mut timer = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.flush_interval,
        settings.flush_interval,
    );
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    buffer.push(span);
                    if buffer.len() >= settings.min_flush_spans {
                        flush(&mut buffer, &settings, &stats, &in_flight);
                    }
                }
                None => {
                    flush(&mut buffer, &settings, &stats, &in_flight);
                    return;
                }
            },
            _ = timer.tick() => {
                stats.timer_flushed.inc();
                flush(&mut buffer, &settings, &stats, &in_flight);
            }
        }
    }
}

fn flush(
    buffer: &mut Vec<FinishedSpan>,
    settings: &Arc<ZipkinSettings>,
    stats: &Arc<ZipkinStats>,
    in_flight: &Arc<Semaphore>,
) {
    if buffer.is_empty() {
        return;
    }
    let spans = std::mem::replace(buffer, Vec::with_capacity(settings.min_flush_spans));
    stats.spans_sent.add(spans.len() as u64);
    let Some(cluster) = settings.cluster.get() else {
        stats.reports_skipped_no_cluster.inc();
        return;
    };
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        stats.reports_dropped.inc();
        return;
    };
    let body = to_json(&spans);
    let node_address = spans.iter().find_map(|s| s.local_address);
    let settings = settings.clone();
    let stats = stats.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let outcome = tokio::time::timeout(
            settings.request_timeout,
            post(&cluster, &settings, body, node_address),
        )
        .await;
        match outcome {
            Ok(Ok(status)) if status.is_success() => stats.reports_sent.inc(),
            Ok(Ok(status)) => {
                tracing::debug!(target: "tracing", "zipkin collector answered {status}");
                stats.reports_dropped.inc();
            }
            // Envoy's client turns a failed connection or a timeout into a local 503/504
            // reply, which its reporter counts as a dropped report (checked against 1.40).
            Ok(Err(e)) => {
                tracing::debug!(target: "tracing", "zipkin report failed: {e}");
                stats.reports_dropped.inc();
            }
            Err(_) => {
                tracing::debug!(target: "tracing", "zipkin report timed out");
                stats.reports_dropped.inc();
            }
        }
    });
}

async fn post(
    cluster: &Arc<crate::upstream::ClusterRuntime>,
    settings: &ZipkinSettings,
    body: Vec<u8>,
    node_address: Option<IpAddr>,
) -> Result<http::StatusCode, String> {
    let host = cluster
        .choose_host(None, None, None)
        .ok_or_else(|| "no healthy host in the collector cluster".to_string())?;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(host.authority.as_str())
        .path_and_query(settings.endpoint.as_str())
        .build()
        .map_err(|e| e.to_string())?;
    // Streamed (chunked on HTTP/1.1), as Envoy's client sends reports.
    let body: UpstreamBody = Report(Some(bytes::Bytes::from(body))).boxed_unsync();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::HOST, settings.hostname.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        // Envoy sends a report as an internal request of its own.
        .header("x-envoy-internal", "true")
        .header(
            "x-envoy-expected-rq-timeout-ms",
            settings.request_timeout.as_millis().to_string(),
        )
        .body(body)
        .map_err(|e| e.to_string())?;
    let mut request = request;
    // As Envoy's client: this node's address, for a request that starts here.
    if let Some(ip) = node_address.and_then(|a| http::HeaderValue::from_str(&a.to_string()).ok()) {
        request.headers_mut().insert("x-forwarded-for", ip);
    }
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
    // Read to the end, so the connection can serve the next report.
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// A report's body: one frame, its length left unsaid (so HTTP/1.1 sends it chunked).
struct Report(Option<bytes::Bytes>);

impl http_body::Body for Report {
    type Data = bytes::Bytes;
    type Error = crate::http::router::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn hex16(v: u64) -> String {
    let mut b = [0u8; 16];
    super::b3::hex(&mut b, v);
    String::from_utf8_lossy(&b).into_owned()
}

/// Zipkin v2 JSON (`/api/v2/spans`), with the fields Envoy writes: the SERVER or CLIENT kind,
/// the end as an `ss`/`cr` annotation, `shared` for a server span sharing its caller's id.
pub fn to_json(spans: &[FinishedSpan]) -> Vec<u8> {
    use serde_json::{json, Map, Value};
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut o = Map::new();
            let trace = match s.trace_high {
                Some(h) => format!("{}{}", hex16(h), hex16(s.trace)),
                None => hex16(s.trace),
            };
            o.insert("traceId".into(), trace.into());
            o.insert("name".into(), s.name.clone().into());
            o.insert("id".into(), hex16(s.id).into());
            if let Some(p) = s.parent {
                o.insert("parentId".into(), hex16(p).into());
            }
            o.insert(
                "kind".into(),
                if s.server { "SERVER" } else { "CLIENT" }.into(),
            );
            o.insert("timestamp".into(), s.start_us.into());
            o.insert("duration".into(), s.duration_us.into());
            let mut endpoint = Map::new();
            endpoint.insert("serviceName".into(), s.service_name.as_ref().into());
            match s.local_address {
                Some(IpAddr::V4(a)) => {
                    endpoint.insert("ipv4".into(), a.to_string().into());
                }
                Some(IpAddr::V6(a)) => {
                    endpoint.insert("ipv6".into(), a.to_string().into());
                }
                None => {}
            }
            endpoint.insert("port".into(), 0.into());
            o.insert("localEndpoint".into(), Value::Object(endpoint));
            o.insert(
                "annotations".into(),
                json!([{
                    "timestamp": s.start_us + s.duration_us,
                    "value": if s.server { "ss" } else { "cr" },
                }]),
            );
            let mut tags = Map::new();
            for (k, v) in &s.tags {
                tags.insert((*k).into(), v.clone().into());
            }
            for (k, v) in &s.custom {
                tags.insert(k.to_string(), v.clone().into());
            }
            o.insert("tags".into(), Value::Object(tags));
            if s.shared {
                o.insert("shared".into(), true.into());
            }
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}
