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

/// Inline data sources only: files and environment variables are read by the TLS issue.
pub fn inline_data(source: &DataSource, path: &FieldPath) -> Result<Vec<u8>> {
    match &source.specifier {
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::Filename(_)) => Err(path
            .field("filename")
            .error("only inline data sources are supported here")),
        Some(Specifier::EnvironmentVariable(_)) => Err(path
            .field("environment_variable")
            .error("only inline data sources are supported here")),
        None => Ok(Vec::new()),
    }
}
