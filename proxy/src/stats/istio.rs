//! Istio's standard HTTP metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`) and `istio_build`. They live outside Envoy's
//! stat namespace, so Prometheus shows them without the `envoy_` prefix.
//!
//! A series is keyed by what varies per request (the peer, the service, the response), plus
//! one interned handle for the labels the configuration fixes (reporter, local workload). A
//! request hashes that key and looks it up once; label strings are only written at scrape
//! time. Label names, order and defaults: istio/proxy `istio_stats.cc` and its golden files
//! (`testdata/metric/*.yaml.tmpl`), as `shared/reference/istio-contract.md` §7 lists them.

use super::Counter;
use super::Histogram;
use crate::config::istio::IstioCluster;
use crate::config::istio_node::LocalWorkload;
use crate::format::ResponseFlags;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, RwLock};

pub const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The peer workload, as the metadata exchange delivered it. Empty fields are unknown.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub workload_name: Arc<str>,
    pub namespace: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub cluster_id: Arc<str>,
}

impl Peer {
    /// A peer from an endpoint's `istio.workload` metadata, Istio's compact telemetry encoding
    /// `workload;namespace;canonical service;canonical revision;cluster id`: the labels
    /// Istio's stats filter falls back to when the metadata exchange told it nothing. Fewer
    /// than five parts is no peer; app and version stay unknown, as in Istio.
    pub fn from_endpoint_metadata(encoded: &str) -> Option<Peer> {
        let parts: Vec<&str> = encoded.split(';').collect();
        if parts.len() < 5 {
            return None;
        }
        Some(Peer {
            workload_name: parts[0].into(),
            namespace: parts[1].into(),
            canonical_name: parts[2].into(),
            canonical_revision: parts[3].into(),
            app: "".into(),
            version: "".into(),
            cluster_id: parts[4].into(),
        })
    }
}

/// The labels fixed by configuration: who reports, and the local workload. Interned by the
/// registry, so series of equal configs share one and compare by pointer.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Fixed {
    pub source_reporter: bool,
    pub local: LocalLabels,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LocalLabels {
    pub workload_name: Arc<str>,
    pub namespace: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub cluster_id: Arc<str>,
}

impl LocalLabels {
    pub fn of(w: &LocalWorkload) -> Self {
        Self {
            workload_name: w.workload_name.clone(),
            namespace: w.namespace.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            app: w.app.clone(),
            version: w.version.clone(),
            cluster_id: w.cluster_id.clone(),
        }
    }
}

/// Where `destination_service*` come from for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Service {
    /// The Host header (None with `disable_host_header_fallback`).
    pub host_header: Option<http::HeaderValue>,
    /// The route `block_all` / `allow_any` names the service.
    pub route_special: Option<&'static str>,
    pub cluster: Option<Arc<IstioCluster>>,
}

/// One series: what varies per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub fixed: FixedRef,
    pub peer: Option<Arc<Peer>>,
    pub service: Service,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: Option<u32>,
    pub response_flags: ResponseFlags,
    /// `connection_security_policy` on the server side: Some(true) mutual TLS, Some(false)
    /// none; None on the client side (`unknown`).
    pub mutual_tls: Option<bool>,
    pub principals: Principals,
    /// A TCP connection's series (`request_protocol="tcp"`, no response code labels).
    pub tcp: bool,
}

impl SeriesKey {
    /// The key of the gRPC message counters: Istio reports them with the peer and service
    /// labels only (reporter to `destination_cluster`), without the protocol, response and
    /// security labels (`istio_stats.cc` adds those to its tags only when the stream ends,
    /// after the message counts were reported; golden file
    /// `testdata/metric/server_request_messages.yaml.tmpl`).
    pub fn messages_key(&self) -> SeriesKey {
        SeriesKey {
            grpc: true,
            response_code: 0,
            grpc_status: None,
            response_flags: ResponseFlags::NONE,
            mutual_tls: None,
            tcp: false,
            ..self.clone()
        }
    }
}

/// The labels of the gRPC message counters: the first 20, up to `destination_cluster`.
const MESSAGE_LABELS: usize = 20;

/// The SPIFFE identities of the connection's two ends (URI SANs), where known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Principals {
    pub peer: Option<Arc<str>>,
    pub local: Option<Arc<str>>,
}

/// `connection_security_policy` and the principals, as Istio's stats filter takes them. The
/// server side (destination reporter) reads its downstream connection: mutual TLS when the
/// client presented a certificate, the principals from it and from ours. The client side
/// reads the upstream connection the response came on (the server's certificate is the
/// peer, the one we presented the local principal) and always reports the policy `unknown`.
pub fn connection_security(
    source_reporter: bool,
    tls: Option<&crate::tls::TlsInfo>,
    upstream: Option<&crate::tls::UpstreamIdentities>,
) -> (Option<bool>, Principals) {
    if source_reporter {
        let principals = upstream
            .map(|u| Principals {
                peer: u.peer.clone(),
                local: u.local.clone(),
            })
            .unwrap_or_default();
        return (None, principals);
    }
    let mutual = tls.is_some_and(|t| t.peer.is_some());
    let principals = match tls {
        Some(t) => Principals {
            peer: t.peer.as_ref().map(|p| p.uri.clone()),
            local: Some(t.local.uri.clone()),
        },
        None => Principals::default(),
    };
    (Some(mutual), principals)
}

/// A pointer-compared handle to interned [`Fixed`] labels.
#[derive(Debug, Clone)]
pub struct FixedRef(pub Arc<Fixed>);

impl PartialEq for FixedRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for FixedRef {}
impl std::hash::Hash for FixedRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

/// The metrics of one series.
#[derive(Debug, Default)]
pub struct Series {
    pub requests: Counter,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// The TCP metrics of one series.
#[derive(Debug, Default)]
pub struct TcpSeries {
    pub opened: Counter,
    pub closed: Counter,
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
}

/// The gRPC message counters of one series.
#[derive(Debug, Default)]
pub struct MessageSeries {
    pub request: Counter,
    pub response: Counter,
}

/// Every Istio series of the process.
#[derive(Debug, Default)]
pub struct IstioMetrics {
    series: SeriesMap<Series>,
    messages: SeriesMap<MessageSeries>,
    tcp: SeriesMap<TcpSeries>,
    fixed: Mutex<Vec<Arc<Fixed>>>,
    /// `istio_build`'s `tag`, once an Istio stats filter was configured.
    build: Mutex<Option<Arc<str>>>,
}

impl IstioMetrics {
    /// The shared handle for `fixed` (config time); also publishes `istio_build`.
    pub fn fixed(&self, fixed: Fixed, istio_version: &Arc<str>) -> FixedRef {
        let mut build = self.build.lock().unwrap_or_else(|e| e.into_inner());
        build.get_or_insert_with(|| istio_version.clone());
        let mut all = self.fixed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = all.iter().find(|f| ***f == fixed) {
            return FixedRef(existing.clone());
        }
        let new = Arc::new(fixed);
        all.push(new.clone());
        FixedRef(new)
    }

    /// The series of `key`: one hash lookup under a read lock; created on first use.
    pub fn series(&self, key: SeriesKey) -> Arc<Series> {
        get_or_create(&self.series, key)
    }

    /// The gRPC message counters of `key` (a [`SeriesKey::messages_key`]), as
    /// [`IstioMetrics::series`].
    pub fn message_series(&self, key: SeriesKey) -> Arc<MessageSeries> {
        get_or_create(&self.messages, key)
    }

    fn render_messages(&self, out: &mut String) {
        render_counters(
            &self.messages,
            message_labels,
            &[
                ("istio_request_messages_total", |s| &s.request),
                ("istio_response_messages_total", |s| &s.response),
            ],
            out,
        );
    }

    /// The TCP series of `key`, as [`IstioMetrics::series`].
    pub fn tcp_series(&self, key: SeriesKey) -> Arc<TcpSeries> {
        get_or_create(&self.tcp, key)
    }

    fn render_tcp(&self, out: &mut String) {
        render_counters(
            &self.tcp,
            labels,
            &[
                ("istio_tcp_connections_closed_total", |s| &s.closed),
                ("istio_tcp_connections_opened_total", |s| &s.opened),
                ("istio_tcp_received_bytes_total", |s| &s.received_bytes),
                ("istio_tcp_sent_bytes_total", |s| &s.sent_bytes),
            ],
            out,
        );
    }

    /// The Prometheus families, text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        if let Some(tag) = self
            .build
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let tag = if tag.is_empty() { "unknown" } else { tag };
            let _ = write!(
                out,
                "# TYPE istio_build gauge\nistio_build{{component=\"proxy\",tag=\"{}\"}} 1\n",
                super::prometheus::escape_value(tag)
            );
        }
        let mut rows: Vec<(String, Arc<Series>)> = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (labels(k), s.clone()))
            .collect();
        self.render_tcp(out);
        self.render_messages(out);
        if rows.is_empty() {
            return;
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(out, "# TYPE istio_requests_total counter");
        for (labels, s) in &rows {
            let _ = writeln!(
                out,
                "istio_requests_total{{{labels}}} {}",
                s.requests.value()
            );
        }
        type Pick = fn(&Series) -> &Histogram;
        let families: [(&str, Pick); 3] = [
            ("istio_request_bytes", |s| &s.request_bytes),
            ("istio_request_duration_milliseconds", |s| &s.duration_ms),
            ("istio_response_bytes", |s| &s.response_bytes),
        ];
        for (family, pick) in families {
            let _ = writeln!(out, "# TYPE {family} histogram");
            for (labels, s) in &rows {
                super::prometheus::write_histogram(out, family, labels, &pick(s).snapshot());
            }
        }
    }
}

fn or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// The 25 label values of a series, Istio's rules applied: a missing peer value is
/// `unknown` (a peer's canonical revision `latest`), the server side falls back to its own
/// canonical name for the service.
pub fn values(k: &SeriesKey) -> [String; 25] {
    let fixed = &k.fixed.0;
    let local = &fixed.local;
    let empty = Peer::default();
    let peer = k.peer.as_deref().unwrap_or(&empty);
    let peer_san = k.principals.peer.as_deref().unwrap_or("");
    let local_san = k.principals.local.as_deref().unwrap_or("");
    let peer_namespace = or(&peer.namespace, "");
    // Host header first; the route or cluster may override (Istio's order).
    let header = k
        .service
        .host_header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (mut host, mut host_name, mut namespace) = (header, header, "");
    if let Some(special) = k.service.route_special {
        host_name = special;
    } else {
        match k.service.cluster.as_deref() {
            Some(IstioCluster::Special(name)) => host_name = name,
            Some(IstioCluster::Service {
                host: h,
                name,
                namespace: ns,
            }) => {
                if let Some(h) = h {
                    host = h;
                }
                namespace = ns.as_deref().unwrap_or("");
                host_name = match name {
                    Some(n) => n,
                    None => host.split('.').next().unwrap_or_default(),
                };
            }
            None => {}
        }
    }
    let u = "unknown";
    let code = k.response_code.to_string();
    let grpc_status = k.grpc_status.map(|s| s.to_string()).unwrap_or_default();
    let flags = k.response_flags.short_string();
    let policy = match k.mutual_tls {
        None => u,
        Some(true) => "mutual_tls",
        Some(false) => "none",
    };
    let protocol = match (k.tcp, k.grpc) {
        (true, _) => "tcp",
        (false, true) => "grpc",
        (false, false) => "http",
    };
    let s = |v: &str| v.to_string();
    if fixed.source_reporter {
        [
            s("source"),
            s(&local.workload_name),
            s(&local.canonical_name),
            s(&local.canonical_revision),
            s(&local.namespace),
            s(or(local_san, u)),
            s(&local.app),
            s(&local.version),
            s(&local.cluster_id),
            s(or(&peer.workload_name, u)),
            s(or(peer_namespace, u)),
            s(or(peer_san, u)),
            s(or(&peer.app, u)),
            s(or(&peer.version, u)),
            s(or(host, u)),
            s(or(&peer.canonical_name, u)),
            s(or(&peer.canonical_revision, "latest")),
            s(or(host_name, u)),
            s(or(or(namespace, peer_namespace), u)),
            s(or(&peer.cluster_id, u)),
            s(protocol),
            code,
            grpc_status,
            flags,
            s(policy),
        ]
    } else {
        [
            s("destination"),
            s(or(&peer.workload_name, u)),
            s(or(&peer.canonical_name, u)),
            s(or(&peer.canonical_revision, "latest")),
            s(or(peer_namespace, u)),
            s(or(peer_san, u)),
            s(or(&peer.app, u)),
            s(or(&peer.version, u)),
            s(or(&peer.cluster_id, u)),
            s(&local.workload_name),
            s(&local.namespace),
            s(or(local_san, u)),
            s(&local.app),
            s(&local.version),
            s(or(host, &local.canonical_name)),
            s(&local.canonical_name),
            s(&local.canonical_revision),
            s(or(host_name, &local.canonical_name)),
            s(&local.namespace),
            s(&local.cluster_id),
            s(protocol),
            code,
            grpc_status,
            flags,
            s(policy),
        ]
    }
}

/// The label text of a gRPC message counter series.
/// Keyed with foldhash, not SipHash: a key is a dozen label strings hashed on every request,
/// and SipHash made that lookup a visible part of Istio's per-request cost.
type SeriesMap<T> = RwLock<HashMap<SeriesKey, Arc<T>, foldhash::fast::RandomState>>;

/// A counter family: its name, and the series' counter it shows.
type Family<T> = (&'static str, fn(&T) -> &Counter);

/// The series of `key` in `map`: one hash lookup under a read lock; created on first use.
fn get_or_create<T: Default>(map: &SeriesMap<T>, key: SeriesKey) -> Arc<T> {
    if let Some(s) = map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return s.clone();
    }
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// Counter families over the series of `map`, each series labelled by `label`, in label
/// order; nothing when there is no series yet.
fn render_counters<T>(
    map: &SeriesMap<T>,
    label: fn(&SeriesKey) -> String,
    families: &[Family<T>],
    out: &mut String,
) {
    let mut rows: Vec<(String, Arc<T>)> = map
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, s)| (label(k), s.clone()))
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (family, pick) in families {
        let _ = writeln!(out, "# TYPE {family} counter");
        for (labels, s) in &rows {
            let _ = writeln!(out, "{family}{{{labels}}} {}", pick(s).value());
        }
    }
}

fn message_labels(k: &SeriesKey) -> String {
    let mut out = String::new();
    for (i, (name, value)) in LABELS
        .iter()
        .zip(values(k))
        .take(MESSAGE_LABELS)
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{name}=\"{}\"",
            super::prometheus::escape_value(&value)
        );
    }
    out
}

/// The label text of a series; a TCP series has no `response_code` or
/// `grpc_response_status` (Istio's TCP label set).
fn labels(k: &SeriesKey) -> String {
    let mut out = String::new();
    let pairs = LABELS
        .iter()
        .zip(values(k))
        .filter(|(name, _)| !k.tcp || !matches!(**name, "response_code" | "grpc_response_status"));
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{name}=\"{}\"",
            super::prometheus::escape_value(&value)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn endpoint_metadata_needs_five_parts_as_in_istio() {
        for short in ["", "a;b", "a;;;b", "a;b;c;d"] {
            assert_eq!(Peer::from_endpoint_metadata(short), None, "{short}");
        }
        let peer = Peer::from_endpoint_metadata("foo-pod;default;foo-service;v1;my-cluster")
            .expect("five parts");
        assert_eq!(&*peer.workload_name, "foo-pod");
        assert_eq!(&*peer.namespace, "default");
        assert_eq!(&*peer.canonical_name, "foo-service");
        assert_eq!(&*peer.canonical_revision, "v1");
        assert_eq!(&*peer.cluster_id, "my-cluster");
        assert_eq!(&*peer.app, "");
    }
}
