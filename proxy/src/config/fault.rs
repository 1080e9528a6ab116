//! The fault injection filter's settings (`envoy.filters.http.fault`), from the filter's own
//! config or a route's `typed_per_filter_config`. Runtime overrides from static runtime layers
//! are folded in here, so a request only draws a random number and reads headers.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/fault/v3/fault.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::matcher::{header_matcher, HeaderMatcher};
use super::resolver::Resolver;
use super::values::duration;
use std::time::Duration;
use xds_proto::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay::FaultDelaySecifier, fault_rate_limit::LimitType, FaultDelay, FaultRateLimit,
};
use xds_proto::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::ErrorType, FaultAbort, HttpFault,
};
use xds_proto::pb::envoy::r#type::v3::FractionalPercent;

/// Parts per million: every percentage is kept in this one unit.
pub const MILLION: u64 = 1_000_000;

/// A configured percentage: parts per million, and the denominator a percentage header's
/// numerator is read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentage {
    pub numerator: u64,
    pub denominator: u64,
}

impl Percentage {
    /// An unset `percentage` is the message's default, 0/100: such a fault is never
    /// injected (checked against Envoy).
    const ZERO: Percentage = Percentage {
        numerator: 0,
        denominator: 100,
    };

    /// In parts per million, capped at all.
    pub fn per_million(self, numerator: u64) -> u64 {
        numerator.min(self.denominator) * (MILLION / self.denominator)
    }
}

/// How one kind of fault decides whether it applies: the configured percentage (which a
/// request header may lower when the fault is header-controlled), unless a runtime key
/// overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chance {
    pub percentage: Percentage,
    /// The runtime key's value as parts per million, when a static layer sets it.
    pub runtime_per_million: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelaySource {
    Fixed(Duration),
    /// `header_delay`: milliseconds from `x-envoy-fault-delay-request`.
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    pub source: DelaySource,
    pub chance: Chance,
    /// `delay_duration_runtime`'s value, overriding the duration (milliseconds).
    pub runtime_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortSource {
    Http(http::StatusCode),
    Grpc(u32),
    /// `header_abort`: the status from `x-envoy-fault-abort-request` or
    /// `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub source: AbortSource,
    pub chance: Chance,
    pub body: bytes::Bytes,
    /// `abort_http_status_runtime` / `abort_grpc_status_runtime` values.
    pub runtime_http_status: Option<u64>,
    pub runtime_grpc_status: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateSource {
    /// KiB per second.
    Fixed(u64),
    /// `header_limit`: KiB per second from `x-envoy-fault-throughput-response`.
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub source: RateSource,
    pub chance: Chance,
}

/// One fault filter's settings.
#[derive(Debug, Clone, Default)]
pub struct FaultSettings {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub rate_limit: Option<RateLimit>,
    /// Faults apply only to requests routed to this cluster.
    pub upstream_cluster: Option<String>,
    pub headers: Vec<HeaderMatcher>,
    /// Faults apply only to requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<String>,
    /// None: unlimited.
    pub max_active_faults: Option<u64>,
    /// Count `fault.<downstream cluster>.*` for requests carrying
    /// `x-envoy-downstream-service-cluster`.
    pub downstream_cluster_stats: bool,
    /// `filter_metadata`: the stream's dynamic metadata under the filter's name when a delay
    /// or an abort is injected (not for a response rate limit alone, as Envoy).
    /// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/fault/v3/fault.proto
    pub filter_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Envoy's default runtime keys, used when the config names none.
const DELAY_PERCENT_KEY: &str = "fault.http.delay.fixed_delay_percent";
const ABORT_PERCENT_KEY: &str = "fault.http.abort.abort_percent";
const DELAY_DURATION_KEY: &str = "fault.http.delay.fixed_duration_ms";
const ABORT_HTTP_STATUS_KEY: &str = "fault.http.abort.http_status";
const ABORT_GRPC_STATUS_KEY: &str = "fault.http.abort.grpc_status";
const MAX_ACTIVE_FAULTS_KEY: &str = "fault.http.max_active_faults";
const RATE_LIMIT_PERCENT_KEY: &str = "fault.http.rate_limit.response_percent";

/// Translates an `HTTPFault`, checking its fields first.
pub fn translate_fault(
    fault: &HttpFault,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<FaultSettings> {
    check(fault, path, acks)?;
    let key = |configured: &str, default: &'static str| -> String {
        if configured.is_empty() {
            default.to_string()
        } else {
            configured.to_string()
        }
    };
    // A runtime percentage is an integer percent (Envoy's legacy reading of an integer);
    // above 100 it means always.
    let runtime_percent = |k: String| resolve.runtime_u64(&k).map(|p| p.min(100) * 10_000);
    let delay = fault
        .delay
        .as_ref()
        .map(|d| {
            translate_delay(
                d,
                &path.field("delay"),
                runtime_percent(key(&fault.delay_percent_runtime, DELAY_PERCENT_KEY)),
                resolve.runtime_u64(&key(&fault.delay_duration_runtime, DELAY_DURATION_KEY)),
            )
        })
        .transpose()?;
    let abort = fault
        .abort
        .as_ref()
        .map(|a| -> Result<Abort> {
            let mut abort = translate_abort(
                a,
                &path.field("abort"),
                runtime_percent(key(&fault.abort_percent_runtime, ABORT_PERCENT_KEY)),
            )?;
            abort.runtime_http_status = resolve.runtime_u64(&key(
                &fault.abort_http_status_runtime,
                ABORT_HTTP_STATUS_KEY,
            ));
            abort.runtime_grpc_status = resolve.runtime_u64(&key(
                &fault.abort_grpc_status_runtime,
                ABORT_GRPC_STATUS_KEY,
            ));
            Ok(abort)
        })
        .transpose()?;
    let rate_limit = fault
        .response_rate_limit
        .as_ref()
        .map(|r| {
            translate_rate_limit(
                r,
                &path.field("response_rate_limit"),
                runtime_percent(key(
                    &fault.response_rate_limit_percent_runtime,
                    RATE_LIMIT_PERCENT_KEY,
                )),
            )
        })
        .transpose()?;
    let headers = fault
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &path.field("headers").index(i)))
        .collect::<Result<_>>()?;
    let max_active_faults = resolve
        .runtime_u64(&key(
            &fault.max_active_faults_runtime,
            MAX_ACTIVE_FAULTS_KEY,
        ))
        .or(fault.max_active_faults.map(|m| u64::from(m.value)));
    Ok(FaultSettings {
        delay,
        abort,
        rate_limit,
        upstream_cluster: (!fault.upstream_cluster.is_empty())
            .then(|| fault.upstream_cluster.clone()),
        headers,
        downstream_nodes: fault.downstream_nodes.clone(),
        max_active_faults,
        downstream_cluster_stats: !fault.disable_downstream_cluster_stats,
        filter_metadata: fault
            .filter_metadata
            .as_ref()
            .map(|m| struct_fields(m, &path.field("filter_metadata")))
            .transpose()?,
    })
}

/// A `google.protobuf.Struct` as the JSON object dynamic metadata holds (integral numbers
/// stay integers, as Envoy prints them).
fn struct_fields(
    value: &xds_proto::pb::google::protobuf::Struct,
    path: &FieldPath,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut json = xds_proto::to_json_value(value).map_err(|e| path.error(e))?;
    xds_proto::integral_doubles_as_integers(&mut json);
    match json {
        serde_json::Value::Object(fields) => Ok(fields),
        _ => Err(path.error("must be a struct")),
    }
}

fn percentage(p: Option<&FractionalPercent>, path: &FieldPath) -> Result<Percentage> {
    use xds_proto::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let Some(p) = p else {
        return Ok(Percentage::ZERO);
    };
    let denominator = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 100,
        Ok(D::TenThousand) => 10_000,
        Ok(D::Million) => MILLION,
        Err(_) => return Err(path.field("denominator").error("unknown denominator")),
    };
    Ok(Percentage {
        numerator: u64::from(p.numerator),
        denominator,
    })
}

fn chance(
    p: Option<&FractionalPercent>,
    path: &FieldPath,
    runtime_per_million: Option<u64>,
) -> Result<Chance> {
    Ok(Chance {
        percentage: percentage(p, &path.field("percentage"))?,
        runtime_per_million,
    })
}

fn translate_delay(
    d: &FaultDelay,
    path: &FieldPath,
    runtime_per_million: Option<u64>,
    runtime_ms: Option<u64>,
) -> Result<Delay> {
    let source = match &d.fault_delay_secifier {
        Some(FaultDelaySecifier::FixedDelay(fixed)) => {
            let p = path.field("fixed_delay");
            let fixed = duration(fixed, &p)?;
            if fixed.is_zero() {
                return Err(p.error("must be greater than 0s"));
            }
            DelaySource::Fixed(fixed)
        }
        Some(FaultDelaySecifier::HeaderDelay(_)) => DelaySource::Header,
        None => {
            return Err(path.error("one of fixed_delay or header_delay is required"));
        }
    };
    Ok(Delay {
        source,
        chance: chance(d.percentage.as_ref(), path, runtime_per_million)?,
        runtime_ms,
    })
}

fn translate_abort(
    a: &FaultAbort,
    path: &FieldPath,
    runtime_per_million: Option<u64>,
) -> Result<Abort> {
    let source = match a.error_type {
        Some(ErrorType::HttpStatus(status)) => {
            let p = path.field("http_status");
            if !(200..600).contains(&status) {
                return Err(p.error(format!("{status} is not in [200, 600)")));
            }
            AbortSource::Http(
                http::StatusCode::from_u16(status as u16).map_err(|_| p.error("invalid status"))?,
            )
        }
        Some(ErrorType::GrpcStatus(status)) => AbortSource::Grpc(status),
        Some(ErrorType::HeaderAbort(_)) => AbortSource::Header,
        None => {
            return Err(path.error("one of http_status, grpc_status or header_abort is required"))
        }
    };
    let body = if a.response_body.is_empty() {
        bytes::Bytes::from_static(b"fault filter abort")
    } else {
        bytes::Bytes::from(a.response_body.clone())
    };
    Ok(Abort {
        source,
        chance: chance(a.percentage.as_ref(), path, runtime_per_million)?,
        body,
        runtime_http_status: None,
        runtime_grpc_status: None,
    })
}

fn translate_rate_limit(
    r: &FaultRateLimit,
    path: &FieldPath,
    runtime_per_million: Option<u64>,
) -> Result<RateLimit> {
    let source = match &r.limit_type {
        Some(LimitType::FixedLimit(f)) => {
            if f.limit_kbps == 0 {
                return Err(path
                    .field("fixed_limit")
                    .field("limit_kbps")
                    .error("must be at least 1"));
            }
            RateSource::Fixed(f.limit_kbps)
        }
        Some(LimitType::HeaderLimit(_)) => RateSource::Header,
        None => return Err(path.error("one of fixed_limit or header_limit is required")),
    };
    Ok(RateLimit {
        source,
        chance: chance(r.percentage.as_ref(), path, runtime_per_million)?,
    })
}
