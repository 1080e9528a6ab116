//! The gRPC statistics filter's settings (`envoy.filters.http.grpc_stats`): which calls get
//! per-method stats, whether the message counts go to filter state (Istio reads them there),
//! and whether the upstream request time is recorded.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use std::collections::HashSet;
use xds_proto::pb::envoy::extensions::filters::http::grpc_stats::v3::{
    filter_config::PerMethodStatSpecifier, FilterConfig,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatsFilter {
    /// `emit_filter_state`: the call's message counts are kept for Istio's metrics.
    pub emit_filter_state: bool,
    /// `enable_upstream_stats`: `upstream_rq_time`, from the last request byte sent upstream
    /// to the last response byte received.
    pub enable_upstream_stats: bool,
    pub methods: MethodStats,
}

/// Which calls are counted under `<service>.<method>.` and which only under the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodStats {
    /// `stats_for_all_methods: true`: every method its own stats, dots in the service name
    /// replaced by `_` when `replace_dots_in_grpc_service_name` says so. A call whose path is
    /// not `/<service>/<method>` is not counted at all.
    All { replace_dots: bool },
    /// `individual_method_stats_allowlist` (or neither field, which Envoy treats as an empty
    /// list): the listed methods get their own stats, every other call is counted under the
    /// cluster only. Keys are `<service>/<method>`, the path without its leading slash.
    Allowlist(HashSet<Box<str>>),
}

pub fn translate_grpc_stats(
    config: &FilterConfig,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<GrpcStatsFilter> {
    check(config, path, acks)?;
    let FilterConfig {
        emit_filter_state,
        enable_upstream_stats,
        replace_dots_in_grpc_service_name,
        per_method_stat_specifier,
    } = config;
    let methods = match per_method_stat_specifier {
        Some(PerMethodStatSpecifier::StatsForAllMethods(all)) if all.value => MethodStats::All {
            replace_dots: *replace_dots_in_grpc_service_name,
        },
        Some(PerMethodStatSpecifier::StatsForAllMethods(_)) | None => {
            MethodStats::Allowlist(HashSet::new())
        }
        Some(PerMethodStatSpecifier::IndividualMethodStatsAllowlist(list)) => {
            let p = path
                .field("individual_method_stats_allowlist")
                .field("services");
            let mut allowed = HashSet::new();
            for (i, service) in list.services.iter().enumerate() {
                // Envoy's validation: a service has a name and at least one method.
                if service.name.is_empty() {
                    return Err(p
                        .index(i)
                        .field("name")
                        .error("value length must be at least 1 characters"));
                }
                if service.method_names.is_empty() {
                    return Err(p
                        .index(i)
                        .field("method_names")
                        .error("value must contain at least 1 item(s)"));
                }
                for method in &service.method_names {
                    allowed.insert(format!("{}/{method}", service.name).into_boxed_str());
                }
            }
            MethodStats::Allowlist(allowed)
        }
    };
    Ok(GrpcStatsFilter {
        emit_filter_state: *emit_filter_state,
        enable_upstream_stats: *enable_upstream_stats,
        methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::pb::envoy::config::core::v3::{grpc_method_list::Service, GrpcMethodList};

    fn translate(config: &FilterConfig) -> Result<GrpcStatsFilter> {
        translate_grpc_stats(config, &FieldPath::root("f"), &mut Vec::new())
    }

    #[test]
    fn neither_field_is_an_empty_allowlist() {
        let f = translate(&FilterConfig::default()).expect("valid");
        assert_eq!(f.methods, MethodStats::Allowlist(HashSet::new()));
    }

    #[test]
    fn allowlist_keys_are_service_slash_method() {
        let config = FilterConfig {
            per_method_stat_specifier: Some(
                PerMethodStatSpecifier::IndividualMethodStatsAllowlist(GrpcMethodList {
                    services: vec![Service {
                        name: "a.B".into(),
                        method_names: vec!["C".into(), "D".into()],
                    }],
                }),
            ),
            ..Default::default()
        };
        let MethodStats::Allowlist(set) = translate(&config).expect("valid").methods else {
            panic!("an allowlist");
        };
        assert!(set.contains("a.B/C") && set.contains("a.B/D") && set.len() == 2);
    }

    #[test]
    fn a_service_without_methods_is_refused_by_path() {
        let config = FilterConfig {
            per_method_stat_specifier: Some(
                PerMethodStatSpecifier::IndividualMethodStatsAllowlist(GrpcMethodList {
                    services: vec![Service {
                        name: "a.B".into(),
                        method_names: vec![],
                    }],
                }),
            ),
            ..Default::default()
        };
        let err = translate(&config).expect_err("invalid").to_string();
        assert!(
            err.contains("individual_method_stats_allowlist.services[0].method_names"),
            "{err}"
        );
    }
}
