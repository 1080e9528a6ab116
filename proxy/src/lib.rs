//! Outrigger: an Envoy-compatible sidecar proxy. The binary is a thin CLI over this library.

pub mod access_log;
pub mod admin;
pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod format;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metadata;
pub mod random;
pub mod rbac;
pub mod server;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod xds;
