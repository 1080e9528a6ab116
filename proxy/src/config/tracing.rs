//! Tracing, compiled: the connection manager's `tracing` (sampling, tags, the provider), the
//! bootstrap's default provider, and the Zipkin tracer's settings. Only Zipkin with B3 and
//! HTTP_JSON sends spans; other tracers are accepted where Istio emits them and send nothing.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-tracing
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/trace/v3/zipkin.proto
#![allow(deprecated)] // `split_spans_for_request` and the unset endpoint version are named to handle them.

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::resolver::Resolver;
use super::slots::Slot;
use crate::upstream::ClusterRuntime;
use std::sync::Arc;
use xds_proto::pb::envoy::config::trace::v3::{
    tracing::http::ConfigType, tracing::Http as ProtoProvider, zipkin_config, ZipkinConfig,
};
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as ProtoHcmTracing;
use xds_proto::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag as ProtoCustomTag};
use xds_proto::pb::envoy::r#type::v3::{FractionalPercent, Percent};
use xds_proto::XdsMessage;

/// What every connection manager's tracing may fall back on: the bootstrap's provider and the
/// node's facts that spans carry.
#[derive(Debug, Clone, Default)]
pub struct TracingDefaults {
    /// `tracing.http` of the bootstrap, when it is Zipkin (used by connection managers whose
    /// `tracing` names no provider).
    pub provider: Option<Arc<ZipkinSettings>>,
    /// `tracing.http` is set but is a tracer Outrigger does not run (acknowledged).
    pub other_provider: bool,
    pub node: Arc<NodeFacts>,
}

/// The node as spans describe it (`node_id`, `zone` tags; the local endpoint's service name).
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub id: String,
    pub cluster: String,
    pub zone: String,
}

/// `envoy.config.trace.v3.ZipkinConfig`, resolved.
#[derive(Debug)]
pub struct ZipkinSettings {
    /// The collector cluster's slot (its runtime when the cluster exists) and name.
    pub cluster: Arc<Slot<ClusterRuntime>>,
    pub cluster_name: String,
    pub endpoint: String,
    /// The `Host` of reports: `collector_hostname`, else the cluster's name.
    pub hostname: String,
    pub trace_id_128bit: bool,
    pub shared_span_context: bool,
    /// Runtime-tunable flush settings (`tracing.zipkin.*`), read at config time.
    pub min_flush_spans: usize,
    pub flush_interval: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

/// A fraction with its denominator, as Envoy evaluates `FractionalPercent`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

impl Fraction {
    pub const ALL: Fraction = Fraction {
        numerator: 10_000,
        denominator: 10_000,
    };

    /// Envoy's `featureEnabled(key, fraction, random)`: `random % denominator < numerator`.
    pub fn admits(&self, random: u64) -> bool {
        self.numerator >= self.denominator || random % self.denominator.max(1) < self.numerator
    }

    fn from_percent(p: Option<&Percent>) -> Fraction {
        match p {
            // Envoy turns a percentage into parts per ten thousand.
            Some(p) => Fraction {
                numerator: (p.value * 100.0).round().clamp(0.0, 10_000.0) as u64,
                denominator: 10_000,
            },
            None => Fraction::ALL,
        }
    }

    fn from_fractional(p: Option<&FractionalPercent>, default: Fraction) -> Fraction {
        let Some(p) = p else { return default };
        let denominator = match p.denominator {
            0 => 100,
            1 => 10_000,
            _ => 1_000_000,
        };
        Fraction {
            numerator: u64::from(p.numerator),
            denominator,
        }
    }

    /// A static runtime key overrides the numerator (Envoy's runtime `featureEnabled`).
    fn with_runtime(self, resolve: &Resolver<'_>, key: &str) -> Fraction {
        match resolve.runtime_u64(key) {
            Some(n) => Fraction {
                numerator: n,
                ..self
            },
            None => self,
        }
    }
}

/// The three sampling fractions, from the connection manager or overridden by a route.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub client: Fraction,
    pub random: Fraction,
    pub overall: Fraction,
}

/// A custom tag and where its value comes from.
#[derive(Debug, Clone)]
pub struct CustomTag {
    pub tag: String,
    pub value: TagValue,
}

#[derive(Debug, Clone)]
pub enum TagValue {
    /// `literal`, and `environment` (read once, at config time, as Envoy does).
    Fixed(String),
    RequestHeader {
        name: http::HeaderName,
        default: String,
    },
    /// `metadata` of kind `request`: a value of the stream's dynamic metadata, read when the
    /// span ends: the JWT filters' payloads and the RBAC filters' results (Istio tags spans
    /// with its dry-run results) are what Outrigger's filters write.
    RequestMetadata {
        /// The namespace (`metadata_key.key`), e.g. `envoy.filters.http.rbac`.
        filter: String,
        path: Vec<String>,
        default: String,
    },
}

/// The connection manager's `tracing`.
#[derive(Debug)]
pub struct HcmTracing {
    pub sampling: Sampling,
    pub custom_tags: Vec<CustomTag>,
    pub max_path_tag_length: usize,
    /// OUTBOUND listeners make egress (client) spans, others ingress (server) spans.
    pub egress: bool,
    /// Zipkin, from the connection manager or the bootstrap; None: decisions are made and the
    /// request id marked, but no span is sent (Envoy's null tracer).
    pub zipkin: Option<Arc<ZipkinSettings>>,
    pub node: Arc<NodeFacts>,
    /// `UuidRequestIdConfig.pack_trace_reason`.
    pub pack_trace_reason: bool,
}

/// A route's `tracing` and `decorator`.
#[derive(Debug, Default)]
pub struct RouteTracing {
    pub operation: Option<String>,
    /// `decorator.propagate` (default true).
    pub propagate: bool,
    pub sampling: Option<RouteSampling>,
}

/// A route's sampling overrides (each defaults to 100%) and its own custom tags.
#[derive(Debug)]
pub struct RouteSampling {
    pub client: Fraction,
    pub random: Fraction,
    pub overall: Fraction,
    pub custom_tags: Vec<CustomTag>,
}

/// Why `spawn_upstream_span` and the router's `start_child_span` are accepted without effect.
pub const UPSTREAM_SPAN: &str = "no separate upstream span is made: the connection manager's span is the one sent and the one whose context goes upstream (Istio may set this field, so it is not refused)";

const ZIPKIN: &str = "envoy.config.trace.v3.ZipkinConfig";
/// Tracers Envoy (or Istio's build of it) has, which Istio may configure: accepted, and send
/// nothing from Outrigger.
const OTHER_TRACERS: &[&str] = &[
    "envoy.config.trace.v3.DatadogConfig",
    "envoy.config.trace.v3.LightstepConfig",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    "envoy.config.trace.v3.SkyWalkingConfig",
    "envoy.config.trace.v3.OpenCensusConfig",
    "envoy.config.trace.v3.XRayConfig",
    "envoy.config.trace.v3.DynamicOtConfig",
];
const OTHER_TRACER: &str = "only the Zipkin tracer sends spans; this tracer is accepted (Istio configures it) and sends none, and requests are forwarded with their trace headers untouched";

/// A provider: Zipkin compiled, another known tracer acknowledged (None), else refused.
fn translate_provider(
    p: &ProtoProvider,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<Option<Arc<ZipkinSettings>>> {
    let tc = path.field("typed_config");
    let any = match &p.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(tc.error("is required")),
    };
    let type_name = xds_proto::type_name_of_url(&any.type_url);
    if type_name == ZIPKIN {
        let z = ZipkinConfig::decode_bytes(&any.value)
            .map_err(|e| tc.error(format!("invalid ZipkinConfig: {e}")))?;
        check(&z, &tc, acks)?;
        return translate_zipkin(&z, &tc, resolve).map(|z| Some(Arc::new(z)));
    }
    if OTHER_TRACERS.contains(&type_name) {
        acks.push(Acknowledged {
            path: path.to_string(),
            reason: OTHER_TRACER,
        });
        return Ok(None);
    }
    Err(tc.error(format!(
        "Didn't find a registered implementation for '{}' with type URL: '{type_name}'",
        p.name
    )))
}

fn translate_zipkin(
    z: &ZipkinConfig,
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<ZipkinSettings> {
    use zipkin_config::CollectorEndpointVersion as V;
    match V::try_from(z.collector_endpoint_version) {
        // The unset value is read as HTTP_JSON by Envoy's reporter (checked against 1.40).
        Ok(V::HttpJson | V::DeprecatedAndUnavailableDoNotUse) => {}
        Ok(V::HttpProto) => {
            return Err(path
                .field("collector_endpoint_version")
                .error("HTTP_PROTO is not implemented by Outrigger: use HTTP_JSON"))
        }
        Ok(V::Grpc) | Err(_) => {
            return Err(path
                .field("collector_endpoint_version")
                .error("only HTTP_JSON is supported"))
        }
    }
    if z.collector_service.is_some() {
        return Err(path.field("collector_service").error(
            "collector_service is not implemented by Outrigger: use collector_cluster and collector_endpoint",
        ));
    }
    if z.split_spans_for_request {
        return Err(path
            .field("split_spans_for_request")
            .error("separate upstream spans are not implemented by Outrigger"));
    }
    if z.trace_context_option != 0 {
        return Err(path
            .field("trace_context_option")
            .error("only B3 propagation (USE_B3) is implemented by Outrigger"));
    }
    if z.timestamp_trace_ids {
        return Err(path
            .field("timestamp_trace_ids")
            .error("timestamped trace ids are not implemented by Outrigger"));
    }
    if z.collector_cluster.is_empty() {
        return Err(path.field("collector_cluster").error("must not be empty"));
    }
    if z.collector_endpoint.is_empty() {
        return Err(path
            .field("collector_endpoint")
            .error("is required when using collector_cluster"));
    }
    if !z.collector_endpoint.starts_with('/')
        || http::uri::PathAndQuery::try_from(z.collector_endpoint.as_str()).is_err()
    {
        return Err(path.field("collector_endpoint").error("not a valid path"));
    }
    let hostname = if z.collector_hostname.is_empty() {
        z.collector_cluster.clone()
    } else {
        z.collector_hostname.clone()
    };
    if http::HeaderValue::from_str(&hostname).is_err() {
        return Err(path
            .field("collector_hostname")
            .error("not a valid host name"));
    }
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/tracing (runtime)
    let runtime_ms = |key: &str, default: u64| {
        std::time::Duration::from_millis(resolve.runtime_u64(key).unwrap_or(default).max(1))
    };
    Ok(ZipkinSettings {
        cluster: resolve.cluster_slot(&z.collector_cluster),
        cluster_name: z.collector_cluster.clone(),
        endpoint: z.collector_endpoint.clone(),
        hostname,
        trace_id_128bit: z.trace_id_128bit,
        shared_span_context: z.shared_span_context.as_ref().is_none_or(|b| b.value),
        min_flush_spans: resolve
            .runtime_u64("tracing.zipkin.min_flush_spans")
            .unwrap_or(5)
            .clamp(1, 10_000) as usize,
        flush_interval: runtime_ms("tracing.zipkin.flush_interval_ms", 5000),
        request_timeout: runtime_ms("tracing.zipkin.request_timeout", 5000),
    })
}

/// The bootstrap's `tracing`: its provider becomes the default of every connection manager.
pub fn translate_bootstrap_tracing(
    t: Option<&xds_proto::pb::envoy::config::trace::v3::Tracing>,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    node: Arc<NodeFacts>,
    acks: &mut Vec<Acknowledged>,
) -> Result<TracingDefaults> {
    let mut defaults = TracingDefaults {
        node,
        ..Default::default()
    };
    let Some(http) = t.and_then(|t| t.http.as_ref()) else {
        return Ok(defaults);
    };
    let p = path.field("http");
    defaults.provider = translate_provider(http, &p, resolve, acks)?;
    defaults.other_provider = defaults.provider.is_none();
    Ok(defaults)
}

/// The connection manager's `tracing`, or None when it has none (no tracing at all).
pub fn translate_hcm_tracing(
    t: Option<&ProtoHcmTracing>,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    request_id: Option<
        &xds_proto::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig,
    >,
    acks: &mut Vec<Acknowledged>,
) -> Result<Option<Arc<HcmTracing>>> {
    let Some(t) = t else { return Ok(None) };
    if t.verbose {
        return Err(path
            .field("verbose")
            .error("verbose span annotations are not implemented by Outrigger"));
    }
    if !t.operation.is_empty() {
        return Err(path.field("operation").error(
            "operation name formats are not implemented by Outrigger: use a route decorator",
        ));
    }
    if !t.upstream_operation.is_empty() {
        return Err(path
            .field("upstream_operation")
            .error("upstream spans are not implemented by Outrigger"));
    }
    if t.spawn_upstream_span.as_ref().is_some_and(|b| b.value) {
        acks.push(Acknowledged {
            path: path.field("spawn_upstream_span").to_string(),
            reason: UPSTREAM_SPAN,
        });
    }
    if let Some(rid) = request_id {
        if rid
            .use_request_id_for_trace_sampling
            .as_ref()
            .is_some_and(|b| !b.value)
        {
            return Err(path.error(
                "request_id_extension.typed_config.use_request_id_for_trace_sampling: false is not implemented by Outrigger",
            ));
        }
    }
    let zipkin = match &t.provider {
        Some(p) => translate_provider(p, &path.field("provider"), resolve, acks)?,
        None => resolve.tracing.provider.clone(),
    };
    let sampling = Sampling {
        client: Fraction::from_percent(t.client_sampling.as_ref())
            .with_runtime(resolve, "tracing.client_enabled"),
        random: Fraction::from_percent(t.random_sampling.as_ref())
            .with_runtime(resolve, "tracing.random_sampling"),
        overall: Fraction::from_percent(t.overall_sampling.as_ref())
            .with_runtime(resolve, "tracing.global_enabled"),
    };
    Ok(Some(Arc::new(HcmTracing {
        sampling,
        custom_tags: custom_tags(&t.custom_tags, &path.field("custom_tags"))?,
        max_path_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map_or(256, |v| v.value as usize),
        egress: resolve.outbound,
        zipkin,
        node: resolve.tracing.node.clone(),
        pack_trace_reason: request_id
            .and_then(|r| r.pack_trace_reason.as_ref())
            .is_none_or(|b| b.value),
    })))
}

/// A route's `decorator` and `tracing`.
pub fn translate_route_tracing(
    route: &xds_proto::pb::envoy::config::route::v3::Route,
    path: &FieldPath,
) -> Result<Option<Arc<RouteTracing>>> {
    if route.decorator.is_none() && route.tracing.is_none() {
        return Ok(None);
    }
    let mut out = RouteTracing {
        propagate: true,
        ..Default::default()
    };
    if let Some(d) = &route.decorator {
        if d.operation.is_empty() {
            return Err(path
                .field("decorator")
                .field("operation")
                .error("must not be empty"));
        }
        out.operation = Some(d.operation.clone());
        out.propagate = d.propagate.as_ref().is_none_or(|b| b.value);
    }
    if let Some(t) = &route.tracing {
        let p = path.field("tracing");
        if !t.operation.is_empty() {
            return Err(p.field("operation").error(
                "operation name formats are not implemented by Outrigger: use a decorator",
            ));
        }
        if !t.upstream_operation.is_empty() {
            return Err(p
                .field("upstream_operation")
                .error("upstream spans are not implemented by Outrigger"));
        }
        out.sampling = Some(RouteSampling {
            client: Fraction::from_fractional(t.client_sampling.as_ref(), Fraction::ALL),
            random: Fraction::from_fractional(t.random_sampling.as_ref(), Fraction::ALL),
            overall: Fraction::from_fractional(t.overall_sampling.as_ref(), Fraction::ALL),
            custom_tags: custom_tags(&t.custom_tags, &p.field("custom_tags"))?,
        });
    }
    Ok(Some(Arc::new(out)))
}

fn custom_tags(tags: &[ProtoCustomTag], path: &FieldPath) -> Result<Vec<CustomTag>> {
    let mut out = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let p = path.index(i);
        if t.tag.is_empty() {
            return Err(p.field("tag").error("must not be empty"));
        }
        use custom_tag::Type as T;
        let value = match &t.r#type {
            Some(T::Literal(l)) => TagValue::Fixed(l.value.clone()),
            Some(T::Environment(e)) => {
                TagValue::Fixed(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
            }
            Some(T::RequestHeader(h)) => TagValue::RequestHeader {
                name: http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    p.field("request_header")
                        .field("name")
                        .error("invalid header name")
                })?,
                default: h.default_value.clone(),
            },
            Some(T::Metadata(m)) => metadata_tag(m, &p.field("metadata"))?,
            Some(_) => return Err(p.error("this custom tag type is not implemented by Outrigger")),
            None => return Err(p.error("a custom tag needs a type")),
        };
        out.push(CustomTag {
            tag: t.tag.clone(),
            value,
        });
    }
    Ok(out)
}

/// A `metadata` custom tag. `check` has already refused kinds other than `request` (route,
/// cluster and host metadata are not read by Outrigger's spans).
fn metadata_tag(m: &custom_tag::Metadata, path: &FieldPath) -> Result<TagValue> {
    use xds_proto::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
    if m.kind.as_ref().and_then(|k| k.kind.as_ref()).is_none() {
        return Err(path.field("kind").error("a metadata kind is required"));
    }
    let Some(key) = &m.metadata_key else {
        return Err(path.field("metadata_key").error("is required"));
    };
    if key.key.is_empty() {
        return Err(path
            .field("metadata_key")
            .field("key")
            .error("must not be empty"));
    }
    if key.path.is_empty() {
        return Err(path
            .field("metadata_key")
            .field("path")
            .error("must contain at least 1 item"));
    }
    let segments = key
        .path
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.segment {
            Some(Segment::Key(k)) if !k.is_empty() => Ok(k.clone()),
            _ => Err(path
                .field("metadata_key")
                .field("path")
                .index(i)
                .field("key")
                .error("must not be empty")),
        })
        .collect::<Result<_>>()?;
    Ok(TagValue::RequestMetadata {
        filter: key.key.clone(),
        path: segments,
        default: m.default_value.clone(),
    })
}
