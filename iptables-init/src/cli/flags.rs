//! The istio-iptables flag table (names, shorthands, env bindings) and the syntax of
//! each value kind, following Go's pflag/strconv so existing pod specs parse the same.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Bool,
    U16,
    Duration,
}

pub(super) struct FlagSpec {
    pub(super) long: &'static str,
    pub(super) short: Option<char>,
    pub(super) kind: Kind,
    /// Env vars in increasing precedence (the later one wins when both are set).
    pub(super) envs: &'static [&'static str],
    help: &'static str,
}

const fn flag(
    long: &'static str,
    short: Option<char>,
    kind: Kind,
    envs: &'static [&'static str],
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        long,
        short,
        kind,
        envs,
        help,
    }
}

use Kind::{Bool, Duration as Dur, Str, U16};

/// The istio-iptables flag set. `envoy-port` alone has no env binding upstream.
#[rustfmt::skip]
pub(super) const FLAGS: &[FlagSpec] = &[
    flag(
        "envoy-port",
        Some('p'),
        Str,
        &[],
        "outbound capture port (default 15001)",
    ),
    flag(
        "inbound-capture-port",
        Some('z'),
        Str,
        &["INBOUND_CAPTURE_PORT"],
        "inbound capture port (default 15006)",
    ),
    flag(
        "inbound-tunnel-port",
        Some('e'),
        Str,
        &["INBOUND_TUNNEL_PORT"],
        "tunnel port, never captured (default 15008)",
    ),
    flag(
        "proxy-uid",
        Some('u'),
        Str,
        &["PROXY_UID"],
        "comma list of proxy uids exempt from capture",
    ),
    flag(
        "proxy-gid",
        Some('g'),
        Str,
        &["PROXY_GID"],
        "comma list of proxy gids (default: the uid)",
    ),
    flag(
        "istio-inbound-interception-mode",
        Some('m'),
        Str,
        &["ISTIO_INBOUND_INTERCEPTION_MODE"],
        "REDIRECT or TPROXY",
    ),
    flag(
        "istio-inbound-ports",
        Some('b'),
        Str,
        &["ISTIO_INBOUND_PORTS"],
        "inbound ports to capture, or *",
    ),
    flag(
        "istio-local-exclude-ports",
        Some('d'),
        Str,
        &["ISTIO_LOCAL_EXCLUDE_PORTS"],
        "inbound ports to skip (with -b *)",
    ),
    flag(
        "istio-exclude-interfaces",
        Some('c'),
        Str,
        &["ISTIO_EXCLUDE_INTERFACES"],
        "interfaces never captured",
    ),
    flag(
        "istio-service-cidr",
        Some('i'),
        Str,
        &["ISTIO_SERVICE_CIDR"],
        "outbound CIDRs to capture, or *",
    ),
    flag(
        "istio-service-exclude-cidr",
        Some('x'),
        Str,
        &["ISTIO_SERVICE_EXCLUDE_CIDR"],
        "outbound CIDRs to skip",
    ),
    flag(
        "istio-outbound-ports",
        Some('q'),
        Str,
        &["ISTIO_OUTBOUND_PORTS"],
        "outbound ports always captured",
    ),
    flag(
        "istio-local-outbound-ports-exclude",
        Some('o'),
        Str,
        &["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"],
        "outbound ports never captured",
    ),
    flag(
        "kube-virt-interfaces",
        Some('k'),
        Str,
        &["KUBE_VIRT_INTERFACES"],
        "interfaces whose inbound is treated as outbound",
    ),
    flag(
        "istio-inbound-tproxy-mark",
        Some('t'),
        Str,
        &["ISTIO_INBOUND_TPROXY_MARK"],
        "TPROXY mark (default 1337)",
    ),
    flag(
        "istio-inbound-tproxy-route-table",
        Some('r'),
        Str,
        &["ISTIO_INBOUND_TPROXY_ROUTE_TABLE"],
        "TPROXY route table (default 133)",
    ),
    flag(
        "dry-run",
        Some('n'),
        Bool,
        &["DRY_RUN"],
        "print the command stream instead of changing anything",
    ),
    flag(
        "iptables-probe-port",
        None,
        U16,
        &["IPTABLES_PROBE_PORT"],
        "validation probe port (default 15002)",
    ),
    flag(
        "probe-timeout",
        None,
        Dur,
        &["PROBE_TIMEOUT"],
        "validation timeout (default 5s)",
    ),
    flag(
        "skip-rule-apply",
        None,
        Bool,
        &["SKIP_RULE_APPLY"],
        "do not program rules",
    ),
    flag(
        "run-validation",
        None,
        Bool,
        &["RUN_VALIDATION"],
        "check that redirection works",
    ),
    flag(
        "redirect-dns",
        None,
        Bool,
        &["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"],
        "capture DNS to :15053",
    ),
    flag(
        "drop-invalid",
        None,
        Bool,
        &["DROP_INVALID", "INVALID_DROP"],
        "drop conntrack-INVALID packets",
    ),
    flag(
        "dual-stack",
        None,
        Bool,
        &["DUAL_STACK", "ISTIO_DUAL_STACK"],
        "enable IPv6 if any global IPv6 address exists",
    ),
    flag(
        "capture-all-dns",
        None,
        Bool,
        &["CAPTURE_ALL_DNS"],
        "capture all port-53 traffic",
    ),
    flag(
        "network-namespace",
        None,
        Str,
        &["NETWORK_NAMESPACE"],
        "netns path to program",
    ),
    flag(
        "cni-mode",
        None,
        Bool,
        &["CNI_MODE"],
        "running from a CNI plugin",
    ),
    flag(
        "reconcile",
        None,
        Bool,
        &["RECONCILE"],
        "replace incompatible existing rules",
    ),
    flag(
        "cleanup-only",
        None,
        Bool,
        &["CLEANUP_ONLY"],
        "remove the rules and exit",
    ),
    flag(
        "force-apply",
        None,
        Bool,
        &["FORCE_APPLY"],
        "apply even if rules look present",
    ),
    flag(
        "native-nftables",
        None,
        Bool,
        &["NATIVE_NFTABLES"],
        "use nftables (not supported)",
    ),
    flag(
        "force-iptables-binary",
        None,
        Str,
        &["FORCE_IPTABLES_BINARY"],
        "legacy or nft",
    ),
];

/// Usage text for `-h`/`--help`.
pub fn usage() -> String {
    let mut s = String::from(
        "outrigger-iptables: set up traffic capture for the Outrigger sidecar (istio-iptables compatible)\n\nFlags:\n",
    );
    for f in FLAGS {
        let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let env = if f.envs.is_empty() {
            String::new()
        } else {
            format!(" [env {}]", f.envs.join(", "))
        };
        s.push_str(&format!("  {short}--{}: {}{env}\n", f.long, f.help));
    }
    s.push_str("  --log_*: accepted for compatibility and ignored\n");
    s.push_str(
        "\nEnv only: ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE,\n\
         ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ENVOY_USER, DRY_RUN_FILE_PATH,\n\
         OUTRIGGER_IPTABLES_IPV6=on|off, OUTRIGGER_IPTABLES_DNS_SERVERS=a,b\n",
    );
    s
}

pub(super) fn find_long(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.long == name)
}

pub(super) fn find_short(c: char) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.short == Some(c))
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A subset of Go's `time.ParseDuration`: `0` or a sequence of `<number><unit>`.
pub(super) fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Check a value's syntax for its flag kind.
pub(super) fn check_kind(spec: &FlagSpec, v: &str) -> Result<(), String> {
    match spec.kind {
        Str => Ok(()),
        Bool => parse_bool(v)
            .map(|_| ())
            .ok_or_else(|| "expected true or false".into()),
        U16 => v
            .parse::<u16>()
            .map(|_| ())
            .map_err(|_| "expected a number 0-65535".into()),
        Dur => parse_duration(v)
            .map(|_| ())
            .ok_or_else(|| "expected a duration such as 5s or 500ms".into()),
    }
}
