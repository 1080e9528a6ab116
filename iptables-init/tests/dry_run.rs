//! Binary level: `outrigger-iptables --dry-run` with DRY_RUN_FILE_PATH writes exactly the
//! upstream stream for every golden case, with host facts fed through the two documented
//! overrides; plus the exit codes and messages of bad invocations.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

fn binary(args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger-iptables"));
    cmd.env_clear().args(args).envs(env.iter().cloned());
    cmd.output().unwrap()
}

#[test]
fn dry_run_file_matches_every_golden() {
    let dir = std::env::temp_dir().join(format!("outrigger-iptables-dry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for case in common::load_cases() {
        let out_path = dir.join(format!("{}.out", case.name));
        let mut env = case.env.clone();
        env.push(("DRY_RUN_FILE_PATH".into(), out_path.display().to_string()));
        env.push((
            "OUTRIGGER_IPTABLES_IPV6".into(),
            if case.ipv6 { "on" } else { "off" }.into(),
        ));
        let servers: Vec<String> = case.dns4.iter().chain(&case.dns6).cloned().collect();
        env.push(("OUTRIGGER_IPTABLES_DNS_SERVERS".into(), servers.join(",")));
        let mut args = case.args.clone();
        args.push("--dry-run".into());
        let out = binary(&args, &env);
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {:?}: {}",
                case.name,
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let got = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !got.ends_with('\n') || got.trim() != case.golden.trim() {
            failures.push(format!(
                "{}: {}",
                case.name,
                common::diff(case.golden.trim(), got.trim())
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn dry_run_without_file_prints_to_stdout() {
    let args: Vec<String> = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--dry-run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = binary(&args, &[("OUTRIGGER_IPTABLES_IPV6".into(), "off".into())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("iptables-save\nip6tables-save\n* nat\n"),
        "{stdout}"
    );
    assert!(stdout.contains("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n"));
    assert!(stdout.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"));
    assert!(stdout.ends_with("COMMIT\niptables-save\n"));
}

#[test]
fn cleanup_only_dry_run_lists_undo_commands() {
    let args: Vec<String> = [
        "-b",
        "*",
        "-i",
        "*",
        "-u",
        "1337",
        "--cleanup-only",
        "--dry-run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = binary(&args, &[("OUTRIGGER_IPTABLES_IPV6".into(), "off".into())]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"iptables-save"));
    assert!(
        lines.contains(&"iptables -t nat -D OUTPUT -j ISTIO_OUTPUT"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"iptables -t nat -D PREROUTING -p tcp -j ISTIO_INBOUND"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"iptables -t nat -X ISTIO_INBOUND"),
        "{stdout}"
    );
    assert!(!stdout.contains("COMMIT"));
}

#[test]
fn bad_values_exit_1_naming_the_flag() {
    for (args, needle) in [
        (vec!["-p", "notaport", "--dry-run"], "-p/--envoy-port"),
        (
            vec!["-i", "10.0.0.0/40", "--dry-run"],
            "-i/--istio-service-cidr",
        ),
        (
            vec!["-m", "SIDEWAYS", "--dry-run"],
            "-m/--istio-inbound-interception-mode",
        ),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (
            vec!["--native-nftables", "--dry-run"],
            "--native-nftables is not supported",
        ),
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = binary(&args, &[("OUTRIGGER_IPTABLES_IPV6".into(), "off".into())]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let out = binary(
        &["--dry-run".to_string()],
        &[("OUTRIGGER_IPTABLES_IPV6".into(), "maybe".into())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTRIGGER_IPTABLES_IPV6"));
}
