//! The NDS resource, `istio.networking.nds.v1.NameTable`: the hosts istiod tells the agent to
//! answer for, as hand-written prost messages (field numbers from Istio's `nds.proto`), and its
//! `/debug/ndsz` JSON rendering.

use std::collections::BTreeMap;
use xds_proto::pb::google::protobuf::Any;

/// The type URL istiod serves the table under (wildcard: one unnamed resource).
pub const NAME_TABLE_TYPE_URL: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// The registry name that marks a Kubernetes service (short names are built only for those).
pub const KUBERNETES_REGISTRY: &str = "Kubernetes";

/// `istio.networking.nds.v1.NameTable`: host name → what to answer for it. A BTreeMap so a
/// table is built and rendered in one deterministic order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NameTable {
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
}

/// `istio.networking.nds.v1.NameTable.NameInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NameInfo {
    /// Addresses as text; ones that do not parse are skipped, as Istio does.
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// The service registry (`Kubernetes`, `External`, ...).
    #[prost(string, tag = "2")]
    pub registry: String,
    /// The Kubernetes service name (registry `Kubernetes` only).
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// The Kubernetes namespace of the service (registry `Kubernetes` only).
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Deprecated in Istio, still honoured by its agent: extra names for the host.
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

/// Decodes a resource as a name table; the type URL must say so (as Go's `UnmarshalTo` checks).
pub fn decode(resource: &Any) -> Result<NameTable, String> {
    if resource.type_url != NAME_TABLE_TYPE_URL {
        return Err(format!(
            "mismatched message type: got {}, want {NAME_TABLE_TYPE_URL}",
            resource.type_url
        ));
    }
    <NameTable as prost::Message>::decode(resource.value.as_slice())
        .map_err(|e| format!("failed to unmarshal name table: {e}"))
}

/// The wire form of a table, as istiod packs it.
pub fn encode(table: &NameTable) -> Vec<u8> {
    prost::Message::encode_to_vec(table)
}

/// The proto3 JSON mapping of a table (lowerCamelCase names, empty fields left out, map keys
/// sorted), which is what pilot-agent's `/debug/ndsz` writes.
pub fn to_json(table: &NameTable) -> String {
    let mut hosts = serde_json::Map::new();
    for (host, info) in &table.table {
        let mut entry = serde_json::Map::new();
        if !info.ips.is_empty() {
            entry.insert("ips".into(), info.ips.clone().into());
        }
        for (key, value) in [
            ("registry", &info.registry),
            ("shortname", &info.shortname),
            ("namespace", &info.namespace),
        ] {
            if !value.is_empty() {
                entry.insert(key.into(), value.clone().into());
            }
        }
        if !info.alt_hosts.is_empty() {
            entry.insert("altHosts".into(), info.alt_hosts.clone().into());
        }
        hosts.insert(host.clone(), entry.into());
    }
    let mut root = serde_json::Map::new();
    if !hosts.is_empty() {
        root.insert("table".into(), hosts.into());
    }
    serde_json::Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn info(ips: &[&str]) -> NameInfo {
        NameInfo {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            registry: "Kubernetes".into(),
            shortname: "productpage".into(),
            namespace: "ns1".into(),
            alt_hosts: Vec::new(),
        }
    }

    #[test]
    fn wire_format_matches_the_field_numbers() {
        let mut table = NameTable::default();
        table.table.insert(
            "productpage.ns1.svc.cluster.local".into(),
            info(&["9.9.9.9"]),
        );
        let bytes = table.encode_to_vec();
        // Field 1, length-delimited (map entry): tag byte 0x0a; inside, key is field 1 and the
        // NameInfo field 2; NameInfo's ips is field 1 (0x0a), registry field 2 (0x12).
        assert_eq!(bytes[0], 0x0a);
        let any = Any {
            type_url: NAME_TABLE_TYPE_URL.into(),
            value: bytes,
        };
        assert_eq!(decode(&any), Ok(table));
    }

    #[test]
    fn rejects_another_type_and_garbage() {
        let wrong = Any {
            type_url: "type.googleapis.com/istio.mesh.v1alpha1.ProxyConfig".into(),
            value: Vec::new(),
        };
        assert!(decode(&wrong).is_err());
        let garbage = Any {
            type_url: NAME_TABLE_TYPE_URL.into(),
            value: vec![0x0a, 0xff, 0xff, 0x01],
        };
        assert!(decode(&garbage).is_err());
    }

    #[test]
    fn json_uses_proto3_names() {
        let mut table = NameTable::default();
        let mut i = info(&["9.9.9.9"]);
        i.alt_hosts = vec!["pp.ns1.svc.clusterset.local".into()];
        table.table.insert("b".into(), i);
        table.table.insert(
            "a".into(),
            NameInfo {
                ips: vec!["1.1.1.1".into()],
                registry: "External".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            to_json(&table),
            r#"{"table":{"a":{"ips":["1.1.1.1"],"registry":"External"},"b":{"ips":["9.9.9.9"],"registry":"Kubernetes","shortname":"productpage","namespace":"ns1","altHosts":["pp.ns1.svc.clusterset.local"]}}}"#
        );
        assert_eq!(to_json(&NameTable::default()), "{}");
    }
}
