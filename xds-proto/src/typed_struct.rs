//! `udpa.type.v1.TypedStruct` (and its twin `xds.type.v3.TypedStruct`): an extension config
//! carried as a `Struct` plus the type URL it stands for. envoy-types lacks both; build.rs adds
//! their descriptors, and this is their Rust type.

use crate::pb::google::protobuf::Struct;

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// Full name of the xDS twin, which has the same fields.
pub const XDS_TYPED_STRUCT: &str = "xds.type.v3.TypedStruct";
