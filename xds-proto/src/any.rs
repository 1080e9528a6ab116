//! `google.protobuf.Any` packing and unpacking checked against the message's full name.

use crate::{pb::google::protobuf::Any, XdsMessage};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AnyError {
    #[error("expected {expected}, got type URL {actual:?}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error("cannot decode {type_name}: {message}")]
    Decode {
        type_name: &'static str,
        message: String,
    },
    #[error("no registered extension for type {0}")]
    UnknownType(String),
}

/// The message name in a type URL: whatever follows the last `/` (Envoy's rule).
pub fn type_name_of_url(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

pub fn unpack<M: XdsMessage>(any: &Any) -> Result<M, AnyError> {
    if type_name_of_url(&any.type_url) != M::FULL_NAME {
        return Err(AnyError::WrongType {
            expected: M::FULL_NAME,
            actual: any.type_url.clone(),
        });
    }
    M::decode_bytes(&any.value).map_err(|e| AnyError::Decode {
        type_name: M::FULL_NAME,
        message: e.to_string(),
    })
}

pub fn pack<M: XdsMessage>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_bytes(),
    }
}
