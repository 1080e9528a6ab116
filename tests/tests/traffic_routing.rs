//! Differential traffic tests for routing: virtual host domain precedence, route matching and
//! route actions (cluster, weighted clusters, cluster_header, rewrites, redirects, direct
//! responses). Each scenario runs on Envoy and on Outrigger; what a client and the upstream
//! see must be the same.

use tests::differential::{check, one_vhost, Known, Scenario};

const VH: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-virtualhost";
const RM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routematch";
const HM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-headermatcher";
const RA: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction";
const RD: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-redirectaction";
const DR: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-directresponseaction";

/// Differences Outrigger documents (acknowledged fields); none in routing.
const KNOWN: &[Known] = &[];

/// Virtual hosts whose direct responses name the one chosen.
const DOMAINS: &str = r#"
name: domains
virtual_hosts:
- name: exact
  domains: ["api.example.com", "ported.example.com:8080"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "exact\n" } } }]
- name: suffix_long
  domains: ["*.api.example.com"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "suffix_long\n" } } }]
- name: suffix
  domains: ["*.example.com"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "suffix\n" } } }]
- name: prefix
  domains: ["api.*"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "prefix\n" } } }]
- name: any
  domains: ["*"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "any\n" } } }]
"#;

fn host(h: &str) -> [String; 2] {
    ["-H".to_string(), format!("host: {h}")]
}

fn domains(name: &'static str, hosts: &[&str]) -> Scenario {
    let mut s = Scenario::http(name, VH, DOMAINS);
    for h in hosts {
        let args = host(h);
        s = s.curl("/", &[&args[0], &args[1]]);
    }
    s
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // Domain precedence: exact, then longest *.suffix, then prefix.*, then *.
        domains(
            "vhost_precedence",
            &[
                "api.example.com",
                "x.api.example.com",
                "www.example.com",
                "api.other.org",
                "unknown.org",
                "API.EXAMPLE.COM",
            ],
        ),
        // A port in Host: matched as given, then without the port.
        domains(
            "vhost_host_with_port",
            &[
                "api.example.com:8080",
                "ported.example.com:8080",
                "ported.example.com",
                "www.example.com:1234",
                "api.other.org:99",
            ],
        ),
        {
            let mut s = Scenario::http(
                "vhost_ignore_port_in_host_matching",
                "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route.proto#envoy-v3-api-field-config-route-v3-routeconfiguration-ignore-port-in-host-matching",
                &format!("ignore_port_in_host_matching: true\n{}", DOMAINS.trim_start()),
            );
            for h in [
                "api.example.com:8080",
                "ported.example.com:8080",
                "ported.example.com",
                "[::1]:80",
                "www.example.com:1234",
                "api.example.com:",
            ] {
                let args = host(h);
                s = s.curl("/", &[&args[0], &args[1]]);
            }
            s
        },
        Scenario::http(
            "vhost_no_match_is_404",
            VH,
            r#"
            name: r
            virtual_hosts:
            - name: only
              domains: ["only.example.com"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
            "#,
        )
        .curl("/", &["-H", "host: other.example.com"])
        .curl("/", &["-H", "host: only.example.com"]),
        Scenario::http(
            "match_prefix_path_regex_order",
            RM,
            &one_vhost(
                r#"
                - match: { path: "/exact" }
                  direct_response: { status: 200, body: { inline_string: "path\n" } }
                - match: { safe_regex: { regex: "/re/[0-9]+" } }
                  direct_response: { status: 200, body: { inline_string: "regex\n" } }
                - match: { prefix: "/pre" }
                  direct_response: { status: 200, body: { inline_string: "prefix\n" } }
                "#,
            ),
        )
        .get("/exact")
        .get("/exact/more")
        .get("/exact?q=1")
        .get("/re/123")
        .get("/re/123x")
        .get("/prefix")
        .get("/pre")
        .get("/nothing"),
        Scenario::http(
            "match_path_separated_prefix",
            RM,
            &one_vhost(
                r#"
                - match: { path_separated_prefix: "/api" }
                  direct_response: { status: 200, body: { inline_string: "sep\n" } }
                "#,
            ),
        )
        .get("/api")
        .get("/api/")
        .get("/api/v1")
        .get("/api?x=1")
        .get("/apiv1")
        .get("/API"),
        Scenario::http(
            "match_case_insensitive",
            RM,
            &one_vhost(
                r#"
                - match: { prefix: "/Mixed", case_sensitive: false }
                  direct_response: { status: 200, body: { inline_string: "prefix\n" } }
                - match: { path: "/Exact", case_sensitive: false }
                  direct_response: { status: 200, body: { inline_string: "path\n" } }
                "#,
            ),
        )
        .get("/mixed/a")
        .get("/MIXED")
        .get("/exact")
        .get("/EXACT"),
        Scenario::http(
            "match_headers_string_matchers",
            HM,
            &one_vhost(
                r#"
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { exact: "e" } }] }
                  direct_response: { status: 200, body: { inline_string: "exact\n" } }
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { prefix: "pre" } }] }
                  direct_response: { status: 200, body: { inline_string: "prefix\n" } }
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { suffix: "suf" } }] }
                  direct_response: { status: 200, body: { inline_string: "suffix\n" } }
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { contains: "mid" } }] }
                  direct_response: { status: 200, body: { inline_string: "contains\n" } }
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { safe_regex: { regex: "r[0-9]+" } } }] }
                  direct_response: { status: 200, body: { inline_string: "regex\n" } }
                - match: { prefix: "/", headers: [{ name: x-m, string_match: { exact: "IC", ignore_case: true } }] }
                  direct_response: { status: 200, body: { inline_string: "ignore_case\n" } }
                "#,
            ),
        )
        .curl("/", &["-H", "x-m: e"])
        .curl("/", &["-H", "x-m: prefixed"])
        .curl("/", &["-H", "x-m: endsuf"])
        .curl("/", &["-H", "x-m: amidb"])
        .curl("/", &["-H", "x-m: r42"])
        .curl("/", &["-H", "x-m: r42x"])
        .curl("/", &["-H", "x-m: ic"])
        .curl("/", &["-H", "x-m: E"])
        .get("/"),
        Scenario::http(
            "match_headers_present_range_invert",
            HM,
            &one_vhost(
                r#"
                - match: { prefix: "/", headers: [{ name: x-range, range_match: { start: 10, end: 20 } }] }
                  direct_response: { status: 200, body: { inline_string: "range\n" } }
                - match: { prefix: "/", headers: [{ name: x-inv, string_match: { exact: "no" }, invert_match: true }] }
                  direct_response: { status: 200, body: { inline_string: "inverted\n" } }
                - match: { prefix: "/", headers: [{ name: x-present, present_match: true }] }
                  direct_response: { status: 200, body: { inline_string: "present\n" } }
                - match: { prefix: "/", headers: [{ name: x-absent, present_match: false }, { name: x-gate, string_match: { exact: "1" } }] }
                  direct_response: { status: 200, body: { inline_string: "absent\n" } }
                "#,
            ),
        )
        .curl("/", &["-H", "x-range: 10", "-H", "x-inv: no"])
        .curl("/", &["-H", "x-range: 20", "-H", "x-inv: no"])
        .curl("/", &["-H", "x-range: -5", "-H", "x-inv: no"])
        .curl("/", &["-H", "x-range: abc", "-H", "x-inv: no"])
        .curl("/", &["-H", "x-inv: yes"])
        .get("/")
        .curl("/", &["-H", "x-inv: no", "-H", "x-present: "])
        .curl("/", &["-H", "x-inv: no", "-H", "x-present;"])
        .curl("/", &["-H", "x-inv: no", "-H", "x-gate: 1"])
        .curl("/", &["-H", "x-inv: no", "-H", "x-gate: 1", "-H", "x-absent: 1"]),
        Scenario::http(
            "match_headers_treat_missing_as_empty",
            HM,
            &one_vhost(
                r#"
                - match: { prefix: "/", headers: [{ name: x-opt, string_match: { exact: "" }, treat_missing_header_as_empty: true }] }
                  direct_response: { status: 200, body: { inline_string: "empty-or-missing\n" } }
                "#,
            ),
        )
        .get("/")
        .curl("/", &["-H", "x-opt;"])
        .curl("/", &["-H", "x-opt: v"]),
        Scenario::http(
            "match_headers_repeated_values",
            HM,
            &one_vhost(
                r#"
                - match: { prefix: "/joined", headers: [{ name: x-multi, string_match: { exact: "a,b" } }] }
                  direct_response: { status: 200, body: { inline_string: "joined\n" } }
                - match: { prefix: "/second", headers: [{ name: x-multi, string_match: { exact: "b" } }] }
                  direct_response: { status: 200, body: { inline_string: "second\n" } }
                - match: { prefix: "/invert", headers: [{ name: x-multi, string_match: { exact: "a" }, invert_match: true }] }
                  direct_response: { status: 200, body: { inline_string: "invert\n" } }
                - match: { prefix: "/range", headers: [{ name: x-multi, range_match: { start: 1, end: 5 } }] }
                  direct_response: { status: 200, body: { inline_string: "range\n" } }
                "#,
            ),
        )
        .curl("/joined", &["-H", "x-multi: a", "-H", "x-multi: b"])
        .curl("/joined", &["-H", "x-multi: a,b"])
        .curl("/second", &["-H", "x-multi: a", "-H", "x-multi: b"])
        .curl("/second", &["--http2-prior-knowledge", "-H", "x-multi: a", "-H", "x-multi: b"])
        .curl("/invert", &["-H", "x-multi: a", "-H", "x-multi: b"])
        .curl("/invert", &["-H", "x-multi: b", "-H", "x-multi: c"])
        .curl("/range", &["-H", "x-multi: 9", "-H", "x-multi: 3"]),
        Scenario::http(
            "match_query_parameters",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-queryparametermatcher",
            &one_vhost(
                r#"
                - match: { prefix: "/", query_parameters: [{ name: debug, string_match: { exact: "1" } }, { name: flag, present_match: true }] }
                  direct_response: { status: 200, body: { inline_string: "both\n" } }
                - match: { prefix: "/", query_parameters: [{ name: q, string_match: { prefix: "ab", ignore_case: true } }] }
                  direct_response: { status: 200, body: { inline_string: "q\n" } }
                "#,
            ),
        )
        .get("/?debug=1&flag")
        .get("/?flag=&debug=1")
        .get("/?debug=2&flag")
        .get("/?q=ABC")
        .get("/?q=xab")
        .get("/?Q=abc")
        .get("/?q=a%62c"),
        Scenario::http(
            "match_grpc",
            RM,
            &one_vhost(
                r#"
                - match: { prefix: "/", grpc: {} }
                  direct_response: { status: 200, body: { inline_string: "grpc\n" } }
                - match: { prefix: "/" }
                  direct_response: { status: 200, body: { inline_string: "plain\n" } }
                "#,
            ),
        )
        .curl("/svc/M", &["-H", "content-type: application/grpc"])
        .curl("/svc/M", &["-H", "content-type: application/grpc+proto"])
        .curl("/svc/M", &["-H", "content-type: application/grpc-web"])
        .curl("/svc/M", &["-H", "content-type: application/json"]),
        Scenario::http(
            "match_runtime_fraction_all_or_nothing",
            RM,
            &one_vhost(
                r#"
                - match: { prefix: "/", runtime_fraction: { default_value: { numerator: 0 }, runtime_key: traffic.never } }
                  direct_response: { status: 200, body: { inline_string: "never\n" } }
                - match: { prefix: "/", runtime_fraction: { default_value: { numerator: 100 }, runtime_key: traffic.always } }
                  direct_response: { status: 200, body: { inline_string: "always\n" } }
                "#,
            ),
        )
        .get("/")
        .get("/again"),
        // Actions.
        Scenario::http(
            "action_cluster_get_and_post",
            RA,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .get("/a/b?c=d")
        .curl("/post", &["--data-binary", "payload", "-H", "content-type: text/plain"])
        .curl("/put", &["-X", "PUT", "--data-binary", "x"])
        .curl("/del", &["-X", "DELETE"]),
        Scenario::http(
            "action_weighted_clusters_deterministic",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-weightedcluster",
            &one_vhost(
                r#"
                - match: { prefix: "/to-b" }
                  route:
                    weighted_clusters:
                      clusters:
                      - { name: backend, weight: 0 }
                      - name: other
                        weight: 100
                        request_headers_to_add: [{ header: { key: x-wc, value: b } }]
                        response_headers_to_add: [{ header: { key: x-wc-resp, value: b } }]
                        request_headers_to_remove: [x-drop]
                        host_rewrite_literal: b.internal
                - match: { prefix: "/to-a" }
                  route:
                    weighted_clusters:
                      total_weight: 10
                      clusters:
                      - { name: backend, weight: 10 }
                      - { name: other, weight: 0 }
                "#,
            ),
        )
        .curl("/to-b", &["-H", "x-drop: 1"])
        .get("/to-b/2")
        .get("/to-a"),
        Scenario::http(
            "action_cluster_header",
            RA,
            &one_vhost("- match: { prefix: / }\n  route: { cluster_header: x-cluster }"),
        )
        .curl("/", &["-H", "x-cluster: other"])
        .curl("/", &["-H", "x-cluster: backend"])
        .curl("/", &["-H", "x-cluster: nope"])
        .get("/"),
        Scenario::http(
            "action_unknown_cluster_503",
            RA,
            &format!(
                "validate_clusters: false\n{}",
                one_vhost("- match: { prefix: / }\n  route: { cluster: missing }")
            ),
        )
        .get("/"),
        Scenario::http(
            "action_prefix_rewrite",
            RA,
            &one_vhost(
                r#"
                - match: { prefix: "/api/" }
                  route: { cluster: backend, prefix_rewrite: "/" }
                - match: { prefix: "/v1" }
                  route: { cluster: backend, prefix_rewrite: "/v2" }
                - match: { path_separated_prefix: "/sep" }
                  route: { cluster: backend, prefix_rewrite: "/new" }
                "#,
            ),
        )
        .get("/api/users?x=1")
        .get("/v1/things")
        .get("/v1")
        .get("/sep/x")
        .get("/sep"),
        Scenario::http(
            "action_regex_rewrite",
            RA,
            &one_vhost(
                r#"
                - match: { prefix: "/" }
                  route:
                    cluster: backend
                    regex_rewrite: { pattern: { regex: "^/service/([^/]+)(/.*)$" }, substitution: "\\2/instance/\\1" }
                "#,
            ),
        )
        .get("/service/foo/v1/api?q=1")
        .get("/other"),
        Scenario::http(
            "action_host_rewrite_literal_and_header",
            RA,
            &one_vhost(
                r#"
                - match: { prefix: "/literal" }
                  route: { cluster: backend, host_rewrite_literal: rewritten.example }
                - match: { prefix: "/header" }
                  route: { cluster: backend, host_rewrite_header: x-host }
                "#,
            ),
        )
        .get("/literal")
        .curl("/header", &["-H", "x-host: from-header.example"])
        .get("/header"),
        Scenario::http(
            "action_upstream_http2",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend_h2 }"),
        )
        .get("/h2")
        .curl("/h2post", &["--data-binary", "body"])
        .curl("/h2-from-h2", &["--http2-prior-knowledge"]),
        Scenario::http(
            "action_use_downstream_protocol",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto",
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend_downstream }"),
        )
        .get("/h1")
        .curl("/h2", &["--http2-prior-knowledge"])
        .curl("/h10", &["--http1.0"]),
        // Redirects: every response code.
        redirects(),
        Scenario::http(
            "redirect_rewrites",
            RD,
            &one_vhost(
                r#"
                - match: { prefix: "/https" }
                  redirect: { https_redirect: true }
                - match: { prefix: "/scheme" }
                  redirect: { scheme_redirect: ftp }
                - match: { prefix: "/host" }
                  redirect: { host_redirect: new.example }
                - match: { prefix: "/port" }
                  redirect: { port_redirect: 8443 }
                - match: { prefix: "/hostport" }
                  redirect: { host_redirect: new.example, port_redirect: 80 }
                - match: { prefix: "/path" }
                  redirect: { path_redirect: "/elsewhere?x=1" }
                - match: { prefix: "/old/" }
                  redirect: { prefix_rewrite: "/new/" }
                - match: { prefix: "/strip" }
                  redirect: { path_redirect: "/stripped", strip_query: true }
                - match: { prefix: "/keepq" }
                  redirect: { path_redirect: "/kept" }
                "#,
            ),
        )
        .get("/https/a?b=c")
        .get("/scheme")
        .get("/host/x?y")
        .get("/port")
        .get("/hostport")
        .get("/path?orig=1")
        .get("/old/thing?q")
        .get("/strip?a=1")
        .get("/keepq?a=1")
        .curl("/https", &["-H", "host: site.example:8080"])
        .curl("/https", &["-H", "x-forwarded-proto: https"]),
        Scenario::http(
            "direct_response_bodies",
            DR,
            &one_vhost(
                r#"
                - match: { path: "/ok" }
                  direct_response: { status: 200, body: { inline_string: "hello\n" } }
                - match: { path: "/empty" }
                  direct_response: { status: 204 }
                - match: { path: "/teapot" }
                  direct_response: { status: 418, body: { inline_string: "short and stout" } }
                - match: { path: "/bytes" }
                  direct_response: { status: 503, body: { inline_bytes: "aGk=" } }
                - match: { path: "/nobody" }
                  direct_response: { status: 500 }
                "#,
            ),
        )
        .get("/ok")
        .get("/empty")
        .get("/teapot")
        .get("/bytes")
        .get("/nobody")
        .curl("/ok", &["--http2-prior-knowledge"])
        .curl("/ok", &["-X", "POST", "--data-binary", "ignored"]),
        direct_response_body_file(),
    ]
}

/// A direct response whose body is a file, read when the configuration loads.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-datasource
fn direct_response_body_file() -> Scenario {
    let file =
        std::env::temp_dir().join(format!("outrigger-direct-body-{}.txt", std::process::id()));
    std::fs::write(&file, "from a file\n").expect("write the body file");
    Scenario::http(
        "direct_response_body_from_file",
        DR,
        &one_vhost(&format!(
            "- match: {{ prefix: \"/\" }}\n  direct_response: {{ status: 200, body: {{ filename: {} }} }}",
            file.display()
        )),
    )
    .get("/")
    .curl("/", &["--http2-prior-knowledge"])
}

fn redirects() -> Scenario {
    let mut routes = String::new();
    for code in [
        "MOVED_PERMANENTLY",
        "FOUND",
        "SEE_OTHER",
        "TEMPORARY_REDIRECT",
        "PERMANENT_REDIRECT",
    ] {
        routes.push_str(&format!(
            "- match: {{ prefix: \"/{code}\" }}\n  redirect: {{ path_redirect: \"/to\", response_code: {code} }}\n"
        ));
    }
    let mut s = Scenario::http("redirect_response_codes", RD, &one_vhost(&routes));
    for code in [
        "/MOVED_PERMANENTLY",
        "/FOUND",
        "/SEE_OTHER",
        "/TEMPORARY_REDIRECT",
        "/PERMANENT_REDIRECT",
    ] {
        s = s.get(code);
    }
    s.curl("/FOUND", &["--http2-prior-knowledge"])
}

#[test]
fn routing_matches_envoy() {
    check("routing_matches_envoy", &scenarios(), KNOWN);
}
