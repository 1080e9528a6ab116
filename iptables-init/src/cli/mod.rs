//! Command line and environment → [`Config`], with istio-iptables' precedence:
//! default, then the env var named after the long flag (upper-case, `-`→`_`), then any
//! additional legacy env var, then the command line. Every error names the flag or env
//! var that carried the bad value, so an init container's log says what to fix.

use std::collections::HashMap;

use crate::config::Config;
use crate::Error;

mod build;
mod flags;

pub use flags::usage;
use flags::{check_kind, find_long, find_short, FlagSpec, Kind, FLAGS};

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Source {
    Env(&'static str),
    Flag,
}

impl Source {
    fn describe(&self, spec: &FlagSpec) -> String {
        let flag = match spec.short {
            Some(s) => format!("-{s}/--{}", spec.long),
            None => format!("--{}", spec.long),
        };
        match self {
            Source::Env(var) => format!("env {var} (for {flag})"),
            Source::Flag => flag,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help,
}

/// Parse arguments (without the program name) and environment into a [`Command`].
/// Host-derived facts (IPv6, DNS servers, default uid) are left for [`crate::host`].
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, Error> {
    let mut values: HashMap<&'static str, (String, Source)> = HashMap::new();

    // Env first, later vars win; a malformed env value is ignored with a warning, as
    // upstream's BindEnv does, since the pod spec may carry it for other components.
    for spec in FLAGS {
        for var in spec.envs {
            if let Some(v) = env(var) {
                match check_kind(spec, &v) {
                    Ok(()) => {
                        values.insert(spec.long, (v, Source::Env(var)));
                    }
                    Err(why) => eprintln!(
                        "warning: ignoring env {var}={v:?} for --{}: {why}",
                        spec.long
                    ),
                }
            }
        }
    }

    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (spec, inline, written) = if let Some(body) = arg.strip_prefix("--") {
            if body.is_empty() {
                if let Some(extra) = args.get(i) {
                    return Err(Error::Usage(format!("unexpected argument {extra:?}")));
                }
                break;
            }
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if name == "help" {
                return Ok(Command::Help);
            }
            if name.starts_with("log_") {
                // istio's logging flags: accepted so injected args work; we log to stderr.
                if inline.is_none() && name != "log_as_json" && i < args.len() {
                    i += 1;
                }
                continue;
            }
            let spec =
                find_long(name).ok_or_else(|| Error::Usage(format!("unknown flag: --{name}")))?;
            (spec, inline, format!("--{name}"))
        } else if let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) {
            let mut chars = body.chars();
            let c = chars.next().unwrap_or('-');
            if c == 'h' && body.len() == 1 {
                return Ok(Command::Help);
            }
            let spec = find_short(c)
                .ok_or_else(|| Error::Usage(format!("unknown shorthand flag: -{c} in {arg:?}")))?;
            let tail = chars.as_str();
            let inline = if tail.is_empty() {
                None
            } else {
                Some(tail.strip_prefix('=').unwrap_or(tail).to_string())
            };
            (spec, inline, format!("-{c}"))
        } else {
            return Err(Error::Usage(format!(
                "unexpected argument {arg:?} (istio-iptables takes only flags)"
            )));
        };

        let value = match (inline, spec.kind) {
            (Some(v), _) => v,
            (None, Kind::Bool) => "true".to_string(),
            (None, _) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(Error::Usage(format!("flag needs an argument: {written}"))),
            },
        };
        check_kind(spec, &value).map_err(|why| {
            Error::Usage(format!(
                "invalid value {value:?} for {}: {why}",
                Source::Flag.describe(spec)
            ))
        })?;
        values.insert(spec.long, (value, Source::Flag));
    }

    build::build(&values, env).map(|c| Command::Run(Box::new(c)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::flags::parse_duration;
    use super::*;
    use crate::config::PortSelection;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Error> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&args, &|k| env.get(k).cloned())? {
            Command::Run(c) => Ok(*c),
            Command::Help => panic!("unexpected help"),
        }
    }

    fn usage_err(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env) {
            Err(Error::Usage(m)) => m,
            other => panic!("expected usage error, got {other:?}"),
        }
    }

    #[test]
    fn sidecar_injection_args() {
        let c = run(
            &[
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
                "--log_output_level=default:info",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.proxy_uid, "1337");
        assert!(c.outbound_ip_ranges_include.wildcard);
        assert_eq!(c.inbound_ports, PortSelection::All);
        assert_eq!(c.inbound_ports_exclude, vec!["15090", "15021", "15020"]);
    }

    #[test]
    fn env_then_additional_env_then_flag() {
        let c = run(&[], &[("INBOUND_CAPTURE_PORT", "16006")]).unwrap();
        assert_eq!(c.inbound_capture_port, "16006");
        let c = run(&["-z=17006"], &[("INBOUND_CAPTURE_PORT", "16006")]).unwrap();
        assert_eq!(c.inbound_capture_port, "17006");
        let c = run(
            &[],
            &[
                ("REDIRECT_DNS", "false"),
                ("ISTIO_META_DNS_CAPTURE", "true"),
            ],
        )
        .unwrap();
        assert!(c.redirect_dns);
        let c = run(
            &["--redirect-dns=false"],
            &[("ISTIO_META_DNS_CAPTURE", "true")],
        )
        .unwrap();
        assert!(!c.redirect_dns);
        let c = run(&[], &[("INVALID_DROP", "true")]).unwrap();
        assert!(c.drop_invalid);
        // envoy-port has no env binding upstream.
        let c = run(&[], &[("ENVOY_PORT", "1")]).unwrap();
        assert_eq!(c.proxy_port, "15001");
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(usage_err(&["-p", "abc"], &[]).contains("-p/--envoy-port"));
        assert!(
            usage_err(&["--istio-service-cidr=10.0.0.0"], &[]).contains("-i/--istio-service-cidr")
        );
        assert!(usage_err(&["-m", "tproxy"], &[]).contains("REDIRECT or TPROXY"));
        assert!(usage_err(&["-x", "*"], &[]).contains("-x/--istio-service-exclude-cidr"));
        assert!(usage_err(&["-b", "80,http"], &[]).contains("-b/--istio-inbound-ports"));
        assert!(
            usage_err(&[], &[("INBOUND_TUNNEL_PORT", "70000")]).contains("env INBOUND_TUNNEL_PORT")
        );
        assert!(usage_err(&["--bogus"], &[]).contains("--bogus"));
        assert!(usage_err(&["-p"], &[]).contains("needs an argument"));
        assert!(usage_err(&["--dry-run=maybe"], &[]).contains("--dry-run"));
        assert!(
            usage_err(&[], &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/8")])
                .contains("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR")
        );
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(
            parse_duration("5s"),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(
            parse_duration("1m30s"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("250ms"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("5"), None);
        let c = run(
            &["--probe-timeout", "2s", "--iptables-probe-port=16002"],
            &[],
        )
        .unwrap();
        assert_eq!(c.probe_timeout, std::time::Duration::from_secs(2));
        assert_eq!(c.iptables_probe_port, 16002);
    }

    #[test]
    fn help_and_bool_forms() {
        assert_eq!(
            parse(&["-h".to_string()], &|_| None).unwrap(),
            Command::Help
        );
        let c = run(&["-n", "--cleanup-only", "--reconcile=true"], &[]).unwrap();
        assert!(c.dry_run && c.cleanup_only && c.reconcile);
    }
}
