//! `/config_dump` against the shapes Envoy 1.40 prints for the same bootstrap.

use super::super::handle;
use super::super::test_support::{body, json, server};
use http::{Method, StatusCode};
use serde_json::json;
use xds_proto::pb::envoy::admin::v3::ConfigDump;
use xds_proto::{parse_document, DocumentFormat, ParseOptions};

const T: &str = "type.googleapis.com/envoy.admin.v3.";

fn types(v: &serde_json::Value) -> Vec<String> {
    v["configs"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["@type"].as_str().unwrap_or("").replace(T, ""))
                .collect()
        })
        .unwrap_or_default()
}

fn strict(text: &str) -> ConfigDump {
    parse_document::<ConfigDump>(text, DocumentFormat::Json, ParseOptions::default())
        .expect("parses back strictly as envoy.admin.v3.ConfigDump")
        .value
}

#[test]
fn full_dump_is_envoys_and_parses_back_strictly() {
    let s = server();
    let r = handle(&s, &Method::GET, "/config_dump");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[http::header::CONTENT_TYPE], "application/json");
    let text = body(r);
    assert!(text.starts_with("{\n \"configs\": [\n  {\n   \"@type\": "));
    let dump = strict(&text);
    assert_eq!(dump.configs.len(), 6);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        types(&v),
        [
            "BootstrapConfigDump",
            "ClustersConfigDump",
            "ListenersConfigDump",
            "ScopedRoutesConfigDump",
            "RoutesConfigDump",
            "SecretsConfigDump"
        ]
    );
    let c = &v["configs"];
    assert_eq!(c[0]["bootstrap"]["node"]["id"], "test-node");
    assert!(c[0]["last_updated"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let clusters = &c[1]["static_clusters"];
    assert_eq!(
        clusters[0]["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(clusters[0]["cluster"]["name"], "backend");
    assert_eq!(clusters[0]["cluster"]["connect_timeout"], "1s");
    let tls = &clusters[1]["cluster"]["transport_socket"]["typed_config"]["common_tls_context"]
        ["tls_certificates"][0];
    assert_eq!(tls["private_key"]["inline_string"], "[redacted]");
    let (cert, key) = &*crate::admin::test_support::TLS_PAIR;
    assert_eq!(tls["certificate_chain"]["inline_string"], cert.as_str());
    let key_body = key.lines().nth(1).expect("a PEM body line");
    assert!(!text.contains(key_body), "the private key leaked");
    assert_eq!(
        c[2]["static_listeners"][0]["listener"]["traffic_direction"],
        "INBOUND"
    );
    assert_eq!(c[2]["static_listeners"][1]["listener"]["name"], "tcp");
    assert_eq!(c[3], json!({"@type": format!("{T}ScopedRoutesConfigDump")}));
    let route = &c[4]["static_route_configs"][0]["route_config"];
    assert_eq!(
        route["@type"],
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    );
    assert_eq!(route["name"], "local");
    assert_eq!(
        c[4]["static_route_configs"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(c[5], json!({"@type": format!("{T}SecretsConfigDump")}));
}

#[test]
fn resource_returns_the_elements() {
    let s = server();
    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_clusters",
    ));
    assert_eq!(
        types(&v),
        [
            "ClustersConfigDump.StaticCluster",
            "ClustersConfigDump.StaticCluster"
        ]
    );
    assert_eq!(v["configs"][1]["cluster"]["name"], "tls_backend");
    assert!(v["configs"][0]["last_updated"].is_string());

    let r = handle(&s, &Method::GET, "/config_dump?resource=foo");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()[http::header::CONTENT_TYPE], "text/plain");
    assert_eq!(body(r), "foo not found in config dump");

    let r = handle(&s, &Method::GET, "/config_dump?resource=dynamic_listeners");
    assert_eq!((r.status(), body(r)), (StatusCode::OK, "{}\n".to_string()));
    strict("{}");
}

#[test]
fn mask_applies_to_each_config_or_resource() {
    let s = server();
    let text = body(handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_clusters&mask=cluster.name",
    ));
    strict(&text);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cluster = format!("{T}ClustersConfigDump.StaticCluster");
    let cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    assert_eq!(
        v,
        json!({"configs": [
            {"@type": cluster, "cluster": {"@type": cds, "name": "backend"}},
            {"@type": cluster, "cluster": {"@type": cds, "name": "tls_backend"}},
        ]})
    );

    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?mask=static_clusters",
    ));
    assert_eq!(types(&v), ["ClustersConfigDump"]);
    assert_eq!(
        v["configs"][0]["static_clusters"].as_array().map(Vec::len),
        Some(2)
    );

    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?mask=bootstrap.node.id",
    ));
    assert_eq!(
        v,
        json!({"configs": [{"@type": format!("{T}BootstrapConfigDump"), "bootstrap": {"node": {"id": "test-node"}}}]})
    );

    let r = handle(&s, &Method::GET, "/config_dump?mask=foo");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body(r),
        "FieldMask foo could not be successfully applied to any configs."
    );
}

#[test]
fn name_regex_filters_resources_by_full_name() {
    let s = server();
    let v = json(handle(&s, &Method::GET, "/config_dump?name_regex=tls.*"));
    assert_eq!(types(&v).len(), 6);
    let clusters = v["configs"][1]["static_clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["cluster"]["name"], "tls_backend");
    assert!(v["configs"][2]
        .get("static_listeners")
        .is_none_or(|l| l == &json!([])));
    assert!(
        v["configs"][0]["bootstrap"].is_object(),
        "the bootstrap is not filtered"
    );

    // A partial match is no match, as with Envoy's RE2::FullMatch.
    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_clusters&name_regex=tls",
    ));
    assert_eq!(v, json!({}));
    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_route_configs&name_regex=local",
    ));
    assert_eq!(v["configs"][0]["route_config"]["name"], "local");

    let r = handle(&s, &Method::GET, "/config_dump?name_regex=(");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn include_eds_adds_endpoints_after_clusters() {
    let s = server();
    let text = body(handle(&s, &Method::GET, "/config_dump?include_eds"));
    strict(&text);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        types(&v)[1..3],
        ["ClustersConfigDump", "EndpointsConfigDump"]
    );
    let cla = &v["configs"][2]["static_endpoint_configs"][0]["endpoint_config"];
    assert_eq!(cla["cluster_name"], "backend");
    let lb = &cla["endpoints"][0]["lb_endpoints"][1];
    assert_eq!(lb["load_balancing_weight"], 3);
    assert_eq!(lb["health_status"], "HEALTHY");
    assert_eq!(cla["policy"]["overprovisioning_factor"], 140);

    let v = json(handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_endpoint_configs&include_eds",
    ));
    assert_eq!(
        types(&v),
        [
            "EndpointsConfigDump.StaticEndpointConfig",
            "EndpointsConfigDump.StaticEndpointConfig"
        ]
    );
    let r = handle(
        &s,
        &Method::GET,
        "/config_dump?resource=static_endpoint_configs",
    );
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
