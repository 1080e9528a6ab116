//! Proto messages to JSON as Envoy's admin prints them: proto field names, one-space pretty
//! indentation, `Any` inlined with `@type`. Serialisation goes by reflection over the Envoy
//! descriptor pool, like `xds_proto::to_json_value`, with one knob Envoy uses for some
//! endpoints (`/server_info`): printing fields that hold their default value.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin

use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::Serialize;
use std::time::SystemTime;
use xds_proto::pb::google::protobuf::{Any, Timestamp};

/// Serialises `message`; `with_defaults` prints scalar and repeated fields even when they hold
/// their default (Envoy's `always_print_primitive_fields`).
pub fn message<M: Message + Name>(
    message: &M,
    with_defaults: bool,
) -> Result<serde_json::Value, String> {
    bytes(&M::full_name(), &message.encode_to_vec(), with_defaults)
}

pub fn bytes(
    full_name: &str,
    bytes: &[u8],
    with_defaults: bool,
) -> Result<serde_json::Value, String> {
    let descriptor = xds_proto::descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let dynamic = DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(!with_defaults);
    let mut value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?;
    xds_proto::integral_doubles_as_integers(&mut value);
    Ok(value)
}

/// Envoy's pretty JSON: one space per level.
pub fn pretty(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Writing a Value into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out
}

pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A wall-clock time as a proto Timestamp, to the millisecond as Envoy prints `last_updated`.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: (since.subsec_millis() * 1_000_000) as i32,
    }
}

/// A JSON object with `@type` first, as Envoy prints an `Any`.
pub fn with_type(type_url: &str, value: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("@type".into(), type_url.into());
    if let serde_json::Value::Object(fields) = value {
        out.extend(fields.into_iter().filter(|(k, _)| k != "@type"));
    }
    serde_json::Value::Object(out)
}

/// The JSON of a message, or a 500 naming the failure (a bug, never user input).
pub fn message_response<M: Message + Name>(
    message: &M,
    with_defaults: bool,
) -> super::AdminResponse {
    match self::message(message, with_defaults) {
        Ok(value) => super::json_response(&value),
        Err(e) => super::text(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise {}: {e}", M::full_name()),
        ),
    }
}
