//! Differential traffic tests for headers: mutation at route, virtual host and route
//! configuration levels (append actions, removal, `%...%` substitutions), and the connection
//! manager's own headers (x-forwarded-for/-proto, x-envoy-external-address, x-request-id, via,
//! server, internal x-envoy-* sanitising, hop-by-hop headers).

use tests::differential::{check, one_vhost, Known, Scenario};
use tests::scripted::Behaviour;
use tests::upstream::Reply;

const HVO: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-headervalueoption";
const HDRS: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers";
const MANIP: &str = "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#custom-request-response-headers";
const HCM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto";

/// Differences Outrigger documents (acknowledged fields).
const KNOWN: &[Known] = &[];

/// The same header set at all three levels, so the precedence shows.
const LEVELS: &str = r#"
name: levels
request_headers_to_add:
- { header: { key: x-level, value: config }, append_action: APPEND_IF_EXISTS_OR_ADD }
- { header: { key: x-only-config, value: c } }
request_headers_to_remove: [x-remove-config]
response_headers_to_add:
- { header: { key: x-resp-level, value: config }, append_action: APPEND_IF_EXISTS_OR_ADD }
response_headers_to_remove: [x-upstream]
virtual_hosts:
- name: all
  domains: ["*"]
  request_headers_to_add:
  - { header: { key: x-level, value: vhost }, append_action: APPEND_IF_EXISTS_OR_ADD }
  request_headers_to_remove: [x-remove-vhost]
  response_headers_to_add:
  - { header: { key: x-resp-level, value: vhost }, append_action: APPEND_IF_EXISTS_OR_ADD }
  routes:
  - match: { prefix: "/" }
    route: { cluster: backend }
    request_headers_to_add:
    - { header: { key: x-level, value: route }, append_action: APPEND_IF_EXISTS_OR_ADD }
    request_headers_to_remove: [x-remove-route]
    response_headers_to_add:
    - { header: { key: x-resp-level, value: route }, append_action: APPEND_IF_EXISTS_OR_ADD }
"#;

const OVERWRITE_LEVELS: &str = r#"
name: overwrite_levels
request_headers_to_add:
- { header: { key: x-level, value: config }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
response_headers_to_add:
- { header: { key: x-resp-level, value: config }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
virtual_hosts:
- name: all
  domains: ["*"]
  request_headers_to_add:
  - { header: { key: x-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
  response_headers_to_add:
  - { header: { key: x-resp-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
  routes:
  - match: { prefix: "/" }
    route: { cluster: backend }
    request_headers_to_add:
    - { header: { key: x-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
    response_headers_to_add:
    - { header: { key: x-resp-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
"#;

fn upstream_with(headers: &[(&str, &str)]) -> Behaviour {
    let mut reply = Reply::text("from a\n");
    reply
        .headers
        .extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    Behaviour::Reply(reply)
}

/// Every `x-envoy-*` request header a client might send, to see which reach the upstream:
/// some go from any request that is not internal, more at the edge, the router's own always.
const CLIENT_ENVOY_HEADERS: &[&str] = &[
    "x-envoy-force-trace: 1",
    "x-envoy-internal: true",
    "x-envoy-ip-tags: t",
    "x-envoy-original-url: http://a/b",
    "x-envoy-original-path: /p",
    "x-envoy-decorator-operation: op",
    "x-envoy-downstream-service-cluster: c",
    "x-envoy-downstream-service-node: n",
    "x-envoy-external-address: 1.1.1.1",
    "x-envoy-upstream-alt-stat-name: alt",
    "x-envoy-expected-rq-timeout-ms: 5",
    "x-envoy-attempt-count: 3",
    "x-envoy-peer-metadata-id: id",
    "x-envoy-custom: kept",
];

fn envoy_headers(name: &'static str, hcm: &str) -> Scenario {
    let args: Vec<&str> = CLIENT_ENVOY_HEADERS
        .iter()
        .flat_map(|h| ["-H", h])
        .collect();
    Scenario::http(
        name,
        "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers",
        &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
    )
    .hcm(hcm)
    .curl("/", &args)
    .curl(
        "/",
        &[&["-H", "x-forwarded-for: 10.1.1.1"][..], &args[..]].concat(),
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::http("mutation_levels_append", MANIP, LEVELS)
            .get("/")
            .curl(
                "/",
                &[
                    "-H", "x-level: client", "-H", "x-remove-config: 1", "-H", "x-remove-vhost: 1",
                    "-H", "x-remove-route: 1",
                ],
            ),
        Scenario::http("mutation_levels_overwrite", MANIP, OVERWRITE_LEVELS)
            .get("/")
            .curl("/", &["-H", "x-level: client"])
            .upstream(upstream_with(&[("x-resp-level", "upstream")])),
        Scenario::http(
            "mutation_append_actions",
            HVO,
            &one_vhost(
                r#"
                - match: { prefix: "/" }
                  route: { cluster: backend }
                  request_headers_to_add:
                  - { header: { key: x-append, value: added }, append_action: APPEND_IF_EXISTS_OR_ADD }
                  - { header: { key: x-if-absent, value: added }, append_action: ADD_IF_ABSENT }
                  - { header: { key: x-overwrite, value: added }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                  - { header: { key: x-overwrite-only, value: added }, append_action: OVERWRITE_IF_EXISTS }
                  - { header: { key: x-legacy-false, value: added }, append: false }
                  - { header: { key: x-legacy-true, value: added }, append: true }
                  - { header: { key: x-empty, value: "" } }
                  - { header: { key: x-empty-kept, value: "" }, keep_empty_value: true }
                  response_headers_to_add:
                  - { header: { key: x-r-append, value: added }, append_action: APPEND_IF_EXISTS_OR_ADD }
                  - { header: { key: x-r-if-absent, value: added }, append_action: ADD_IF_ABSENT }
                  - { header: { key: x-r-overwrite, value: added }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                  - { header: { key: x-r-overwrite-only, value: added }, append_action: OVERWRITE_IF_EXISTS }
                  - { header: { key: x-r-missing-only, value: added }, append_action: OVERWRITE_IF_EXISTS }
                  response_headers_to_remove: [x-r-remove]
                "#,
            ),
        )
        .upstream(upstream_with(&[
            ("x-r-append", "up"),
            ("x-r-if-absent", "up"),
            ("x-r-overwrite", "up"),
            ("x-r-overwrite-only", "up"),
            ("x-r-remove", "up"),
        ]))
        .get("/")
        .curl(
            "/",
            &[
                "-H", "x-append: client", "-H", "x-if-absent: client", "-H", "x-overwrite: client",
                "-H", "x-overwrite-only: client", "-H", "x-legacy-false: client", "-H",
                "x-legacy-true: client",
            ],
        ),
        Scenario::http(
            "mutation_substitutions",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators",
            &one_vhost(
                r#"
                - match: { prefix: "/" }
                  route: { cluster: backend }
                  request_headers_to_add:
                  - { header: { key: x-remote, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } }
                  - { header: { key: x-local, value: "%DOWNSTREAM_LOCAL_ADDRESS%" } }
                  - { header: { key: x-protocol, value: "%PROTOCOL%" } }
                  - { header: { key: x-req, value: "%REQ(x-in)%" } }
                  - { header: { key: x-req-missing, value: "%REQ(x-missing)%" } }
                  - { header: { key: x-year-len, value: "[%START_TIME(%Y)%]" } }
                  - { header: { key: x-literal, value: "100%% sure" } }
                  response_headers_to_add:
                  - { header: { key: x-upstream-addr, value: "%UPSTREAM_REMOTE_ADDRESS%" } }
                  - { header: { key: x-resp-protocol, value: "%PROTOCOL%" } }
                "#,
            ),
        )
        .curl("/", &["-H", "x-in: copied"])
        .curl("/", &["--http2-prior-knowledge", "-H", "x-in: copied2"]),
        Scenario::http(
            "mutation_on_local_replies",
            MANIP,
            r#"
            name: local
            response_headers_to_add: [{ header: { key: x-config, value: c } }]
            virtual_hosts:
            - name: all
              domains: ["*"]
              response_headers_to_add: [{ header: { key: x-vhost, value: v } }]
              routes:
              - match: { path: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d\n" } }
                response_headers_to_add: [{ header: { key: x-route, value: r } }]
              - match: { path: "/redirect" }
                redirect: { path_redirect: "/to" }
                response_headers_to_add: [{ header: { key: x-route, value: r } }]
              - match: { path: "/dead" }
                route: { cluster: dead }
                response_headers_to_add: [{ header: { key: x-route, value: r } }]
            "#,
        )
        .get("/direct")
        .get("/redirect")
        .get("/dead")
        .get("/none"),
        Scenario::http(
            "forwarded_headers_default",
            HDRS,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .get("/")
        .curl("/", &["-H", "x-forwarded-for: 203.0.113.7", "-H", "x-forwarded-proto: https"])
        .curl("/", &["-H", "x-envoy-external-address: 1.2.3.4", "-H", "x-envoy-internal: true"]),
        Scenario::http(
            "forwarded_headers_use_remote_address",
            HDRS,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("use_remote_address: true")
        .get("/")
        .curl("/", &["-H", "x-forwarded-for: 203.0.113.7", "-H", "x-forwarded-proto: https"])
        .curl(
            "/",
            &[
                "-H", "x-envoy-retry-on: 5xx", "-H", "x-envoy-max-retries: 3", "-H",
                "x-envoy-upstream-rq-timeout-ms: 1", "-H", "x-envoy-internal: true", "-H",
                "x-envoy-external-address: 1.2.3.4", "-H", "x-envoy-custom: kept",
            ],
        ),
        envoy_headers("envoy_headers_behind_a_proxy", ""),
        envoy_headers("envoy_headers_at_the_edge", "use_remote_address: true"),
        envoy_headers(
            "envoy_headers_internal",
            "use_remote_address: true\ninternal_address_config: { cidr_ranges: [ { address_prefix: 127.0.0.0, prefix_len: 8 } ] }",
        ),
        Scenario::http(
            "forwarded_headers_trusted_hops",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-for",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("use_remote_address: true\nxff_num_trusted_hops: 1")
        .get("/")
        .curl("/", &["-H", "x-forwarded-for: 203.0.113.7"])
        .curl("/", &["-H", "x-forwarded-for: 198.51.100.1, 203.0.113.7"]),
        Scenario::http(
            "forwarded_headers_trusted_hops_without_remote_address",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-for",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("xff_num_trusted_hops: 1")
        .curl("/", &["-H", "x-forwarded-for: 198.51.100.1, 203.0.113.7"])
        .curl("/", &["-H", "x-forwarded-for: 203.0.113.7"]),
        Scenario::http(
            "forwarded_headers_skip_xff_append",
            HCM,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("use_remote_address: true\nskip_xff_append: true")
        .curl("/", &["-H", "x-forwarded-for: 203.0.113.7"]),
        Scenario::http(
            "request_id_generate_and_preserve",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-request-id",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .get("/")
        .curl("/", &["-H", "x-request-id: client-id-1"]),
        Scenario::http(
            "request_id_external_regenerated",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-request-id",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("use_remote_address: true")
        .curl("/", &["-H", "x-request-id: client-id-1"]),
        Scenario::http(
            "request_id_preserve_external_and_echo",
            HCM,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm(
            "use_remote_address: true\npreserve_external_request_id: true\nalways_set_request_id_in_response: true",
        )
        .curl("/", &["-H", "x-request-id: client-id-2"])
        .get("/"),
        Scenario::http(
            "request_id_not_generated",
            HCM,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("generate_request_id: false")
        .get("/")
        .curl("/", &["-H", "x-request-id: kept"]),
        Scenario::http(
            "via_header",
            HCM,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("via: outrigger-test")
        .upstream(upstream_with(&[("via", "1.1 upstream")]))
        .get("/")
        .curl("/", &["-H", "via: 1.0 client"]),
        Scenario::http(
            "server_header_overwrite",
            HCM,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .hcm("server_name: custom-server")
        .upstream(upstream_with(&[("server", "upstream-server")]))
        .get("/")
        .get("/again"),
        Scenario::http(
            "server_header_append_if_absent",
            HCM,
            r#"
            name: r
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { path: "/direct" }
                direct_response: { status: 200 }
              - match: { prefix: "/" }
                route: { cluster: backend }
            "#,
        )
        .hcm("server_header_transformation: APPEND_IF_ABSENT")
        .upstream(upstream_with(&[("server", "upstream-server")]))
        .get("/")
        .get("/direct"),
        Scenario::http(
            "server_header_pass_through",
            HCM,
            r#"
            name: r
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { path: "/direct" }
                direct_response: { status: 200 }
              - match: { prefix: "/" }
                route: { cluster: backend }
            "#,
        )
        .hcm("server_header_transformation: PASS_THROUGH")
        .upstream(upstream_with(&[("server", "upstream-server")]))
        .get("/")
        .get("/direct"),
        Scenario::http(
            "hop_by_hop_headers_stripped",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .upstream(upstream_with(&[
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "1"),
        ]))
        .curl(
            "/",
            &[
                "-H", "connection: keep-alive, x-conn-listed", "-H", "x-conn-listed: 1", "-H",
                "keep-alive: timeout=5", "-H", "proxy-connection: keep-alive", "-H", "te: trailers",
                "-H", "upgrade-insecure-requests: 1",
            ],
        )
        .curl("/", &["-H", "te: gzip"])
        .curl("/", &["--http2-prior-knowledge", "-H", "te: trailers"]),
        Scenario::http(
            "attempt_count_header",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-virtualhost-include-request-attempt-count",
            r#"
            name: r
            virtual_hosts:
            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
            "#,
        )
        .get("/"),
        Scenario::http(
            "upstream_response_headers_passed",
            "https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_connection_management",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .upstream(upstream_with(&[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("cache-control", "no-store"),
            ("x-Mixed-Case", "Value"),
        ]))
        .get("/")
        .curl("/", &["--http2-prior-knowledge"]),
        // The same route with and without the router's `suppress_envoy_headers`: the
        // expected timeout, original path and host, and upstream service time go, the
        // attempt count stays.
        Scenario::http("router_envoy_headers", SUPPRESS, ROUTER_HEADERS_ROUTES)
            .get("/old/x")
            .curl("/old/y", &["--http2-prior-knowledge"]),
        Scenario::http("router_suppress_envoy_headers", SUPPRESS, ROUTER_HEADERS_ROUTES)
            .router("suppress_envoy_headers: true")
            .get("/old/x")
            .curl("/old/y", &["--http2-prior-knowledge"])
            .get("/direct"),
    ]
}

const SUPPRESS: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/router/v3/router.proto#envoy-v3-api-field-extensions-filters-http-router-v3-router-suppress-envoy-headers";

const ROUTER_HEADERS_ROUTES: &str = r#"
name: r
virtual_hosts:
- name: all
  domains: ["*"]
  include_request_attempt_count: true
  include_attempt_count_in_response: true
  routes:
  - match: { prefix: "/old/" }
    route: { cluster: backend, prefix_rewrite: "/new/", host_rewrite_literal: rewritten.example, timeout: 7s }
  - match: { prefix: "/direct" }
    direct_response: { status: 200, body: { inline_string: "direct\n" } }
"#;

#[test]
fn headers_match_envoy() {
    check("headers_match_envoy", &scenarios(), KNOWN);
}
