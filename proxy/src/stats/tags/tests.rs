use super::*;

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(n, v)| Tag {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

fn check(producer: &TagProducer, name: &str, extracted: &str, expected: &[(&str, &str)]) {
    let (got_name, mut got_tags) = producer.produce(name);
    assert_eq!(got_name, extracted, "tag-extracted name of {name}");
    let mut want = tags(expected);
    got_tags.sort();
    want.sort();
    assert_eq!(got_tags, want, "tags of {name}");
}

/// Cases from Envoy's statistics documentation and the stat names it lists.
/// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/statistics
#[test]
fn envoy_default_tags() {
    let p = TagProducer::envoy_default();
    check(
        &p,
        "cluster.test_cluster.upstream_rq_timeout",
        "cluster.upstream_rq_timeout",
        &[("envoy.cluster_name", "test_cluster")],
    );
    check(
        &p,
        "cluster.test_cluster.upstream_rq_200",
        "cluster.upstream_rq",
        &[
            ("envoy.cluster_name", "test_cluster"),
            ("envoy.response_code", "200"),
        ],
    );
    check(
        &p,
        "cluster.test_cluster.upstream_rq_2xx",
        "cluster.upstream_rq_xx",
        &[
            ("envoy.cluster_name", "test_cluster"),
            ("envoy.response_code_class", "2"),
        ],
    );
    check(
        &p,
        "http.ingress_http.downstream_rq_1xx",
        "http.downstream_rq_xx",
        &[
            ("envoy.http_conn_manager_prefix", "ingress_http"),
            ("envoy.response_code_class", "1"),
        ],
    );
    check(
        &p,
        "listener.127.0.0.1_3012.http.http_prefix.downstream_rq_5xx",
        "listener.http.downstream_rq_xx",
        &[
            ("envoy.listener_address", "127.0.0.1_3012"),
            ("envoy.http_conn_manager_prefix", "http_prefix"),
            ("envoy.response_code_class", "5"),
        ],
    );
    check(
        &p,
        "listener.[__1]_0.downstream_cx_total",
        "listener.downstream_cx_total",
        &[("envoy.listener_address", "[__1]_0")],
    );
    // The admin listener keeps its name: "admin" is not an address.
    check(
        &p,
        "listener.admin.downstream_cx_total",
        "listener.admin.downstream_cx_total",
        &[],
    );
    check(
        &p,
        "vhost.vhost_name.vcluster.vcluster_name.upstream_rq_time",
        "vhost.vcluster.upstream_rq_time",
        &[
            ("envoy.virtual_host", "vhost_name"),
            ("envoy.virtual_cluster", "vcluster_name"),
        ],
    );
    check(
        &p,
        "vhost.vh.route.rt.upstream_rq_200",
        "vhost.route.upstream_rq",
        &[
            ("envoy.virtual_host", "vh"),
            ("envoy.route", "rt"),
            ("envoy.response_code", "200"),
        ],
    );
    check(
        &p,
        "tcp.tcp_prefix.downstream_cx_total",
        "tcp.downstream_cx_total",
        &[("envoy.tcp_prefix", "tcp_prefix")],
    );
    check(
        &p,
        "listener_manager.worker_1.dispatcher.loop_duration_us",
        // Envoy removes the id and its dot only: `worker_` stays in the name.
        "listener_manager.worker_dispatcher.loop_duration_us",
        &[("envoy.worker_id", "1")],
    );
    check(
        &p,
        "http.rds_connection_manager.rds.route_config.123.update_success",
        "http.rds.update_success",
        &[
            ("envoy.http_conn_manager_prefix", "rds_connection_manager"),
            ("envoy.rds_route_config", "route_config.123"),
        ],
    );
    check(
        &p,
        "cluster.grpc_cluster.grpc.grpc_service_1.grpc_method_1.success",
        "cluster.grpc.success",
        &[
            ("envoy.cluster_name", "grpc_cluster"),
            ("envoy.grpc_bridge_service", "grpc_service_1"),
            ("envoy.grpc_bridge_method", "grpc_method_1"),
        ],
    );
    check(
        &p,
        "http.egress.user_agent.ios.downstream_cx_total",
        "http.user_agent.downstream_cx_total",
        &[
            ("envoy.http_conn_manager_prefix", "egress"),
            ("envoy.http_user_agent", "ios"),
        ],
    );
    check(
        &p,
        "mongo.mongo_filter.collection.test.callsite.c1.query.total",
        "mongo.collection.callsite.query.total",
        &[
            ("envoy.mongo_prefix", "mongo_filter"),
            ("envoy.mongo_collection", "test"),
            ("envoy.mongo_callsite", "c1"),
        ],
    );
    // A trailing `**` needs at least one token: the virtual cluster is not a tag here.
    check(
        &p,
        "vhost.vh.vcluster.vc",
        "vhost.vcluster.vc",
        &[("envoy.virtual_host", "vh")],
    );
    check(&p, "server.live", "server.live", &[]);
    check(
        &p,
        "server.worker_0.watchdog_miss",
        "server.worker_watchdog_miss",
        &[("envoy.worker_id", "0")],
    );
}

fn istio() -> TagProducer {
    // The golden is cloned beside the repository, as the tests crate expects too.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/istio-bootstrap/default_golden.json");
    let golden =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&golden).expect("golden JSON");
    let specs: Vec<TagSpec> = doc["stats_config"]["stats_tags"]
        .as_array()
        .expect("stats_tags")
        .iter()
        .map(|t| TagSpec::Regex {
            name: t["tag_name"].as_str().unwrap_or_default().to_string(),
            regex: t["regex"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    TagProducer::new(false, &specs).expect("Istio's stats_tags compile")
}

/// Istio's bootstrap tags, lookahead included (see istio-contract.md §3).
#[test]
fn istio_stats_tags() {
    let p = istio();
    check(
        &p,
        "cluster.outbound|9080||reviews.default.svc.cluster.local;.upstream_rq_200",
        "cluster.upstream_rq",
        &[
            (
                "cluster_name",
                "outbound|9080||reviews.default.svc.cluster.local",
            ),
            ("response_code", "200"),
        ],
    );
    check(
        &p,
        "cluster.xds-grpc.upstream_cx_total",
        "cluster.xds-grpc.upstream_cx_total",
        &[],
    );
    check(
        &p,
        "listener.0.0.0.0_15006.http.10.0.0.1_8080.downstream_rq_2xx",
        "listener.http.downstream_rq",
        &[
            ("listener_address", "0.0.0.0_15006"),
            ("http_conn_manager_listener_prefix", "10.0.0.1_8080"),
            ("response_code_class", "2xx"),
        ],
    );
    check(
        &p,
        "http.10.0.0.1_8080;.downstream_rq_total",
        "http.downstream_rq_total",
        &[("http_conn_manager_prefix", "10.0.0.1_8080")],
    );
    check(
        &p,
        "tcp.inbound|9080||;.downstream_cx_total",
        "tcp.downstream_cx_total",
        &[("tcp_prefix", "inbound|9080||;")],
    );
    check(
        &p,
        "http.inbound_0.0.0.0_9080;.rbac.allowed",
        "http.rbac",
        &[
            ("http_conn_manager_prefix", "inbound_0.0.0.0_9080"),
            ("authz_enforce_result", "allowed"),
        ],
    );
    check(
        &p,
        "server.main_thread.watchdog_miss",
        "server.watchdog_miss",
        &[("thread_name", "main_thread")],
    );
}

#[test]
fn configured_regex_group_rules() {
    // One group: it is both removed and the value.
    let p = TagProducer::new(
        false,
        &[TagSpec::Regex {
            name: "t".into(),
            regex: r"\.(x+)\.".into(),
        }],
    )
    .expect("compiles");
    check(&p, "a.xx.b", "a..b", &[("t", "xx")]);
    // No group: no tag.
    let p = TagProducer::new(
        false,
        &[TagSpec::Regex {
            name: "t".into(),
            regex: r"xx".into(),
        }],
    )
    .expect("compiles");
    check(&p, "a.xx.b", "a.xx.b", &[]);
    // Fixed values tag every stat; a default by name needs no regex.
    let p = TagProducer::new(
        false,
        &[
            TagSpec::Fixed {
                name: "mesh".into(),
                value: "m1".into(),
            },
            TagSpec::Builtin {
                name: "envoy.cluster_name".into(),
            },
        ],
    )
    .expect("compiles");
    check(
        &p,
        "cluster.c.upstream_rq_200",
        "cluster.upstream_rq_200",
        &[("mesh", "m1"), ("envoy.cluster_name", "c")],
    );
    assert!(TagProducer::new(
        false,
        &[TagSpec::Builtin {
            name: "nope".into()
        }]
    )
    .is_err());
    assert!(TagProducer::new(
        false,
        &[TagSpec::Regex {
            name: "t".into(),
            regex: "(".into()
        }]
    )
    .is_err());
}

#[test]
fn prefixes_follow_envoys_rule() {
    assert_eq!(regex_prefix(r"^cluster\.((.*?)\.)"), Some("cluster".into()));
    assert_eq!(regex_prefix(r"^listener(?=\.).*?"), Some("listener".into()));
    assert_eq!(regex_prefix(r"^cluster(\.(.+);)"), None);
    assert_eq!(regex_prefix(r"_rq(_(\d{3}))$"), None);
    assert_eq!(token_prefix("cluster.$.**"), Some("cluster".into()));
    assert_eq!(token_prefix("$.rbac.**"), None);
}
