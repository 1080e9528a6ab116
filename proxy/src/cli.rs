//! The command line: Envoy's flags (everything pilot-agent passes is accepted), `--mode`,
//! and the entry points for the Istio agent roles.

use crate::bootstrap::{self, Sources};
use crate::config;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Load the configuration and serve (default).
    Serve,
    /// Check the configuration, print the first error or that it is OK, and exit.
    Validate,
    /// Load the configuration and start everything, then exit (used to check bootstraps).
    #[value(name = "init_only")]
    InitOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    Gradual,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpVersion {
    V4,
    V6,
}

/// An Envoy-compatible sidecar proxy. With no arguments it runs an embedded demo bootstrap.
#[derive(Debug, Clone, Parser)]
#[command(name = "outrigger", version, about, long_about = None)]
pub struct Options {
    /// Path to a bootstrap file (YAML, or JSON when the name ends in .json).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// A YAML bootstrap merged on top of --config-path (protobuf merge semantics).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    /// serve, validate or init_only.
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,
    /// Ignore (and log) fields of the static bootstrap that the API does not define.
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,
    /// Accepted for Envoy compatibility; dynamic (xDS) resources are not implemented yet.
    #[arg(long = "reject-unknown-dynamic-fields")]
    pub reject_unknown_dynamic_fields: bool,
    /// Accepted for Envoy compatibility; dynamic (xDS) resources are not implemented yet.
    #[arg(long = "ignore-unknown-dynamic-fields")]
    pub ignore_unknown_dynamic_fields: bool,
    /// Log level: trace, debug, info, warning (warn), error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Per-component levels, e.g. upstream:debug,router:trace.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Overrides node.id.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    /// Overrides node.cluster.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    /// Overrides node.locality.zone.
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,
    /// Seconds listeners drain for before they close (Envoy's default: 600).
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    /// gradual or immediate. Both behave alike: from the start of a drain every HTTP/1.1
    /// response carries `Connection: close` and HTTP/2 connections get GOAWAY (Envoy's
    /// gradual strategy spreads the closes over the drain time instead).
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,
    /// Accepted for compatibility; hot restart does not exist in Outrigger.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,
    /// Accepted; the address family for the node's local address (v4 or v6).
    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    pub local_address_ip_version: IpVersion,
    /// How often buffered access log lines are written (milliseconds).
    #[arg(long = "file-flush-interval-msec", default_value_t = 10000)]
    pub file_flush_interval_msec: u64,
    /// Buffered access log bytes that trigger a write before the interval (KiB; default 64).
    #[arg(long = "file-flush-min-size-kb")]
    pub file_flush_min_size_kb: Option<u64>,
    /// Accepted for compatibility; hot restart does not exist in Outrigger.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,
    /// Accepted for compatibility; hot restart does not exist in Outrigger.
    #[arg(long = "base-id", default_value_t = 0)]
    pub base_id: u32,
    /// Accepted for compatibility; hot restart does not exist in Outrigger.
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,
    /// Accepted for compatibility; hot restart does not exist in Outrigger.
    #[arg(long = "restart-epoch", default_value_t = 0)]
    pub restart_epoch: u32,
    /// Log line format. Accepted; Outrigger writes its own format (timestamp, level, component, message).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,
    /// Accepted; Outrigger logs no deprecation warnings.
    #[arg(long = "skip-deprecated-logs")]
    pub skip_deprecated_logs: bool,
    /// Accepted; core dumps follow the process's rlimit.
    #[arg(long = "enable-core-dump")]
    pub enable_core_dump: bool,
}

impl Options {
    pub fn sources(&self) -> Sources<'_> {
        Sources {
            config_path: self.config_path.as_deref(),
            config_yaml: self.config_yaml.as_deref(),
            allow_unknown_static_fields: self.allow_unknown_static_fields,
            service_node: self.service_node.as_deref(),
            service_cluster: self.service_cluster.as_deref(),
            service_zone: self.service_zone.as_deref(),
        }
    }
}

/// The process entry point.
pub fn main() -> ExitCode {
    let options = Options::parse();
    match options.mode {
        Mode::Validate => validate(&options),
        Mode::Serve | Mode::InitOnly => crate::server::main(options),
    }
}

/// Envoy's `--mode validate`: the same loading and translation as serving, no sockets.
fn validate(options: &Options) -> ExitCode {
    let loaded = match bootstrap::load(&options.sources()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error initializing configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    for field in &loaded.unknown_fields {
        eprintln!("warning: ignored unknown field: {field}");
    }
    match config::translate_bootstrap(&loaded.bootstrap) {
        Ok(config) => {
            for ack in &config.acknowledged {
                eprintln!(
                    "warning: {} is accepted but not acted on: {}",
                    ack.path, ack.reason
                );
            }
            println!("configuration '{}' OK", config_name(options));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error initializing configuration '{}': {e}",
                config_name(options)
            );
            ExitCode::FAILURE
        }
    }
}

fn config_name(options: &Options) -> String {
    match &options.config_path {
        Some(p) => p.display().to_string(),
        None if options.config_yaml.is_some() => "--config-yaml".to_string(),
        None => "embedded default".to_string(),
    }
}
