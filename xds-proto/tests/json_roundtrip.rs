//! The JSON mapping against documents shaped like real bootstraps.

use xds_proto::{
    parse_document, pb::envoy::config::bootstrap::v3::Bootstrap, to_json_value, DocumentFormat,
    ParseError, ParseOptions,
};

const YAML: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
static_resources:
  listeners:
  - name: web
    address:
      socket_address: { address: 0.0.0.0, port_value: 8080 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "hi" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8081 }
"#;

fn parse(text: &str, allow_unknown: bool) -> Result<Bootstrap, ParseError> {
    let options = ParseOptions {
        allow_unknown_fields: allow_unknown,
    };
    parse_document::<Bootstrap>(text, DocumentFormat::Yaml, options).map(|p| p.value)
}

#[test]
fn yaml_round_trips_through_canonical_json() {
    let bootstrap = parse(YAML, false).expect("parses");
    let json = to_json_value(&bootstrap).expect("serialises");
    let listener = &json["static_resources"]["listeners"][0];
    assert_eq!(listener["name"], "web");
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(hcm["stat_prefix"], "ingress");
    assert_eq!(
        json["static_resources"]["clusters"][0]["connect_timeout"],
        "0.250s"
    );
    // JSON back in gives the same message.
    let text = serde_json::to_string(&json).expect("json");
    let again = parse_document::<Bootstrap>(&text, DocumentFormat::Json, ParseOptions::default())
        .expect("parses json")
        .value;
    assert_eq!(again, bootstrap);
}

#[test]
fn unknown_field_names_its_path() {
    let text = YAML.replace(
        "stat_prefix: ingress",
        "stat_prefix: ingress\n          bogus_field: 1",
    );
    let err = parse(&text, false).expect_err("unknown field rejected");
    let message = err.to_string();
    assert!(message.contains("bogus_field"), "{message}");
    assert!(
        message.contains("static_resources.listeners[0]"),
        "{message}"
    );
    let lenient = parse_document::<Bootstrap>(
        &text,
        DocumentFormat::Yaml,
        ParseOptions {
            allow_unknown_fields: true,
        },
    )
    .expect("allowed");
    assert_eq!(lenient.unknown_fields.len(), 1);
}

#[test]
fn unknown_any_type_is_rejected() {
    let text = YAML.replace(
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.http.nope.v3.Nope",
    );
    assert!(parse(&text, false).is_err());
}

#[test]
fn istio_typed_struct_parses() {
    let text = r#"{"bootstrap_extensions":[{"name":"envoy.bootstrap.internal_listener","typed_config":{"@type":"type.googleapis.com/udpa.type.v1.TypedStruct","type_url":"type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener","value":{"buffer_size_kb":64}}}]}"#;
    let parsed = parse_document::<Bootstrap>(text, DocumentFormat::Json, ParseOptions::default())
        .expect("TypedStruct is in the pool");
    let json = to_json_value(&parsed.value).expect("serialises");
    assert_eq!(
        json["bootstrap_extensions"][0]["typed_config"]["value"]["buffer_size_kb"],
        64.0
    );
}
