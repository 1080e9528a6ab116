//! Outrigger: an Envoy-compatible sidecar proxy. The binary is a thin CLI over this library.

pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod logging;
pub mod server;
pub mod stats;
pub mod upstream;
