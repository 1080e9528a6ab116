//! `outrigger proxy sidecar`: everything pilot-agent and Envoy do in an `istio-proxy`
//! container, in one process. It reads pilot-agent's inputs, renders the bootstrap in memory,
//! runs the proxy with it, and ends as [`super::lifecycle`] says.

use super::args::{self, ProxyArgs};
use super::bootstrap::{self, BootstrapInputs, XdsTarget, XdsTls};
use super::dns;
use super::environment::Environment;
use super::identity::{self, IdentityConfig};
use super::lifecycle::{self, Lifecycle};
use super::node::{self, NodeInputs};
use super::proxy_config::{self, ProxyConfig};
use super::status::{self, StatusContext, StatusOptions};
use crate::bootstrap::Loaded;
use crate::cli::Options;
use crate::server::{self, Proxy};
use clap::Parser;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::{parse_document, DocumentFormat, ParseOptions};

/// Istio's well-known paths, relative to the working directory (`/` in the container), as
/// pilot-agent resolves them.
pub const POD_LABELS: &str = "./etc/istio/pod/labels";
pub const POD_ANNOTATIONS: &str = "./etc/istio/pod/annotations";
pub const TOKEN: &str = "./var/run/secrets/tokens/istio-token";
pub const FIRST_PARTY_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const MESH_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
pub const LEGACY_ROOT_CERT: &str = "./etc/certs/root-cert.pem";
pub const SDS_DIRECTORY: &str = "./var/run/secrets/workload-spiffe-uds";

/// Everything the sidecar decided before starting: the proxy's options and bootstrap, and
/// the agent's own settings.
#[derive(Debug)]
pub struct Plan {
    pub options: Options,
    pub loaded: Loaded,
    pub env: Environment,
    pub proxy_config: ProxyConfig,
    /// The token sent to istiod, unless the control plane is plaintext.
    pub token_file: Option<PathBuf>,
    pub sds_socket: PathBuf,
    /// `--domain`.
    pub domain: Option<String>,
    pub ipv6_only: bool,
    pub lifecycle: Lifecycle,
    /// Warnings to log once logging is up.
    pub warnings: Vec<String>,
}

pub fn main(args: &[String]) -> ExitCode {
    let plan = match plan(Environment::from_process(), args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What pilot-agent puts in its own environment (proxyMetadata, the VM files) is seen by
    // every part of the agent; nothing else runs yet, so changing the environment is safe.
    plan.env.export_to_process();
    let Some(logging) = server::install_logging(&plan.options) else {
        return ExitCode::FAILURE;
    };
    for warning in &plan.warnings {
        tracing::warn!(target: "agent", "{warning}");
    }
    let token_file = plan.token_file.clone();
    let Some((config, runtime, workers)) = server::prepare(&plan.options, &plan.loaded, |c| {
        if let Some(ads) = c.dynamic.ads.as_mut() {
            ads.bearer_token_file = token_file;
        }
    }) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(run(plan, config, logging, workers))
}

async fn run(
    plan: Plan,
    config: std::sync::Arc<crate::config::Config>,
    logging: crate::logging::LogControl,
    workers: usize,
) -> ExitCode {
    match run_agent(plan, config, logging, workers).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(target: "agent", "{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the agent's duties around the proxy, in the order pilot-agent needs them: the
/// workload identity (its SDS socket must serve before the proxy's SDS stream opens), the DNS
/// proxy (its name table comes over the proxy's ADS stream), the proxy, the status server.
async fn run_agent(
    plan: Plan,
    config: std::sync::Arc<crate::config::Config>,
    logging: crate::logging::LogControl,
    workers: usize,
) -> Result<ExitCode, String> {
    let env = &plan.env;
    let namespace = env.get_or("POD_NAMESPACE", "default");
    let lookup = |name: &str| env.get(name).map(str::to_string);
    let mut identity_config = IdentityConfig::from_env(
        lookup,
        Path::new("."),
        namespace,
        env.get_or("SERVICE_ACCOUNT", "default"),
        &plan.proxy_config.discovery_address,
    )
    .map_err(|e| e.to_string())?;
    if let Some(ca) = identity_config.ca.as_mut() {
        ca.headers = identity::ca_headers(
            env.with_prefix("")
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    let identity = identity::start(identity_config)
        .await
        .map_err(|e| format!("workload identity: {e}"))?;

    let dns = if dns::enabled_from_env(true) {
        let config = dns::DnsConfig::from_env(namespace, plan.domain.as_deref().unwrap_or(""));
        let proxy = dns::DnsProxy::start(config)
            .await
            .map_err(|e| format!("DNS proxy: {e}"))?;
        Some(std::sync::Arc::new(proxy))
    } else {
        None
    };

    let proxy = Proxy::start(
        plan.options.clone(),
        plan.loaded.bootstrap.clone(),
        config,
        logging,
        workers,
    )
    .await?;
    tracing::info!(target: "agent", "sidecar {} starting", node_id(&plan.loaded.bootstrap));
    if let Some(dns) = &dns {
        proxy.server.agent_types.register(dns.nds_consumer());
    }
    proxy.start_dynamic();
    proxy.serve();

    let mut options = StatusOptions::from_lookup(plan.proxy_config.status_port, lookup)?;
    options.ipv6 = plan.ipv6_only;
    let mut status = StatusContext::new(proxy.server.clone(), options);
    if let Some(dns) = &dns {
        let (ready, table, metrics) = (dns.clone(), dns.clone(), dns.clone());
        status = status
            .with_readiness_check(Box::new(move || {
                if ready.is_ready() {
                    Ok(())
                } else {
                    Err("the DNS name table has not been received yet".to_string())
                }
            }))
            .with_ndsz(Box::new(move || table.ndsz()))
            .with_agent_metrics(Box::new(move || metrics.metrics().render_prometheus()));
    }
    if let Some(secrets) = identity.cache.as_ref().map(|c| c.subscribe()) {
        status = status.with_agent_metrics(Box::new(move || cert_expiry(&secrets)));
    }
    let status = std::sync::Arc::new(status);
    let listener = bind_status(plan.proxy_config.status_port).await?;
    tokio::spawn(status::serve(listener, status.clone()));

    lifecycle::run(&proxy, &plan.lifecycle, || status.skip_drain()).await;
    proxy.finish().await;
    Ok(ExitCode::SUCCESS)
}

/// pilot-agent's `istio_agent_cert_expiry_seconds`: how long the workload certificate has
/// left (nothing before the first one arrives).
fn cert_expiry(secrets: &identity::SecretWatch) -> String {
    let Some(secret) = secrets.borrow().clone() else {
        return String::new();
    };
    let left = secret
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    format!(
        "# HELP istio_agent_cert_expiry_seconds The time remaining, in seconds, before the certificate chain will expire.\n\
         # TYPE istio_agent_cert_expiry_seconds gauge\n\
         istio_agent_cert_expiry_seconds{{resource_name=\"default\"}} {}\n",
        left.as_secs_f64()
    )
}

/// The status port on every address, as pilot-agent's `:15020` (IPv4 too when the kernel's
/// IPv6 sockets are dual-stack, the Linux default; IPv4 alone where IPv6 is off).
async fn bind_status(port: u16) -> Result<tokio::net::TcpListener, String> {
    match tokio::net::TcpListener::bind(("::", port)).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| format!("cannot bind the status port {port}: {e}")),
    }
}

fn node_id(bootstrap: &Bootstrap) -> &str {
    bootstrap.node.as_ref().map_or("", |n| n.id.as_str())
}

fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn port_from_env(env: &Environment, name: &str, default: u16) -> Result<u16, String> {
    match env.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name}: not a port: {v:?}")),
    }
}

/// The pod's addresses: `INSTANCE_IP` first, then the other non-loopback addresses of the
/// interfaces, as pilot-agent lists them in `INSTANCE_IPS`.
fn instance_ips(env: &Environment) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = env
        .get("INSTANCE_IP")
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ip in addrs.filter_map(|ifa| ifa.address).filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        }) {
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !ip.is_loopback() && !link_local && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    ips
}

/// Splits `host:port` (IPv6 in brackets).
fn split_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("discoveryAddress {address:?} has no port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("discoveryAddress {address:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

fn comma_list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Decides everything from the environment, the flags and the files, without side effects.
pub fn plan(mut env: Environment, raw_args: &[String]) -> Result<Plan, String> {
    let args: ProxyArgs = args::parse(raw_args)?;
    let on_vm = super::vm::apply(&mut env, Path::new("."));
    let mut warnings: Vec<String> = args
        .ignored
        .iter()
        .map(|f| format!("{f} is accepted for pilot-agent compatibility and not acted on"))
        .collect();
    if on_vm {
        warnings.push("VM mode: read Istio's VM environment files".to_string());
    }
    let labels = read_optional(Path::new(POD_LABELS))?
        .map(|t| node::parse_downward_api(&t))
        .unwrap_or_default();
    let annotations: BTreeMap<String, String> = read_optional(Path::new(POD_ANNOTATIONS))?
        .map(|t| node::parse_downward_api(&t))
        .unwrap_or_default();
    let mesh = read_optional(&args.mesh_config)?;
    let pc = proxy_config::assemble(mesh.as_deref(), env.get("PROXY_CONFIG"), &annotations)?;
    // pilot-agent exports proxyMetadata into its own environment.
    for (k, v) in &pc.proxy_metadata {
        env.set(k, v);
    }
    if env.get("TRUST_DOMAIN").is_none() {
        env.set("TRUST_DOMAIN", &pc.trust_domain);
    }

    let envoy_status_port = port_from_env(&env, "ENVOY_STATUS_PORT", 15021)?;
    let prometheus_port = port_from_env(&env, "ENVOY_PROMETHEUS_PORT", 15090)?;
    let exit_on_zero = env.flag("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", false);
    let ips = instance_ips(&env);
    let ipv6_only = !ips.is_empty() && ips.iter().all(IpAddr::is_ipv6);
    let socket_file = env
        .get_or("WORKLOAD_IDENTITY_SOCKET_FILE", "socket")
        .to_string();
    let node = node::build(&NodeInputs {
        env: env.clone(),
        proxy_config: pc.raw.clone(),
        service_cluster: args
            .service_cluster
            .clone()
            .unwrap_or_else(|| pc.service_cluster.clone()),
        domain: args.domain.clone(),
        instance_ips: ips,
        labels,
        annotations: annotations.clone(),
        envoy_status_port,
        envoy_prometheus_port: prometheus_port,
        outlier_log_path: args.outlier_log_path.clone(),
        workload_identity_socket_file: socket_file.clone(),
        exit_on_zero_active_connections: exit_on_zero,
    });

    let (host, port) = split_address(&pc.discovery_address)?;
    // Istio's rule: the plaintext port 15010, or an explicit NONE auth policy.
    let plaintext = port == 15010 || pc.plaintext_control_plane;
    let tls = (!plaintext).then(|| XdsTls {
        root_ca_path: env
            .get("XDS_ROOT_CA")
            .map(str::to_string)
            .unwrap_or_else(|| {
                if Path::new(MESH_ROOT_CERT).exists() || !Path::new(LEGACY_ROOT_CERT).exists() {
                    MESH_ROOT_CERT.to_string()
                } else {
                    LEGACY_ROOT_CERT.to_string()
                }
            }),
        server_name: env.get("ISTIOD_SAN").unwrap_or(&host).to_string(),
    });
    let token_file = (!plaintext).then(|| {
        PathBuf::from(if env.get("JWT_POLICY") == Some("first-party-jwt") {
            FIRST_PARTY_TOKEN
        } else {
            TOKEN
        })
    });
    let sds_socket = format!("{SDS_DIRECTORY}/{socket_file}");
    let inputs = BootstrapInputs {
        node: &node,
        admin_port: pc.proxy_admin_port,
        agent_port: pc.status_port,
        envoy_status_port,
        prometheus_port,
        sds_socket: sds_socket.clone(),
        xds: XdsTarget {
            host,
            port,
            tls,
            cluster_id: env
                .get_or("ISTIO_META_CLUSTER_ID", "Kubernetes")
                .to_string(),
            delta: env.flag("ISTIO_DELTA_XDS", true),
        },
        ipv6_only,
        outlier_log_path: args.outlier_log_path.clone(),
        extra_inclusion_prefixes: [
            pc.stats_inclusion_prefixes.clone(),
            comma_list(annotations.get("sidecar.istio.io/statsInclusionPrefixes")),
        ]
        .concat(),
        extra_inclusion_suffixes: [
            pc.stats_inclusion_suffixes.clone(),
            comma_list(annotations.get("sidecar.istio.io/statsInclusionSuffixes")),
        ]
        .concat(),
        extra_inclusion_regexps: [
            pc.stats_inclusion_regexps.clone(),
            comma_list(annotations.get("sidecar.istio.io/statsInclusionRegexps")),
        ]
        .concat(),
        keep_downstream_cx_active: exit_on_zero,
    };
    let document = bootstrap::render(&inputs);
    let parse_options = ParseOptions {
        allow_unknown_fields: true,
    };
    let mut parsed =
        parse_document::<Bootstrap>(&document.to_string(), DocumentFormat::Json, parse_options)
            .map_err(|e| format!("the rendered bootstrap does not parse (a bug): {e}"))?;
    let mut unknown_fields = std::mem::take(&mut parsed.unknown_fields);
    // ISTIO_BOOTSTRAP_OVERRIDE names a file merged over the bootstrap, as `--config-yaml`.
    if let Some(path) = env.get("ISTIO_BOOTSTRAP_OVERRIDE") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("ISTIO_BOOTSTRAP_OVERRIDE {path}: {e}"))?;
        let overlay =
            parse_document::<Bootstrap>(&text, DocumentFormat::from_path(path), parse_options)
                .map_err(|e| format!("ISTIO_BOOTSTRAP_OVERRIDE {path}: {e}"))?;
        unknown_fields.extend(overlay.unknown_fields);
        parsed.value = crate::bootstrap::merge(&parsed.value, &overlay.value);
    }

    // ProxyConfig.concurrency 0 means "from the CPU limit" (ISTIO_CPU_LIMIT, whole cores
    // rounded up by the injection template), else every core.
    let concurrency = args
        .concurrency
        .or(pc.concurrency)
        .filter(|c| *c > 0)
        .or_else(|| {
            env.get("ISTIO_CPU_LIMIT")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|c| *c > 0)
        })
        .map(|c| c.to_string());
    let agent_level = args
        .log_output_level
        .as_deref()
        .and_then(|levels| {
            levels
                .split(',')
                .find_map(|item| item.strip_prefix("default:"))
        })
        .unwrap_or("info")
        .replace("warn", "warning")
        .replace("warninging", "warning")
        .replace("none", "off");
    let components = [
        args.proxy_component_log_level.clone(),
        Some(format!("agent:{agent_level}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(",");
    let mut cli = vec![
        "outrigger".to_string(),
        "-l".into(),
        args.proxy_log_level.clone(),
        "--component-log-level".into(),
        components,
        "--drain-time-s".into(),
        pc.drain_duration.as_secs().to_string(),
        "--drain-strategy".into(),
        "immediate".into(),
        "--local-address-ip-version".into(),
        if ipv6_only { "v6" } else { "v4" }.into(),
        "--file-flush-interval-msec".into(),
        "1000".into(),
        "--allow-unknown-static-fields".into(),
    ];
    if let Some(c) = concurrency {
        cli.extend(["--concurrency".to_string(), c]);
    }
    let options = Options::try_parse_from(&cli).map_err(|e| e.to_string())?;
    warnings.extend(
        unknown_fields
            .iter()
            .map(|f| format!("ignored unknown bootstrap field: {f}")),
    );
    let minimum_drain = match env.get("MINIMUM_DRAIN_DURATION") {
        Some(v) => super::duration::parse(v).map_err(|e| format!("MINIMUM_DRAIN_DURATION: {e}"))?,
        None => Duration::from_secs(5),
    };
    Ok(Plan {
        options,
        loaded: Loaded {
            bootstrap: parsed.value,
            unknown_fields,
            is_default: false,
        },
        lifecycle: Lifecycle {
            termination_drain_duration: pc.termination_drain_duration,
            drain_duration: pc.drain_duration,
            exit_on_zero_active_connections: exit_on_zero,
            minimum_drain_duration: minimum_drain,
        },
        env,
        proxy_config: pc,
        token_file,
        sds_socket: PathBuf::from(sds_socket),
        domain: args.domain.clone(),
        ipv6_only,
        warnings,
    })
}
