//! The proto3 canonical JSON mapping, by reflection over envoy-types' descriptor set.
//!
//! Input: YAML (with `<<:` merge keys) or JSON, camelCase or snake_case names, `Any` with
//! `@type` and its fields inline, unknown fields rejected unless the caller allows them (Envoy's
//! `--allow-unknown-static-fields`). Output: proto field names, defaults omitted, 64-bit integers
//! as strings, durations as `"1.500s"`: the shape Envoy's admin API prints.
//! Reflection costs about 2x a generated codec; it is only used for config, never per request.

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use std::sync::LazyLock;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin")).as_slice(),
    )
    .expect("the descriptor set written by build.rs decodes")
});

/// The descriptor pool of every Envoy API message. Touch it at startup so the first
/// `/config_dump` does not pay the ~40 ms it takes to build.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &POOL
}

/// How a document is written. Envoy picks by file extension; YAML also reads JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    Yaml,
    Json,
}

impl DocumentFormat {
    /// Envoy's rule: `.json` is JSON, anything else (`.yaml`, `.yml`, no extension) is YAML,
    /// which is a superset of JSON.
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".json") {
            Self::Json
        } else {
            Self::Yaml
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Ignore fields the API does not define (and report them) instead of failing.
    pub allow_unknown_fields: bool,
}

/// A parsed document and the unknown fields that were ignored (only with
/// `allow_unknown_fields`; Envoy logs these as warnings).
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    pub value: T,
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ParseError {
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("{format} syntax: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("decoding: {0}")]
    Decode(String),
}

pub(crate) fn parse_to_bytes(
    full_name: &str,
    text: &str,
    format: DocumentFormat,
    options: ParseOptions,
) -> Result<Parsed<Vec<u8>>, ParseError> {
    match parse_dynamic(full_name, text, format, true) {
        Ok(message) => Ok(Parsed {
            value: message.encode_to_vec(),
            unknown_fields: Vec::new(),
        }),
        Err(strict_error) if options.allow_unknown_fields && is_unknown_field(&strict_error) => {
            let message = parse_dynamic(full_name, text, format, false)?;
            Ok(Parsed {
                value: message.encode_to_vec(),
                unknown_fields: vec![strict_error.to_string()],
            })
        }
        Err(e) => Err(e),
    }
}

fn is_unknown_field(error: &ParseError) -> bool {
    matches!(error, ParseError::Field { message, .. } if message.starts_with("unknown field") || message.starts_with("unrecognized field"))
}

fn parse_dynamic(
    full_name: &str,
    text: &str,
    format: DocumentFormat,
    deny_unknown: bool,
) -> Result<DynamicMessage, ParseError> {
    let descriptor = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| ParseError::UnknownType(full_name.to_string()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(deny_unknown);
    let field_error = |path: String, message: String| ParseError::Field {
        path: if path == "." {
            "(root)".to_string()
        } else {
            path
        },
        message,
    };
    match format {
        DocumentFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let mut track = serde_path_to_error::Track::new();
            let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
            let message = DynamicMessage::deserialize_with_options(descriptor, tracked, &options)
                .map_err(|e| {
                if e.is_syntax() || e.is_eof() {
                    ParseError::Syntax {
                        format: "JSON",
                        message: e.to_string(),
                    }
                } else {
                    field_error(track.path().to_string(), strip_location(&e.to_string()))
                }
            })?;
            de.end().map_err(|e| ParseError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })?;
            Ok(message)
        }
        DocumentFormat::Yaml => {
            let mut value: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|e| ParseError::Syntax {
                    format: "YAML",
                    message: e.to_string(),
                })?;
            value.apply_merge().map_err(|e| ParseError::Syntax {
                format: "YAML",
                message: e.to_string(),
            })?;
            if value.is_null() {
                // Envoy refuses an empty document ("Unable to convert YAML as JSON").
                return Err(ParseError::Syntax {
                    format: "YAML",
                    message: "the document is empty".to_string(),
                });
            }
            let mut track = serde_path_to_error::Track::new();
            let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
            DynamicMessage::deserialize_with_options(descriptor, tracked, &options)
                .map_err(|e| field_error(track.path().to_string(), e.to_string()))
        }
    }
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Serialises an encoded message of type `full_name` as Envoy prints it in the admin API.
pub fn to_json_bytes_value(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    let descriptor = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?;
    integral_doubles_as_integers(&mut value);
    Ok(value)
}

/// Envoy's JSON printer writes a double with no fractional part as an integer (a Struct's
/// `15090`, not `15090.0`); serde writes every f64 with a fraction. Only exact integers
/// within f64's integer range are rewritten.
pub fn integral_doubles_as_integers(value: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() <= EXACT {
                    *value = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_doubles_as_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(integral_doubles_as_integers)
        }
        _ => {}
    }
}

/// Serialises a message as Envoy prints it in the admin API.
pub fn to_json_value<M: crate::XdsMessage>(message: &M) -> Result<serde_json::Value, String> {
    to_json_bytes_value(M::FULL_NAME, &message.encode_bytes())
}
