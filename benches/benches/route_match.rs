//! Route selection over 10, 1,000 and 10,000 routes: the first, middle and last route, and a
//! miss. Matching is linear in routes today; issue 3 asks for better in the common cases, and
//! this benchmark is how that will be shown.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use outrigger::bootstrap::{load, Sources};
use outrigger::config::listener::NetworkFilter;
use outrigger::config::translate_bootstrap;
use std::hint::black_box;

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for routes in [10usize, 1_000, 10_000] {
        let yaml = benches::bootstrap_with_routes(routes, 10);
        let loaded = load(&Sources {
            config_yaml: Some(&yaml),
            ..Default::default()
        })
        .expect("bootstrap loads");
        let config = translate_bootstrap(&loaded.bootstrap).expect("bootstrap translates");
        let NetworkFilter::HttpConnectionManager(hcm) =
            &config.listeners[0].filter_chains[0].filters[0]
        else {
            panic!("the listener runs an HTTP connection manager");
        };
        let table = hcm.routes.current();
        let headers = http::HeaderMap::new();
        let head = outrigger::config::matcher::RequestHead::headers_only(&headers);
        for (label, path) in [
            ("first", "/api/v1/resource0".to_string()),
            ("middle", format!("/api/v1/resource{}", routes / 2)),
            ("last", format!("/api/v1/resource{}", routes - 1)),
            ("miss", "/nope".to_string()),
        ] {
            group.bench_with_input(BenchmarkId::new(label, routes), &path, |b, path| {
                b.iter(|| {
                    black_box(
                        table
                            .find_route(black_box("api.example.com"), black_box(path), "", &head)
                            .is_some(),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
