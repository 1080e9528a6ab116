//! Config translation of a large listener: parsing YAML into protos and compiling the route
//! table of 1,000 routes (what a large RDS push costs, minus the wire decoding).

use criterion::{criterion_group, criterion_main, Criterion};
use outrigger::bootstrap::{load, Sources};
use outrigger::config::translate_bootstrap;
use std::hint::black_box;

fn translate(c: &mut Criterion) {
    let yaml = benches::bootstrap_with_routes(1_000, 10);
    let loaded = load(&Sources {
        config_yaml: Some(&yaml),
        ..Default::default()
    })
    .expect("bootstrap loads");
    c.bench_function("parse_yaml_1000_routes", |b| {
        b.iter(|| {
            load(&Sources {
                config_yaml: Some(black_box(&yaml)),
                ..Default::default()
            })
            .map(|l| l.is_default)
        })
    });
    c.bench_function("translate_1000_routes", |b| {
        b.iter(|| translate_bootstrap(black_box(&loaded.bootstrap)).is_ok())
    });
}

criterion_group!(benches, translate);
criterion_main!(benches);
