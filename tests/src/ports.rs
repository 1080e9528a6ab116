//! Free ports for bootstraps, and `{{name}}` substitution of them into bootstrap text.
//!
//! Tests run as many processes at once (nextest), and each hands ports to proxies it starts
//! later, so a port must stay ours between choosing it and the proxy binding it. Two things
//! could take it meanwhile, and each is shut out:
//! - the kernel, giving it to a `bind(0)` or as an outgoing connection's source port: ports
//!   are chosen below the kernel's ephemeral range, which it never hands out on its own;
//! - another test process choosing it too: a port is ours while we hold an advisory lock on
//!   a file named after it, which the kernel drops when the process exits (no stale claims).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;

/// How many ports below the ephemeral range are ours to choose from.
const SPAN: u16 = 12_000;

/// The lock files of the ports this process holds, kept open until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A TCP port nothing listens on right now, held for this process until it exits. It is
/// checked free on 0.0.0.0 (so on every IPv4 address: Istio's listeners bind 0.0.0.0).
pub fn free_port() -> u16 {
    let (low, high) = candidate_range();
    let dir = std::env::temp_dir().join("outrigger-test-ports");
    fs::create_dir_all(&dir).expect("create the port lock directory");
    let span = u32::from(high - low) + 1;
    // Processes start their scans at different places so they rarely contend for a lock.
    let start = (std::process::id().wrapping_mul(7919) + next_call()) % span;
    for step in 0..span {
        let port = low + ((start + step) % span) as u16;
        if let Some(lock) = claim(&dir, port) {
            HELD.lock()
                .expect("no panic while holding the port locks")
                .push(lock);
            return port;
        }
    }
    panic!("no free port in {low}..={high}");
}

/// The ports to choose from: the `SPAN` just below the kernel's ephemeral range.
fn candidate_range() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low: u16 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.saturating_sub(1);
    (high.saturating_sub(SPAN).max(1_024), high)
}

/// Counts calls, so consecutive calls start at different places.
fn next_call() -> u32 {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The open, locked lock file of `port`, if no other process (or earlier call) holds it and
/// nothing listens on the port.
fn claim(dir: &std::path::Path, port: u16) -> Option<File> {
    let path: PathBuf = dir.join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // An open file description holds the lock, so a second claim from this process fails too.
    file.try_lock().ok()?;
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ok()?;
    Some(file)
}

/// Named free ports, substituted into text as `{{name}}`.
#[derive(Debug, Clone, Default)]
pub struct Ports(BTreeMap<String, u16>);

impl Ports {
    /// One free port for each name.
    pub fn new(names: &[&str]) -> Self {
        Ports(names.iter().map(|n| (n.to_string(), free_port())).collect())
    }

    /// The port allocated for `name`; panics for a name not given to [`Ports::new`].
    pub fn get(&self, name: &str) -> u16 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no port named {name:?} (have {:?})", self.0.keys()))
    }

    /// Adds (or replaces) a port with a known value, e.g. a test upstream's.
    pub fn with(mut self, name: &str, port: u16) -> Self {
        self.0.insert(name.to_string(), port);
        self
    }

    /// `template` with every `{{name}}` replaced by its port. A placeholder left over (a typo,
    /// or a port not allocated) is an error in the test, so it panics naming it.
    pub fn render(&self, template: &str) -> String {
        let mut text = template.to_string();
        for (name, port) in &self.0 {
            text = text.replace(&format!("{{{{{name}}}}}"), &port.to_string());
        }
        if let Some(start) = text.find("{{") {
            let end = text[start..]
                .find("}}")
                .map_or(text.len(), |e| start + e + 2);
            panic!(
                "unsubstituted placeholder {} in bootstrap template",
                &text[start..end]
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::{free_port, Ports};

    #[test]
    fn ports_are_distinct_and_substituted() {
        let ports = Ports::new(&["admin_port", "listener_port"]).with("upstream_port", 1234);
        assert_ne!(ports.get("admin_port"), ports.get("listener_port"));
        let text = ports.render("a={{admin_port}} u={{upstream_port}}");
        assert_eq!(
            text,
            format!("a={} u=1234", ports.get("admin_port")),
            "rendered text"
        );
        assert_ne!(free_port(), free_port());
    }

    #[test]
    #[should_panic(expected = "unsubstituted placeholder {{nope}}")]
    fn a_leftover_placeholder_is_an_error() {
        Ports::new(&[]).render("x: {{nope}}");
    }
}
