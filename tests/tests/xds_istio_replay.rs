//! Real Istio resources replayed over ADS: the dynamic clusters, endpoints, listeners and route
//! tables of the config dumps in `shared/vectors/istio-configdump/` are pushed one at a time
//! (each push is the resources accepted so far plus the new one) to Envoy and to Outrigger.
//! Every resource Envoy ACKs, Outrigger must ACK too, except the ones listed in `KNOWN` with
//! the reason; and Outrigger must stay up throughout.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::xds_resources::ads_bootstrap;
use tests::{envoy_or_skip, free_port, istio, Kind, RunningProxy};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::{DocumentFormat, ParseOptions, XdsMessage};

/// Resources Envoy accepts and Outrigger refuses, each with the reason.
const KNOWN: &[(&str, &str)] = &[(
    "ClusterLoadAssignment inbound-vip|8100|http|httpbin.default.svc.cluster.local",
    "an envoy_internal_address endpoint: internal listeners are not implemented (ambient waypoints use them; sidecars do not)",
)];

/// Fields of these resources that Outrigger ACKs without acting on them (it logs each), with
/// the reason.
const NOT_ACTED_ON: &[(&str, &str)] = &[(
    "cds 'inbound-vip|8000|http|httpbin.default.svc.cluster.local': transport_socket",
    "the waypoint's internal upstream transport socket (ambient); connections through it are refused. Sidecars do not use it",
)];

/// Resources the test cannot even encode, because they use types outside Outrigger's API
/// descriptors; each with the reason. Outrigger could not decode them either.
const UNENCODABLE: &[(&str, &str)] = &[(
    "main_internal",
    "the waypoint's internal listener uses filter_chain_matcher with xds.type.matcher.v3 inputs (IPMatcher), which are not in the descriptor set",
)];

/// One resource to push: its type URL, name and payload.
struct Item {
    type_url: &'static str,
    name: String,
    resource: Any,
}

fn parse<M: XdsMessage>(value: &Value) -> Result<Any, String> {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("@type");
    }
    let text = serde_json::to_string(&value).map_err(|e| e.to_string())?;
    let parsed =
        xds_proto::parse_document::<M>(&text, DocumentFormat::Json, ParseOptions::default())
            .map_err(|e| e.to_string())?;
    Ok(xds_proto::pack(&parsed.value))
}

/// The dynamic resources of every dump, in push order: clusters, endpoints, listeners, routes.
fn items() -> Vec<Item> {
    let dir = istio::vectors_dir().join("istio-configdump");
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the config dump vectors")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let dump: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read a dump"))
                .expect("JSON");
        for config in dump["configs"].as_array().into_iter().flatten() {
            let each = |section: &str| -> Vec<Value> {
                config[section].as_array().cloned().unwrap_or_default()
            };
            match config["@type"].as_str().unwrap_or("").rsplit('.').next() {
                Some("ClustersConfigDump") => clusters.extend(
                    each("dynamic_active_clusters")
                        .into_iter()
                        .map(|c| c["cluster"].clone()),
                ),
                Some("EndpointsConfigDump") => endpoints.extend(
                    each("dynamic_endpoint_configs")
                        .into_iter()
                        .map(|c| c["endpoint_config"].clone()),
                ),
                Some("ListenersConfigDump") => listeners.extend(
                    each("dynamic_listeners")
                        .into_iter()
                        .map(|l| l["active_state"]["listener"].clone())
                        .filter(|l| !l.is_null()),
                ),
                Some("RoutesConfigDump") => routes.extend(
                    each("dynamic_route_configs")
                        .into_iter()
                        .map(|r| r["route_config"].clone()),
                ),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    let mut unencodable = Vec::new();
    let mut push = |type_url: &'static str, name: String, any: Result<Any, String>| match any {
        Ok(resource) => out.push(Item {
            type_url,
            name,
            resource,
        }),
        Err(e) => {
            assert!(
                UNENCODABLE.iter().any(|(n, _)| *n == name),
                "vector {name} does not parse: {e}"
            );
            unencodable.push(name);
        }
    };
    for c in &clusters {
        // The waypoint dump's EDS cluster has no assignment in the vectors: the proxies would
        // keep it warming (and hold their CDS ACK) for the default 15 s, so the wait is
        // shortened.
        let mut c = c.clone();
        if let Some(eds) = c.pointer_mut("/eds_cluster_config/eds_config") {
            eds["initial_fetch_timeout"] = Value::from("1s");
        }
        push(
            CLUSTER,
            c["name"].as_str().unwrap_or("").to_string(),
            parse::<Cluster>(&c),
        );
    }
    // Every assignment gets an EDS cluster of its name, so the proxies subscribe to it.
    for e in &endpoints {
        let name = e["cluster_name"].as_str().unwrap_or("").to_string();
        if clusters.iter().any(|c| c["name"] == e["cluster_name"]) {
            continue;
        }
        let cluster = serde_json::json!({
            "name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        });
        push(CLUSTER, name.clone(), parse::<Cluster>(&cluster));
    }
    for e in &endpoints {
        push(
            ENDPOINT,
            e["cluster_name"].as_str().unwrap_or("").to_string(),
            parse::<ClusterLoadAssignment>(e),
        );
    }
    for l in &listeners {
        push(
            LISTENER,
            l["name"].as_str().unwrap_or("").to_string(),
            parse::<Listener>(l),
        );
    }
    // Every route table gets a listener routing with it, so the proxies subscribe to it.
    for r in &routes {
        let name = r["name"].as_str().unwrap_or("").to_string();
        let listener = serde_json::json!({
            "name": format!("rds-{name}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "replay",
                    "rds": {"route_config_name": name, "config_source": {"ads": {}, "resource_api_version": "V3"}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        });
        push(
            LISTENER,
            format!("rds-{name}"),
            parse::<Listener>(&listener),
        );
    }
    for r in &routes {
        push(
            ROUTE,
            r["name"].as_str().unwrap_or("").to_string(),
            parse::<RouteConfiguration>(r),
        );
    }
    let listed: Vec<&str> = UNENCODABLE.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        unencodable, listed,
        "UNENCODABLE is exactly what does not parse"
    );
    out
}

/// Pushes every item and returns its verdict ("ACK", or "NACK: <details>"), and the fields the
/// proxy logged as accepted without being acted on ("<type> '<name>': <field path>").
fn replay(kind: Kind, items: &[Item]) -> (BTreeMap<String, String>, Vec<String>) {
    let cp = ControlPlane::start();
    for type_url in [CLUSTER, LISTENER] {
        cp.set(type_url, Vec::new());
    }
    // Assignments are served from the start, so an EDS cluster warms as soon as it is pushed
    // (a CDS ACK waits until the clusters in it are warm, `xds_warming`).
    cp.set(
        ENDPOINT,
        items
            .iter()
            .filter(|i| i.type_url == ENDPOINT)
            .map(|i| (i.name.clone(), i.resource.clone()))
            .collect(),
    );
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), false), &[]);
    let mut accepted: BTreeMap<&str, Vec<(String, Any)>> = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    for item in items.iter().filter(|i| i.type_url != ENDPOINT) {
        let mut set = accepted.get(item.type_url).cloned().unwrap_or_default();
        set.push((item.name.clone(), item.resource.clone()));
        let answered = |r: &[tests::control_plane::Recorded]| {
            r.iter()
                .filter(|r| r.type_url == item.type_url && r.answers())
                .count()
        };
        let before = answered(&cp.requests());
        cp.set(item.type_url, set.clone());
        let requests = cp.wait_for(
            Duration::from_secs(20),
            &format!("{} to answer {} {}", kind.name(), item.type_url, item.name),
            |r| answered(r) > before,
        );
        let last = requests
            .iter()
            .rev()
            .find(|r| r.type_url == item.type_url && r.answers())
            .expect("an answer");
        let key = format!(
            "{} {}",
            item.type_url.rsplit('.').next().unwrap_or(""),
            item.name
        );
        match &last.error {
            None => {
                accepted.insert(item.type_url, set);
                verdicts.insert(key, "ACK".to_string());
            }
            Some(e) => {
                verdicts.insert(key, format!("NACK: {e}"));
            }
        }
    }
    // Assignments were served as one set: each is ACKed unless a NACK names it.
    let eds_errors: Vec<String> = cp
        .requests()
        .iter()
        .filter(|r| r.type_url == ENDPOINT)
        .filter_map(|r| r.error.clone())
        .collect();
    for item in items.iter().filter(|i| i.type_url == ENDPOINT) {
        let key = format!("ClusterLoadAssignment {}", item.name);
        let named = eds_errors
            .iter()
            .find(|e| e.contains(&format!("'{}'", item.name)) || e.contains(&item.name));
        verdicts.insert(
            key,
            named.map_or("ACK".to_string(), |e| format!("NACK: {e}")),
        );
    }
    // Still serving its admin after everything.
    assert_eq!(
        proxy.get("/ready").status,
        200,
        "{}",
        proxy.logs_for_failure()
    );
    let logs = format!("{}\n{}", proxy.stdout(), proxy.stderr());
    let not_acted_on = logs
        .lines()
        .filter_map(|l| l.split_once(" is accepted but not acted on"))
        .filter_map(|(head, _)| {
            head.rsplit_once("config: ")
                .map(|(_, what)| what.to_string())
        })
        .collect();
    (verdicts, not_acted_on)
}

#[test]
fn outrigger_acks_what_envoy_acks() {
    let items = items();
    assert!(
        items.len() >= 30,
        "the vectors hold the resources: {}",
        items.len()
    );
    let (ours, not_acted_on) = replay(Kind::Outrigger, &items);
    // An ACK is not "supported": what Outrigger accepts without acting on is this list.
    let listed: Vec<&str> = NOT_ACTED_ON.iter().map(|(what, _)| *what).collect();
    assert_eq!(
        not_acted_on, listed,
        "NOT_ACTED_ON is exactly what Outrigger logs as accepted but not acted on"
    );
    let Some(_) = envoy_or_skip("outrigger_acks_what_envoy_acks") else {
        return;
    };
    let (envoy, _) = replay(Kind::Envoy, &items);
    let mut problems = Vec::new();
    for (key, theirs) in &envoy {
        let mine = ours.get(key).map(String::as_str).unwrap_or("no verdict");
        let known = KNOWN.iter().find(|(k, _)| k == key);
        match (theirs.as_str(), mine, known) {
            ("ACK", "ACK", Some(_)) => {
                problems.push(format!("{key}: now ACKed; remove it from KNOWN"))
            }
            ("ACK", "ACK", None) => {}
            ("ACK", _, Some(_)) => {}
            ("ACK", mine, None) => problems.push(format!("{key}: Envoy ACKs, Outrigger {mine}")),
            (_, _, _) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
