//! Differential traffic tests for the load balancers: one bootstrap with a listener per policy,
//! each in front of the same three upstreams (weights 1, 1, 2), served by Envoy and by
//! Outrigger. Every upstream answers with its own name, so each response says where the
//! request went. Checked: round robin follows the weights exactly; random and least request
//! spread within a binomial tolerance; ring hash and Maglev send one key always to the same
//! upstream, and, since Outrigger builds Envoy's ring and table, to the same upstream as Envoy;
//! a request without a hash still spreads; the cookie hash policy generates the cookie Envoy
//! generates.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/load_balancers

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::{envoy_or_skip, Kind, Ports, RunningProxy, Upstream};

const POLICIES: [&str; 5] = [
    "ROUND_ROBIN",
    "LEAST_REQUEST",
    "RANDOM",
    "RING_HASH",
    "MAGLEV",
];
const NAMES: [&str; 3] = ["a", "b", "c"];
const WEIGHTS: [u32; 3] = [1, 1, 2];

fn listener(name: &str, port: &str, cluster: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{port}}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/query" }}
                route: {{ cluster: {cluster}, hash_policy: [{{ query_parameter: {{ name: key }} }}] }}
              - match: {{ prefix: "/cookie" }}
                route:
                  cluster: {cluster}
                  hash_policy: [{{ cookie: {{ name: sticky, ttl: 60s, path: "/" }} }}]
              - match: {{ prefix: "/" }}
                route:
                  cluster: {cluster}
                  hash_policy:
                  - header: {{ header_name: x-missing }}
                    terminal: true
                  - header: {{ header_name: x-key }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

fn cluster(name: &str, lb: &str) -> String {
    let endpoints: String = NAMES
        .iter()
        .zip(WEIGHTS)
        .map(|(n, w)| {
            format!(
                "\n        - {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{up_{n}}}}} }} }} }}, load_balancing_weight: {w} }}"
            )
        })
        .collect();
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 5s
{lb}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{endpoints}
"#
    )
}

/// Listener `l_<policy>` on port `p_<policy>` to cluster `c_<policy>`, plus the typed
/// extension form of ring hash on `p_typed_ring`.
fn bootstrap() -> String {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for p in POLICIES {
        let lower = p.to_ascii_lowercase();
        listeners.push_str(&listener(
            &format!("l_{lower}"),
            &format!("p_{lower}"),
            &format!("c_{lower}"),
        ));
        clusters.push_str(&cluster(
            &format!("c_{lower}"),
            &format!("    lb_policy: {p}"),
        ));
    }
    listeners.push_str(&listener("l_typed_ring", "p_typed_ring", "c_typed_ring"));
    clusters.push_str(&cluster(
        "c_typed_ring",
        r#"    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.ring_hash
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash
            minimum_ring_size: 64"#,
    ));
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{admin}}}} }} }}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
"#
    )
}

/// A keep-alive HTTP/1.1 client on one connection: GET `path` with extra header lines, returns
/// (body, set-cookie).
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str, headers: &str) -> (String, Option<String>) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: lb.test\r\n{headers}\r\n");
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("send the request");
        let mut status = String::new();
        self.reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "status {status:?}");
        let (mut length, mut cookie) = (0usize, None);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header");
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().expect("a length"),
                "set-cookie" => cookie = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("the body");
        (String::from_utf8(body).expect("text"), cookie)
    }
}

/// What one proxy did.
#[derive(Debug, Default)]
struct Observed {
    /// Per listener: upstream name -> requests served.
    spread: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per listener and key: the upstreams that served it (a set of one when consistent).
    by_key: BTreeMap<(String, String), Vec<String>>,
    cookie: Option<String>,
}

const SPREAD_REQUESTS: u32 = 400;
const KEYS: u32 = 40;
const REPEATS: u32 = 3;

fn drive(ports: &Ports) -> Observed {
    let mut seen = Observed::default();
    let listeners: Vec<String> = POLICIES
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .chain(["typed_ring".to_string()])
        .collect();
    for l in &listeners {
        let mut client = Client::connect(ports.get(&format!("p_{l}")));
        // No hash key: every policy spreads (hashing ones pick at random, as Envoy does).
        let spread = seen.spread.entry(l.clone()).or_default();
        for _ in 0..SPREAD_REQUESTS {
            let (body, _) = client.get("/", "");
            *spread.entry(body).or_default() += 1;
        }
        for k in 0..KEYS {
            for _ in 0..REPEATS {
                let (header, _) = client.get("/", &format!("x-key: user-{k}\r\n"));
                let (query, _) = client.get(&format!("/query?x=1&key=q{k}"), "");
                let (cookie, _) = client.get("/cookie", &format!("cookie: sticky=\"c{k}\"\r\n"));
                for (kind, body) in [("header", header), ("query", query), ("cookie", cookie)] {
                    let hosts = seen
                        .by_key
                        .entry((l.clone(), format!("{kind} {k}")))
                        .or_default();
                    if !hosts.contains(&body) {
                        hosts.push(body);
                    }
                }
            }
        }
    }
    let mut client = Client::connect(ports.get("p_ring_hash"));
    seen.cookie = client.get("/cookie", "").1;
    seen
}

/// Binomial tolerance: `n * p ± 5 sd` (a spurious failure about once in 3.5 million).
fn within(count: u32, n: u32, p: f64) -> bool {
    let mean = f64::from(n) * p;
    let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
    (f64::from(count) - mean).abs() <= 5.0 * sd
}

fn check_spread(who: &str, seen: &Observed) {
    let total: u32 = WEIGHTS.iter().sum();
    for (listener, spread) in &seen.spread {
        let counts: Vec<u32> = NAMES
            .iter()
            .map(|n| spread.get(*n).copied().unwrap_or(0))
            .collect();
        match listener.as_str() {
            // Weighted round robin is exact over whole periods (400 = 100 periods of 4).
            "round_robin" => assert_eq!(counts, [100, 100, 200], "{who} {listener}"),
            // Random ignores weights (Envoy's random balancer picks uniformly among hosts).
            "random" => {
                for c in &counts {
                    assert!(
                        within(*c, SPREAD_REQUESTS, 1.0 / 3.0),
                        "{who} {listener}: {counts:?}"
                    );
                }
            }
            // Idle hosts: least request follows the weights.
            "least_request" => {
                for (c, w) in counts.iter().zip(WEIGHTS) {
                    let p = f64::from(w) / f64::from(total);
                    assert!(
                        within(*c, SPREAD_REQUESTS, p),
                        "{who} {listener}: {counts:?}"
                    );
                }
            }
            // Without a hash, ring hash and Maglev pick a random point: every host serves.
            _ => assert!(
                counts.iter().all(|c| *c > 20),
                "{who} {listener}: {counts:?}"
            ),
        }
    }
    let mut used: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for ((listener, key), hosts) in &seen.by_key {
        let hashing = !matches!(
            listener.as_str(),
            "round_robin" | "least_request" | "random"
        );
        if hashing {
            assert_eq!(
                hosts.len(),
                1,
                "{who} {listener} {key}: served by {hosts:?}"
            );
            used.entry(listener).or_default().insert(&hosts[0]);
        }
    }
    // The keys spread: with 40 keys of each kind, every upstream owns some.
    for (listener, hosts) in used {
        assert_eq!(
            hosts.len(),
            3,
            "{who} {listener}: keys only reach {hosts:?}"
        );
    }
    eprintln!("{who}: {:?}", seen.spread);
}

#[test]
fn balancers_match_envoy() {
    let Some(_) = envoy_or_skip("balancers_match_envoy") else {
        return;
    };
    let upstreams: Vec<Upstream> = NAMES.iter().map(|n| Upstream::start(n)).collect();
    let mut names: Vec<String> = vec!["admin".into()];
    names.extend(
        POLICIES
            .iter()
            .map(|p| format!("p_{}", p.to_ascii_lowercase())),
    );
    names.push("p_typed_ring".into());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut results = Vec::new();
    for kind in [Kind::Envoy, Kind::Outrigger] {
        let mut ports = Ports::new(&name_refs);
        for (n, u) in NAMES.iter().zip(&upstreams) {
            ports = ports.with(&format!("up_{n}"), u.port());
        }
        let proxy = RunningProxy::start(kind, &ports.render(&bootstrap()), &[]);
        let seen = drive(&ports);
        check_spread(kind.name(), &seen);
        drop(proxy);
        results.push(seen);
    }
    let (envoy, ours) = (&results[0], &results[1]);
    // Same ring and table as Envoy: each key lands on the same upstream in both proxies.
    let mut differ = Vec::new();
    for ((listener, key), hosts) in &envoy.by_key {
        if matches!(listener.as_str(), "ring_hash" | "maglev" | "typed_ring") {
            let theirs = &ours.by_key[&(listener.clone(), key.clone())];
            if hosts != theirs {
                differ.push(format!(
                    "{listener} {key}: Envoy {hosts:?}, Outrigger {theirs:?}"
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "host choice differs:\n{}",
        differ.join("\n")
    );
    // The generated cookie has Envoy's shape (its value hashes the client's address and port,
    // which differ between the two runs).
    let shape = regex::Regex::new(r#"^sticky="[0-9a-f]{16}"; Max-Age=60; Path=/; HttpOnly$"#)
        .expect("regex");
    for (who, seen) in [("Envoy", envoy), ("Outrigger", ours)] {
        let cookie = seen.cookie.as_deref().unwrap_or_default();
        assert!(shape.is_match(cookie), "{who}: set-cookie {cookie:?}");
    }
}
