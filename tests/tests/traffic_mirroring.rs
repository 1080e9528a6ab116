//! Differential tests for request mirroring (`request_mirror_policies`): the copy upstream
//! `b` (cluster `other`) receives — method, path, headers (the host with `-shadow`), body —
//! beside the original to upstream `a`, for GET and POST over HTTP/1.1 and HTTP/2, with the
//! suffix disabled, with the shadow cluster from a header, and with a fraction of 0%.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-routeaction-requestmirrorpolicy

use std::time::{Duration, Instant};
use tests::curl;
use tests::differential::{check, one_vhost, response_text, Known, Scenario, Side};

const DOC: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-routeaction-requestmirrorpolicy";

const KNOWN: &[Known] = &[];

const ROUTES: &str = r#"
- match: { prefix: "/keep-host" }
  route: { cluster: backend, request_mirror_policies: [ { cluster: other, disable_shadow_host_suffix_append: true } ] }
- match: { prefix: "/by-header" }
  route: { cluster: backend, request_mirror_policies: [ { cluster_header: x-mirror-to } ] }
- match: { prefix: "/never" }
  route: { cluster: backend, request_mirror_policies: [ { cluster: other, runtime_fraction: { default_value: { numerator: 0 } } } ] }
- match: { prefix: "/" }
  route: { cluster: backend, request_mirror_policies: [ { cluster: other } ] }
"#;

/// Runs curl against `path`, then waits (up to 2 s) for upstream `b` to have received
/// `copies` more requests: a copy is fire and forget, so it may land after the answer.
fn request_and_wait(side: &Side, path: &str, args: &[&str], copies: usize) -> String {
    let before = side.b.requests().len();
    let response = curl::request(
        if args.contains(&"--data-binary") {
            "POST"
        } else {
            "GET"
        },
        &side.url(path),
        args,
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while side.b.requests().len() < before + copies && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    match response {
        Ok(r) => response_text(r.status, &r.headers, r.body.as_bytes()),
        Err(f) => format!("  no response: curl exit {:?}\n", f.exit_code),
    }
}

fn get(side: &Side) -> String {
    request_and_wait(side, "/get", &[], 1)
}

fn post(side: &Side) -> String {
    request_and_wait(
        side,
        "/post",
        &["--data-binary", "the body of the request"],
        1,
    )
}

fn post_h2(side: &Side) -> String {
    request_and_wait(
        side,
        "/post-h2",
        &["--http2-prior-knowledge", "--data-binary", "over h2"],
        1,
    )
}

fn keep_host(side: &Side) -> String {
    request_and_wait(side, "/keep-host", &["-H", "host: kept.example:8080"], 1)
}

fn by_header(side: &Side) -> String {
    request_and_wait(side, "/by-header", &["-H", "x-mirror-to: other"], 1)
}

fn by_unknown_header(side: &Side) -> String {
    // No such cluster: no copy (waits the 2 s for one that must not come).
    request_and_wait(side, "/by-header", &["-H", "x-mirror-to: nowhere"], 1)
}

fn never(side: &Side) -> String {
    request_and_wait(side, "/never", &[], 1)
}

fn cluster_stats(side: &Side) -> String {
    let stats = side
        .proxy
        .get("/stats?filter=^cluster%5C.other%5C.upstream_rq_(total|completed|2xx)$")
        .body;
    let mut lines: Vec<&str> = stats.lines().collect();
    lines.sort();
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::http("mirror_get_and_post", DOC, &one_vhost(ROUTES))
            .custom(get)
            .custom(post)
            .custom(post_h2)
            .custom(cluster_stats),
        Scenario::http("mirror_options", DOC, &one_vhost(ROUTES))
            .custom(keep_host)
            .custom(by_header)
            .custom(never),
        Scenario::http(
            "mirror_to_an_unknown_header_cluster",
            DOC,
            &one_vhost(ROUTES),
        )
        .custom(by_unknown_header),
    ]
}

#[test]
fn mirroring_matches_envoy() {
    check("mirroring_matches_envoy", &scenarios(), KNOWN);
}
