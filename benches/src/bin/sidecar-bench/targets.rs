//! The targets compared: a direct connection to the upstream (the physical limit of this
//! machine), Outrigger, Envoy, nginx and HAProxy, each with one worker, pinned to the proxy
//! core, configured from the same `Job`; and Outrigger again with Istio's HTTP chain
//! (metadata exchange and `istio.stats`), whose ratio to plain Outrigger is what Istio's
//! telemetry costs.

use crate::configs;
use crate::process::{Pinning, Spawned, PROXY_CORE};
use crate::scenario::{Job, Listener};
use crate::tools::Found;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Direct,
    Outrigger,
    Envoy,
    Nginx,
    Haproxy,
    /// Outrigger with Istio's HTTP chain; last, so the other targets keep their ports.
    OutriggerIstio,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Direct,
        Target::Outrigger,
        Target::Envoy,
        Target::Nginx,
        Target::Haproxy,
        Target::OutriggerIstio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Outrigger => "Outrigger",
            Target::Envoy => "Envoy",
            Target::Nginx => "nginx",
            Target::Haproxy => "HAProxy",
            Target::OutriggerIstio => "Outrigger+Istio",
        }
    }

    /// First port of this proxy's block of listener ports.
    fn block(self, job: &Job) -> u16 {
        job.base_port + 10 * (self as u16)
    }

    /// Where the load generator connects for `listener`.
    pub fn addr(self, job: &Job, listener: Listener) -> SocketAddr {
        let port = match (self, listener) {
            (Target::Direct, Listener::Tcp) => job.tcp_endpoints[0],
            (Target::Direct, _) => job.http_endpoints[0],
            (t, l) => configs::port(t.block(job), l),
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// A started target. `process` is None for the direct connection.
#[derive(Debug)]
pub struct Running {
    pub target: Target,
    pub process: Option<Spawned>,
    /// The process and its children (nginx's master and worker), measured together.
    pub pids: Vec<u32>,
    /// Listeners this target cannot serve here, with the reason.
    pub unsupported: Vec<(Listener, String)>,
}

impl Running {
    pub fn serves(&self, listener: Listener) -> Result<(), String> {
        match self.unsupported.iter().find(|(l, _)| *l == listener) {
            Some((_, why)) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

/// Why `target` cannot run on this machine (its program is missing), if so.
pub fn missing(target: Target, found: &Found, outrigger: &Path) -> Option<String> {
    let program = match target {
        Target::Direct => return None,
        Target::Outrigger | Target::OutriggerIstio
            if crate::tools::is_executable(outrigger) =>
        {
            return None
        }
        Target::Outrigger | Target::OutriggerIstio => {
            return Some(format!(
                "{} not found: build it with `cargo build --release -p outrigger` (or pass --outrigger)",
                outrigger.display()
            ))
        }
        Target::Envoy => "envoy",
        Target::Nginx => "nginx",
        Target::Haproxy => "haproxy",
    };
    need(found, program).err().map(|e| e.to_string())
}

/// Writes `target`'s configuration into `dir`, starts it pinned to the proxy core and
/// waits until every listener it serves accepts connections.
pub fn start(
    target: Target,
    job: &Job,
    found: &Found,
    outrigger: &Path,
    pinning: Pinning,
    dir: &Path,
) -> anyhow::Result<Running> {
    let block = target.block(job);
    let mut unsupported = Vec::new();
    let log = dir.join(format!("{}.log", target.name().to_lowercase()));
    let (program, args): (String, Vec<String>) = match target {
        Target::Direct => {
            // The upstreams speak plaintext: the mTLS hop only exists through a proxy.
            unsupported.push((Listener::Mtls, "the upstreams do not speak TLS".into()));
            return Ok(Running {
                target,
                process: None,
                pids: Vec::new(),
                unsupported,
            });
        }
        Target::Outrigger => {
            let file = write(
                dir,
                "outrigger.yaml",
                &configs::envoy::bootstrap(job, block),
            )?;
            let args = ["-c", &file, "--concurrency", "1", "-l", "error"];
            (outrigger.display().to_string(), strings(&args))
        }
        Target::OutriggerIstio => {
            let file = write(
                dir,
                "outrigger-istio.yaml",
                &configs::envoy::istio_bootstrap(job, block),
            )?;
            let args = ["-c", &file, "--concurrency", "1", "-l", "error"];
            (outrigger.display().to_string(), strings(&args))
        }
        Target::Envoy => {
            let program = need(found, "envoy")?;
            let file = write(dir, "envoy.yaml", &configs::envoy::bootstrap(job, block))?;
            let args = [
                "-c",
                &file,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--use-dynamic-base-id",
                "-l",
                "error",
            ];
            (program, strings(&args))
        }
        Target::Nginx => {
            let program = need(found, "nginx")?;
            let with_stream = Path::new(configs::nginx::STREAM_MODULE).exists();
            if !with_stream {
                unsupported.push((
                    Listener::Tcp,
                    "nginx stream module missing: apt-get install libnginx-mod-stream".into(),
                ));
            }
            let nginx_dir = dir.join("nginx");
            std::fs::create_dir_all(&nginx_dir)?;
            let text = configs::nginx::config(job, block, &nginx_dir, with_stream);
            let file = write(dir, "nginx.conf", &text)?;
            let prefix = nginx_dir.display().to_string();
            (program, strings(&["-p", &prefix, "-c", &file]))
        }
        Target::Haproxy => {
            let program = need(found, "haproxy")?;
            let file = write(dir, "haproxy.cfg", &configs::haproxy::config(job, block))?;
            (program, strings(&["-db", "-f", &file]))
        }
    };
    let mut command = pinning.command(PROXY_CORE, &program);
    command.args(&args);
    let mut process = Spawned::start(target.name(), command, &log)?;
    for listener in Listener::ALL {
        if unsupported.iter().any(|(l, _)| *l == listener) {
            continue;
        }
        process
            .wait_listening(target.addr(job, listener), Duration::from_secs(15))
            .with_context(|| format!("see {}", log.display()))?;
    }
    // Let nginx fork its worker before the process tree is read.
    std::thread::sleep(Duration::from_millis(300));
    let pids = crate::procfs::tree(process.pid());
    Ok(Running {
        target,
        process: Some(process),
        pids,
        unsupported,
    })
}

fn need(found: &Found, program: &str) -> anyhow::Result<String> {
    found.program(program).with_context(|| {
        let hint = crate::tools::ALL
            .iter()
            .find(|t| t.program == program)
            .map(|t| t.install)
            .unwrap_or("");
        format!("`{program}` not found: install with `{hint}`")
    })
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.display().to_string())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
