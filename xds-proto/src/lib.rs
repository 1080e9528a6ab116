//! Envoy's v3 API for Outrigger: the Rust types and gRPC stubs from `envoy-types`, the proto3
//! canonical JSON mapping both ways (bootstrap YAML/JSON in, `/config_dump` JSON out), and
//! `Any` packing. See README.md for why it is built this way and what it costs.
//!
//! Generic code stays in this crate: every (de)serialisation goes through non-generic helpers
//! keyed by the message's full name, so callers do not monomorphise the whole message tree.

mod any;
mod extension;
mod json;
mod message;
mod typed_struct;

pub use any::{pack, type_name_of_url, unpack, AnyError};
pub use envoy_types::pb;
pub use extension::{decode_extension, Extension};
pub use json::{
    descriptor_pool, integral_doubles_as_integers, to_json_bytes_value, to_json_value,
    DocumentFormat, ParseError, ParseOptions, Parsed,
};
pub use message::XdsMessage;
pub use typed_struct::{TypedStruct, XDS_TYPED_STRUCT};

/// Type URL prefix Envoy uses in `Any.type_url`.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Parses a YAML or JSON document into `M` by its proto3 JSON mapping.
pub fn parse_document<M: XdsMessage>(
    text: &str,
    format: DocumentFormat,
    options: ParseOptions,
) -> Result<Parsed<M>, ParseError> {
    let parsed = json::parse_to_bytes(M::FULL_NAME, text, format, options)?;
    let message = M::decode_bytes(&parsed.value).map_err(|e| ParseError::Decode(e.to_string()))?;
    Ok(Parsed {
        value: message,
        unknown_fields: parsed.unknown_fields,
    })
}

/// Reflection over the Envoy API, for config-time walks such as "which fields are set".
pub mod reflect {
    pub use prost_reflect::{DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value};

    /// The message as a dynamic message of the same type, to walk its set fields.
    pub fn to_dynamic<M: crate::XdsMessage>(message: &M) -> Result<DynamicMessage, String> {
        bytes_to_dynamic(M::FULL_NAME, &message.encode_bytes())
    }

    /// Decodes `bytes` as the message named `full_name` (e.g. an `Any`'s payload).
    pub fn bytes_to_dynamic(full_name: &str, bytes: &[u8]) -> Result<DynamicMessage, String> {
        let descriptor = crate::descriptor_pool()
            .get_message_by_name(full_name)
            .ok_or_else(|| format!("unknown message type {full_name}"))?;
        DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())
    }
}
