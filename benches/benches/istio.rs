//! The per-request cost of Istio's HTTP filters: the server side of the metadata exchange
//! (read a cached peer from the request, strip it, answer with ours) plus recording the four
//! standard metrics at stream end (one series lookup, then atomics), and the client side
//! (add ours to the request, read the server's from the response).

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use outrigger::config::istio::{IstioHttp, MetadataExchange, Reporter, StatsPlugin};
use outrigger::config::istio_node::{exchange_value, LocalWorkload};
use outrigger::http::istio::IstioRuntime;
use outrigger::stats::Store;
use std::hint::black_box;
use std::sync::Arc;
use xds_proto::pb::google::protobuf::{value::Kind, Struct, Value};

fn metadata(workload: &str) -> Struct {
    let mut md = Struct::default();
    for (k, v) in [
        ("WORKLOAD_NAME", workload),
        ("NAMESPACE", "default"),
        ("CLUSTER_ID", "Kubernetes"),
    ] {
        md.fields.insert(
            k.into(),
            Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        );
    }
    md
}

fn runtime(inbound: bool, store: &Arc<Store>) -> IstioRuntime {
    let md = metadata(if inbound { "server-v1" } else { "client-v1" });
    let config = Arc::new(IstioHttp {
        local: Arc::new(LocalWorkload::new(
            "sidecar~10.0.0.1~x.default~default.svc",
            Some(&md),
            "",
            "",
        )),
        exchange: MetadataExchange {
            discover_downstream: inbound,
            propagate_downstream: inbound,
            discover_upstream: !inbound,
            propagate_upstream: !inbound,
        },
        stats: Some(StatsPlugin {
            reporter: if inbound {
                Reporter::Destination
            } else {
                Reporter::Source
            },
            disable_host_header_fallback: inbound,
            tcp_reporting_duration: std::time::Duration::from_secs(5),
        }),
        inbound,
    });
    IstioRuntime::new(&config, store)
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "server.default.svc.cluster.local"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("x-request-id", "6b1c2a1e-0000-4000-8000-000000000000"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn istio(c: &mut Criterion) {
    let store = Store::new();
    let uri: http::Uri = "/api/v1/items".parse().expect("uri");
    let peer =
        HeaderValue::from_str(&exchange_value(&metadata("client-v1"), "", "")).expect("value");
    let info = outrigger::format::StreamInfo {
        response_code: 200,
        duration: Some(std::time::Duration::from_millis(3)),
        bytes_sent: 120,
        ..Default::default()
    };
    let server = runtime(true, &store);
    c.bench_function("istio_server_exchange_and_record", |b| {
        b.iter_batched_ref(
            || {
                let mut h = request_headers();
                h.insert("x-envoy-peer-metadata", peer.clone());
                h.insert(
                    "x-envoy-peer-metadata-id",
                    HeaderValue::from_static("sidecar~a"),
                );
                (h, HeaderMap::new())
            },
            |(req, resp)| {
                let mut r = server.on_request(&uri, req);
                server.on_response(&mut r, resp, true);
                server.record(&mut r, &info, None);
                black_box(r);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let client = runtime(false, &store);
    c.bench_function("istio_client_exchange_and_record", |b| {
        b.iter_batched_ref(
            || {
                let mut resp = HeaderMap::new();
                resp.insert("x-envoy-peer-metadata", peer.clone());
                (request_headers(), resp)
            },
            |(req, resp)| {
                let mut r = client.on_request(&uri, req);
                client.on_response(&mut r, resp, true);
                client.record(&mut r, &info, None);
                black_box(r);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("request_headers_setup_only", |b| {
        b.iter_batched_ref(
            || {
                let mut h = request_headers();
                h.insert("x-envoy-peer-metadata", peer.clone());
                (h, HeaderMap::new())
            },
            |h| {
                black_box(&h);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, istio);
criterion_main!(benches);
