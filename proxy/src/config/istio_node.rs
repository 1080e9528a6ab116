//! This proxy's own workload, read once from the bootstrap node: the `x-envoy-peer-metadata`
//! value Istio's HTTP metadata exchange sends to peers (base64 of a serialized
//! `google.protobuf.Struct` with Istio's keys), and the local labels of Istio's metrics.
//! Both are fixed for the life of the process, so no request ever formats them.

use prost::encoding::{encode_key, encode_varint, WireType};
use std::collections::BTreeMap;
use std::sync::Arc;
use xds_proto::pb::google::protobuf::{value::Kind, Struct};

/// Istio's workload labels in node metadata `LABELS`.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// The local workload as Istio's filters see it.
#[derive(Debug, Default)]
pub struct LocalWorkload {
    /// The node id, sent as `x-envoy-peer-metadata-id`.
    pub id: Option<http::HeaderValue>,
    /// `x-envoy-peer-metadata`.
    pub metadata_header: Option<http::HeaderValue>,
    /// Local metric labels, raw from node metadata (Istio leaves a missing one empty).
    pub workload_name: Arc<str>,
    pub namespace: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub cluster_id: Arc<str>,
    /// `ISTIO_VERSION`, the `tag` of `istio_build`.
    pub istio_version: Arc<str>,
}

fn string_at<'a>(s: &'a Struct, key: &str) -> &'a str {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => v,
        _ => "",
    }
}

fn labels(s: &Struct) -> Option<&Struct> {
    match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => Some(l),
        _ => None,
    }
}

impl LocalWorkload {
    pub fn new(id: &str, metadata: Option<&Struct>, region: &str, zone: &str) -> Self {
        let empty = Struct::default();
        let md = metadata.unwrap_or(&empty);
        let label = |key: &str| labels(md).map_or("", |l| string_at(l, key));
        LocalWorkload {
            id: (!id.is_empty())
                .then(|| http::HeaderValue::from_str(id).ok())
                .flatten(),
            metadata_header: http::HeaderValue::from_str(&exchange_value(md, region, zone)).ok(),
            workload_name: string_at(md, "WORKLOAD_NAME").into(),
            namespace: string_at(md, "NAMESPACE").into(),
            canonical_name: label(CANONICAL_NAME).into(),
            canonical_revision: label(CANONICAL_REVISION).into(),
            app: label("app").into(),
            version: label("version").into(),
            cluster_id: string_at(md, "CLUSTER_ID").into(),
            istio_version: string_at(md, "ISTIO_VERSION").into(),
        }
    }
}

/// The exchanged Struct: NAME, NAMESPACE, CLUSTER_ID, IDENTITY, OWNER, WORKLOAD_NAME, REGION,
/// AVAILABILITY_ZONE when set, and LABELS (always present) with the canonical name and
/// revision and the app and version (the `app.kubernetes.io/*` labels win over plain ones).
/// Encoded with map entries in key order, as Istio serializes deterministically.
pub fn exchange_value(md: &Struct, region: &str, zone: &str) -> String {
    use base64::Engine;
    // Encoded `Value`s by key: iterating a BTreeMap writes them in key order.
    let mut top: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut put = |key: &'static str, v: &str| {
        if !v.is_empty() {
            let mut value = Vec::new();
            string_value(v, &mut value);
            top.insert(key, value);
        }
    };
    for key in [
        "NAME",
        "NAMESPACE",
        "CLUSTER_ID",
        "IDENTITY",
        "OWNER",
        "WORKLOAD_NAME",
    ] {
        put(key, string_at(md, key));
    }
    // The node's metadata wins over its locality, as in Istio.
    put("REGION", or(string_at(md, "REGION"), region));
    put(
        "AVAILABILITY_ZONE",
        or(string_at(md, "AVAILABILITY_ZONE"), zone),
    );
    let mut label_map = BTreeMap::new();
    if let Some(l) = labels(md) {
        for (key, value) in [
            (CANONICAL_NAME, string_at(l, CANONICAL_NAME)),
            (CANONICAL_REVISION, string_at(l, CANONICAL_REVISION)),
            (
                "app",
                or(string_at(l, "app.kubernetes.io/name"), string_at(l, "app")),
            ),
            (
                "version",
                or(
                    string_at(l, "app.kubernetes.io/version"),
                    string_at(l, "version"),
                ),
            ),
        ] {
            if !value.is_empty() {
                label_map.insert(key, value);
            }
        }
    }
    let mut labels_struct = Vec::new();
    for (key, v) in &label_map {
        let mut value = Vec::new();
        string_value(v, &mut value);
        map_entry(key, &value, &mut labels_struct);
    }
    // `Value{struct_value}`: field 5.
    let mut labels_value = Vec::new();
    encode_key(5, WireType::LengthDelimited, &mut labels_value);
    encode_varint(labels_struct.len() as u64, &mut labels_value);
    labels_value.extend_from_slice(&labels_struct);
    top.insert("LABELS", labels_value);
    let mut out = Vec::new();
    for (key, value) in &top {
        map_entry(key, value, &mut out);
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn or<'a>(first: &'a str, second: &'a str) -> &'a str {
    if first.is_empty() {
        second
    } else {
        first
    }
}

/// `google.protobuf.Value{string_value}`: field 3.
fn string_value(s: &str, out: &mut Vec<u8>) {
    encode_key(3, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// One `fields` map entry of a Struct (field 1): `{1: key, 2: value}`.
fn map_entry(key: &str, value: &[u8], out: &mut Vec<u8>) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 6);
    encode_key(1, WireType::LengthDelimited, &mut entry);
    encode_varint(key.len() as u64, &mut entry);
    entry.extend_from_slice(key.as_bytes());
    encode_key(2, WireType::LengthDelimited, &mut entry);
    encode_varint(value.len() as u64, &mut entry);
    entry.extend_from_slice(value);
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(entry.len() as u64, out);
    out.extend_from_slice(&entry);
}

/// The length of the first map entry written by [`map_entry`] (tag byte, varint length, body).
#[cfg(test)]
fn entry_len(buf: &[u8]) -> usize {
    let mut slice = buf.get(1..).unwrap_or_default();
    let before = slice.len();
    let len = prost::encoding::decode_varint(&mut slice).unwrap_or(0) as usize;
    1 + (before - slice.len()) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use xds_proto::pb::google::protobuf::Value;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn the_exchanged_struct_has_istios_keys_in_order_and_decodes() {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), s("ratings"));
        labels.fields.insert("version".into(), s("v1"));
        labels.fields.insert(CANONICAL_NAME.into(), s("ratings"));
        labels.fields.insert("pod-template-hash".into(), s("x"));
        let mut md = Struct::default();
        for (k, v) in [
            ("NAME", "ratings-v1-abc"),
            ("NAMESPACE", "default"),
            ("WORKLOAD_NAME", "ratings-v1"),
            ("CLUSTER_ID", "Kubernetes"),
            (
                "OWNER",
                "kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v1",
            ),
            ("ISTIO_VERSION", "1.24.0"),
        ] {
            md.fields.insert(k.into(), s(v));
        }
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        use base64::Engine;
        let value = exchange_value(&md, "", "zone-a");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&value)
            .expect("base64");
        let decoded = Struct::decode(bytes.as_slice()).expect("a Struct");
        let mut keys: Vec<_> = decoded.fields.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "AVAILABILITY_ZONE",
                "CLUSTER_ID",
                "LABELS",
                "NAME",
                "NAMESPACE",
                "OWNER",
                "WORKLOAD_NAME"
            ]
        );
        let l = super::labels(&decoded).expect("labels");
        assert_eq!(l.fields.len(), 3, "only Istio's labels travel: {l:?}");
        assert_eq!(string_at(l, "version"), "v1");
        // Deterministic: the same bytes every time (a HashMap-ordered encoding would not be).
        assert_eq!(value, exchange_value(&md, "", "zone-a"));
        // Key order on the wire.
        let mut rest = bytes.as_slice();
        let mut wire_keys = Vec::new();
        while !rest.is_empty() {
            let len = entry_len(rest);
            let one = Struct::decode(&rest[..len]).expect("entry");
            wire_keys.extend(one.fields.keys().cloned());
            rest = &rest[len..];
        }
        let mut sorted = wire_keys.clone();
        sorted.sort();
        assert_eq!(wire_keys, sorted);
        let local = LocalWorkload::new("sidecar~1.2.3.4~r~default.svc", Some(&md), "", "");
        assert_eq!(&*local.workload_name, "ratings-v1");
        assert_eq!(&*local.canonical_revision, "");
        assert_eq!(&*local.istio_version, "1.24.0");
    }
}
