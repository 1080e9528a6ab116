//! Per-request building blocks: header mutation (literal and with command operators), stat
//! increments through resolved handles, a pick over 1,000 hosts for every load balancer
//! (weighted and not), and a header hash policy. Each must stay far below a microsecond. The
//! header-mutation figures include cloning a 10-header request map per iteration, measured
//! on its own as `header_map_clone_10`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use outrigger::config::address::Endpoint;
use outrigger::config::header_mutation::{AppendAction, HeaderMutation, HeaderTemplate};
use outrigger::config::load_balancing::LbPolicy;
use outrigger::format::{Context, HeaderSource, KeptHeaders, Template};
use outrigger::stats::Store;
use outrigger::upstream::{Host, HostSet, HostStats};
use std::hint::black_box;
use std::sync::Arc;

fn context(headers: &HeaderMap) -> Context<'_> {
    Context {
        downstream_remote: Some(([10, 0, 0, 1], 5555).into()),
        downstream_local: Some(([10, 0, 0, 2], 8080).into()),
        upstream_remote: Some("10.0.0.3:9000"),
        start: std::time::SystemTime::now(),
        protocol: Some(http::Version::HTTP_11),
        request_headers: Some(HeaderSource::Map(headers)),
        stream: None,
        downstream_tls: None,
    }
}

fn header_mutation(c: &mut Criterion) {
    let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).expect("header name");
    let literal = HeaderMutation {
        remove: vec![name("x-remove-me")],
        add: vec![
            (
                name("x-a"),
                HeaderTemplate::Literal(HeaderValue::from_static("1")),
                AppendAction::OverwriteIfExistsOrAdd,
            ),
            (
                name("x-b"),
                HeaderTemplate::Literal(HeaderValue::from_static("2")),
                AppendAction::AppendIfExistsOrAdd,
            ),
        ],
    };
    let template = Template::parse("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%").expect("template");
    let formatted = HeaderMutation {
        remove: Vec::new(),
        add: vec![(
            name("x-client"),
            HeaderTemplate::Formatted {
                template,
                keep_empty: false,
            },
            AppendAction::OverwriteIfExistsOrAdd,
        )],
    };
    let mut base = HeaderMap::new();
    for i in 0..10 {
        base.insert(name(&format!("x-h{i}")), HeaderValue::from_static("value"));
    }
    let snapshot = base.clone();
    // The baseline the two mutation figures include.
    c.bench_function("header_map_clone_10", |b| {
        b.iter(|| black_box(base.clone().len()))
    });
    c.bench_function("header_mutation_literal", |b| {
        b.iter(|| {
            let mut headers = base.clone();
            literal.apply(&mut headers, &context(&snapshot));
            black_box(headers.len())
        })
    });
    c.bench_function("header_mutation_formatted", |b| {
        b.iter(|| {
            let mut headers = base.clone();
            formatted.apply(&mut headers, &context(&snapshot));
            black_box(headers.len())
        })
    });
}

fn stats(c: &mut Criterion) {
    let store = Store::new();
    let counter = store.counter("cluster.backend.upstream_rq_total");
    let gauge = store.gauge("cluster.backend.upstream_rq_active");
    let histogram = store.histogram("cluster.backend.upstream_rq_time");
    c.bench_function("stats_counter_inc", |b| b.iter(|| counter.inc()));
    c.bench_function("stats_gauge_inc_dec", |b| {
        b.iter(|| {
            gauge.inc();
            gauge.dec()
        })
    });
    c.bench_function("stats_histogram_record", |b| {
        b.iter(|| histogram.record(black_box(3.7)))
    });
}

fn host_list(n: u16, weighted: bool) -> Vec<Arc<Host>> {
    (0..n)
        .map(|i| {
            let port = 10_000 + i;
            Arc::new(Host {
                address: Endpoint::Tcp(([127, 0, 0, 1], port).into()),
                hostname: String::new(),
                weight: if weighted { 1 + u32::from(i % 7) } else { 1 },
                priority: 0,
                locality: Default::default(),
                authority: format!("127.0.0.1:{port}").parse().expect("authority"),
                transport: outrigger::upstream::transport::Transport::Plain,
                stats: HostStats::default(),
                health: Default::default(),
                pools: Default::default(),
                istio_peer: None,
            })
        })
        .collect()
}

fn hosts(n: u16, weighted: bool) -> HostSet {
    HostSet::new(host_list(n, weighted))
}

fn balancer(c: &mut Criterion) {
    let plain = hosts(1000, false);
    let weighted = hosts(1000, true);
    c.bench_function("round_robin_pick_1000_hosts", |b| {
        b.iter(|| black_box(plain.pick().is_some()))
    });
    c.bench_function("weighted_round_robin_pick_1000_hosts", |b| {
        b.iter(|| black_box(weighted.pick().is_some()))
    });
    let policies = [
        (
            "least_request",
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
        ),
        ("random", LbPolicy::Random),
        (
            "ring_hash",
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 << 20,
                use_hostname: false,
            },
        ),
        (
            "maglev",
            LbPolicy::Maglev {
                table_size: 65537,
                use_hostname: false,
            },
        ),
    ];
    for (name, policy) in &policies {
        for (label, weighted) in [("", false), ("weighted_", true)] {
            let set = HostSet::with_policy(host_list(1000, weighted), policy);
            let mut key: u64 = 0;
            c.bench_function(&format!("{label}{name}_pick_1000_hosts"), |b| {
                b.iter(|| {
                    // A different hash each pick (the hashing balancers' input).
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(set.pick_hashed(Some(key)).is_some())
                })
            });
        }
    }
    // Building happens when the host set changes, off the request path; measured to show
    // what an endpoint update costs.
    let list = host_list(1000, true);
    for (name, policy) in &policies[2..] {
        c.bench_function(&format!("{name}_build_1000_hosts"), |b| {
            b.iter(|| black_box(HostSet::with_policy(list.clone(), policy).hosts.len()))
        });
    }
}

fn hash_policy(c: &mut Criterion) {
    use outrigger::config::hash_policy::{translate_hash_policy, HashInput};
    use xds_proto::pb::envoy::config::route::v3::route_action::{hash_policy as hp, HashPolicy};
    let policy = translate_hash_policy(
        &[HashPolicy {
            terminal: false,
            policy_specifier: Some(hp::PolicySpecifier::Header(hp::Header {
                header_name: "x-user".into(),
                regex_rewrite: None,
            })),
        }],
        &outrigger::config::error::FieldPath::root("hash_policy"),
    )
    .expect("policy");
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("user-12345"));
    let input = HashInput {
        headers: &headers,
        query: "",
        remote: Some(([10, 0, 0, 1], 5555).into()),
    };
    c.bench_function("hash_policy_header", |b| {
        b.iter(|| black_box(policy.compute(black_box(&input)).hash))
    });
}

/// Rendering one access log line at the end of a stream: Istio's default text format and a
/// 12-field JSON format (the per-request cost access logs add, besides the channel send).
fn access_log(c: &mut Criterion) {
    use outrigger::format::json::{JsonFormat, JsonNode};
    use outrigger::format::StreamInfo;
    const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("5f0b5e8c-8d1e-4a57-9a0e-2f6c1e4b7a90"),
    );
    let mut response = HeaderMap::new();
    response.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("3"),
    );
    let info = StreamInfo {
        method: Some(http::Method::GET),
        path: Some(http::uri::PathAndQuery::from_static("/api/v1/items?page=2")),
        authority: Some(HeaderValue::from_static(
            "reviews.default.svc.cluster.local:9080",
        )),
        response_code: 200,
        response_code_details: Some("via_upstream".into()),
        bytes_sent: 1234,
        duration: Some(std::time::Duration::from_millis(4)),
        upstream_host: Some(http::uri::Authority::from_static("10.0.0.3:9080")),
        upstream_cluster: Some(Arc::from(
            "outbound|9080||reviews.default.svc.cluster.local",
        )),
        upstream_local_address: Some(([10, 0, 0, 2], 40000).into()),
        route_name: Some(Arc::from("default")),
        response_headers: KeptHeaders::keep(
            &response,
            &[HeaderName::from_static("x-envoy-upstream-service-time")],
        ),
        ..StreamInfo::default()
    };
    // An access log reads the few request headers its stream kept, as the proxy's does.
    let logged: Vec<HeaderName> = [
        "x-envoy-original-path",
        "x-forwarded-for",
        "user-agent",
        "x-request-id",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    let kept = KeptHeaders::keep(&headers, &logged);
    let ctx = Context {
        stream: Some(&info),
        request_headers: Some(HeaderSource::Kept(&kept)),
        ..context(&headers)
    };
    let text = Template::parse(ISTIO).expect("Istio's format parses");
    c.bench_function("access_log_istio_text_line", |b| {
        b.iter(|| {
            let mut line = String::with_capacity(256);
            text.render_log(black_box(&ctx), false, &mut line);
            black_box(line)
        })
    });
    let field = |s: &str| JsonNode::Template(Template::parse(s).expect("parses"));
    let json = JsonFormat::new(
        [
            ("start_time", "%START_TIME%"),
            ("method", "%REQ(:METHOD)%"),
            ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
            ("protocol", "%PROTOCOL%"),
            ("response_code", "%RESPONSE_CODE%"),
            ("response_flags", "%RESPONSE_FLAGS%"),
            ("bytes_sent", "%BYTES_SENT%"),
            ("duration", "%DURATION%"),
            ("user_agent", "%REQ(USER-AGENT)%"),
            ("request_id", "%REQ(X-REQUEST-ID)%"),
            ("upstream_host", "%UPSTREAM_HOST%"),
            ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), field(v)))
        .collect(),
        false,
    );
    c.bench_function("access_log_json_line_12_fields", |b| {
        b.iter(|| {
            let mut line = String::with_capacity(256);
            json.render(black_box(&ctx), &mut line);
            black_box(line)
        })
    });
}

criterion_group!(
    benches,
    header_mutation,
    stats,
    balancer,
    hash_policy,
    access_log
);
criterion_main!(benches);
