//! `/config_dump`: the body parses strictly as `envoy.admin.v3.ConfigDump`, and its section
//! structure equals Envoy's for the same bootstrap: the configs' `@type`s in order, each
//! config's keys, and per section the keys of each element and the resource names. Compared
//! as parsed JSON; values (timestamps, node build details, ports) are not compared.
//!
//! `config_dump_filters_match_envoy_exactly` also compares the filtered outputs value for value.

use serde_json::{json, Map, Value};
use tests::{bootstraps, envoy_or_skip, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::admin::v3::ConfigDump;
use xds_proto::{parse_document, DocumentFormat, ParseOptions};

/// Queries whose answers have the same structure in both.
const QUERIES: &[&str] = &[
    "",
    "?resource=static_clusters",
    "?resource=static_listeners",
    "?resource=static_route_configs",
    "?resource=dynamic_active_clusters",
    "?mask=static_listeners",
    "?resource=static_clusters&mask=cluster.name,cluster.type",
    "?resource=static_listeners&mask=listener.name",
    "?name_regex=.*",
];

/// Queries Envoy refuses, and how.
const REFUSED: &[(&str, u16)] = &[
    ("?resource=nope", 404),
    ("?mask=bogus", 400),
    ("?name_regex=(", 400),
];

/// Queries where Outrigger's structure differs from Envoy's today.
const DIFFERING: &[&str] = &[
    "?include_eds",
    "?resource=static_endpoint_configs&include_eds",
    "?name_regex=^http_listener$",
    "?name_regex=back.*",
];

fn start(kind: Kind, upstream: &Upstream) -> RunningProxy {
    let (bootstrap, _) = bootstraps::http_and_tcp(upstream.port());
    RunningProxy::start(kind, &bootstrap, &[])
}

fn dump(proxy: &RunningProxy, query: &str) -> Value {
    let r = proxy.get(&format!("/config_dump{query}"));
    assert_eq!(
        r.status,
        200,
        "{}: /config_dump{query}: {}",
        proxy.kind().name(),
        r.body
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

fn parses_strictly(proxy: &RunningProxy, query: &str) -> Result<(), String> {
    let body = proxy.get(&format!("/config_dump{query}")).body;
    parse_document::<ConfigDump>(&body, DocumentFormat::Json, ParseOptions::default())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{}: /config_dump{query} is not a strict envoy.admin.v3.ConfigDump: {e}",
                proxy.kind().name()
            )
        })
}

/// The structure of a dump: per config its `@type`, name, keys, and for each section (a list)
/// the keys and resource name of each element; for an object field, its keys.
fn shape(dump: &Value) -> Value {
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    Value::Array(
        configs
            .iter()
            .map(|config| {
                let mut sections = Map::new();
                if let Some(fields) = config.as_object() {
                    for (key, value) in fields {
                        match value {
                            Value::Array(items) => {
                                let elements = items
                                    .iter()
                                    .map(|e| json!({"keys": keys(e), "name": resource_name(e)}))
                                    .collect();
                                sections.insert(key.clone(), Value::Array(elements));
                            }
                            Value::Object(_) => {
                                sections.insert(key.clone(), keys(value));
                            }
                            _ => {}
                        }
                    }
                }
                json!({
                    "@type": config["@type"],
                    "name": resource_name(config),
                    "keys": keys(config),
                    "sections": sections,
                })
            })
            .collect(),
    )
}

fn keys(value: &Value) -> Value {
    let mut keys: Vec<&String> = value
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.sort();
    json!(keys)
}

fn resource_name(element: &Value) -> Value {
    for (wrapper, field) in [
        ("listener", "name"),
        ("cluster", "name"),
        ("route_config", "name"),
        ("endpoint_config", "cluster_name"),
    ] {
        if let Some(name) = element[wrapper][field].as_str() {
            return json!(name);
        }
    }
    element["name"].clone()
}

fn compare(ours: &RunningProxy, envoy: &RunningProxy, queries: &[&str]) -> String {
    let mut problems = String::new();
    for query in queries {
        let (o, e) = (shape(&dump(ours, query)), shape(&dump(envoy, query)));
        if o != e {
            problems.push_str(&format!(
                "/config_dump{query}: structure differs\n  outrigger: {o}\n  envoy:     {e}\n"
            ));
        }
    }
    problems
}

#[test]
fn config_dump_parses_strictly_as_config_dump() {
    let upstream = Upstream::start("ok");
    let ours = start(Kind::Outrigger, &upstream);
    let mut problems: Vec<String> = QUERIES
        .iter()
        .chain(DIFFERING)
        .filter_map(|q| parses_strictly(&ours, q).err())
        .collect();
    // Envoy's own dump must parse too, or the parser (not Outrigger) is what is wrong.
    if let Some(_envoy) = envoy_or_skip("config_dump_parses_strictly_as_config_dump") {
        let envoy = start(Kind::Envoy, &upstream);
        problems.extend(
            QUERIES
                .iter()
                .filter_map(|q| parses_strictly(&envoy, q).err()),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Sanity: the full dump holds what the bootstrap has.
    let full = shape(&dump(&ours, ""));
    let types: Vec<&str> = full
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["@type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ],
        "{full:#}"
    );
}

#[test]
fn config_dump_structure_matches_envoy() {
    let Some(_) = envoy_or_skip("config_dump_structure_matches_envoy") else {
        return;
    };
    let upstream = Upstream::start("ok");
    let ours = start(Kind::Outrigger, &upstream);
    let envoy = start(Kind::Envoy, &upstream);
    let mut problems = compare(&ours, &envoy, QUERIES);
    for (query, status) in REFUSED {
        for proxy in [&ours, &envoy] {
            let r = proxy.get(&format!("/config_dump{query}"));
            if r.status != *status {
                problems.push_str(&format!(
                    "{}: /config_dump{query}: {} (Envoy's status: {status}): {}\n",
                    proxy.kind().name(),
                    r.status,
                    r.body
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn config_dump_filters_match_envoy_exactly() {
    let Some(_) = envoy_or_skip("config_dump_filters_match_envoy_exactly") else {
        return;
    };
    let upstream = Upstream::start("ok");
    let ours = start(Kind::Outrigger, &upstream);
    let envoy = start(Kind::Envoy, &upstream);
    let problems = compare(&ours, &envoy, DIFFERING);
    assert!(problems.is_empty(), "{problems}");
}
