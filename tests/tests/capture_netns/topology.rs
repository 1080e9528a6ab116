//! The pod and remote namespaces, the veth pair between them, and running commands inside.
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
// Topology

/// The two namespaces and the veth pair between them.
pub(super) struct Topology {
    pub(super) pod: Netns,
    pub(super) remote: Netns,
}

impl Topology {
    pub(super) fn new() -> Topology {
        let pod = Netns::new("pod");
        let remote = Netns::new("remote");
        // Both ends are created directly inside the test namespaces (`ip -n`); the host's
        // namespace never sees them.
        run_ok(
            std::process::Command::new("ip").args([
                "-n",
                pod.name(),
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                remote.name(),
            ]),
            "create the veth pair",
        );
        pod.sh(&format!(
            "ip addr add {POD_IP}/30 dev eth0 && ip link set eth0 up"
        ));
        remote.sh(&format!(
            "ip addr add {REMOTE_IP}/30 dev eth0 && ip link set eth0 up"
        ));
        Topology { pod, remote }
    }

    /// `outrigger-iptables ARGS` in the pod, on the nft backend.
    pub(super) fn iptables_tool(&self, args: &[&str]) -> Output {
        let bin = outrigger_iptables();
        let mut argv = vec![bin.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.pod.exec(&argv, &[("FORCE_IPTABLES_BINARY", "nft")])
    }

    pub(super) fn apply(&self, args: &[&str], what: &str) {
        let out = self.iptables_tool(args);
        assert!(
            out.status.success(),
            "{what}: exit {:?}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(super) fn save(&self) -> String {
        normalize_iptables_save(&self.pod.sh("iptables-nft-save"))
    }

    /// The app client: `bash` as uid 1000 in the pod, connecting to `ip:port`, sending `line`
    /// and printing everything the server sends back until it closes.
    pub(super) fn app_exchange(&self, ip: &str, port: u16, line: &str) -> Output {
        self.pod.exec(
            &[
                "setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "timeout",
                "5",
                "bash",
                "-c",
                r#"exec 3<>"/dev/tcp/$0/$1" || exit 7; printf '%s\n' "$2" >&3; cat <&3"#,
                ip,
                &port.to_string(),
                line,
            ],
            &[],
        )
    }

    /// A TCP exchange started from the remote namespace (root, no rules there).
    pub(super) fn remote_exchange(&self, addr: &str, line: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().unwrap();
        let line = line.to_string();
        self.remote.run(move || exchange(addr, &line))
    }
}

/// Connects, sends `line` + newline, and reads until the peer closes.
pub(super) fn exchange(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

pub(super) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
