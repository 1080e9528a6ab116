//! `outrigger-iptables`: the traffic-capture init step of an Outrigger sidecar, a drop-in
//! for Istio's `istio-iptables` (same flags, env vars, rules and dry-run output).
//! Planning is a pure function of [`Config`] ([`plan::plan`]); everything that touches the
//! host lives in [`host`], [`exec`], [`apply`], [`routes`] and [`validate`].
#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod config;
pub mod exec;
pub mod host;
pub mod plan;
pub mod routes;
pub mod rules;
pub mod state;
pub mod validate;

#[cfg(test)]
mod fake_kernel;

pub use config::Config;

/// Exit code for a failed `--run-validation`, as istio-iptables uses.
pub const VALIDATION_EXIT_CODE: i32 = 126;

/// Everything that can stop a run. Each message is meant for an init container's log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or env value; the message names it.
    #[error("{0}")]
    Usage(String),
    /// A host fact (interfaces, resolv.conf) could not be read.
    #[error("{0}")]
    Host(String),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// Applying failed; `rollback` says whether the partial state was removed.
    #[error("{step}: {source}; {rollback}")]
    Apply {
        step: String,
        source: exec::ExecError,
        rollback: String,
    },
    #[error("cleanup incomplete: {0}")]
    CleanupIncomplete(String),
    #[error("{0} is not supported by outrigger-iptables")]
    Unsupported(String),
    #[error("cannot write the dry-run output to {path}: {source}")]
    DryRunOutput {
        path: String,
        source: std::io::Error,
    },
    #[error("iptables validation failed; workload is not ready for the mesh: {0}")]
    Validation(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Validation(_) => VALIDATION_EXIT_CODE,
            _ => 1,
        }
    }
}

/// Progress messages go to stderr, so stdout carries only the dry-run stream.
pub(crate) fn info(msg: &str) {
    eprintln!("outrigger-iptables: {msg}");
}

/// Entry point shared by the `outrigger-iptables` binary and `outrigger istio-iptables`:
/// `args[0]` is the program name. Returns the process exit code.
pub fn main_with_args(args: Vec<String>) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    match run(args.get(1..).unwrap_or_default(), &env) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("outrigger-iptables: error: {e}");
            e.exit_code()
        }
    }
}

fn run(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
    let mut cfg = match cli::parse(args, env)? {
        cli::Command::Help => {
            print!("{}", cli::usage());
            return Ok(());
        }
        cli::Command::Run(cfg) => *cfg,
    };
    if cfg.native_nftables {
        return Err(Error::Unsupported("--native-nftables".into()));
    }
    host::resolve(&mut cfg, env, &host::RealHost)?;
    info(&format!(
        "mode={:?} proxy_port={} inbound_capture_port={} uid={} gid={} ipv6={} dns_v4={:?} dns_v6={:?}",
        cfg.interception_mode,
        cfg.proxy_port,
        cfg.inbound_capture_port,
        cfg.proxy_uid,
        cfg.proxy_gid,
        cfg.enable_ipv6,
        cfg.dns_servers_v4,
        cfg.dns_servers_v6
    ));

    if cfg.dry_run {
        info("dry run: no rule changes will be made");
        write_dry_run(&plan::dry_run_stream(&cfg), env("DRY_RUN_FILE_PATH"))?;
    } else if cfg.skip_rule_apply {
        info("--skip-rule-apply: not programming rules");
    } else {
        let netns = Some(cfg.network_namespace.clone()).filter(|s| !s.is_empty());
        let outcome = apply::run(&cfg, &mut exec::SystemExec { netns })?;
        info(&format!("done: {outcome:?}"));
    }

    if cfg.run_validation {
        validate::run(&cfg).map_err(Error::Validation)?;
    }
    Ok(())
}

/// One newline-terminated line per entry, to `DRY_RUN_FILE_PATH` or else stdout.
fn write_dry_run(lines: &[String], path: Option<String>) -> Result<(), Error> {
    use std::io::Write;
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    match path.filter(|p| !p.is_empty()) {
        Some(path) => {
            std::fs::write(&path, text).map_err(|source| Error::DryRunOutput { path, source })
        }
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|source| Error::DryRunOutput {
                path: "stdout".into(),
                source,
            }),
    }
}
