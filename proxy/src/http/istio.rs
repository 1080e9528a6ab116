//! Istio's HTTP filters at run time: the metadata exchange (`x-envoy-peer-metadata` and
//! `x-envoy-peer-metadata-id`: read and stripped from the peer, ours added, with values built
//! once at config time) and the standard metrics, recorded when the stream is logged (a
//! long gRPC stream's message counts also every `tcp_reporting_duration` while it lasts).
//! The peer's header is network input: anything that is not base64 of a Struct means "no
//! peer", never an error.

use crate::config::istio::{IstioHttp, Reporter};
use crate::stats::istio::{
    connection_security, Fixed, FixedRef, LocalLabels, Peer, SeriesKey, Service,
};
use crate::stats::Store;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use xds_proto::pb::google::protobuf::{value::Kind, Struct};

static METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
static METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Decoded peers by header value: a mesh has few distinct peers, and decoding base64 and a
/// protobuf per request would cost more than the rest of the metrics together.
const PEER_CACHE_LIMIT: usize = 1024;

#[derive(Debug)]
pub struct IstioRuntime {
    pub config: Arc<IstioHttp>,
    /// Present when the chain has `istio.stats`.
    stats: Option<(FixedRef, Arc<Store>)>,
    peers: Mutex<HashMap<HeaderValue, Option<Arc<Peer>>>>,
}

/// What one request carries until it is logged.
#[derive(Debug, Default)]
pub struct IstioRequest {
    peer: Option<Arc<Peer>>,
    /// The client sent its id / metadata: our response carries ours back (Istio's rule).
    peer_id_received: bool,
    peer_metadata_received: bool,
    grpc: bool,
    host: Option<HeaderValue>,
    request_header_bytes: u64,
    response_header_bytes: u64,
    grpc_status: Option<u32>,
    /// The call the gRPC statistics filter follows: its filter state feeds
    /// `istio_request_messages_total` and `istio_response_messages_total`.
    pub grpc_call: Option<Arc<super::grpc_stats::GrpcCall>>,
    /// The message counts (request, response) periodic reports have counted already.
    messages_reported: (u64, u64),
    /// When the next periodic report is due, for a gRPC stream whose peer is known.
    report_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What routing decided, for the periodic reports made before the response starts (the
/// router fills it when it picks the cluster; the series' service labels come from it).
#[derive(Debug, Default)]
pub struct Routed {
    pub route_name: Option<Arc<str>>,
    pub cluster: Option<Arc<crate::config::istio::IstioCluster>>,
}

/// Shared by the connection manager and the router for one request.
pub type RoutedSlot = Arc<std::sync::OnceLock<Routed>>;

impl IstioRuntime {
    pub fn new(config: &Arc<IstioHttp>, store: &Arc<Store>) -> Self {
        let stats = config.stats.map(|s| {
            let fixed = Fixed {
                source_reporter: s.reporter == Reporter::Source,
                local: LocalLabels::of(&config.local),
            };
            (
                store.istio.fixed(fixed, &config.local.istio_version),
                store.clone(),
            )
        });
        Self {
            config: config.clone(),
            stats,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Decode phase: discover the client (inbound), strip its headers, add ours (outbound).
    pub fn on_request(&self, uri: &http::Uri, headers: &mut HeaderMap) -> IstioRequest {
        let mx = &self.config.exchange;
        let mut r = IstioRequest::default();
        if mx.discover_downstream {
            r.peer_id_received = headers.contains_key(&METADATA_ID);
            r.peer_metadata_received = headers.contains_key(&METADATA);
            r.peer = self.discover(headers);
        }
        if mx.propagate_upstream {
            self.add_ours(headers);
        }
        if let Some((_, _)) = &self.stats {
            r.grpc = super::grpc_reply::is_grpc(headers);
            let fallback = self
                .config
                .stats
                .is_some_and(|s| !s.disable_host_header_fallback);
            if fallback {
                r.host = match uri.authority() {
                    Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                    None => headers.get(http::header::HOST).cloned(),
                };
            }
            // The request line: method, target, version (no formatting, lengths only).
            let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
            r.request_header_bytes = header_bytes(headers) + target as u64 + 16;
        }
        r
    }

    /// Encode phase: discover the server from an upstream's response (outbound), strip its
    /// headers, and answer a client that sent its metadata with ours (inbound).
    pub fn on_response(&self, r: &mut IstioRequest, headers: &mut HeaderMap, upstream: bool) {
        let mx = &self.config.exchange;
        if mx.discover_upstream && upstream {
            r.peer = self.discover(headers);
        }
        if mx.propagate_downstream {
            let local = &self.config.local;
            if r.peer_id_received {
                if let Some(id) = &local.id {
                    headers.insert(METADATA_ID.clone(), id.clone());
                }
            }
            if r.peer_metadata_received {
                if let Some(value) = &local.metadata_header {
                    headers.insert(METADATA.clone(), value.clone());
                }
            }
        }
        if self.stats.is_some() {
            r.response_header_bytes = header_bytes(headers) + 17;
            if r.grpc {
                r.grpc_status = grpc_status(headers);
            }
        }
    }

    /// Trailers of a gRPC response carry its status.
    pub fn on_trailers(r: &mut IstioRequest, trailers: &HeaderMap) {
        if r.grpc {
            if let Some(status) = grpc_status(trailers) {
                r.grpc_status = Some(status);
            }
        }
    }

    /// Periodic reports of a gRPC stream: Istio's stats filter starts a timer of
    /// `tcp_reporting_duration` when a gRPC request arrives and, at each tick once the
    /// metadata exchange found the peer, adds the messages counted since its last report
    /// (without a peer it reports only when the stream ends). Polled while the request is
    /// routed (`while_routing`), then from the response body (`poll_report`): no task, and
    /// no timer for a stream that is not gRPC or has no peer.
    /// Istio: `istio/proxy:source/extensions/filters/http/istio_stats/istio_stats.cc`
    /// (`onReportTimer`).
    fn period(&self, r: &IstioRequest) -> Option<std::time::Duration> {
        let period = self
            .config
            .stats
            .map(|s| s.tcp_reporting_duration)
            .filter(|p| !p.is_zero())?;
        let reports = r.grpc && r.peer.is_some() && r.grpc_call.is_some() && self.stats.is_some();
        reports.then_some(period)
    }

    /// A slot for the router to say where the request went, when the stream may report
    /// before its response starts (the server side knows its peer from the request).
    pub fn routed_slot(&self, r: &IstioRequest) -> Option<RoutedSlot> {
        self.period(r).map(|_| RoutedSlot::default())
    }

    /// Runs `routing` to its outcome, making the stream's periodic reports meanwhile (a
    /// client-streaming call's server may answer only at its end). The series' service comes
    /// from `slot`; before the router filled it there is nothing to report under.
    pub async fn while_routing<F: Future>(
        &self,
        r: &mut IstioRequest,
        started: std::time::Instant,
        tls: Option<&crate::tls::TlsInfo>,
        slot: &RoutedSlot,
        routing: F,
    ) -> F::Output {
        let mut routing = std::pin::pin!(routing);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(outcome) = routing.as_mut().poll(cx) {
                return std::task::Poll::Ready(outcome);
            }
            if self.tick(r, started, cx) {
                if let Some(routed) = slot.get() {
                    let info = crate::format::StreamInfo {
                        route_name: routed.route_name.clone(),
                        istio_cluster: routed.cluster.clone(),
                        ..Default::default()
                    };
                    if let Some(key) = self.key(r, &info, tls) {
                        self.report_messages(r, &key);
                    }
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// A report polled from the response body, with what the stream's log will say.
    pub fn poll_report(
        &self,
        r: &mut IstioRequest,
        pending: (&crate::format::StreamInfo, Option<&crate::tls::TlsInfo>),
        started: std::time::Instant,
        cx: &mut std::task::Context<'_>,
    ) {
        if self.tick(r, started, cx) {
            let (info, tls) = pending;
            if let Some(key) = self.key(r, info, tls) {
                self.report_messages(r, &key);
            }
        }
    }

    /// Whether a report is due now; the timer is then set for the next one (its waker
    /// registered in `cx`).
    fn tick(
        &self,
        r: &mut IstioRequest,
        started: std::time::Instant,
        cx: &mut std::task::Context<'_>,
    ) -> bool {
        let Some(period) = self.period(r) else {
            return false;
        };
        let timer = r
            .report_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until((started + period).into())));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        // Ticks keep the request's rhythm; ticks missed while nothing polled make one report.
        let now = tokio::time::Instant::now();
        let mut next = timer.deadline() + period;
        while next <= now {
            next += period;
        }
        timer.as_mut().reset(next);
        // Registers the waker for the next tick.
        let _ = timer.as_mut().poll(cx);
        true
    }

    /// Adds the messages counted since the last report to `key`'s message series.
    fn report_messages(&self, r: &mut IstioRequest, key: &SeriesKey) {
        let Some((_, store)) = &self.stats else {
            return;
        };
        // Istio reads the message counts from the gRPC statistics filter's state: without
        // that filter (or its `emit_filter_state`), or before a first message, none.
        let counts = match &r.grpc_call {
            Some(call) if r.grpc => call.filter_state(),
            _ => None,
        };
        if let Some((request, response)) = counts {
            let series = store.istio.message_series(key.messages_key());
            series
                .request
                .add(request.saturating_sub(r.messages_reported.0));
            series
                .response
                .add(response.saturating_sub(r.messages_reported.1));
            r.messages_reported = (request, response);
        }
    }

    /// Access-log time: one series lookup, then atomics.
    pub fn record(
        &self,
        r: &mut IstioRequest,
        info: &crate::format::StreamInfo,
        tls: Option<&crate::tls::TlsInfo>,
    ) {
        let (Some(key), Some((_, store))) = (self.key(r, info, tls), &self.stats) else {
            return;
        };
        self.report_messages(r, &key);
        let series = store.istio.series(key);
        series.requests.inc();
        if let Some(d) = info.duration {
            // Istio records whole milliseconds.
            series.duration_ms.record(d.as_millis() as f64);
        }
        series
            .request_bytes
            .record((info.bytes_received + r.request_header_bytes) as f64);
        series
            .response_bytes
            .record((info.bytes_sent + r.response_header_bytes) as f64);
    }

    /// The series of a request as it stands; None without `istio.stats`.
    fn key(
        &self,
        r: &IstioRequest,
        info: &crate::format::StreamInfo,
        tls: Option<&crate::tls::TlsInfo>,
    ) -> Option<SeriesKey> {
        let (fixed, _) = self.stats.as_ref()?;
        let route_special = match info.route_name.as_deref() {
            Some("block_all") => Some("BlackHoleCluster"),
            Some("allow_any") => Some("PassthroughCluster"),
            _ => None,
        };
        let source = self.config.stats.map(|s| s.reporter) != Some(Reporter::Destination);
        let (mutual_tls, principals) =
            connection_security(source, tls, info.upstream_identities.as_deref());
        // Without a peer from the metadata exchange, the client side falls back to the
        // upstream endpoint's `istio.workload` metadata, as Istio's stats filter does.
        let peer = match &r.peer {
            Some(p) => Some(p.clone()),
            None if source => info.upstream_istio_peer.clone(),
            None => None,
        };
        Some(SeriesKey {
            fixed: fixed.clone(),
            peer,
            service: Service {
                host_header: r.host.clone(),
                route_special,
                cluster: info.istio_cluster.clone(),
            },
            grpc: r.grpc,
            response_code: info.response_code,
            grpc_status: if r.grpc { r.grpc_status } else { None },
            response_flags: info.response_flags,
            mutual_tls,
            principals,
            tcp: false,
        })
    }

    fn add_ours(&self, headers: &mut HeaderMap) {
        let local = &self.config.local;
        if let Some(id) = &local.id {
            headers.insert(METADATA_ID.clone(), id.clone());
        }
        if let Some(value) = &local.metadata_header {
            headers.insert(METADATA.clone(), value.clone());
        }
    }

    /// The peer of the exchange headers, which are removed either way.
    fn discover(&self, headers: &mut HeaderMap) -> Option<Arc<Peer>> {
        headers.remove(&METADATA_ID);
        let value = headers.remove(&METADATA)?;
        if value.is_empty() {
            return None;
        }
        let mut cache = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = cache.get(&value) {
            return peer.clone();
        }
        let peer = decode_peer(value.as_bytes()).map(Arc::new);
        if cache.len() >= PEER_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(value, peer.clone());
        peer
    }
}

/// Base64 (padded or not) of a serialized `google.protobuf.Struct` with Istio's keys.
pub fn decode_peer(value: &[u8]) -> Option<Peer> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    use base64::Engine;
    use prost::Message;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = LENIENT.decode(value).ok()?;
    let md = Struct::decode(bytes.as_slice()).ok()?;
    let get = |s: &Struct, key: &str| -> Arc<str> {
        match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => Arc::from(v.as_str()),
            _ => Arc::from(""),
        }
    };
    let labels = match md.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => l.clone(),
        _ => Struct::default(),
    };
    let first = |a: &str, b: &str| {
        let v = get(&labels, a);
        if v.is_empty() {
            get(&labels, b)
        } else {
            v
        }
    };
    use crate::config::istio_node::{CANONICAL_NAME, CANONICAL_REVISION};
    Some(Peer {
        workload_name: get(&md, "WORKLOAD_NAME"),
        namespace: get(&md, "NAMESPACE"),
        canonical_name: get(&labels, CANONICAL_NAME),
        canonical_revision: get(&labels, CANONICAL_REVISION),
        app: first("app.kubernetes.io/name", "app"),
        version: first("app.kubernetes.io/version", "version"),
        cluster_id: get(&md, "CLUSTER_ID"),
    })
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Header bytes as HTTP/1.1 writes them (`name: value\r\n`): Istio's byte metrics count what
/// went over the wire, headers included, and Outrigger's codecs do not meter that.
fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_peer() {
        for bad in [
            &b"!!!not base64!!!"[..],
            b"AAAA",
            b"////",
            b"CgA",
            b"\xff\xfe",
            b"",
        ] {
            let _ = decode_peer(bad);
        }
        assert!(decode_peer(b"!!!").is_none());
        // Valid base64, not a Struct: a field of wire type 7 does not exist.
        assert!(decode_peer(b"Dw==").is_none());
    }

    #[test]
    fn our_header_decodes_as_a_peer_with_or_without_padding() {
        let mut md = Struct::default();
        let s = |v: &str| xds_proto::pb::google::protobuf::Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        md.fields.insert("WORKLOAD_NAME".into(), s("reviews-v2"));
        md.fields.insert("NAMESPACE".into(), s("default"));
        let value = crate::config::istio_node::exchange_value(&md, "", "");
        let peer = decode_peer(value.as_bytes()).expect("a peer");
        assert_eq!(&*peer.workload_name, "reviews-v2");
        let unpadded = value.trim_end_matches('=');
        assert_eq!(decode_peer(unpadded.as_bytes()), Some(peer));
    }
}
