//! The internal configuration model, compiled from Envoy protos. Protobuf types stop here:
//! the data path sees only these types, with regexes compiled, clusters resolved to indexes
//! and every refused field reported with its path.

pub mod access_log;
pub mod address;
mod bootstrap;
pub mod circuit_breakers;
pub mod cluster;
pub mod compressor;
pub mod dynamic;
pub mod error;
pub mod extension;
pub mod fault;
pub mod fields;
pub mod grpc_stats;
pub mod grpc_target;
pub mod hash_policy;
pub mod hcm;
pub mod hcm_options;
pub mod header_mutation;
pub mod health_check;
pub mod istio;
pub mod istio_alpn;
pub mod istio_node;
pub mod istio_tcp;
pub mod jwt_authn;
pub mod listener;
pub mod listener_filter_predicate;
pub mod load_balancing;
pub mod matcher;
pub mod outlier;
pub mod per_filter;
pub mod rbac;
pub mod redirect;
pub mod resolver;
pub mod retry_policy;
pub mod route;
pub mod route_action;
mod route_index;
pub mod secret_slots;
pub mod slots;
pub mod stats;
pub mod tcp_proxy;
pub mod tls;
pub mod tls_params;
pub mod tracing;
pub mod transport_match;
pub mod upstream_http;
mod values;

#[cfg(test)]
mod access_log_tests;
#[cfg(test)]
mod tests;

pub use bootstrap::{translate_bootstrap, Config, NodeInfo, RuntimeLayer};
pub use error::{ConfigError, FieldPath, Result};
pub use fields::Acknowledged;
