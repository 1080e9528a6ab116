//! Shared helpers for Outrigger's end-to-end tests: finding the binaries (ours and Envoy, the
//! oracle), running them with a time limit or as a long-running proxy, free ports, a curl
//! client, a recording upstream, and the test corpora. Each module holds one idea; test files
//! in `tests/tests/` combine them.

#![forbid(unsafe_code)]

pub mod binaries;
pub mod bootstraps;
pub mod control_plane;
pub mod corpus;
pub mod curl;
pub mod differential;
pub mod dns;
pub mod fake_ca;
pub mod fixed_ports;
pub mod grpc_echo;
pub mod istio;
pub mod istio_pair;
pub mod netns;
pub mod parallel;
pub mod pki;
pub mod ports;
pub mod process;
pub mod running;
pub mod scripted;
pub mod sidecar;
pub mod tls_incoming;
pub mod upstream;
pub mod validate;
pub mod xds_resources;

pub use binaries::{envoy_or_skip, outrigger, Kind, Proxy};
pub use ports::{free_port, Ports};
pub use running::RunningProxy;
pub use upstream::Upstream;
pub use validate::{run_validate, Verdict};
