//! Reads the istio-iptables acceptance vectors (../shared/vectors/istio-iptables: cases.tsv and
//! the 27 upstream golden files) into cases the tests can run at library or binary level.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

/// The base configuration of every case (upstream's constructTestConfig), as flags.
pub const BASE_FLAGS: &[&str] = &[
    "--envoy-port=15001",
    "--inbound-capture-port=15006",
    "--inbound-tunnel-port=15008",
    "--proxy-uid=1337",
    "--proxy-gid=1337",
    "--istio-inbound-tproxy-mark=1337",
    "--istio-inbound-tproxy-route-table=133",
];

pub struct Case {
    pub name: String,
    /// Base flags followed by the case's flags.
    pub args: Vec<String>,
    pub ipv6: bool,
    pub dns4: Vec<String>,
    pub dns6: Vec<String>,
    /// Env-only variables the case sets.
    pub env: Vec<(String, String)>,
    pub golden: String,
}

pub fn vectors_dir() -> PathBuf {
    // The vectors live in the shared folder beside the repository (CI clones it there too).
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/istio-iptables")
}

pub fn load_cases() -> Vec<Case> {
    let dir = vectors_dir();
    let tsv = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let mut cases = Vec::new();
    for line in tsv.lines() {
        if line.starts_with('#') || line.starts_with("golden\t") || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "malformed row: {line}");
        let (file, flags, notes) = (cols[0], cols[1], cols[2]);
        let mut args: Vec<String> = BASE_FLAGS.iter().map(|s| s.to_string()).collect();
        args.extend(flags.split(' ').filter(|f| !f.is_empty()).map(String::from));

        let block = notes
            .strip_prefix('[')
            .and_then(|n| n.split_once(']'))
            .map(|(b, _)| b)
            .unwrap_or_else(|| panic!("{file}: notes lack the [..] block"));
        let mut case = Case {
            name: file.trim_end_matches(".golden").to_string(),
            args,
            ipv6: false,
            dns4: Vec::new(),
            dns6: Vec::new(),
            env: Vec::new(),
            golden: std::fs::read_to_string(dir.join(file)).unwrap(),
        };
        for item in block.split(' ').filter(|s| !s.is_empty()) {
            let list = |v: &str| v.split(',').map(String::from).collect::<Vec<_>>();
            if let Some(v) = item.strip_prefix("ipv6=") {
                case.ipv6 = v == "on";
            } else if let Some(v) = item.strip_prefix("dns4=") {
                case.dns4 = list(v);
            } else if let Some(v) = item.strip_prefix("dns6=") {
                case.dns6 = list(v);
            } else if let Some(kv) = item.strip_prefix("env:") {
                let (k, v) = kv.split_once('=').unwrap();
                case.env.push((k.to_string(), v.to_string()));
            } else {
                panic!("{file}: unknown setting {item}");
            }
        }
        cases.push(case);
    }
    cases
}

/// Show where two streams first differ.
pub fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            return format!("line {}: want {:?}, got {:?}", i + 1, a, b);
        }
    }
    "no line difference (whitespace only)".to_string()
}
