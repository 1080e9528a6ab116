//! Istio's agent duties, in the proxy's own process: `outrigger proxy sidecar` reads what
//! pilot-agent reads (flags, environment, mesh config, pod files), builds the node and the
//! static bootstrap in memory, and runs the proxy beside the agent's servers (the status server
//! among them); `wait` and `request` are the subcommands pod lifecycle hooks call.

pub mod args;
pub mod bootstrap;
mod cli_http;
pub mod dns;
pub mod duration;
pub mod environment;
pub mod identity;
pub mod lifecycle;
pub mod node;
pub mod proxy_config;
pub mod request;
pub mod sidecar;
pub mod status;
pub mod vm;
pub mod wait;

pub use request::request_main;
pub use wait::wait_main;

/// The Istio release whose generated configuration this proxy is built and tested against
/// (the contract in `shared/reference/istio-contract.md` was read at Istio master, version
/// 1.32). It is the node's `ISTIO_VERSION` unless `ISTIO_META_ISTIO_VERSION` says otherwise, and
/// istiod shapes its output by it.
pub const ISTIO_VERSION: &str = "1.32.0";
