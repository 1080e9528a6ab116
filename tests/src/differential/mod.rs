//! Differential traffic scenarios: one scenario is a bootstrap (an HTTP connection manager with
//! a scenario's options and route configuration, in front of a fixed set of clusters), an
//! upstream behaviour and client steps. [`run`] plays every scenario against Envoy (the oracle)
//! and against Outrigger — each with its own ports and its own scripted upstreams — reduces what
//! a user sees to text ([`Observation`]), and reports every scenario whose two texts differ.
//!
//! Clusters every bootstrap has (the scenario's routes pick among them):
//! `backend` (HTTP/1.1 to upstream `a`), `other` (HTTP/1.1 to upstream `b`), `backend_h2`
//! (explicit HTTP/2 to `a`), `backend_downstream` (use_downstream_protocol to `a`), `dead`
//! (a port nothing listens on), `empty` (no endpoints) and `grpc` (HTTP/2 to `{{grpc_port}}`,
//! where a scenario may start its own server).

use crate::binaries::Kind;
use crate::curl;
use crate::ports::{free_port, Ports};
use crate::running::RunningProxy;
use crate::scripted::{Behaviour, Scripted};
use crate::upstream::{Received, Reply};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What one proxy side of a scenario runs against.
pub struct Side {
    pub kind: Kind,
    pub proxy: RunningProxy,
    pub ports: Ports,
    /// Upstream `a` (clusters `backend`, `backend_h2`, `backend_downstream`).
    pub a: Scripted,
    /// Upstream `b` (cluster `other`).
    pub b: Scripted,
}

impl Side {
    /// `http://127.0.0.1:<listener_port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.get("listener_port"))
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.get(name)))
    }

    /// Both upstreams' requests so far, tagged with the upstream's name.
    pub fn upstream_requests(&self) -> Vec<(&'static str, Received)> {
        let a = self.a.requests().into_iter().map(|r| ("a", r));
        let b = self.b.requests().into_iter().map(|r| ("b", r));
        a.chain(b).collect()
    }

    /// `text` with this side's port numbers replaced by their names, so Envoy's and
    /// Outrigger's texts compare although each runs on its own ports (a `Host` header, a
    /// redirect `Location`, an upstream address in a header all carry them).
    pub fn normalise_ports(&self, text: &str) -> String {
        let named: Vec<(String, u16)> = ["listener_port", "tcp_port", "admin_port"]
            .iter()
            .map(|n| (n.to_string(), self.ports.get(n)))
            .chain([
                ("upstream_a".to_string(), self.a.port()),
                ("upstream_b".to_string(), self.b.port()),
                ("dead_port".to_string(), self.ports.get("dead_port")),
                ("grpc_port".to_string(), self.ports.get("grpc_port")),
            ])
            .collect();
        text.lines()
            .map(|line| {
                // A long body's summary (a checksum and its first bytes) is data, not an
                // address; a port number may occur in it by chance.
                if line.trim_start().starts_with("body <") {
                    return format!("{line}\n");
                }
                let mut line = line.to_string();
                for (name, port) in &named {
                    line = replace_number(&line, &port.to_string(), &format!("{{{name}}}"));
                }
                format!("{line}\n")
            })
            .collect()
    }
}

/// `text` with every occurrence of the number `digits` that is a number of its own (not
/// part of a longer one, such as a port inside a 20-digit counter) replaced by `with`.
fn replace_number(text: &str, digits: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(digits) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + digits.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit()) {
            out.push_str(digits);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + digits.len()..];
    }
    out.push_str(rest);
    out
}

/// How a scenario's bootstrap is made.
#[derive(Debug, Clone)]
pub enum Config {
    /// The standard bootstrap with these extra HTTP connection manager fields (YAML, any
    /// indentation), this `route_config` (YAML, the message's fields) and these HTTP filters
    /// before the router (YAML list items), and these fields of the router's own config.
    Http {
        hcm: String,
        route_config: String,
        filters: String,
        router: String,
    },
    /// A whole bootstrap template of the scenario's own (`{{admin_port}}`, `{{listener_port}}`,
    /// `{{tcp_port}}`, `{{upstream_a}}`, `{{upstream_b}}`, `{{dead_port}}`, `{{grpc_port}}`).
    Full(String),
}

/// A client step.
#[derive(Debug, Clone)]
pub enum Step {
    /// curl `args` against the listener's `path` (`--path-as-is` always: normalisation is
    /// the proxy's job, not curl's).
    Curl { path: String, args: Vec<String> },
    /// These bytes on a fresh TCP connection to the listener; the response read until the
    /// peer closes or [`RAW_READ`] passes.
    Raw(Vec<u8>),
    /// A step of the scenario's own, returning the text to compare.
    Custom(fn(&Side) -> String),
}

/// How long a raw step waits for the proxy to answer and close.
pub const RAW_READ: Duration = Duration::from_millis(1500);

/// One named scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// The Envoy documentation page for the behaviour.
    pub doc: &'static str,
    pub config: Config,
    /// Behaviour of upstream `a`; upstream `b` always answers 200 `from b\n`.
    pub upstream: Behaviour,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// A scenario on the standard bootstrap, upstream `a` answering 200 `from a\n`.
    pub fn http(name: &'static str, doc: &'static str, route_config: &str) -> Scenario {
        Scenario {
            name,
            doc,
            config: Config::Http {
                hcm: String::new(),
                route_config: route_config.to_string(),
                filters: String::new(),
                router: String::new(),
            },
            upstream: Behaviour::Reply(Reply::text("from a\n")),
            steps: Vec::new(),
        }
    }

    /// Extra HTTP connection manager fields.
    pub fn hcm(mut self, fields: &str) -> Scenario {
        if let Config::Http { hcm, .. } = &mut self.config {
            hcm.push_str(&dedent(fields));
            hcm.push('\n');
        }
        self
    }

    /// HTTP filters to put before the router (YAML list items).
    pub fn filters(mut self, items: &str) -> Scenario {
        if let Config::Http { filters, .. } = &mut self.config {
            filters.push_str(&dedent(items));
        }
        self
    }

    /// Fields of the router filter's config (`envoy.extensions.filters.http.router.v3.Router`).
    pub fn router(mut self, fields: &str) -> Scenario {
        if let Config::Http { router, .. } = &mut self.config {
            router.push_str(&dedent(fields));
            router.push('\n');
        }
        self
    }

    pub fn upstream(mut self, behaviour: Behaviour) -> Scenario {
        self.upstream = behaviour;
        self
    }

    /// A curl step: `args` are curl arguments, e.g. `["-H", "host: a.example"]`.
    pub fn curl(mut self, path: &str, args: &[&str]) -> Scenario {
        self.steps.push(Step::Curl {
            path: path.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        });
        self
    }

    /// A GET with curl and no extra arguments.
    pub fn get(self, path: &str) -> Scenario {
        self.curl(path, &[])
    }

    pub fn raw(mut self, bytes: impl Into<Vec<u8>>) -> Scenario {
        self.steps.push(Step::Raw(bytes.into()));
        self
    }

    pub fn custom(mut self, step: fn(&Side) -> String) -> Scenario {
        self.steps.push(Step::Custom(step));
        self
    }
}

/// A route configuration with one virtual host `all` (domains `*`) holding `routes` (YAML list
/// items).
pub fn one_vhost(routes: &str) -> String {
    format!(
        "name: traffic_route\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n{}",
        indent(&dedent(routes), 2)
    )
}

/// The standard bootstrap template.
const BOOTSTRAP: &str = r#"
node: { id: traffic-node, cluster: traffic-cluster }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
  listeners:
  - name: http_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{listener_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: traffic
%HCM%
          route_config:
%ROUTE_CONFIG%
          http_filters:
%FILTERS%
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
%ROUTER%
  clusters:
%CLUSTERS%
"#;

/// The clusters every bootstrap has (see the module documentation).
pub const CLUSTERS: &str = r#"
- name: backend
  type: STATIC
  connect_timeout: 5s
  load_assignment:
    cluster_name: backend
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_a}} } } }
- name: other
  type: STATIC
  connect_timeout: 5s
  load_assignment:
    cluster_name: other
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_b}} } } }
- name: backend_h2
  type: STATIC
  connect_timeout: 5s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: { http2_protocol_options: {} }
  load_assignment:
    cluster_name: backend_h2
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_a}} } } }
- name: backend_downstream
  type: STATIC
  connect_timeout: 5s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} }
  load_assignment:
    cluster_name: backend_downstream
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_a}} } } }
- name: dead
  type: STATIC
  connect_timeout: 5s
  load_assignment:
    cluster_name: dead
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{dead_port}} } } }
- name: empty
  type: STATIC
  connect_timeout: 5s
  load_assignment: { cluster_name: empty }
- name: grpc
  type: STATIC
  connect_timeout: 5s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: { http2_protocol_options: {} }
  load_assignment:
    cluster_name: grpc
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{grpc_port}} } } }
"#;

fn template(config: &Config) -> String {
    match config {
        Config::Http {
            hcm,
            route_config,
            filters,
            router,
        } => BOOTSTRAP
            .replace("%HCM%", &indent(hcm, 10))
            .replace("%ROUTER%", &indent(router, 14))
            .replace("%FILTERS%", &indent(filters, 10))
            .replace("%ROUTE_CONFIG%", &indent(&dedent(route_config), 12))
            .replace("%CLUSTERS%", &indent(&dedent(CLUSTERS), 2)),
        Config::Full(text) => text.clone(),
    }
}

/// `text` without the indentation its non-blank lines share.
pub fn dedent(text: &str) -> String {
    let width = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{}\n", &l[width.min(l.len())..]))
        .collect()
}

/// Every non-blank line of `text` indented by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect::<String>()
        .trim_end_matches('\n')
        .to_string()
}

/// Starts one side of a scenario: its upstreams, then the proxy on the rendered bootstrap.
fn start_side(kind: Kind, scenario: &Scenario) -> Side {
    let a = Scripted::start("a", scenario.upstream.clone());
    let b = Scripted::start("b", Behaviour::Reply(Reply::text("from b\n")));
    let ports = Ports::new(&["admin_port", "listener_port", "tcp_port", "grpc_port"])
        .with("upstream_a", a.port())
        .with("upstream_b", b.port())
        .with("dead_port", free_port());
    let bootstrap = ports.render(&template(&scenario.config));
    // Access logs reach their files within 100 ms, so a step can read them.
    let proxy = RunningProxy::start(
        kind,
        &bootstrap,
        &["--concurrency", "1", "--file-flush-interval-msec", "100"],
    );
    Side {
        kind,
        proxy,
        ports,
        a,
        b,
    }
}

/// Starts one side and plays the scenario on it. A proxy that refuses the bootstrap is an
/// observation too (a configuration one side accepts and the other rejects is a difference),
/// so the start's panic is caught and reduced to its first line.
///
/// A free port can be taken by someone else between being found and being bound (another
/// test's upstream, an outgoing connection's ephemeral port): a start that fails with
/// "address in use" is retried with fresh ports, a bounded number of times.
fn play(kind: Kind, scenario: &Scenario) -> String {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let message = match std::panic::catch_unwind(|| start_side(kind, scenario)) {
            Ok(side) => return observe(&side, scenario),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string()),
        };
        // A bootstrap the test itself wrote wrong is the test's bug, not an observation.
        if message.starts_with("the test bootstrap is not YAML/JSON") {
            panic!("{}: {message}", scenario.name);
        }
        if message.contains("in use") && attempts < 3 {
            continue;
        }
        // The first line says what happened; an error line from the log says why.
        let why = message
            .lines()
            .find(|l| l.contains("error") || l.contains("rror:"))
            .unwrap_or_default();
        return format!(
            "did not start: {}\n  {}\n",
            message.lines().next().unwrap_or_default(),
            why.trim()
        );
    }
}

/// Past this many upstream requests in one step (a load generator), only their number is
/// compared.
const MANY: usize = 20;

/// Plays the scenario's steps on one side and returns the observed text.
fn observe(side: &Side, scenario: &Scenario) -> String {
    let mut out = String::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let before = side.upstream_requests().len();
        let seen = match step {
            Step::Curl { path, args } => {
                let _ = writeln!(
                    out,
                    "step {i}: curl {} {path}",
                    summarise(args.join(" ").as_bytes(), 120)
                );
                curl_step(side, path, args)
            }
            Step::Raw(bytes) => {
                let _ = writeln!(out, "step {i}: raw {:?}", summarise(bytes, 80));
                raw_step(side, bytes)
            }
            Step::Custom(step) => {
                let _ = writeln!(out, "step {i}: custom");
                step(side)
            }
        };
        out.push_str(&seen);
        // The upstream records a request before it answers, so by the time the client has
        // its response, what the upstream received is in the log.
        let new: Vec<_> = side.upstream_requests().into_iter().skip(before).collect();
        if new.len() > MANY {
            let _ = writeln!(out, "  upstream received {} requests", new.len());
        } else {
            for (name, r) in new {
                out.push_str(&received_text(name, &r));
            }
        }
    }
    side.normalise_ports(&out)
}

fn curl_step(side: &Side, path: &str, args: &[String]) -> String {
    let mut all: Vec<&str> = vec!["--path-as-is"];
    all.extend(args.iter().map(String::as_str));
    let method = method_of(args);
    match curl::request(method, &side.url(path), &all) {
        Ok(r) => response_text(r.status, &r.headers, r.body.as_bytes()),
        Err(f) => format!("  no response: curl exit {:?}\n", f.exit_code),
    }
}

/// The method curl should send: `-X` among the args wins, else GET (curl switches to POST
/// by itself for `--data`, which `curl::request`'s own `-X` would override).
fn method_of(args: &[String]) -> &str {
    if let Some(i) = args.iter().position(|a| a == "-X") {
        return args.get(i + 1).map_or("GET", String::as_str);
    }
    if args
        .iter()
        .any(|a| a.starts_with("--data") || a == "-d" || a == "-T" || a == "-F")
    {
        return "POST";
    }
    "GET"
}

fn raw_step(side: &Side, bytes: &[u8]) -> String {
    let (response, closed) = raw_exchange(side.addr("listener_port"), bytes, RAW_READ);
    if response.is_empty() {
        return format!("  no response; closed: {closed}\n");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    // Interim (1xx) responses come first, each a head of its own.
    let mut informational = String::new();
    let mut text = text.as_str();
    while text.starts_with("HTTP/1.1 1") {
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            break;
        };
        let _ = writeln!(informational, "  informational {head:?}");
        text = rest;
    }
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return format!(
            "  partial response {:?}; closed: {closed}\n",
            summarise(&response, 200)
        );
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    format!(
        "{informational}{}  closed: {closed}\n",
        response_text(status, &headers, body.as_bytes())
    )
}

/// A scratch access log file for one side of a scenario: named after the test, this test
/// process and the side's admin port, so each side has its own and a file left behind by an
/// earlier run (one killed before it removed its files) is never read as this run's lines.
/// In a bootstrap template, pass `"{{admin_port}}"` as the port; a step passes the side's.
pub fn access_log_path(test: &str, admin_port: impl std::fmt::Display) -> String {
    format!(
        "/tmp/outrigger-{test}-{}-{admin_port}.log",
        std::process::id()
    )
}

/// Writes `bytes` to a fresh connection and reads until the peer closes or `wait` passes.
/// Returns what was read and whether the peer closed.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (Vec::new(), true);
    };
    // A peer may close (and reset) before reading everything; what it answered still counts.
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (response, false);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return (response, true),
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (response, false)
            }
            Err(_) => return (response, true),
        }
    }
}

/// Shuts the write side of `stream` (a helper for half-close steps).
pub fn shutdown_write(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

mod text;
mod verdict;

use text::received_text;
pub use text::{response_text, summarise};

pub use verdict::{check, run, run_client, stat_differences, Known, Outcome};

#[cfg(test)]
mod tests {
    use super::{dedent, indent, one_vhost};

    #[test]
    fn indents_snippets_into_the_template() {
        assert_eq!(dedent("  a:\n    b: 1\n\n"), "a:\n  b: 1\n");
        assert_eq!(indent("a:\n  b: 1\n", 4), "    a:\n      b: 1");
        let rc = one_vhost("- match: { prefix: / }\n  route: { cluster: backend }");
        let doc: serde_json::Value = serde_yaml_ng::from_str(&rc).expect("yaml");
        assert_eq!(
            doc["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "backend"
        );
    }
}
