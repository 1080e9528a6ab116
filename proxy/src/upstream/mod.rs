//! The upstream side: clusters at runtime (their hosts, stats and connection pools), host
//! selection, circuit breakers and DNS discovery.

mod accounting;
mod balancer;
pub mod circuit_breakers;
pub mod connector;
mod dns;
pub mod fed_by;
mod health;
mod health_check;
mod host;
mod host_pool;
pub mod lifecycle;
mod locality;
mod manager;
mod original_dst;
mod outlier;
mod pool;
mod pool_conn;
pub mod priority;
mod response_body;
pub mod transport;

pub use accounting::ConnectionAccounting;
pub use connector::{Connector, UpstreamStream as Stream};
pub use health::{HealthFlag, HostHealth};
pub use host::{Host, HostSet, HostStats};
pub use manager::{ClusterManager, ClusterRuntime, ClusterStats};
pub use outlier::HostResult;
pub use pool::{UpstreamBody, UpstreamError};
pub use pool_conn::ConnectionFacts;
pub use response_body::UpstreamIncoming;
