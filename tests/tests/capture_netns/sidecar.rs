//! The proxy under test: its Istio-shaped bootstrap and the running sidecar with its stats.
#![allow(clippy::unwrap_used, clippy::expect_used, unused_imports)]

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use tests::binaries::{outrigger, outrigger_iptables};
use tests::netns::{
    http_get, normalize_iptables_save, prerequisites_met, run_ok, ChildGuard, Netns,
};

// ---------------------------------------------------------------------------------------------
// The proxy

/// How virtualInbound is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// REDIRECT: original destination from SO_ORIGINAL_DST, upstream source 127.0.0.6.
    Redirect,
    /// TPROXY (`transparent: true`), upstream source 127.0.0.6.
    Tproxy,
}

/// An Istio-shaped sidecar bootstrap, trimmed to what capture needs.
pub(super) fn bootstrap(inbound: Inbound) -> String {
    let original_dst = r#"
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"#;
    let transparent_inbound = inbound != Inbound::Redirect;
    let inbound_filters = original_dst;
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 15000 }}
static_resources:
  listeners:
  - name: virtualOutbound
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 15001 }}
    use_original_dst: true{original_dst}
    filter_chains:
    - name: virtualOutbound-catchall-tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: virtualInbound
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 15006 }}
    transparent: {transparent_inbound}{inbound_filters}
    filter_chains:
    - name: inbound-passthrough
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughClusterIpv4
  - name: 0.0.0.0_9000
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 9000 }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_9000
          route_config:
            name: "9000"
            virtual_hosts:
            - name: allow_any
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: PassthroughCluster }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
  - name: InboundPassthroughClusterIpv4
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    upstream_bind_config:
      source_address: {{ address: 127.0.0.6, port_value: 0 }}
"#
    )
}

/// Outrigger running in the pod as uid/gid 1337.
pub(super) struct Sidecar {
    pub(super) guard: ChildGuard,
    pub(super) dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the proxy; `net_admin` gives it CAP_NET_ADMIN as an ambient capability (what
    /// Istio grants the sidecar in TPROXY mode, for IP_TRANSPARENT). Waits until /ready is LIVE.
    pub(super) fn start(pod: &Netns, bootstrap: &str, net_admin: bool) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        // uid 1337 must be able to read the bootstrap.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, bootstrap).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let bin = outrigger().path;
        let mut argv = vec!["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"];
        if net_admin {
            argv.extend(["--inh-caps=+net_admin", "--ambient-caps=+net_admin"]);
        }
        let path_str = path.to_str().unwrap();
        argv.extend([
            bin.to_str().unwrap(),
            "-c",
            path_str,
            "--component-log-level",
            "conn_handler:debug",
        ]);
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = pod
            .command(&argv)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start outrigger");
        let mut sidecar = Sidecar {
            guard: ChildGuard { child },
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = sidecar.guard.exited() {
                panic!(
                    "outrigger exited ({status}) before LIVE\n{}",
                    sidecar.logs()
                );
            }
            match sidecar.get(pod, "/ready") {
                Ok((200, body)) if body.trim() == "LIVE" => break,
                last if Instant::now() >= deadline => {
                    panic!("outrigger not LIVE in time: {last:?}\n{}", sidecar.logs())
                }
                _ => thread::sleep(POLL),
            }
        }
        sidecar
    }

    pub(super) fn get(&self, pod: &Netns, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_string();
        pod.run(move || http_get(ADMIN.parse().unwrap(), &path, Duration::from_secs(2)))
    }

    pub(super) fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let err = read("stderr.log");
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- outrigger stdout ---\n{}--- outrigger stderr (tail) ---\n{}",
            read("stdout.log"),
            tail.join("\n")
        )
    }

    /// All counters and gauges of /stats.
    pub(super) fn stats(&self, pod: &Netns) -> BTreeMap<String, u64> {
        let (status, body) = self
            .get(pod, "/stats")
            .unwrap_or_else(|e| panic!("GET /stats: {e}\n{}", self.logs()));
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    pub(super) fn stat(&self, pod: &Netns, name: &str) -> u64 {
        self.stats(pod).get(name).copied().unwrap_or(0)
    }

    /// Waits until `name` is at least `want` (stats move as connections are accepted), then
    /// returns it; the caller asserts the exact value.
    pub(super) fn wait_stat(&self, pod: &Netns, name: &str, want: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.stat(pod, name);
            if value >= want || Instant::now() >= deadline {
                return value;
            }
            thread::sleep(POLL);
        }
    }

    pub(super) fn assert_live(&mut self, pod: &Netns, when: &str) {
        if let Some(status) = self.guard.exited() {
            panic!("{when}: outrigger exited ({status})\n{}", self.logs());
        }
        let ready = self.get(pod, "/ready");
        assert!(
            matches!(&ready, Ok((200, body)) if body.trim() == "LIVE"),
            "{when}: /ready is {ready:?}\n{}",
            self.logs()
        );
    }

    /// The real uid of the proxy process.
    pub(super) fn uid(&self) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.guard.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    }
}
