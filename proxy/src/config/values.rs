//! Small conversions shared by the translators: durations, wrappers, data sources.

use super::error::{FieldPath, Result};
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_proto::pb::google::protobuf::Duration as ProtoDuration;

/// A proto Duration as a std Duration; negative or out-of-range values are refused.
pub fn duration(value: &ProtoDuration, path: &FieldPath) -> Result<Duration> {
    if value.seconds < 0 || value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(path.error("duration must be non-negative and normalised"));
    }
    Ok(Duration::new(value.seconds as u64, value.nanos as u32))
}

pub fn optional_duration(
    value: Option<&ProtoDuration>,
    path: &FieldPath,
) -> Result<Option<Duration>> {
    value.map(|d| duration(d, path)).transpose()
}

/// A data source's bytes, read once when the configuration is translated, as Envoy reads
/// them at load: inline, a file (`watched_directory` rotation is not implemented) or an
/// environment variable. An unset source is empty.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-datasource
pub fn data_source(source: Option<&DataSource>, path: &FieldPath) -> Result<Vec<u8>> {
    match source.and_then(|s| s.specifier.as_ref()) {
        None => Ok(Vec::new()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::Filename(f)) => std::fs::read(f).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!("file {f} does not exist")
            } else {
                format!("cannot read {f}: {e}")
            };
            path.field("filename").error(why)
        }),
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map(String::into_bytes).map_err(|_| {
                path.field("environment_variable")
                    .error(format!("environment variable {v} is not set"))
            })
        }
    }
}

/// The file a data source names, if it names one (for errors about what was read).
pub fn data_source_file(source: Option<&DataSource>) -> Option<&str> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => Some(f),
        _ => None,
    }
}
