//! `/config_dump`: the loaded configuration as an `envoy.admin.v3.ConfigDump`, in Envoy's
//! order (bootstrap, clusters, [endpoints], listeners, scoped routes, routes, secrets), with
//! secrets redacted. `?resource`, `?mask` and `?name_regex` are applied in `dump_query`.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump

use super::dump_query::{self, DumpError};
use super::{json, redact::redacted, server_info, AdminResponse, Query};
use crate::config::cluster::Discovery;
use crate::server::Server;
use crate::xds::Kind;
use http::StatusCode;
use prost::{Message, Name};
use xds_proto::pb::envoy::admin::v3::endpoints_config_dump::DynamicEndpointConfig;
use xds_proto::pb::envoy::admin::v3::{
    clusters_config_dump::StaticCluster, endpoints_config_dump::StaticEndpointConfig,
    listeners_config_dump::StaticListener, routes_config_dump::StaticRouteConfig,
    secrets_config_dump::StaticSecret, BootstrapConfigDump, ClustersConfigDump,
    EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump, ScopedRoutesConfigDump,
    SecretsConfigDump,
};
use xds_proto::pb::envoy::config::core::v3::{
    address, socket_address, Address, HealthStatus, Locality, Pipe, SocketAddress,
};
use xds_proto::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment::Policy, lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint,
    LbEndpoint, LocalityLbEndpoints,
};
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use xds_proto::pb::google::protobuf::UInt32Value;

pub fn handle(server: &Server, query: &Query) -> AdminResponse {
    let configs = match configs(server, query.has("include_eds")) {
        Ok(configs) => configs,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    match dump_query::apply(
        configs,
        query.get("resource"),
        query.get("mask"),
        query.get("name_regex"),
    ) {
        Ok(dump) => super::json_response(&dump),
        Err(DumpError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(DumpError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// Envoy answers config dump errors as bare `text/plain`.
fn error(status: StatusCode, message: String) -> AdminResponse {
    super::respond(status, "text/plain", message)
}

/// Each config of the dump as JSON with its `@type`, in Envoy's order.
pub fn configs(server: &Server, include_eds: bool) -> Result<Vec<serde_json::Value>, String> {
    let updated = Some(json::timestamp(server.started_wall));
    let statics = server
        .bootstrap
        .static_resources
        .clone()
        .unwrap_or_default();

    let mut bootstrap = server.bootstrap.clone();
    bootstrap.node = Some(server_info::node(server));
    let mut out = vec![config(&BootstrapConfigDump {
        bootstrap: Some(redacted(&bootstrap)),
        last_updated: updated,
    })?];

    out.push(config(&ClustersConfigDump {
        static_clusters: statics
            .clusters
            .iter()
            .map(|c| StaticCluster {
                cluster: Some(json::pack(&redacted(c))),
                last_updated: updated,
            })
            .collect(),
        version_info: server.xds.version(Kind::Cluster),
        dynamic_active_clusters: dynamic::clusters(server, false),
        dynamic_warming_clusters: dynamic::clusters(server, true),
    })?);
    if include_eds {
        out.push(config(&endpoints(server))?);
    }

    out.push(config(&ListenersConfigDump {
        static_listeners: statics
            .listeners
            .iter()
            .map(|l| StaticListener {
                listener: Some(json::pack(&redacted(l))),
                last_updated: updated,
            })
            .collect(),
        version_info: server.xds.version(Kind::Listener),
        dynamic_listeners: dynamic::listeners(server),
    })?);
    out.push(config(&ScopedRoutesConfigDump::default())?);
    out.push(config(&RoutesConfigDump {
        static_route_configs: statics
            .listeners
            .iter()
            .flat_map(inline_route_configs)
            .map(|r| StaticRouteConfig {
                route_config: Some(json::pack(&redacted(&r))),
                last_updated: updated,
            })
            .collect(),
        dynamic_route_configs: dynamic::routes(server),
    })?);
    out.push(config(&SecretsConfigDump {
        static_secrets: statics
            .secrets
            .iter()
            .map(|s| StaticSecret {
                name: s.name.clone(),
                last_updated: updated,
                secret: Some(json::pack(&redacted(s))),
            })
            .collect(),
        dynamic_active_secrets: dynamic::secrets(server),
        dynamic_warming_secrets: dynamic::warming_secrets(server),
    })?);
    Ok(out)
}

fn config<M: Message + Name>(message: &M) -> Result<serde_json::Value, String> {
    Ok(json::with_type(
        &M::type_url(),
        json::message(message, false)?,
    ))
}

/// The route tables written inline in the listener's HTTP connection managers: Envoy lists
/// each one as a static route config.
fn inline_route_configs(listener: &Listener) -> Vec<RouteConfiguration> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .flat_map(|chain| &chain.filters)
        .filter_map(|filter| match &filter.config_type {
            Some(xds_proto::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                any,
            )) => xds_proto::unpack::<HttpConnectionManager>(any).ok(),
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => Some(rc),
            _ => None,
        })
        .collect()
}

/// `?include_eds`: each cluster's current hosts as a normalised ClusterLoadAssignment, the way
/// Envoy prints static endpoint configs (explicit weights, HEALTHY, the overprovisioning
/// factor, one locality entry per priority).
fn endpoints(server: &Server) -> EndpointsConfigDump {
    let mut dynamic_endpoint_configs = Vec::new();
    let mut static_endpoint_configs = Vec::new();
    for cluster in server.clusters.all().iter() {
        let hosts = cluster.hosts();
        let endpoint = |h: &crate::upstream::Host| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(address_proto(&h.address)),
                health_check_config: Some(Default::default()),
                hostname: h.hostname.clone(),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value { value: h.weight }),
            ..Default::default()
        };
        // Hosts are in priority order: one entry per priority present.
        let mut localities: Vec<LocalityLbEndpoints> = Vec::new();
        for h in &hosts.hosts {
            match localities.last_mut() {
                Some(l) if l.priority == h.priority => l.lb_endpoints.push(endpoint(h)),
                _ => localities.push(LocalityLbEndpoints {
                    locality: Some(Locality::default()),
                    lb_endpoints: vec![endpoint(h)],
                    load_balancing_weight: Some(UInt32Value { value: 0 }),
                    priority: h.priority,
                    ..Default::default()
                }),
            }
        }
        if localities.is_empty() {
            localities.push(LocalityLbEndpoints {
                locality: Some(Locality::default()),
                load_balancing_weight: Some(UInt32Value { value: 0 }),
                ..Default::default()
            });
        }
        let assignment = ClusterLoadAssignment {
            cluster_name: cluster.config.name.clone(),
            endpoints: localities,
            policy: Some(Policy {
                overprovisioning_factor: Some(UInt32Value {
                    value: hosts.priorities.overprovisioning_factor,
                }),
                weighted_priority_health: hosts.priorities.weighted_priority_health,
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Discovery::Eds { service_name, .. } = &cluster.config.discovery {
            let record = server.xds.active(Kind::Endpoint, service_name);
            // Envoy 1.40 leaves version_info empty here (observed in tests/tests/xds_ads.rs).
            dynamic_endpoint_configs.push(DynamicEndpointConfig {
                endpoint_config: Some(json::pack(&assignment)),
                last_updated: record.map(|r| json::timestamp(r.last_updated)),
                ..Default::default()
            });
            continue;
        }
        // Envoy prints no last_updated for static endpoint configs.
        static_endpoint_configs.push(StaticEndpointConfig {
            endpoint_config: Some(json::pack(&assignment)),
            last_updated: None,
        });
    }
    EndpointsConfigDump {
        static_endpoint_configs,
        dynamic_endpoint_configs,
    }
}

/// An internal endpoint as Envoy's `Address` proto.
pub fn address_proto(endpoint: &crate::config::address::Endpoint) -> Address {
    use crate::config::address::Endpoint as E;
    let address = match endpoint {
        E::Tcp(a) => address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        }),
        E::Unix(path) => address::Address::Pipe(Pipe {
            path: path.display().to_string(),
            mode: 0,
        }),
    };
    Address {
        address: Some(address),
    }
}

/// The sections fed by xDS, from what the control plane sent (`server.xds`).
mod dynamic {
    use super::{json, redacted, Server};
    use crate::xds::records::{Failure, Kind, Record};
    use xds_proto::pb::envoy::admin::v3::{
        clusters_config_dump::DynamicCluster,
        listeners_config_dump::{DynamicListener, DynamicListenerState},
        routes_config_dump::DynamicRouteConfig,
        secrets_config_dump::DynamicSecret,
        UpdateFailureState,
    };
    use xds_proto::pb::envoy::config::cluster::v3::Cluster;
    use xds_proto::pb::envoy::config::listener::v3::Listener;
    use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
    use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use xds_proto::pb::google::protobuf::Any;
    use xds_proto::XdsMessage;

    /// The resource with secrets redacted, as Envoy prints it.
    fn clean<M: XdsMessage + prost::Message + prost::Name + Default>(
        any: &Any,
    ) -> Option<xds_proto::pb::google::protobuf::Any> {
        let message: M = xds_proto::unpack(any).ok()?;
        Some(json::pack(&redacted(&message)))
    }

    fn failure<M: XdsMessage + prost::Message + prost::Name + Default>(
        f: &Failure,
    ) -> UpdateFailureState {
        UpdateFailureState {
            failed_configuration: clean::<M>(&f.resource),
            last_update_attempt: Some(json::timestamp(f.at)),
            details: f.details.clone(),
            // Envoy 1.40 leaves the rejected version out (observed in tests/tests/xds_ads.rs).
            version_info: String::new(),
        }
    }

    pub fn clusters(server: &Server, warming: bool) -> Vec<DynamicCluster> {
        server
            .xds
            .of(Kind::Cluster)
            .into_iter()
            .filter_map(|(_, e)| {
                let record: Record = if warming { *e.warming? } else { *e.active? };
                Some(DynamicCluster {
                    version_info: record.version.clone(),
                    cluster: clean::<Cluster>(&record.resource),
                    last_updated: Some(json::timestamp(record.last_updated)),
                    error_state: e.error.as_deref().map(failure::<Cluster>),
                    ..Default::default()
                })
            })
            .collect()
    }

    pub fn listeners(server: &Server) -> Vec<DynamicListener> {
        let state = |r: &Record| DynamicListenerState {
            version_info: r.version.clone(),
            listener: clean::<Listener>(&r.resource),
            last_updated: Some(json::timestamp(r.last_updated)),
        };
        server
            .xds
            .of(Kind::Listener)
            .into_iter()
            .map(|(name, e)| DynamicListener {
                name,
                active_state: e.active.as_deref().map(state),
                warming_state: e.warming.as_deref().map(state),
                draining_state: e.draining.as_deref().map(state),
                error_state: e.error.as_deref().map(failure::<Listener>),
                ..Default::default()
            })
            .collect()
    }

    pub fn routes(server: &Server) -> Vec<DynamicRouteConfig> {
        server
            .xds
            .of(Kind::Route)
            .into_iter()
            .filter_map(|(_, e)| {
                let record = e.active?;
                Some(DynamicRouteConfig {
                    version_info: record.version.clone(),
                    route_config: clean::<RouteConfiguration>(&record.resource),
                    last_updated: Some(json::timestamp(record.last_updated)),
                    error_state: e.error.as_deref().map(failure::<RouteConfiguration>),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// The secrets asked for that have not arrived, as Envoy lists them: version
    /// `uninitialized`, and a secret that holds only its name.
    pub fn warming_secrets(server: &Server) -> Vec<DynamicSecret> {
        server
            .config
            .secret_slots
            .waiting()
            .into_iter()
            .map(|(name, since)| DynamicSecret {
                secret: Some(json::pack(&Secret {
                    name: name.clone(),
                    ..Default::default()
                })),
                name,
                version_info: "uninitialized".to_string(),
                last_updated: Some(json::timestamp(since)),
                ..Default::default()
            })
            .collect()
    }

    pub fn secrets(server: &Server) -> Vec<DynamicSecret> {
        server
            .xds
            .of(Kind::Secret)
            .into_iter()
            .filter_map(|(name, e)| {
                let record = e.active?;
                Some(DynamicSecret {
                    name,
                    version_info: record.version.clone(),
                    last_updated: Some(json::timestamp(record.last_updated)),
                    secret: clean::<Secret>(&record.resource),
                    ..Default::default()
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "config_dump_tests.rs"]
mod tests;
