//! Free ports for bootstraps, and `{{name}}` substitution of them into bootstrap text.
//! A port is found by binding port 0 and releasing it; the kernel hands ephemeral ports out in
//! a rotating order, and a process-wide set keeps one test binary from handing a port out twice,
//! so two tests racing for the same port is unlikely enough not to matter.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{LazyLock, Mutex};

static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A TCP port nothing listens on right now. It is bound on 0.0.0.0 (so it is free on every
/// IPv4 address: Istio's listeners bind 0.0.0.0) and released before returning.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind 0.0.0.0:0");
        let port = listener
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        drop(listener);
        if HANDED_OUT
            .lock()
            .expect("no panic while holding the port set")
            .insert(port)
        {
            return port;
        }
    }
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
