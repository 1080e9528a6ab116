//! Duties of Istio's agent (pilot-agent) that sidecar mode takes over from it, as library code
//! the `proxy sidecar` command wires together.

pub mod dns;
