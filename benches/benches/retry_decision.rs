//! The retry decision on the request path: reading a request's retry controls (with and
//! without a route policy, no `x-envoy-*` headers: the common case), and deciding after an
//! attempt (a 200 that ends the request, a 503 that is retried).

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, StatusCode};
use outrigger::config::retry_policy::{RetryOn, RetryPolicy};
use outrigger::http::retry::{controls, Attempt, RetryState};
use outrigger::stats::Store;
use outrigger::upstream::ClusterStats;
use std::hint::black_box;
use std::time::Duration;

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "9f1c6a8e-4a8e-4c55-9d0a-7b1f3f9d1e2a"),
        ("x-forwarded-proto", "http"),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    h
}

fn retry_decision(c: &mut Criterion) {
    let policy = RetryPolicy {
        retry_on: RetryOn::parse("5xx,reset,connect-failure", false, |_| {}),
        num_retries: 2,
        ..RetryPolicy::header_only()
    };
    let stats = ClusterStats::new(&Store::new(), "bench");
    let timeout = Some(Duration::from_secs(15));
    let mut group = c.benchmark_group("retry_decision");
    let headers = request_headers();
    group.bench_function("controls/no_policy", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| black_box(controls(h, None, timeout).retry.is_some()),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("controls/policy", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| black_box(controls(h, Some(&policy), timeout).retry.is_some()),
            criterion::BatchSize::SmallInput,
        )
    });
    let response = HeaderMap::new();
    group.bench_function("decide/200", |b| {
        b.iter(|| {
            let mut state = RetryState::new(&policy);
            black_box(state.decide(
                Attempt::Response(black_box(StatusCode::OK), &response),
                true,
                &stats,
            ))
        })
    });
    group.bench_function("decide/503_retried", |b| {
        b.iter(|| {
            let mut state = RetryState::new(&policy);
            black_box(state.decide(
                Attempt::Response(black_box(StatusCode::SERVICE_UNAVAILABLE), &response),
                true,
                &stats,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, retry_decision);
criterion_main!(benches);
