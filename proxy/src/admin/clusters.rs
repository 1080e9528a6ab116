//! `/clusters`: per cluster its circuit breaker thresholds, and per host its stats and state,
//! as Envoy's `cluster::host::stat::value` lines or (`?format=json`) `envoy.admin.v3.Clusters`.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--clusters
//!
//! Health flags and success rates come from health checking and outlier detection
//! (`upstream/health.rs`). Hosts of every priority are listed, in priority order, each with its
//! priority; localities are not kept yet, so every host is in an empty locality.

use super::{config_dump::address_proto, json, text, AdminResponse, Query};
use crate::config::circuit_breakers::Priority;
use crate::server::Server;
use crate::upstream::{ClusterRuntime, HealthFlag, Host};
use http::StatusCode;
use std::sync::atomic::Ordering;
use xds_proto::pb::envoy::admin::v3::{
    simple_metric::Type, ClusterStatus, Clusters, HostHealthStatus, HostStatus, SimpleMetric,
};
use xds_proto::pb::envoy::config::cluster::v3::{circuit_breakers::Thresholds, CircuitBreakers};
use xds_proto::pb::envoy::config::core::v3::{HealthStatus, Locality, RoutingPriority};
use xds_proto::pb::envoy::r#type::v3::Percent;
use xds_proto::pb::google::protobuf::UInt32Value;

pub fn handle(server: &Server, query: &Query) -> AdminResponse {
    let filter = match query.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::Regex::new(f) {
            Ok(re) => Some(re),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}")),
        },
        None => None,
    };
    let all = server.clusters.all();
    let clusters: Vec<_> = all
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|re| re.is_match(&c.config.name)))
        .collect();
    if query.get("format") == Some("json") {
        let statuses = Clusters {
            cluster_statuses: clusters.iter().map(|c| status(c)).collect(),
        };
        return json::message_response(&statuses, false);
    }
    let mut out = String::new();
    for cluster in clusters {
        text_lines(cluster, &mut out);
    }
    text(StatusCode::OK, out)
}

/// Thresholds for the DEFAULT and HIGH priorities, as the cluster was translated (Envoy's
/// defaults where unset): max connections, pending requests, requests and retries.
fn thresholds(cluster: &ClusterRuntime) -> [(u32, u32, u32, u32); 2] {
    [Priority::Default, Priority::High].map(|p| {
        let t = cluster.config.circuit_breakers.thresholds(p);
        (
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries,
        )
    })
}

type Stat = (&'static str, u64);

/// Host counters then gauges, each alphabetical, as Envoy lists them.
fn host_stats(host: &Host) -> ([Stat; 6], [Stat; 3]) {
    let s = &host.stats;
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    (
        [
            ("cx_connect_fail", v(&s.cx_connect_fail)),
            ("cx_total", v(&s.cx_total)),
            ("rq_error", v(&s.rq_error)),
            ("rq_success", v(&s.rq_success)),
            ("rq_timeout", v(&s.rq_timeout)),
            ("rq_total", v(&s.rq_total)),
        ],
        [
            ("cx_active", v(&s.cx_active)),
            ("rq_active", v(&s.rq_active)),
            // Pending requests are counted per cluster (`upstream_rq_pending_active`), not per host.
            ("rq_pending_active", 0),
        ],
    )
}

fn text_lines(cluster: &ClusterRuntime, out: &mut String) {
    let name = &cluster.config.name;
    out.push_str(&format!("{name}::observability_name::{name}\n"));
    if let Some(averages) = cluster.health.outlier_averages() {
        let names = [
            "success_rate_average",
            "success_rate_ejection_threshold",
            "local_origin_success_rate_average",
            "local_origin_success_rate_ejection_threshold",
        ];
        for (stat, value) in names.iter().zip(averages) {
            out.push_str(&format!("{name}::outlier::{stat}::{}\n", six_digits(value)));
        }
    }
    for (priority, (cx, pending, rq, retries)) in ["default_priority", "high_priority"]
        .iter()
        .zip(thresholds(cluster))
    {
        out.push_str(&format!("{name}::{priority}::max_connections::{cx}\n"));
        out.push_str(&format!(
            "{name}::{priority}::max_pending_requests::{pending}\n"
        ));
        out.push_str(&format!("{name}::{priority}::max_requests::{rq}\n"));
        out.push_str(&format!("{name}::{priority}::max_retries::{retries}\n"));
    }
    out.push_str(&format!("{name}::added_via_api::false\n"));
    for host in cluster.hosts().hosts.iter() {
        let prefix = format!("{name}::{}", host.address);
        let (counters, gauges) = host_stats(host);
        let mut all: Vec<_> = counters.iter().chain(gauges.iter()).collect();
        all.sort_by_key(|(stat, _)| *stat);
        for (stat, value) in all {
            out.push_str(&format!("{prefix}::{stat}::{value}\n"));
        }
        out.push_str(&format!("{prefix}::hostname::{}\n", host.hostname));
        out.push_str(&format!(
            "{prefix}::health_flags::{}\n",
            host.health.flags_text()
        ));
        out.push_str(&format!("{prefix}::weight::{}\n", host.weight));
        for line in ["region::", "zone::", "sub_zone::", "canary::false"] {
            out.push_str(&format!("{prefix}::{line}\n"));
        }
        out.push_str(&format!("{prefix}::priority::{}\n", host.priority));
        out.push_str(&format!(
            "{prefix}::success_rate::{}\n",
            six_digits(host.health.success_rate())
        ));
        out.push_str(&format!(
            "{prefix}::local_origin_success_rate::{}\n",
            six_digits(host.health.local_origin_success_rate())
        ));
    }
}

/// A rate as Envoy prints a double: six significant digits, no trailing zeros.
fn six_digits(v: f64) -> String {
    if v.fract() == 0.0 {
        return format!("{v}");
    }
    let decimals = 5usize.saturating_sub(v.abs().log10().floor().max(0.0) as usize);
    let s = format!("{v:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn percent(v: f64) -> Option<Percent> {
    (v >= 0.0).then_some(Percent { value: v })
}

fn status(cluster: &ClusterRuntime) -> ClusterStatus {
    let name = cluster.config.name.clone();
    let averages = cluster.health.outlier_averages();
    let thresholds = thresholds(cluster)
        .into_iter()
        .zip([RoutingPriority::Default, RoutingPriority::High])
        .map(|((cx, pending, rq, retries), priority)| Thresholds {
            priority: priority as i32,
            max_connections: Some(UInt32Value { value: cx }),
            max_pending_requests: Some(UInt32Value { value: pending }),
            max_requests: Some(UInt32Value { value: rq }),
            max_retries: Some(UInt32Value { value: retries }),
            ..Default::default()
        })
        .collect();
    let host_statuses = cluster
        .hosts()
        .hosts
        .iter()
        .map(|host| {
            let (counters, gauges) = host_stats(host);
            let metric = |kind: Type| {
                move |(name, value): &(&str, u64)| SimpleMetric {
                    r#type: kind as i32,
                    value: *value,
                    name: name.to_string(),
                }
            };
            HostStatus {
                address: Some(address_proto(&host.address)),
                stats: counters
                    .iter()
                    .map(metric(Type::Counter))
                    .chain(gauges.iter().map(metric(Type::Gauge)))
                    .collect(),
                health_status: Some(HostHealthStatus {
                    eds_health_status: HealthStatus::Healthy as i32,
                    failed_outlier_check: host.health.has(HealthFlag::FailedOutlierCheck),
                    failed_active_health_check: host.health.has(HealthFlag::FailedActiveHc),
                    ..Default::default()
                }),
                // Envoy sets the rates only once an interval had enough requests.
                success_rate: percent(host.health.success_rate()),
                local_origin_success_rate: percent(host.health.local_origin_success_rate()),
                weight: host.weight,
                priority: host.priority,
                hostname: host.hostname.clone(),
                locality: Some(Locality::default()),
            }
        })
        .collect();
    ClusterStatus {
        name: name.clone(),
        host_statuses,
        circuit_breakers: Some(CircuitBreakers {
            thresholds,
            ..Default::default()
        }),
        observability_name: name,
        success_rate_ejection_threshold: averages.and_then(|a| percent(a[1])),
        local_origin_success_rate_ejection_threshold: averages.and_then(|a| percent(a[3])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{body, json, server};
    use http::Method;

    #[test]
    fn text_lines_for_a_static_cluster() {
        let s = server();
        let b = body(handle(&s, &Method::GET, "/clusters?filter=^backend$"));
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines.len(), 10 + 2 * 19, "{b}");
        assert_eq!(lines[0], "backend::observability_name::backend");
        assert_eq!(lines[1], "backend::default_priority::max_connections::1024");
        assert_eq!(lines[8], "backend::high_priority::max_retries::3");
        assert_eq!(lines[9], "backend::added_via_api::false");
        assert_eq!(lines[10], "backend::127.0.0.1:8081::cx_active::0");
        assert_eq!(lines[18], "backend::127.0.0.1:8081::rq_total::0");
        assert_eq!(lines[19], "backend::127.0.0.1:8081::hostname::");
        assert_eq!(lines[20], "backend::127.0.0.1:8081::health_flags::healthy");
        assert_eq!(lines[21], "backend::127.0.0.1:8081::weight::1");
        assert!(lines.contains(&"backend::127.0.0.1:8082::weight::3"));
        assert_eq!(
            lines[28],
            "backend::127.0.0.1:8081::local_origin_success_rate::-1"
        );
    }

    #[test]
    fn json_cluster_statuses() {
        let s = server();
        let v = json(handle(&s, &Method::GET, "/clusters?format=json"));
        let backend = &v["cluster_statuses"][0];
        assert_eq!(backend["name"], "backend");
        assert_eq!(backend["observability_name"], "backend");
        let host = &backend["host_statuses"][1];
        assert_eq!(host["address"]["socket_address"]["port_value"], 8082);
        assert_eq!(host["weight"], 3);
        assert_eq!(host["health_status"]["eds_health_status"], "HEALTHY");
        assert_eq!(
            host["stats"][0],
            serde_json::json!({"name": "cx_connect_fail"})
        );
        assert_eq!(
            host["stats"][6],
            serde_json::json!({"type": "GAUGE", "name": "cx_active"})
        );
        assert_eq!(host["locality"], serde_json::json!({}));
        let thresholds = &backend["circuit_breakers"]["thresholds"];
        assert_eq!(
            thresholds[0],
            serde_json::json!({"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3})
        );
        assert_eq!(thresholds[1]["priority"], "HIGH");
    }
}
