//! Differential tests for Zipkin tracing: the same configuration and requests through Envoy
//! and Outrigger; compared are the B3 headers upstream `a` receives (presence, sampled flag,
//! how span, parent and trace ids relate to the caller's) and the spans upstream `b` — the
//! collector cluster `other`, a real HTTP server storing what is POSTed — receives (names,
//! kinds, tags, id relationships, plausible times), random ids and times left out.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/tracing

use std::time::{Duration, Instant, SystemTime};
use tests::curl;
use tests::differential::{check, one_vhost, Known, Scenario, Side};

const DOC: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/tracing";

const KNOWN: &[Known] = &[];

const ROUTES: &str = r#"
- match: { prefix: "/decorated" }
  route: { cluster: backend }
  decorator: { operation: decorated-op }
- match: { prefix: "/" }
  route: { cluster: backend }
"#;

/// Only a direct response: other paths have no route (Envoy traces both local replies).
const LOCAL_ROUTES: &str = r#"
- match: { prefix: "/direct" }
  direct_response: { status: 200, body: { inline_string: "hi" } }
"#;

/// Istio's authorization filters in dry run: DENY policies as shadow rules (one matches
/// `/dry`), and enforced ALLOW rules that let everything through except `/denied`.
const DRY_RUN_RBAC: &str = r#"
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    shadow_rules:
      action: DENY
      policies:
        ns[foo]-policy[dry]-rule[0]:
          permissions: [ { url_path: { path: { prefix: /dry } } } ]
          principals: [ { any: true } ]
    shadow_rules_stat_prefix: istio_dry_run_deny_
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: DENY
      policies:
        ns[foo]-policy[deny]-rule[0]:
          permissions: [ { url_path: { path: { prefix: /denied } } } ]
          principals: [ { any: true } ]
"#;

/// The custom tags Istio adds for those results (`pilot/pkg/networking/core/tracing.go`).
fn istio_dry_run_tags() -> String {
    let tag = |name: &str, key: &str| {
        format!(
            "  - {{ tag: {name}, metadata: {{ kind: {{ request: {{}} }}, metadata_key: {{ key: envoy.filters.http.rbac, path: [ {{ key: {key} }} ] }} }} }}\n"
        )
    };
    [
        tag("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
        tag("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
        tag("enforced.result", "enforced_engine_result"),
        tag("enforced.policy", "enforced_effective_policy_id"),
        "  - { tag: other.metadata, metadata: { kind: { request: {} }, metadata_key: { key: istio_authn, path: [ { key: x } ] }, default_value: absent } }\n".to_string(),
        "  - { tag: empty.header, request_header: { name: x-absent } }\n".to_string(),
    ]
    .concat()
}

fn hcm(random: u32, collector: &str) -> String {
    hcm_with_tags(random, collector, "")
}

/// `hcm` with more custom tags (YAML list items).
fn hcm_with_tags(random: u32, collector: &str, extra_tags: &str) -> String {
    format!(
        r#"
use_remote_address: true
internal_address_config: {{ cidr_ranges: [ {{ address_prefix: 127.0.0.0, prefix_len: 8 }} ] }}
tracing:
  random_sampling: {{ value: {random} }}
  max_path_tag_length: 12
  custom_tags:
  - {{ tag: lit, literal: {{ value: v1 }} }}
  - {{ tag: hdr, request_header: {{ name: x-tag, default_value: none }} }}
{extra_tags}  provider:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: {collector}
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON
"#
    )
}

const CALLER_TRACE: &str = "463ac35c9f6413ad";
const CALLER_SPAN: &str = "a2fb4a1d1a96d312";
const CALLER_PARENT: &str = "0020000000000001";

/// Sends one request and describes the B3 headers upstream `a` received, relative to what
/// the caller sent.
fn send(side: &Side, path: &str, args: &[&str]) -> String {
    let before = side.a.requests().len();
    let status = curl::request("GET", &side.url(path), args)
        .map(|r| r.status.to_string())
        .unwrap_or_else(|f| format!("no response ({:?})", f.exit_code));
    let requests = side.a.requests();
    let Some(r) = requests.get(before) else {
        return format!("{path} {args:?}: {status}, nothing upstream\n");
    };
    let h = |n: &str| r.header(n).map(str::to_string);
    let rel = |v: Option<String>| match v.as_deref() {
        None => "absent".to_string(),
        Some(CALLER_TRACE) => "caller's trace".into(),
        Some(CALLER_SPAN) => "caller's span".into(),
        Some(CALLER_PARENT) => "caller's parent".into(),
        Some(v) if Some(v) == h("x-b3-traceid").as_deref() => "= trace id".into(),
        Some(v) => format!("new ({} hex)", v.len()),
    };
    let rid = h("x-request-id")
        .and_then(|v| v.chars().nth(14))
        .map_or("-".to_string(), |c| c.to_string());
    let b3 = h("b3").map(|v| {
        let parts: Vec<&str> = v.split('-').collect();
        let names: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| match i {
                2 => format!("sampled {p}"),
                _ => rel(Some(p.to_string())),
            })
            .collect();
        names.join(" / ")
    });
    format!(
        "{path} {args:?}: {status}; traceid {}, spanid {}, parent {}, sampled {:?}, b3 {:?}, request id mark {rid}\n",
        rel(h("x-b3-traceid")),
        rel(h("x-b3-spanid")),
        rel(h("x-b3-parentspanid")),
        h("x-b3-sampled"),
        b3,
    )
}

/// Waits (up to 9 s: reports go at 5 spans or every 5 s) for `count` spans at the collector,
/// then describes them, sorted by URL.
fn spans(side: &Side, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline && collected(side).len() < count {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A little more, for spans that must not come.
    std::thread::sleep(Duration::from_millis(300));
    let all = collected(side);
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let mut lines: Vec<String> = all
        .iter()
        .map(|s| {
            let tag = |k: &str| s["tags"][k].as_str().unwrap_or("(none)").to_string();
            let id = s["id"].as_str().unwrap_or("");
            let trace = s["traceId"].as_str().unwrap_or("");
            let id_rel = match id {
                CALLER_SPAN => "caller's span",
                _ if id == trace => "= trace id",
                _ => "new",
            };
            let parent = match s["parentId"].as_str() {
                None => "none",
                Some(CALLER_SPAN) => "caller's span",
                Some(CALLER_PARENT) => "caller's parent",
                Some(_) => "other",
            };
            let start = s["timestamp"].as_i64().unwrap_or(0);
            let duration = s["duration"].as_i64().unwrap_or(-1);
            let plausible = (now_us - start) < 60_000_000 && start <= now_us && duration >= 0;
            let mut keys: Vec<&String> = s["tags"]
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            keys.sort();
            format!(
                "  {} name={} kind={} trace={} id={id_rel} parent={parent} shared={} times plausible={plausible} service={} annotation={}\n    method={} status={} cluster={} flags={} ua={} lit={} hdr={} node={} request_size={}\n    tags={keys:?}\n",
                tag("http.url"),
                s["name"],
                s["kind"],
                if trace == CALLER_TRACE { "caller's" } else { "new" },
                s["shared"],
                s["localEndpoint"]["serviceName"],
                s["annotations"][0]["value"],
                tag("http.method"),
                tag("http.status_code"),
                tag("upstream_cluster"),
                tag("response_flags"),
                tag("user_agent"),
                tag("lit"),
                tag("hdr"),
                tag("node_id"),
                tag("request_size"),
            )
        })
        .collect();
    lines.sort();
    format!("{} spans\n{}", all.len(), lines.concat())
}

fn collected(side: &Side) -> Vec<serde_json::Value> {
    side.b
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v2/spans" && r.method == "POST")
        .flat_map(|r| {
            assert_eq!(r.header("content-type"), Some("application/json"));
            serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).unwrap_or_default()
        })
        .collect()
}

fn no_context(side: &Side) -> String {
    send(side, "/plain", &["-H", "user-agent: tester"])
}

fn caller_sampled(side: &Side) -> String {
    send(
        side,
        "/decorated/sampled",
        &[
            "-H",
            "x-b3-traceid: 463ac35c9f6413ad",
            "-H",
            "x-b3-spanid: a2fb4a1d1a96d312",
            "-H",
            "x-b3-parentspanid: 0020000000000001",
            "-H",
            "x-b3-sampled: 1",
            "-H",
            "x-tag: T",
        ],
    )
}

fn caller_unsampled(side: &Side) -> String {
    send(
        side,
        "/unsampled",
        &[
            "-H",
            "x-b3-traceid: 463ac35c9f6413ad",
            "-H",
            "x-b3-spanid: a2fb4a1d1a96d312",
            "-H",
            "x-b3-sampled: 0",
        ],
    )
}

fn caller_single_header(side: &Side) -> String {
    send(
        side,
        "/single",
        &[
            "-H",
            "b3: 463ac35c9f6413ad-a2fb4a1d1a96d312-1-0020000000000001",
        ],
    )
}

fn forced(side: &Side) -> String {
    send(side, "/forced", &["-H", "x-envoy-force-trace: 1"])
}

fn spans_of_sampled(side: &Side) -> String {
    spans(side, 4)
}

fn direct_response(side: &Side) -> String {
    send(side, "/direct", &[])
}

fn no_route(side: &Side) -> String {
    send(side, "/missing", &[])
}

fn spans_of_local_replies(side: &Side) -> String {
    spans(side, 2)
}

fn dry_run_matched(side: &Side) -> String {
    send(side, "/dry/x", &[])
}

fn dry_run_denied(side: &Side) -> String {
    send(side, "/denied", &[])
}

/// The spans with their authorization tags.
fn spans_with_authz_tags(side: &Side) -> String {
    let described = spans(side, 2);
    let mut tags: Vec<String> = collected(side)
        .iter()
        .map(|s| {
            let t = &s["tags"];
            format!(
                "{} deny_policy.name={} deny_policy.result={} enforced={} {} other={} empty.header={}\n",
                t["http.url"].as_str().unwrap_or(""),
                t["istio.authorization.dry_run.deny_policy.name"],
                t["istio.authorization.dry_run.deny_policy.result"],
                t["enforced.result"],
                t["enforced.policy"],
                t["other.metadata"],
                t["empty.header"],
            )
        })
        .collect();
    tags.sort();
    format!("{described}{}", tags.concat())
}

/// A fault filter that aborts requests carrying `x-envoy-fault-abort-request` and delays those
/// carrying `x-envoy-fault-delay-request`, with `filter_metadata`.
const FAULT_WITH_METADATA: &str = r#"
- name: chaos
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    abort: { header_abort: {}, percentage: { numerator: 100 } }
    delay: { header_delay: {}, percentage: { numerator: 100 } }
    filter_metadata: { reason: chaos-test, count: 1 }
"#;

/// Custom tags reading the fault filter's metadata (under the filter's name).
const FAULT_TAGS: &str = "  - { tag: fault.reason, metadata: { kind: { request: {} }, metadata_key: { key: chaos, path: [ { key: reason } ] }, default_value: none } }\n  - { tag: fault.n, metadata: { kind: { request: {} }, metadata_key: { key: chaos, path: [ { key: count } ] } } }\n";

fn fault_aborted(side: &Side) -> String {
    send(
        side,
        "/aborted",
        &["-H", "x-envoy-fault-abort-request: 503"],
    )
}

fn fault_delayed(side: &Side) -> String {
    send(side, "/delayed", &["-H", "x-envoy-fault-delay-request: 10"])
}

fn fault_none(side: &Side) -> String {
    send(side, "/untouched", &[])
}

/// The spans with the tags read from the fault filter's metadata: set when a fault was
/// injected, the default (or nothing) otherwise.
fn spans_with_fault_tags(side: &Side) -> String {
    let described = spans(side, 3);
    let mut tags: Vec<String> = collected(side)
        .iter()
        .map(|s| {
            let t = &s["tags"];
            format!(
                "{} fault.reason={} fault.n={}\n",
                t["http.url"].as_str().unwrap_or(""),
                t["fault.reason"],
                t["fault.n"],
            )
        })
        .collect();
    tags.sort();
    format!("{described}{}", tags.concat())
}

fn spans_of_unsampled(side: &Side) -> String {
    spans(side, 1)
}

fn dead_collector_stats(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(6500));
    let stats = side
        .proxy
        .get("/stats?filter=^tracing%5C.zipkin%5C.(spans_sent|reports_failed|reports_sent|reports_dropped)$")
        .body;
    stats
        .lines()
        .map(|l| {
            let (name, value) = l.split_once(": ").unwrap_or((l, ""));
            let v: u64 = value.trim().parse().unwrap_or(0);
            format!("  {name}: {}\n", if v > 0 { "some" } else { "none" })
        })
        .collect()
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::http("zipkin_random_sampling_100", DOC, &one_vhost(ROUTES))
            .hcm(&hcm(100, "other"))
            .custom(no_context)
            .custom(caller_sampled)
            .custom(caller_unsampled)
            .custom(caller_single_header)
            .custom(spans_of_sampled),
        Scenario::http("zipkin_random_sampling_0", DOC, &one_vhost(ROUTES))
            .hcm(&hcm(0, "other"))
            .custom(no_context)
            .custom(forced)
            .custom(spans_of_unsampled),
        Scenario::http("zipkin_local_replies", DOC, &one_vhost(LOCAL_ROUTES))
            .hcm(&hcm(100, "other"))
            .custom(direct_response)
            .custom(no_route)
            .custom(spans_of_local_replies),
        Scenario::http("zipkin_rbac_dry_run_tags", DOC, &one_vhost(ROUTES))
            .hcm(&hcm_with_tags(100, "other", &istio_dry_run_tags()))
            .filters(DRY_RUN_RBAC)
            .custom(dry_run_matched)
            .custom(dry_run_denied)
            .custom(spans_with_authz_tags),
        Scenario::http(
            "zipkin_fault_filter_metadata_tags",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/fault/v3/fault.proto#envoy-v3-api-field-extensions-filters-http-fault-v3-httpfault-filter-metadata",
            &one_vhost(ROUTES),
        )
        .hcm(&hcm_with_tags(100, "other", FAULT_TAGS))
        .filters(FAULT_WITH_METADATA)
        .custom(fault_aborted)
        .custom(fault_delayed)
        .custom(fault_none)
        .custom(spans_with_fault_tags),
        Scenario::http("zipkin_dead_collector", DOC, &one_vhost(ROUTES))
            .hcm(&hcm(100, "dead"))
            .custom(no_context)
            .custom(no_context)
            .custom(dead_collector_stats),
    ]
}

#[test]
fn zipkin_tracing_matches_envoy() {
    check("zipkin_tracing_matches_envoy", &scenarios(), KNOWN);
}
