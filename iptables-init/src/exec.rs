//! Running external programs (iptables, iptables-restore, ip) and choosing which iptables
//! implementation to drive. Behind a trait so the apply/rollback logic can be tested with
//! a scripted fake instead of a kernel.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::Backend;
use crate::rules::Family;

/// A command that could not run or exited non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct ExecError {
    pub command: String,
    pub detail: String,
}

/// Runs one program to completion and returns its stdout.
pub trait Exec {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, ExecError>;
}

/// The real thing. With a network namespace path, every command runs under
/// `nsenter --net=PATH` so the rules land in that namespace.
pub struct SystemExec {
    pub netns: Option<String>,
}

impl Exec for SystemExec {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, ExecError> {
        let shown = format!("{program} {}", args.join(" "))
            .trim_end()
            .to_string();
        let mut cmd = match &self.netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={path}")).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fail = |detail: String| ExecError {
            command: shown.clone(),
            detail,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| fail(format!("writing stdin: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(fail(format!("{} ({})", stderr.trim(), out.status)))
        }
    }
}

/// The three binaries of one iptables variant for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub iptables: String,
    pub save: String,
    pub restore: String,
    /// Legacy xtables takes a global lock; writers must wait for it.
    pub legacy: bool,
}

impl Binaries {
    fn named(family: Family, variant: Option<&str>, legacy: bool) -> Binaries {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let stem = match variant {
            Some(v) => format!("{base}-{v}"),
            None => base.to_string(),
        };
        Binaries {
            iptables: stem.clone(),
            save: format!("{stem}-save"),
            restore: format!("{stem}-restore"),
            legacy,
        }
    }

    /// Extra arguments for commands that write (legacy only: wait for the xtables lock).
    pub fn write_args(&self) -> Vec<String> {
        if self.legacy {
            vec!["--wait=30".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Pick binaries as istio-iptables does: a forced variant if asked; otherwise legacy when
/// legacy rules already exist in this namespace (someone else uses it), else nft, else the
/// unsuffixed binary. Mixing the two would leave rules the other side cannot see.
pub fn detect(
    exec: &mut dyn Exec,
    family: Family,
    forced: Option<Backend>,
) -> Result<Binaries, ExecError> {
    if let Some(b) = forced {
        let (variant, legacy) = match b {
            Backend::Legacy => ("legacy", true),
            Backend::Nft => ("nft", false),
        };
        let bins = Binaries::named(family, Some(variant), legacy);
        exec.run(&bins.save, &[], None)?;
        return Ok(bins);
    }
    let legacy = Binaries::named(family, Some("legacy"), true);
    if let Ok(dump) = exec.run(&legacy.save, &[], None) {
        if dump.matches('\n').count() >= 3 {
            return Ok(legacy);
        }
    }
    let nft = Binaries::named(family, Some("nft"), false);
    if exec.run(&nft.save, &[], None).is_ok() {
        return Ok(nft);
    }
    let mut plain = Binaries::named(family, None, false);
    plain.legacy = match exec.run(&plain.save, &["--version".to_string()], None) {
        Ok(version) => !version.contains("nf_tables"),
        // Too old to know --version: certainly legacy.
        Err(_) => {
            exec.run(&plain.save, &[], None)?;
            true
        }
    };
    Ok(plain)
}
