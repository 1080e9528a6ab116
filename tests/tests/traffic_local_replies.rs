//! Differential traffic tests for local replies: what a client sees when the proxy answers by
//! itself (no route, unknown cluster, no healthy upstream, connection refused, upstream
//! timeout, upstream reset before responding), over HTTP/1.1 and HTTP/2.

use std::time::Duration;
use tests::differential::{check, one_vhost, Known, Scenario};
use tests::scripted::Behaviour;
use tests::upstream::Reply;

const LOCAL: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply";
const ROUTER: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter";

/// Differences Outrigger documents (acknowledged fields); none for local replies.
const KNOWN: &[Known] = &[];

const ALL_CLUSTERS: &str = r#"
- match: { prefix: "/backend" }
  route: { cluster: backend }
- match: { prefix: "/empty" }
  route: { cluster: empty }
- match: { prefix: "/dead" }
  route: { cluster: dead }
- match: { prefix: "/slow" }
  route: { cluster: backend, timeout: 0.5s }
"#;

fn both_protocols(mut s: Scenario, path: &str) -> Scenario {
    s = s.get(path);
    s = s.curl(path, &["--http2-prior-knowledge"]);
    s.curl(path, &["--data-binary", "some body"])
}

fn scenarios() -> Vec<Scenario> {
    vec![
        both_protocols(
            Scenario::http("no_route_404", LOCAL, &one_vhost(ALL_CLUSTERS)),
            "/nowhere",
        ),
        both_protocols(
            Scenario::http(
                "unknown_cluster_503",
                ROUTER,
                &format!(
                    "validate_clusters: false\n{}",
                    one_vhost("- match: { prefix: / }\n  route: { cluster: missing }")
                ),
            ),
            "/x",
        ),
        Scenario::http(
            "unknown_cluster_custom_status",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-enum-config-route-v3-routeaction-clusternotfoundresponsecode",
            &format!(
                "validate_clusters: false\n{}",
                one_vhost(
                    "- match: { prefix: /404 }\n  route: { cluster: missing, cluster_not_found_response_code: NOT_FOUND }\n- match: { prefix: / }\n  route: { cluster: missing, cluster_not_found_response_code: INTERNAL_SERVER_ERROR }"
                )
            ),
        )
        .get("/404")
        .get("/500"),
        both_protocols(
            Scenario::http("no_healthy_upstream_503", ROUTER, &one_vhost(ALL_CLUSTERS)),
            "/empty",
        ),
        both_protocols(
            Scenario::http("connection_refused_503", ROUTER, &one_vhost(ALL_CLUSTERS)),
            "/dead",
        ),
        both_protocols(
            Scenario::http("upstream_timeout_504", ROUTER, &one_vhost(ALL_CLUSTERS))
                .upstream(Behaviour::Delay(Duration::from_secs(3))),
            "/slow",
        ),
        both_protocols(
            Scenario::http(
                "upstream_closes_before_response",
                ROUTER,
                &one_vhost(ALL_CLUSTERS),
            )
            .upstream(Behaviour::CloseBeforeResponse),
            "/backend",
        ),
        Scenario::http("upstream_error_status_passed", ROUTER, &one_vhost(ALL_CLUSTERS))
            .upstream(Behaviour::Reply(Reply {
                status: 503,
                headers: vec![("content-type".into(), "text/html".into())],
                body: "<b>down</b>".into(),
            }))
            .get("/backend")
            .curl("/backend", &["--http2-prior-knowledge"]),
        Scenario::http(
            "grpc_local_reply",
            "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply#local-reply-modification",
            &one_vhost(ALL_CLUSTERS),
        )
        .curl(
            "/empty",
            &["--http2-prior-knowledge", "-H", "content-type: application/grpc", "-H", "te: trailers"],
        )
        .curl(
            "/nowhere",
            &["--http2-prior-knowledge", "-H", "content-type: application/grpc"],
        ),
        Scenario::http(
            "route_timeout_header_override",
            ROUTER,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend, timeout: 5s }"),
        )
        .upstream(Behaviour::Delay(Duration::from_secs(3)))
        .curl("/", &["-H", "x-envoy-upstream-rq-timeout-ms: 300"]),
        Scenario::http(
            "upstream_head_and_204",
            ROUTER,
            &one_vhost("- match: { prefix: / }\n  route: { cluster: backend }"),
        )
        .upstream(Behaviour::Reply(Reply {
            status: 204,
            headers: vec![("x-no-content".into(), "1".into())],
            body: String::new(),
        }))
        .get("/")
        .curl("/", &["--http2-prior-knowledge"]),
    ]
}

#[test]
fn local_replies_match_envoy() {
    check("local_replies_match_envoy", &scenarios(), KNOWN);
}
