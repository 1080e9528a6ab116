//! `outrigger istio-iptables ...` (the name Istio's injected init container uses) runs the same
//! capture code as `outrigger-iptables`: its dry-run stream equals Istio's golden for a case.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn istio_iptables_subcommand_writes_the_golden_dry_run_stream() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/istio-iptables");
    let golden = std::fs::read_to_string(vectors.join("ipv6-inbound-ports.golden")).unwrap();
    let out_path = std::env::temp_dir().join(format!(
        "outrigger-istio-iptables-{}.out",
        std::process::id()
    ));
    // The case's flags on top of the base configuration described in cases.tsv.
    let status = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .env_clear()
        .env("DRY_RUN_FILE_PATH", &out_path)
        .env("OUTRIGGER_IPTABLES_IPV6", "on")
        .env("OUTRIGGER_IPTABLES_DNS_SERVERS", "")
        .env("ISTIO_OUTBOUND_OWNER_GROUPS", "*")
        .env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32")
        .args([
            "istio-iptables",
            "--envoy-port=15001",
            "--inbound-capture-port=15006",
            "--inbound-tunnel-port=15008",
            "--proxy-uid=1337",
            "--proxy-gid=1337",
            "--istio-inbound-tproxy-mark=1337",
            "--istio-inbound-tproxy-route-table=133",
            "--istio-inbound-ports=4000,5000",
            "--dry-run",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let got = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(got.trim(), golden.trim());
}

#[test]
fn istio_iptables_subcommand_reports_bad_flags_with_exit_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["istio-iptables", "-m", "BOGUS"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-m/--istio-inbound-interception-mode"));
}
