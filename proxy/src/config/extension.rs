//! Decoding extension configs (`typed_config`) through xds-proto's registry, with Envoy's
//! errors: a type Outrigger has no implementation of is "didn't find a registered
//! implementation", naming the filter and the type.

use super::error::{ConfigError, FieldPath, Result};
use xds_proto::pb::google::protobuf::Any;
use xds_proto::{AnyError, Extension};

/// The decoded extension, or None when its type is not registered (the caller decides
/// whether that is an error: optional HTTP filters are skipped).
pub fn decode(any: &Any, path: &FieldPath) -> Result<Option<Extension>> {
    match xds_proto::decode_extension(any) {
        Ok(extension) => Ok(Some(extension)),
        Err(AnyError::UnknownType(_)) => Ok(None),
        Err(e) => Err(path.error(e.to_string())),
    }
}

/// Envoy's error for an extension type with no implementation where it was configured.
pub fn unregistered(path: &FieldPath, name: &str, any: &Any) -> ConfigError {
    path.error(format!(
        "didn't find a registered implementation for '{name}' with type URL: '{}'",
        xds_proto::type_name_of_url(&any.type_url)
    ))
}
