//! Istio's HTTP filters, which arrive as `TypedStruct`s (a type URL plus a JSON-like Struct)
//! because their protos live outside Envoy's API: `istio.metadata_exchange`
//! (`io.istio.http.peer_metadata.Config`), `istio.stats` (`stats.PluginConfig`) and `istio.alpn`.
//! The Struct is read field by field; a field that would change behaviour and is not
//! implemented is refused with its path, as for any proto field.
//! Protos: istio/api `envoy/extensions/stats/config.proto`, envoyproxy/envoy
//! `contrib/envoy/extensions/filters/http/peer_metadata/v3/peer_metadata.proto`.

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use super::istio_node::LocalWorkload;
use std::sync::Arc;
use xds_proto::pb::google::protobuf::{value::Kind, Struct, Value};

pub const PEER_METADATA: &str = "io.istio.http.peer_metadata.Config";
pub const STATS: &str = "stats.PluginConfig";
pub const ALPN: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";

/// Which side the metrics report for (`reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// Outbound sidecar: `reporter="source"`, the local workload is the source.
    Source,
    /// Inbound sidecar: `reporter="destination"`.
    Destination,
}

/// `istio.metadata_exchange`: which headers are read (and stripped) and which are added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataExchange {
    /// `downstream_discovery: [istio_headers]`: the client's headers on the request.
    pub discover_downstream: bool,
    /// `upstream_discovery: [istio_headers]`: the server's headers on the response.
    pub discover_upstream: bool,
    /// `downstream_propagation: [istio_headers]`: ours on the response (only to a client that
    /// sent its own, as Istio does).
    pub propagate_downstream: bool,
    /// `upstream_propagation: [istio_headers]`: ours on the request.
    pub propagate_upstream: bool,
}

/// `istio.stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsPlugin {
    pub reporter: Reporter,
    pub disable_host_header_fallback: bool,
    /// How often a TCP connection's bytes are reported while it lasts (Istio's code default
    /// is 5 s; the proto comment's 15 s is not what runs).
    pub tcp_reporting_duration: std::time::Duration,
}

/// What a connection manager's Istio filters do, with the local workload they speak for.
#[derive(Debug)]
pub struct IstioHttp {
    pub local: Arc<LocalWorkload>,
    pub exchange: MetadataExchange,
    pub stats: Option<StatsPlugin>,
    /// The reporter of the listener when no stats filter says otherwise: also decides which
    /// side's peer the metadata exchange fills.
    pub inbound: bool,
}

/// A cluster as Istio's metrics see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IstioCluster {
    /// `BlackHoleCluster`, `PassthroughCluster`, `InboundPassthroughCluster(Ipv4|Ipv6)`: the
    /// cluster's name is the `destination_service_name`.
    Special(Arc<str>),
    /// `metadata.filter_metadata.istio.services[0]`: `host`, and `name` (else the host up to
    /// its first dot) and `namespace`; a missing one is None.
    Service {
        host: Option<Arc<str>>,
        name: Option<Arc<str>>,
        namespace: Option<Arc<str>>,
    },
}

impl IstioCluster {
    pub fn of(
        name: &str,
        metadata: Option<&xds_proto::pb::envoy::config::core::v3::Metadata>,
    ) -> Option<Self> {
        if matches!(
            name,
            "BlackHoleCluster"
                | "PassthroughCluster"
                | "InboundPassthroughCluster"
                | "InboundPassthroughClusterIpv4"
                | "InboundPassthroughClusterIpv6"
        ) {
            return Some(IstioCluster::Special(name.into()));
        }
        let istio = metadata?.filter_metadata.get("istio")?;
        let Some(Kind::ListValue(services)) = istio.fields.get("services")?.kind.as_ref() else {
            return None;
        };
        let Some(Kind::StructValue(service)) = services.values.first()?.kind.as_ref() else {
            return None;
        };
        let get = |key: &str| match service.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => Some(Arc::<str>::from(s.as_str())),
            _ => None,
        };
        let host = get("host");
        let name = get("name").or_else(|| {
            host.as_ref()
                .map(|h| Arc::from(h.split('.').next().unwrap_or_default()))
        });
        Some(IstioCluster::Service {
            host,
            name,
            namespace: get("namespace"),
        })
    }
}

fn fields<'a>(
    value: &'a Struct,
    path: &FieldPath,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a Value, FieldPath)>> {
    let mut out: Vec<_> = value
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v, path.field(k)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(b.0));
    if let Some((k, _, p)) = out.iter().find(|(k, _, _)| !known.contains(k)) {
        return Err(p.error(format!("unknown or unsupported field '{k}'")));
    }
    Ok(out)
}

fn as_bool(v: &Value, path: &FieldPath) -> Result<bool> {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Ok(*b),
        Some(Kind::NullValue(_)) | None => Ok(false),
        _ => Err(path.error("must be a boolean")),
    }
}

fn as_list<'a>(v: &'a Value, path: &FieldPath) -> Result<&'a [Value]> {
    match &v.kind {
        Some(Kind::ListValue(l)) => Ok(&l.values),
        Some(Kind::NullValue(_)) | None => Ok(&[]),
        _ => Err(path.error("must be a list")),
    }
}

fn as_struct<'a>(v: &'a Value, path: &FieldPath) -> Result<&'a Struct> {
    match &v.kind {
        Some(Kind::StructValue(s)) => Ok(s),
        _ => Err(path.error("must be an object")),
    }
}

/// `io.istio.http.peer_metadata.Config`.
pub fn peer_metadata(
    value: &Struct,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<MetadataExchange> {
    let mut mx = MetadataExchange::default();
    for (name, v, p) in fields(
        value,
        path,
        &[
            "downstream_discovery",
            "upstream_discovery",
            "downstream_propagation",
            "upstream_propagation",
            "shared_with_upstream",
            "additional_labels",
        ],
    )? {
        match name {
            "downstream_discovery" | "upstream_discovery" => {
                let mut headers = false;
                for (i, method) in as_list(v, &p)?.iter().enumerate() {
                    let mp = p.index(i);
                    for (kind, _, kp) in fields(
                        as_struct(method, &mp)?,
                        &mp,
                        &["istio_headers", "workload_discovery"],
                    )? {
                        if kind == "istio_headers" {
                            headers = true;
                        } else {
                            acks.push(Acknowledged {
                                path: kp.to_string(),
                                reason: "workload discovery needs Istio's workload metadata bootstrap extension (ambient), which Outrigger does not load; without it Istio's own filter finds nothing either, so the peer stays unknown",
                            });
                        }
                    }
                }
                if name == "downstream_discovery" {
                    mx.discover_downstream = headers;
                } else {
                    mx.discover_upstream = headers;
                }
            }
            "downstream_propagation" | "upstream_propagation" => {
                let mut headers = false;
                for (i, method) in as_list(v, &p)?.iter().enumerate() {
                    let mp = p.index(i);
                    for (_, options, kp) in
                        fields(as_struct(method, &mp)?, &mp, &["istio_headers"])?
                    {
                        for (_, skip, sp) in
                            fields(as_struct(options, &kp)?, &kp, &["skip_external_clusters"])?
                        {
                            if as_bool(skip, &sp)? {
                                return Err(sp.error(
                                    "skipping the exchange for external clusters is not implemented",
                                ));
                            }
                        }
                        headers = true;
                    }
                }
                if name == "downstream_propagation" {
                    mx.propagate_downstream = headers;
                } else {
                    mx.propagate_upstream = headers;
                }
            }
            "shared_with_upstream" => {
                if as_bool(v, &p)? {
                    acks.push(Acknowledged {
                        path: p.to_string(),
                        reason: "shares the peer with upstream filter state, which Outrigger has no consumer of",
                    });
                }
            }
            _ => {
                if !as_list(v, &p)?.is_empty() {
                    return Err(p.error("additional peer labels are not implemented"));
                }
            }
        }
    }
    Ok(mx)
}

/// A protobuf JSON Duration: decimal seconds with an `s` suffix (`5s`, `0.25s`).
fn proto_json_duration(text: &str) -> Option<std::time::Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

/// `stats.PluginConfig`. `inbound` is the listener's `traffic_direction`, which decides the
/// reporter when the config does not (Istio's rule: INBOUND reports as destination, anything
/// else as source).
pub fn stats_plugin(
    value: &Struct,
    path: &FieldPath,
    inbound: bool,
    acks: &mut Vec<Acknowledged>,
) -> Result<StatsPlugin> {
    let mut plugin = StatsPlugin {
        reporter: if inbound {
            Reporter::Destination
        } else {
            Reporter::Source
        },
        disable_host_header_fallback: false,
        tcp_reporting_duration: std::time::Duration::from_secs(5),
    };
    for (name, v, p) in fields(
        value,
        path,
        &[
            "reporter",
            "disable_host_header_fallback",
            "tcp_reporting_duration",
            "metrics",
            "definitions",
            "rotation_interval",
            "graceful_deletion_interval",
        ],
    )? {
        match name {
            "reporter" => match &v.kind {
                Some(Kind::StringValue(s)) if s == "UNSPECIFIED" => {}
                Some(Kind::NumberValue(n)) if *n == 0.0 => {}
                Some(Kind::StringValue(s)) if s == "SERVER_GATEWAY" => {
                    return Err(p.error(
                        "the waypoint reporter (SERVER_GATEWAY) is not implemented: only sidecar reporting is",
                    ))
                }
                _ => return Err(p.error("unknown reporter")),
            },
            "disable_host_header_fallback" => plugin.disable_host_header_fallback = as_bool(v, &p)?,
            "tcp_reporting_duration" => {
                plugin.tcp_reporting_duration = match &v.kind {
                    // A Struct carries a Duration in its JSON form ("5s").
                    Some(Kind::StringValue(text)) => proto_json_duration(text)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| p.error("not a positive duration such as \"5s\""))?,
                    _ => return Err(p.error("not a duration")),
                }
            }
            "rotation_interval" | "graceful_deletion_interval" => acks.push(Acknowledged {
                path: p.to_string(),
                reason: "Istio metric series are kept for the life of the process; they are not rotated out",
            }),
            _ => {
                if !as_list(v, &p)?.is_empty() {
                    return Err(p.error(
                        "metric customisation (CEL dimensions, tags_to_remove, drop, definitions) is not implemented",
                    ));
                }
            }
        }
    }
    Ok(plugin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(json: &str) -> Struct {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        fn conv(v: &serde_json::Value) -> Value {
            use xds_proto::pb::google::protobuf::ListValue;
            Value {
                kind: Some(match v {
                    serde_json::Value::Null => Kind::NullValue(0),
                    serde_json::Value::Bool(b) => Kind::BoolValue(*b),
                    serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
                    serde_json::Value::String(s) => Kind::StringValue(s.clone()),
                    serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                        values: a.iter().map(conv).collect(),
                    }),
                    serde_json::Value::Object(o) => Kind::StructValue(Struct {
                        fields: o.iter().map(|(k, v)| (k.clone(), conv(v))).collect(),
                    }),
                }),
            }
        }
        match conv(&v).kind {
            Some(Kind::StructValue(s)) => s,
            _ => Struct::default(),
        }
    }

    #[test]
    fn istios_sidecar_configs_translate() {
        let root = FieldPath::root("f");
        let mut acks = Vec::new();
        let inbound = peer_metadata(
            &parse(r#"{"downstream_discovery":[{"istio_headers":{}},{"workload_discovery":{}}],"downstream_propagation":[{"istio_headers":{}}]}"#),
            &root,
            &mut acks,
        )
        .expect("inbound");
        assert!(inbound.discover_downstream && inbound.propagate_downstream);
        assert!(!inbound.discover_upstream && !inbound.propagate_upstream);
        assert_eq!(acks.len(), 1, "workload discovery is acknowledged");
        let outbound = peer_metadata(
            &parse(r#"{"upstream_discovery":[{"istio_headers":{}}],"upstream_propagation":[{"istio_headers":{}}]}"#),
            &root,
            &mut acks,
        )
        .expect("outbound");
        assert!(outbound.discover_upstream && outbound.propagate_upstream);
        let stats = stats_plugin(
            &parse(r#"{"disable_host_header_fallback":true,"tcp_reporting_duration":"0.5s"}"#),
            &root,
            true,
            &mut acks,
        )
        .expect("stats");
        assert_eq!(stats.reporter, Reporter::Destination);
        assert!(stats.disable_host_header_fallback);
        assert_eq!(stats.tcp_reporting_duration, Duration::from_millis(500));
        let source = stats_plugin(&parse("{}"), &root, false, &mut acks).expect("stats");
        assert_eq!(source.reporter, Reporter::Source);
        assert_eq!(source.tcp_reporting_duration, Duration::from_secs(5));
        for bad in [
            r#"{"tcp_reporting_duration":"0s"}"#,
            r#"{"tcp_reporting_duration":"soon"}"#,
        ] {
            let e = stats_plugin(&parse(bad), &root, false, &mut acks).expect_err(bad);
            assert!(e.to_string().contains("tcp_reporting_duration"), "{e}");
        }
    }

    #[test]
    fn behaviour_we_do_not_implement_is_refused_by_path() {
        let root = FieldPath::root("f");
        let mut acks = Vec::new();
        let e = stats_plugin(
            &parse(r#"{"metrics":[{"dimensions":{"x":"request.host"}}]}"#),
            &root,
            false,
            &mut acks,
        )
        .expect_err("CEL dimensions");
        assert_eq!(e.path, "f.metrics");
        let e = stats_plugin(
            &parse(r#"{"reporter":"SERVER_GATEWAY"}"#),
            &root,
            false,
            &mut acks,
        )
        .expect_err("waypoint");
        assert_eq!(e.path, "f.reporter");
        let e = stats_plugin(&parse(r#"{"stat_prefix":"x"}"#), &root, false, &mut acks)
            .expect_err("unknown");
        assert_eq!(e.path, "f.stat_prefix");
        let e = peer_metadata(
            &parse(
                r#"{"upstream_propagation":[{"istio_headers":{"skip_external_clusters":true}}]}"#,
            ),
            &root,
            &mut acks,
        )
        .expect_err("skip external");
        assert_eq!(
            e.path,
            "f.upstream_propagation[0].istio_headers.skip_external_clusters"
        );
        let e = peer_metadata(
            &parse(r#"{"upstream_discovery":[{"baggage":{}}]}"#),
            &root,
            &mut acks,
        )
        .expect_err("baggage");
        assert_eq!(e.path, "f.upstream_discovery[0].baggage");
    }
}
