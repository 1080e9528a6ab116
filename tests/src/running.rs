//! A proxy process serving a bootstrap, for traffic and admin tests: Outrigger or Envoy, started
//! the same way, ready when its admin `/ready` says LIVE, killed (with its process group) when
//! dropped. Its working directory is a temporary directory holding the bootstrap and the
//! process's stdout and stderr, so failure messages can quote its logs.

use crate::binaries::{self, Kind, Proxy};
use crate::curl::{self, Response};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long Outrigger may take to be LIVE (it takes milliseconds).
pub const OUTRIGGER_READY: Duration = Duration::from_secs(10);
/// Envoy takes about 0.3 s; a loaded CI machine may be much slower.
pub const ENVOY_READY: Duration = Duration::from_secs(30);
/// Between two `/ready` polls.
const POLL: Duration = Duration::from_millis(20);

/// A running proxy. Dropping it kills the process group.
#[derive(Debug)]
pub struct RunningProxy {
    kind: Kind,
    child: Child,
    admin: SocketAddr,
    dir: TempDir,
}

impl RunningProxy {
    /// Starts `kind` on `bootstrap` (YAML, or JSON when it starts with `{`) with `extra_args`,
    /// and waits until its admin answers `/ready` with LIVE. The admin address is read from the
    /// bootstrap's `admin.address.socket_address`. Panics, quoting the logs, if the process
    /// exits or is not LIVE in time.
    pub fn start(kind: Kind, bootstrap: &str, extra_args: &[&str]) -> RunningProxy {
        Self::start_waiting(kind, bootstrap, extra_args, true)
    }

    /// Like [`RunningProxy::start`], but returns as soon as the admin answers `/ready` at all,
    /// LIVE or not: for watching initialisation.
    pub fn start_initializing(kind: Kind, bootstrap: &str, extra_args: &[&str]) -> RunningProxy {
        Self::start_waiting(kind, bootstrap, extra_args, false)
    }

    fn start_waiting(
        kind: Kind,
        bootstrap: &str,
        extra_args: &[&str],
        until_live: bool,
    ) -> RunningProxy {
        let admin = admin_address(bootstrap);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let name = if bootstrap.trim_start().starts_with('{') {
            "bootstrap.json"
        } else {
            "bootstrap.yaml"
        };
        let path = dir.path().join(name);
        fs::write(&path, bootstrap).expect("write the bootstrap");
        let mut args: Vec<String> = vec!["-c".into(), path.display().to_string()];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Self::spawn(kind, dir, &args, admin, until_live)
    }

    /// Starts `kind` with exactly `args` (no `-c`), e.g. Outrigger with its embedded default,
    /// whose admin is at `admin`.
    pub fn start_with_args(kind: Kind, args: &[&str], admin: SocketAddr) -> RunningProxy {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(kind, dir, &args, admin, true)
    }

    fn spawn(
        kind: Kind,
        dir: TempDir,
        args: &[String],
        admin: SocketAddr,
        until_live: bool,
    ) -> RunningProxy {
        let bin = binary(kind);
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let mut command = Command::new(&bin.path);
        command.args(args);
        if kind == Kind::Envoy {
            // Parallel Envoys must not share hot-restart shared memory.
            if !has("--disable-hot-restart") {
                command.arg("--disable-hot-restart");
            }
            if !has("--base-id") && !has("--use-dynamic-base-id") {
                command.arg("--use-dynamic-base-id");
            }
        }
        let child = crate::process::spawn_logged(&mut command, dir.path())
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.path.display()));
        let mut proxy = RunningProxy {
            kind,
            child,
            admin,
            dir,
        };
        proxy.wait_live(until_live);
        proxy
    }

    /// Waits until `/ready` says LIVE, or (`until_live` false) until it answers at all.
    fn wait_live(&mut self, until_live: bool) {
        let timeout = match self.kind {
            Kind::Outrigger => OUTRIGGER_READY,
            Kind::Envoy => ENVOY_READY,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was LIVE\n{}",
                    self.kind.name(),
                    self.logs_for_failure()
                );
            }
            let last = match ready(self.admin) {
                // The body may come chunked (Envoy) or with a length (Outrigger).
                Ok(answer)
                    if !until_live
                        || answer.starts_with("HTTP/1.1 200")
                            && answer
                                .split_once("\r\n\r\n")
                                .is_some_and(|(_, body)| body.contains("LIVE\n")) =>
                {
                    return
                }
                Ok(answer) => answer,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "{} was not LIVE within {timeout:?} (last /ready: {last})\n{}",
                    self.kind.name(),
                    self.logs_for_failure()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:<admin port>`, without a trailing slash.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The admin URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.admin_url())
    }

    /// GET on the admin API; panics (quoting the logs) when there is no response.
    pub fn get(&self, path_and_query: &str) -> Response {
        self.admin_request("GET", path_and_query)
    }

    /// POST on the admin API; panics (quoting the logs) when there is no response.
    pub fn post(&self, path_and_query: &str) -> Response {
        self.admin_request("POST", path_and_query)
    }

    fn admin_request(&self, method: &str, path_and_query: &str) -> Response {
        curl::request(method, &self.url(path_and_query), &[]).unwrap_or_else(|f| {
            panic!(
                "{}: no admin response: {}\n{}",
                self.kind.name(),
                f.message,
                self.logs_for_failure()
            )
        })
    }

    /// The temporary working directory (bootstrap, logs, any files the proxy writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        read(&self.dir.path().join("stdout.log"))
    }

    /// What the process has written to stderr so far (both proxies log there).
    pub fn stderr(&self) -> String {
        read(&self.dir.path().join("stderr.log"))
    }

    /// The last lines of stdout and stderr, for a failure message.
    pub fn logs_for_failure(&self) -> String {
        format!(
            "--- {} stdout (tail) ---\n{}--- {} stderr (tail) ---\n{}",
            self.kind.name(),
            tail(&self.stdout(), 20),
            self.kind.name(),
            tail(&self.stderr(), 40)
        )
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // Not reaped yet, so the group id is still this child's.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// `GET /ready` on the admin, in process: polling with a curl subprocess every 20 ms costs
/// more CPU than the start being waited for when many proxies start at once.
fn ready(admin: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn binary(kind: Kind) -> Proxy {
    match kind {
        Kind::Outrigger => binaries::outrigger(),
        Kind::Envoy => binaries::find_envoy()
            .unwrap_or_else(|| panic!("envoy not found: call envoy_or_skip before starting Envoy")),
    }
}

/// `admin.address.socket_address` of a YAML or JSON bootstrap.
fn admin_address(bootstrap: &str) -> SocketAddr {
    let doc: serde_json::Value = serde_yaml_ng::from_str(bootstrap)
        .unwrap_or_else(|e| panic!("the test bootstrap is not YAML/JSON: {e}"));
    let socket = &doc["admin"]["address"]["socket_address"];
    let ip: IpAddr = socket["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the bootstrap has no admin.address.socket_address.address"));
    let port = socket["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("the bootstrap has no admin port_value"));
    // An admin bound to 0.0.0.0 is reached on loopback.
    let ip = if ip.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        ip
    };
    SocketAddr::new(ip, port)
}

fn read(path: &PathBuf) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::admin_address;

    #[test]
    fn reads_the_admin_address_from_yaml_and_json() {
        let yaml =
            "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 9901 }\n";
        assert_eq!(admin_address(yaml).to_string(), "127.0.0.1:9901");
        let json =
            r#"{"admin":{"address":{"socket_address":{"address":"0.0.0.0","port_value":15000}}}}"#;
        assert_eq!(admin_address(json).to_string(), "127.0.0.1:15000");
    }
}
