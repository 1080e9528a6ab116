//! Access log configuration (`access_log` on the HTTP connection manager, tcp_proxy and
//! listeners): the sink (file, stdout, stderr), the line format compiled once, and the filter
//! deciding which streams are logged.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/accesslog/v3/accesslog.proto,
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/file/v3/file.proto,
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/stream/v3/stream.proto,
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/substitution_format_string.proto

use super::error::{FieldPath, Result};
use super::extension;
use super::fields::{check, Acknowledged};
use super::matcher::{header_matcher, HeaderMatcher};
use super::resolver::Resolver;
use crate::format::json::{JsonFormat, JsonNode};
use crate::format::{Context, HeaderSource, ResponseFlags, StreamInfo, Template};
use crate::http::forwarding::X_REQUEST_ID;
use std::path::PathBuf;
use std::sync::Arc;
use xds_proto::pb::envoy::config::accesslog::v3::{
    access_log::ConfigType, access_log_filter::FilterSpecifier, comparison_filter::Op,
    AccessLog as ProtoAccessLog, AccessLogFilter, ComparisonFilter,
};
use xds_proto::pb::envoy::config::core::v3::{
    substitution_format_string::Format as ProtoFormat, SubstitutionFormatString,
};
use xds_proto::pb::google::protobuf::{value::Kind, Struct};
use xds_proto::Extension;

/// Envoy's format when a logger gives none (`DEFAULT_FORMAT` on the usage page).
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One configured access log.
#[derive(Debug)]
pub struct AccessLog {
    pub filter: Option<Filter>,
    pub sink: Sink,
    pub format: LogFormat,
}

/// Where lines go. Loggers naming the same file share one writer, as in Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    File(PathBuf),
    Stdout,
    Stderr,
}

#[derive(Debug)]
pub enum LogFormat {
    /// Text lines; the format carries its own newline (Envoy adds none).
    Text {
        template: Template,
        omit_empty: bool,
    },
    /// One JSON object per line.
    Json(JsonFormat),
}

impl LogFormat {
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            LogFormat::Text { template, .. } => vec![template],
            LogFormat::Json(j) => j.templates(),
        }
    }

    /// Appends the line for `ctx` to `out`.
    pub fn render(&self, ctx: &Context<'_>, out: &mut String) {
        match self {
            LogFormat::Text {
                template,
                omit_empty,
            } => template.render_log(ctx, *omit_empty, out),
            LogFormat::Json(j) => j.render(ctx, out),
        }
    }
}

/// `AccessLogFilter`: decides from the finished stream whether it is logged.
#[derive(Debug)]
pub enum Filter {
    StatusCode(Comparison),
    /// Compared with the stream's duration in milliseconds.
    Duration(Comparison),
    /// Outrigger has no health-check filter, so no request is marked as a health check.
    NotHealthCheck,
    /// Any of these flags; an empty set means any flag at all.
    ResponseFlags(ResponseFlags),
    Runtime {
        /// Parts per million logged.
        per_million: u64,
        independent: bool,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Header(HeaderMatcher),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    pub op: CompareOp,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Comparison {
    fn holds(self, n: u64) -> bool {
        match self.op {
            CompareOp::Eq => n == self.value,
            CompareOp::Ge => n >= self.value,
            CompareOp::Le => n <= self.value,
            CompareOp::Ne => n != self.value,
        }
    }
}

impl Filter {
    pub fn allows(&self, stream: &StreamInfo, request_headers: Option<HeaderSource<'_>>) -> bool {
        match self {
            Filter::StatusCode(c) => c.holds(u64::from(stream.response_code)),
            Filter::Duration(c) => c.holds(
                stream
                    .duration
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default(),
            ),
            Filter::NotHealthCheck => true,
            Filter::ResponseFlags(wanted) if wanted.is_empty() => !stream.response_flags.is_empty(),
            Filter::ResponseFlags(wanted) => stream.response_flags.intersects(*wanted),
            Filter::Runtime {
                per_million,
                independent,
            } => {
                // Envoy samples on the request id when there is one, so every proxy on the
                // path makes the same choice: its first 8 hex digits, modulo the denominator.
                let by_id = (!independent)
                    .then(|| request_headers?.get(&X_REQUEST_ID)?.to_str().ok())
                    .flatten()
                    .and_then(|id| u64::from_str_radix(id.get(..8)?, 16).ok());
                let draw = by_id.unwrap_or_else(crate::random::next_u64) % 1_000_000;
                draw < *per_million
            }
            Filter::And(all) => all.iter().all(|f| f.allows(stream, request_headers)),
            Filter::Or(any) => any.iter().any(|f| f.allows(stream, request_headers)),
            Filter::Header(m) => m.matches_source(request_headers),
        }
    }

    /// Request headers the filter reads (to keep them until the stream ends).
    pub fn header_names(&self, into: &mut Vec<http::HeaderName>) {
        match self {
            Filter::Header(m) => {
                if let super::matcher::HeaderKey::Name(name) = &m.key {
                    into.push(name.clone());
                }
            }
            Filter::Runtime {
                independent: false, ..
            } => into.push(X_REQUEST_ID.clone()),
            Filter::And(all) | Filter::Or(all) => all.iter().for_each(|f| f.header_names(into)),
            _ => {}
        }
    }
}

/// Translates the `access_log` list found at `path`.
pub fn translate_access_logs(
    logs: &[ProtoAccessLog],
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<Vec<Arc<AccessLog>>> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| translate_access_log(log, &path.index(i), resolve, acks).map(Arc::new))
        .collect()
}

// The deprecated `format`, `json_format` and `typed_json_format` of FileAccessLog still work in
// Envoy 1.40, so they work here too.
#[allow(deprecated)]
fn translate_access_log(
    log: &ProtoAccessLog,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<AccessLog> {
    let filter = log
        .filter
        .as_ref()
        .map(|f| translate_filter(f, &path.field("filter"), resolve))
        .transpose()?;
    let Some(ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err(path.error(format!("access log {} has no typed_config", log.name)));
    };
    let tc = path.field("typed_config");
    let (sink, format) = match extension::decode(any, &tc)? {
        Some(Extension::FileAccessLog(file)) => {
            check(file.as_ref(), &tc, acks)?;
            if file.path.is_empty() {
                return Err(tc
                    .field("path")
                    .error("value length must be at least 1 characters"));
            }
            use xds_proto::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as F;
            let format = match &file.access_log_format {
                None => default_format()?,
                Some(F::Format(text)) if text.is_empty() => default_format()?,
                Some(F::Format(text)) => text_format(text, false, &tc.field("format"))?,
                Some(F::JsonFormat(s)) => json_format(s, false, &tc.field("json_format"))?,
                Some(F::TypedJsonFormat(s)) => {
                    json_format(s, false, &tc.field("typed_json_format"))?
                }
                Some(F::LogFormat(f)) => log_format(f, &tc.field("log_format"))?,
            };
            // Envoy opens the file while loading the configuration (validate mode too) and
            // refuses a path it cannot open.
            if let Err(e) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file.path)
            {
                let reason = match e.raw_os_error() {
                    Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
                    None => e.to_string(),
                };
                return Err(tc
                    .field("path")
                    .error(format!("unable to open file '{}': {reason}", file.path)));
            }
            (Sink::File(PathBuf::from(&file.path)), format)
        }
        Some(Extension::StdoutAccessLog(s)) => {
            check(&s, &tc, acks)?;
            use xds_proto::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat as F;
            let format = match &s.access_log_format {
                Some(F::LogFormat(f)) => log_format(f, &tc.field("log_format"))?,
                None => default_format()?,
            };
            (Sink::Stdout, format)
        }
        Some(Extension::StderrAccessLog(s)) => {
            check(&s, &tc, acks)?;
            use xds_proto::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat as F;
            let format = match &s.access_log_format {
                Some(F::LogFormat(f)) => log_format(f, &tc.field("log_format"))?,
                None => default_format()?,
            };
            (Sink::Stderr, format)
        }
        _ => return Err(extension::unregistered(&tc, &log.name, any)),
    };
    Ok(AccessLog {
        filter,
        sink,
        format,
    })
}

fn default_format() -> Result<LogFormat> {
    text_format(
        ENVOY_DEFAULT_FORMAT,
        false,
        &FieldPath::root("default format"),
    )
}

fn text_format(text: &str, omit_empty: bool, path: &FieldPath) -> Result<LogFormat> {
    Ok(LogFormat::Text {
        template: Template::parse(text).map_err(|e| path.error(e))?,
        omit_empty,
    })
}

fn log_format(f: &SubstitutionFormatString, path: &FieldPath) -> Result<LogFormat> {
    if !f.formatters.is_empty() {
        return Err(path
            .field("formatters")
            .error("formatter extensions are not supported by Outrigger"));
    }
    let omit = f.omit_empty_values;
    #[allow(deprecated)]
    match &f.format {
        Some(ProtoFormat::TextFormat(text)) => text_format(text, omit, &path.field("text_format")),
        Some(ProtoFormat::TextFormatSource(source)) => {
            let p = path.field("text_format_source");
            // A format read from a file is read once, when the configuration loads.
            let text = String::from_utf8(super::values::data_source(Some(source), &p)?)
                .map_err(|_| p.error("must be UTF-8"))?;
            text_format(&text, omit, &p)
        }
        Some(ProtoFormat::JsonFormat(s)) => json_format(s, omit, &path.field("json_format")),
        None => {
            Err(path.error("one of text_format, text_format_source or json_format is required"))
        }
    }
}

fn json_format(s: &Struct, omit_empty: bool, path: &FieldPath) -> Result<LogFormat> {
    Ok(LogFormat::Json(JsonFormat::new(
        json_fields(s, path)?,
        omit_empty,
    )))
}

fn json_fields(s: &Struct, path: &FieldPath) -> Result<Vec<(String, JsonNode)>> {
    s.fields
        .iter()
        .map(|(key, value)| {
            let p = path.key(key);
            let node = match &value.kind {
                Some(Kind::StringValue(text)) => {
                    JsonNode::Template(Template::parse(text).map_err(|e| p.error(e))?)
                }
                Some(Kind::StructValue(inner)) => JsonNode::Object(json_fields(inner, &p)?),
                Some(Kind::NumberValue(n)) => JsonNode::Number(*n),
                Some(Kind::BoolValue(b)) => JsonNode::Bool(*b),
                Some(Kind::NullValue(_)) | None => JsonNode::Null,
                Some(Kind::ListValue(_)) => {
                    return Err(p.error("list values are not supported in json_format"))
                }
            };
            Ok((key.clone(), node))
        })
        .collect()
}

fn translate_filter(
    f: &AccessLogFilter,
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<Filter> {
    Ok(match &f.filter_specifier {
        Some(FilterSpecifier::StatusCodeFilter(s)) => Filter::StatusCode(comparison(
            s.comparison.as_ref(),
            &path.field("status_code_filter").field("comparison"),
            resolve,
        )?),
        Some(FilterSpecifier::DurationFilter(d)) => Filter::Duration(comparison(
            d.comparison.as_ref(),
            &path.field("duration_filter").field("comparison"),
            resolve,
        )?),
        Some(FilterSpecifier::NotHealthCheckFilter(_)) => Filter::NotHealthCheck,
        Some(FilterSpecifier::ResponseFlagFilter(r)) => {
            let p = path.field("response_flag_filter").field("flags");
            let mut flags = ResponseFlags::NONE;
            for (i, name) in r.flags.iter().enumerate() {
                let flag = ResponseFlags::named(name).ok_or_else(|| {
                    p.index(i).error(format!(
                        "value must be in list [{}]",
                        crate::format::RESPONSE_FLAG_NAMES.join(", ")
                    ))
                })?;
                flags = flags.with(flag);
            }
            Filter::ResponseFlags(flags)
        }
        Some(FilterSpecifier::RuntimeFilter(r)) => {
            use xds_proto::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
            let p = path.field("runtime_filter");
            if r.runtime_key.is_empty() {
                return Err(p.field("runtime_key").error("must not be empty"));
            }
            // Envoy's default when percent_sampled is unset: 0 of 100.
            let (numerator, denominator) = match &r.percent_sampled {
                Some(fp) => {
                    let denominator: u64 = match D::try_from(fp.denominator) {
                        Ok(D::Hundred) => 100,
                        Ok(D::TenThousand) => 10_000,
                        Ok(D::Million) => 1_000_000,
                        Err(_) => {
                            return Err(p
                                .field("percent_sampled")
                                .field("denominator")
                                .error("unknown denominator"))
                        }
                    };
                    (u64::from(fp.numerator), denominator)
                }
                None => (0, 100),
            };
            let numerator = resolve
                .runtime_u64(&r.runtime_key)
                .unwrap_or(numerator)
                .min(denominator);
            Filter::Runtime {
                per_million: numerator * (1_000_000 / denominator),
                independent: r.use_independent_randomness,
            }
        }
        Some(FilterSpecifier::AndFilter(a)) => {
            Filter::And(sub_filters(&a.filters, &path.field("and_filter"), resolve)?)
        }
        Some(FilterSpecifier::OrFilter(o)) => {
            Filter::Or(sub_filters(&o.filters, &path.field("or_filter"), resolve)?)
        }
        Some(FilterSpecifier::HeaderFilter(h)) => {
            let p = path.field("header_filter").field("header");
            let m = h.header.as_ref().ok_or_else(|| p.error("is required"))?;
            Filter::Header(header_matcher(m, &p)?)
        }
        // The field check refuses the other filter types, naming them; this is the backstop.
        Some(_) => return Err(path.error("access log filter type not supported by Outrigger")),
        None => return Err(path.error("a filter type is required")),
    })
}

fn sub_filters(
    filters: &[AccessLogFilter],
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<Vec<Filter>> {
    let p = path.field("filters");
    if filters.len() < 2 {
        return Err(p.error("value must contain at least 2 item(s)"));
    }
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| translate_filter(f, &p.index(i), resolve))
        .collect()
}

fn comparison(
    c: Option<&ComparisonFilter>,
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<Comparison> {
    let c = c.ok_or_else(|| path.error("is required"))?;
    let op = match Op::try_from(c.op) {
        Ok(Op::Eq) => CompareOp::Eq,
        Ok(Op::Ge) => CompareOp::Ge,
        Ok(Op::Le) => CompareOp::Le,
        Ok(Op::Ne) => CompareOp::Ne,
        Err(_) => return Err(path.field("op").error("unknown comparison")),
    };
    let v = c
        .value
        .as_ref()
        .ok_or_else(|| path.field("value").error("is required"))?;
    let value = if v.runtime_key.is_empty() {
        None
    } else {
        resolve.runtime_u64(&v.runtime_key)
    }
    .unwrap_or(u64::from(v.default_value));
    Ok(Comparison { op, value })
}
