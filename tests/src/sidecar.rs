//! Running `outrigger proxy sidecar` as a pod would: a working directory laid out like the
//! container's root (`./etc/istio/pod/labels`, `./var/run/secrets/...`), pilot-agent's
//! environment, every port chosen free so tests run side by side, and a plain HTTP/1.1 load
//! loop that counts what failed.

use crate::binaries::outrigger;
use crate::curl;
use crate::free_port;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The ports a sidecar binds, all free ones (Istio's defaults would collide between tests).
#[derive(Debug, Clone, Copy)]
pub struct SidecarPorts {
    pub admin: u16,
    /// The agent's status server (ProxyConfig.statusPort, 15020 in a pod).
    pub status: u16,
    /// Envoy's readiness listener (ENVOY_STATUS_PORT, 15021).
    pub envoy_status: u16,
    pub prometheus: u16,
}

impl SidecarPorts {
    pub fn free() -> Self {
        SidecarPorts {
            admin: free_port(),
            status: free_port(),
            envoy_status: free_port(),
            prometheus: free_port(),
        }
    }
}

pub struct Sidecar {
    child: Child,
    dir: TempDir,
    pub ports: SidecarPorts,
}

impl Sidecar {
    /// Starts the sidecar in a fresh working directory, after `prepare` has laid out files in
    /// it. `env` adds to (and overrides) the defaults: POD_NAME, POD_NAMESPACE, INSTANCE_IP and
    /// a PROXY_CONFIG carrying the ports; a `PROXY_CONFIG` in `env` is merged by the caller.
    pub fn start(
        proxy_config: serde_json::Value,
        env: &[(&str, &str)],
        args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Sidecar {
        let dir = tempfile::tempdir().expect("a temporary directory");
        prepare(dir.path());
        let ports = SidecarPorts::free();
        let mut pc = proxy_config;
        pc["proxyAdminPort"] = ports.admin.into();
        pc["statusPort"] = ports.status.into();
        let mut command = Command::new(&outrigger().path);
        command
            .args(["proxy", "sidecar"])
            .args(args)
            .env("POD_NAME", "app-0")
            .env("POD_NAMESPACE", "demo")
            .env("INSTANCE_IP", "127.0.0.1")
            .env("SERVICE_ACCOUNT", "app")
            .env("ENVOY_STATUS_PORT", ports.envoy_status.to_string())
            .env("ENVOY_PROMETHEUS_PORT", ports.prometheus.to_string())
            .env("PROXY_CONFIG", pc.to_string());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = crate::process::spawn_logged(&mut command, dir.path())
            .expect("start outrigger proxy sidecar");
        Sidecar { child, dir, ports }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn admin(&self, path_and_query: &str) -> curl::Response {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.ports.admin);
        curl::request("GET", &url, &[])
            .unwrap_or_else(|f| panic!("no admin answer: {}\n{}", f.message, self.logs()))
    }

    /// Waits until the admin API says LIVE; panics with the logs otherwise.
    pub fn wait_live(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the sidecar exited ({status}) before LIVE\n{}", self.logs());
            }
            let url = format!("http://127.0.0.1:{}/ready", self.ports.admin);
            if let Ok(r) = curl::request("GET", &url, &[]) {
                if r.status == 200 && r.body.contains("LIVE") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar was not LIVE within {within:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- sidecar stdout ---\n{}--- sidecar stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// What a load loop saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadOutcome {
    pub ok: usize,
    pub failed: usize,
    /// Responses that asked the client to close (a draining server).
    pub closes: usize,
}

/// HTTP/1.1 keep-alive clients sending GETs to `target` until `stop` is set. A client
/// reconnects after a `Connection: close` answer. Anything but a 200 read in full counts as a
/// failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(target: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let closes = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, closes) =
                    (stop.clone(), ok.clone(), failed.clone(), closes.clone());
                thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => {
                                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                                    Ok(s) => {
                                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                                        BufReader::new(s)
                                    }
                                    Err(_) => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        thread::sleep(Duration::from_millis(10));
                                        continue;
                                    }
                                }
                            }
                        };
                        match one_request(c) {
                            Err(e) if std::env::var_os("LOAD_VERBOSE").is_some() => {
                                eprintln!("load: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((c, keep)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if keep {
                                    conn = Some(c);
                                } else {
                                    closes.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            closes,
            threads,
        }
    }

    pub fn so_far(&self) -> LoadOutcome {
        LoadOutcome {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            closes: self.closes.load(Ordering::Relaxed),
        }
    }

    pub fn stop(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        LoadOutcome {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            closes: self.closes.load(Ordering::Relaxed),
        }
    }
}

/// One GET on `conn`; returns the connection and whether it may be reused.
fn one_request(mut conn: BufReader<TcpStream>) -> std::io::Result<(BufReader<TcpStream>, bool)> {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")?;
    let mut status = String::new();
    conn.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {status:?}")));
    }
    let mut length = 0usize;
    let mut keep = true;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(std::io::Error::other)?;
        }
        if lower == "connection: close" {
            keep = false;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok((conn, keep))
}
