//! `/stats/prometheus` against Envoy: the same bootstrap (an HTTP connection manager routing
//! to a static cluster, a tcp_proxy to the same cluster) and the same deterministic traffic on
//! both, once with Envoy's built-in tag extractors and once with Istio's `stats_tags` (from the
//! Istio bootstrap golden, lookahead regex included). For every metric family both proxies
//! emit, the label sets must be the same, and counter values must be equal; what differs on
//! purpose is listed in [`KNOWN`] and each entry must still be needed.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto

mod families;
use families::{MUST_SHARE, NOT_DETERMINISTIC};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::{curl, envoy_or_skip, Kind, Ports, RunningProxy, Upstream};

const BOOTSTRAP: &str = r#"
node: { id: stats-node, cluster: stats-cluster }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
%STATS_CONFIG%
static_resources:
  listeners:
  - name: http_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{http_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %HCM_PREFIX%
          # A request whose only `x-forwarded-for` entry is loopback is internal.
          internal_address_config:
            cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }]
          route_config:
            name: stats_route
            virtual_hosts:
            - name: backend_vhost
              domains: ["*"]
              routes:
              - match: { prefix: "/missing" }
                direct_response: { status: 404 }
              - match: { prefix: "/h2" }
                route: { cluster: backend_h2 }
              - match: { prefix: "/none" }
                route: { cluster: no_hosts }
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{tcp_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %TCP_PREFIX%
          cluster: backend
  clusters:
  - name: backend
    %ALT_STAT_NAME%
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} }
  - name: no_hosts
    type: STATIC
    connect_timeout: 1s
    load_assignment: { cluster_name: no_hosts }
  - name: backend_h2
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: backend_h2
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} }
"#;

/// A difference between the two outputs that is intended or not yet closed.
struct Known {
    /// A variant's name, or `*` for every variant.
    variant: &'static str,
    family: &'static str,
    reason: &'static str,
}

/// Checked: an entry whose family no longer differs fails the test, so the list stays true.
const KNOWN: &[Known] = &[];

/// Label sets of Envoy-internal scopes Outrigger does not have: Envoy's admin server keeps
/// connection-manager stats under `http.admin.*`, and its async HTTP client under
/// `http.async-client.*`. They are dropped from Envoy's side before comparing.
const ENVOY_INTERNAL: &[(&str, &str)] = &[
    ("envoy_http_conn_manager_prefix", "admin"),
    ("envoy_http_conn_manager_prefix", "async-client"),
];

struct Variant {
    name: &'static str,
    stats_config: String,
    hcm_prefix: &'static str,
    tcp_prefix: &'static str,
    alt_stat_name: &'static str,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "envoy_default_tags",
            stats_config: String::new(),
            hcm_prefix: "ingress_http",
            tcp_prefix: "ingress_tcp",
            alt_stat_name: "",
        },
        Variant {
            name: "istio_stats_tags",
            stats_config: istio_stats_config(),
            // Istio's shapes: `<ip>_<port>;` prefixes and `<name>;` alternative stat names.
            hcm_prefix: "\"10.0.0.1_8080;\"",
            tcp_prefix: "\"inbound|9090||;\"",
            alt_stat_name: "alt_stat_name: \"outbound|8080||backend.default.svc.cluster.local;\"",
        },
    ]
}

/// Istio's `stats_config` without its inclusion list (which would hide the HTTP and TCP stats
/// this test compares), as JSON inside the YAML bootstrap.
fn istio_stats_config() -> String {
    let path = tests::istio::goldens_dir().join("default_golden.json");
    let golden =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&golden).expect("golden JSON");
    let mut stats = doc["stats_config"].clone();
    stats
        .as_object_mut()
        .expect("stats_config is an object")
        .remove("stats_matcher");
    format!("stats_config: {stats}")
}

/// One Prometheus family: its type and, per label set, the value (for histograms the
/// `_count` sample).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    series: BTreeMap<BTreeSet<(String, String)>, String>,
}

fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                !families.contains_key(name),
                "# TYPE {name} appears twice:\n{text}"
            );
            current = name.to_string();
            families.entry(current.clone()).or_default().kind = kind.to_string();
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
            None => (head, BTreeSet::new()),
        };
        let family = families.get_mut(&current).expect("a sample after # TYPE");
        if family.kind == "histogram" {
            if name.strip_suffix("_count") == Some(current.as_str()) {
                family.series.insert(labels, value.to_string());
            }
            continue;
        }
        assert_eq!(name, current, "sample outside its family: {line}");
        family.series.insert(labels, value.to_string());
    }
    families
}

fn parse_labels(text: &str) -> BTreeSet<(String, String)> {
    let mut labels = BTreeSet::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {name} value starts with a quote"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("escape")),
                '"' => break,
                c => value.push(c),
            }
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
        labels.insert((name.trim().to_string(), value));
    }
    labels
}

/// Runs the variant's traffic on `kind` and returns its `/stats/prometheus`.
fn observe(kind: Kind, variant: &Variant) -> String {
    let upstream = Upstream::start("from upstream\n");
    let ports =
        Ports::new(&["admin_port", "http_port", "tcp_port"]).with("upstream_port", upstream.port());
    let bootstrap = ports.render(
        &BOOTSTRAP
            .replace("%STATS_CONFIG%", &variant.stats_config)
            .replace("%HCM_PREFIX%", variant.hcm_prefix)
            .replace("%TCP_PREFIX%", variant.tcp_prefix)
            .replace("%ALT_STAT_NAME%", variant.alt_stat_name),
    );
    let proxy = RunningProxy::start(kind, &bootstrap, &["--concurrency", "1"]);
    let http = |path: &str| format!("http://127.0.0.1:{}{path}", ports.get("http_port"));
    for _ in 0..3 {
        assert_eq!(curl::get(&http("/ok")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(curl::get(&http("/missing")).status, 404);
    }
    // Internal requests: the cluster counts their responses under `internal.`, the others
    // under `external.`.
    let internal = curl::request(
        "GET",
        &http("/internal"),
        &["-H", "x-forwarded-for: 127.0.0.1"],
    )
    .expect("curl runs");
    assert_eq!(internal.status, 200);
    // No healthy upstream: the local 503 is charged to the cluster like an upstream's.
    assert_eq!(curl::get(&http("/none")).status, 503);
    // HTTP/2 upstream: the cluster's bytes are its connection's frames.
    for _ in 0..2 {
        assert_eq!(curl::get(&http("/h2")).status, 200);
    }
    let tcp = format!("http://127.0.0.1:{}/through-tcp", ports.get("tcp_port"));
    assert_eq!(curl::get(&tcp).status, 200);
    // Connection-close accounting runs after the clients have their responses.
    std::thread::sleep(Duration::from_millis(500));
    let response = proxy.get("/stats/prometheus");
    assert_eq!(response.status, 200, "{}", response.body);
    // Each side runs on its own ports; listener addresses carry them.
    let mut body = response.body;
    for name in ["admin_port", "http_port", "tcp_port", "upstream_port"] {
        body = body.replace(
            &format!("_{}\"", ports.get(name)),
            &format!("_{{{name}}}\""),
        );
    }
    body
}

/// A counter whose value may differ from Envoy's by a few bytes, and why.
struct Approximate {
    /// The family's name ends with this.
    family_suffix: &'static str,
    /// The series names this cluster (in a label, or in the family name where the tags
    /// leave the cluster in the name).
    cluster: &'static str,
    within: u64,
    reason: &'static str,
}

/// Checked: values outside `within` fail the test.
const APPROXIMATE: &[Approximate] = &[
    Approximate {
        family_suffix: "upstream_cx_tx_bytes_total",
        cluster: "backend_h2",
        within: 16,
        reason:
            "HTTP/2 requests: the client's SETTINGS frame differs by one entry (6 bytes: Envoy's \
             codec advertises five settings, hyper's h2 client four), and HPACK's Huffman coding \
             of the random x-request-id varies by a byte or two from request to request, \
             Envoy's own included",
    },
    Approximate {
        family_suffix: "upstream_cx_rx_bytes_total",
        cluster: "backend_h2",
        within: 32,
        reason: "HTTP/2 responses: the upstream's second `date` header is a one-byte HPACK index \
                 when both responses fall in the same second, a new literal (about 23 bytes) \
                 when they do not; which happens varies from run to run on either proxy",
    },
    Approximate {
        family_suffix: "upstream_cx_rx_bytes_buffered",
        cluster: "backend_h2",
        within: 32,
        reason: "the last read of the HTTP/2 connection, as upstream_cx_rx_bytes_total",
    },
    // The `cluster` of these two is the connection manager's prefix label in each variant.
    Approximate {
        family_suffix: "http_downstream_cx_tx_bytes_total",
        cluster: "ingress_http",
        within: 3,
        reason: DOWNSTREAM_TX,
    },
    Approximate {
        family_suffix: "http_downstream_cx_tx_bytes_total",
        cluster: "10.0.0.1_8080",
        within: 3,
        reason: DOWNSTREAM_TX,
    },
];

/// Why the bytes sent to clients may differ by a byte or so.
const DOWNSTREAM_TX: &str = "responses carry `x-envoy-upstream-service-time` in \
     milliseconds: a request that takes 10 ms or more upstream (the first on a new upstream \
     connection, now and then on either proxy) writes one more digit";

fn close_enough(
    family: &str,
    labels: &BTreeSet<(String, String)>,
    ours: &str,
    theirs: &str,
) -> bool {
    let (Ok(a), Ok(b)) = (ours.parse::<u64>(), theirs.parse::<u64>()) else {
        return false;
    };
    APPROXIMATE.iter().any(|x| {
        family.ends_with(x.family_suffix)
            && (family.contains(x.cluster) || labels.iter().any(|(_, v)| v == x.cluster))
            && a.abs_diff(b) <= x.within
            && {
                eprintln!(
                    "approximate: {family} {labels:?}: {a} vs Envoy's {b} ({})",
                    x.reason
                );
                true
            }
    })
}

/// The differences of one variant, one line each, keyed by family.
fn differences(envoy: &str, ours: &str) -> BTreeMap<String, String> {
    let mut envoy = parse(envoy);
    for family in envoy.values_mut() {
        family.series.retain(|labels, _| {
            !labels
                .iter()
                .any(|(n, v)| ENVOY_INTERNAL.contains(&(n.as_str(), v.as_str())))
        });
    }
    envoy.retain(|_, f| !f.series.is_empty());
    let ours = parse(ours);
    let mut out = BTreeMap::new();
    for (name, family) in &ours {
        let Some(theirs) = envoy.get(name) else {
            let sets: Vec<_> = family.series.keys().collect();
            out.insert(name.clone(), format!("only Outrigger emits it: {sets:?}"));
            continue;
        };
        if theirs.kind != family.kind {
            out.insert(
                name.clone(),
                format!("type {} where Envoy has {}", family.kind, theirs.kind),
            );
            continue;
        }
        let a: BTreeSet<_> = family.series.keys().collect();
        let b: BTreeSet<_> = theirs.series.keys().collect();
        if a != b {
            out.insert(
                name.clone(),
                format!(
                    "label sets differ: Outrigger {:?}, Envoy {:?}",
                    a.difference(&b).collect::<Vec<_>>(),
                    b.difference(&a).collect::<Vec<_>>()
                ),
            );
            continue;
        }
        if family.kind == "histogram" || NOT_DETERMINISTIC.contains(&name.as_str()) {
            continue;
        }
        for (labels, value) in &family.series {
            let theirs = &theirs.series[labels];
            if value != theirs && !close_enough(name, labels, value, theirs) {
                out.insert(
                    name.clone(),
                    format!("value {value} where Envoy has {theirs} for {labels:?}"),
                );
            }
        }
    }
    out
}

#[test]
fn prometheus_names_labels_and_values_match_envoy() {
    if envoy_or_skip("prometheus_names_labels_and_values_match_envoy").is_none() {
        return;
    }
    let mut report = String::new();
    let mut matched_known = BTreeSet::new();
    let mut seen_in_envoy = BTreeSet::new();
    for variant in variants() {
        let envoy = observe(Kind::Envoy, &variant);
        let ours = observe(Kind::Outrigger, &variant);
        let (ours_families, envoy_families) = (parse(&ours), parse(&envoy));
        let shared = ours_families
            .keys()
            .filter(|k| envoy_families.contains_key(*k))
            .count();
        eprintln!(
            "{}: {shared} families compared; {} only Envoy emits (stats Outrigger does not have yet)",
            variant.name,
            envoy_families.len() - shared
        );
        // `STATS_ENVOY_ONLY=1` lists the families Outrigger does not have yet.
        if std::env::var_os("STATS_ENVOY_ONLY").is_some() {
            for family in envoy_families
                .keys()
                .filter(|k| !ours_families.contains_key(*k))
            {
                eprintln!("{}: only Envoy: {family}", variant.name);
            }
        }
        assert!(shared > 20, "{}: too few families in common", variant.name);
        for family in MUST_SHARE {
            if envoy_families.contains_key(*family) {
                seen_in_envoy.insert(*family);
                if !ours_families.contains_key(*family) {
                    report.push_str(&format!("{} {family}: Outrigger lacks it\n", variant.name));
                }
            }
        }
        for (family, why) in differences(&envoy, &ours) {
            if let Some(k) = KNOWN
                .iter()
                .find(|k| (k.variant == "*" || k.variant == variant.name) && k.family == family)
            {
                matched_known.insert((k.variant, k.family));
                eprintln!("known: {} {family}: {why} ({})", variant.name, k.reason);
                continue;
            }
            report.push_str(&format!("{} {family}: {why}\n", variant.name));
        }
    }
    for family in MUST_SHARE {
        if !seen_in_envoy.contains(family) {
            report.push_str(&format!("{family}: Envoy emits it in no variant\n"));
        }
    }
    for k in KNOWN {
        if !matched_known.contains(&(k.variant, k.family)) {
            report.push_str(&format!(
                "{} {}: listed as a known difference but no longer differs\n",
                k.variant, k.family
            ));
        }
    }
    assert!(report.is_empty(), "differences from Envoy:\n{report}");
}

/// Lint findings `promtool check metrics` may report on Envoy's own output; anything else (a
/// parse error above all) fails.
const ENVOY_LINT: &[&str] = &[
    "no help text",
    "counter metrics should have \"_total\" suffix",
    "non-counter metrics should not have \"_total\" suffix",
    "non-histogram and non-summary metrics should not have \"_count\" suffix",
    "metric names should not contain abbreviated units",
    // envoy_server_days_until_first_cert_expiring, Envoy's own name.
    "use base unit \"seconds\" instead of \"days\"",
];

/// `promtool check metrics` (Debian package `prometheus`) on Outrigger's output with Istio's
/// tags (label values with `|`, `;` and dots). Exit status 3 means lint findings only; those
/// must be ones Envoy's output has too.
#[test]
fn promtool_accepts_our_prometheus_output() {
    let Some(promtool) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    }) else {
        let how = "install it with `apt-get install prometheus`";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("promtool is required in CI but was not found: {how}");
        }
        eprintln!("promtool_accepts_our_prometheus_output: SKIPPED: promtool not found ({how})");
        return;
    };
    let variant = variants()
        .into_iter()
        .find(|v| v.name == "istio_stats_tags")
        .expect("the Istio variant");
    let ours = observe(Kind::Outrigger, &variant);
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ours.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed ({}):\n{text}\n--- input ---\n{ours}",
        out.status
    );
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !ENVOY_LINT.iter().any(|k| l.ends_with(k)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool findings Envoy does not have:\n{unexpected:#?}"
    );
}

/// A cluster over TLS counts the bytes of its connections as the proxy sees them, above
/// TLS (checked with Envoy 1.40: the same values as over plain TCP, no handshake or record
/// overhead). The TLS server is a second listener of the same proxy, ending TLS in front of
/// the plain upstream with a tcp_proxy.
const TLS_BOOTSTRAP: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
  listeners:
  - name: http_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{http_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls_stats
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend_tls } }]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tls_terminator
    address:
      socket_address: { address: 127.0.0.1, port_value: {{tls_port}} }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{ certificate_chain: { filename: "%CERT%" }, private_key: { filename: "%KEY%" } }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: terminator
          cluster: backend
  clusters:
  - name: backend_tls
    type: STATIC
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.test
        common_tls_context:
          validation_context: { trusted_ca: { filename: "%ROOT%" } }
    load_assignment:
      cluster_name: backend_tls
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{tls_port}} }
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} }
"#;

#[test]
fn tls_cluster_bytes_are_counted_above_tls_as_envoy_does() {
    if envoy_or_skip("tls_cluster_bytes_are_counted_above_tls_as_envoy_does").is_none() {
        return;
    }
    let pki = tests::pki::Pki::new();
    let server = pki.server("backend.test");
    let observe = |kind: Kind| {
        let upstream = Upstream::start("from upstream\n");
        let ports = Ports::new(&["admin_port", "http_port", "tls_port"])
            .with("upstream_port", upstream.port());
        let bootstrap = ports.render(
            &TLS_BOOTSTRAP
                .replace("%CERT%", &server.cert.display().to_string())
                .replace("%KEY%", &server.key.display().to_string())
                .replace("%ROOT%", &pki.root().display().to_string()),
        );
        let proxy = RunningProxy::start(kind, &bootstrap, &["--concurrency", "1"]);
        let url = format!("http://127.0.0.1:{}/over-tls", ports.get("http_port"));
        for _ in 0..3 {
            assert_eq!(curl::get(&url).status, 200);
        }
        std::thread::sleep(Duration::from_millis(300));
        let families = parse(&proxy.get("/stats/prometheus").body);
        ["rx", "tx"].map(|way| {
            let family = format!("envoy_cluster_upstream_cx_{way}_bytes_total");
            families[&family]
                .series
                .iter()
                .find(|(labels, _)| labels.iter().any(|(_, v)| v == "backend_tls"))
                .map(|(_, v)| v.parse::<u64>().expect("a count"))
                .unwrap_or_else(|| panic!("{family} of backend_tls"))
        })
    };
    let envoy = observe(Kind::Envoy);
    let ours = observe(Kind::Outrigger);
    assert!(envoy[0] > 0 && envoy[1] > 0, "Envoy counted {envoy:?}");
    assert_eq!(ours, envoy, "[rx, tx] of backend_tls: Outrigger, Envoy");
}
