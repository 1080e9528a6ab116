//! `--mode validate`, the same way for both implementations: `<bin> --mode validate -c <file>
//! [args]`, with a deadline, reduced to a verdict (accepted or not) and the output to show
//! when verdicts differ.

use crate::binaries::{Kind, Proxy};
use crate::process;
use regex::Regex;
use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

/// How long Outrigger may take to validate a bootstrap: it should answer in well under a
/// second, so this only catches hangs and pathological slowness.
pub const OUTRIGGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy takes about 0.3 s to start and validate; a loaded CI machine may be much slower.
pub const ENVOY_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of one validation.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The configuration was accepted (exit status 0).
    pub ok: bool,
    /// stdout then stderr, or why the run failed.
    pub output: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Runs `<bin> --mode validate -c <config> [extra_args]`.
///
/// Envoy also gets `--disable-hot-restart` and `--use-dynamic-base-id` (unless `extra_args`
/// set them; Envoy refuses a flag given twice) so that parallel runs do not collide on the
/// hot-restart shared memory, and `-l warning` unless a level is given. The working directory
/// is a fresh temporary directory, so relative paths in a bootstrap never touch the repository.
pub fn run_validate(bin: &Proxy, config: &Path, extra_args: &[&str]) -> Verdict {
    let has = |flag: &str| extra_args.contains(&flag);
    let mut command = Command::new(&bin.path);
    command.arg("--mode").arg("validate").arg("-c").arg(config);
    command.args(extra_args);
    if bin.kind == Kind::Envoy {
        if !has("--disable-hot-restart") {
            command.arg("--disable-hot-restart");
        }
        if !has("--base-id") && !has("--use-dynamic-base-id") {
            command.arg("--use-dynamic-base-id");
        }
        if !has("-l") && !has("--log-level") {
            command.args(["-l", "warning"]);
        }
    }
    let workdir = tempfile::tempdir().expect("a temporary working directory");
    command.current_dir(workdir.path());
    let timeout = match bin.kind {
        Kind::Outrigger => OUTRIGGER_TIMEOUT,
        Kind::Envoy => ENVOY_TIMEOUT,
    };
    match process::run(&mut command, timeout) {
        Ok(finished) => {
            let mut output = finished.stdout.clone();
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            output.push_str(&finished.stderr);
            if finished.timed_out() {
                output.push_str(&format!("\n[killed: no verdict after {timeout:?}]\n"));
            }
            Verdict {
                ok: finished.success(),
                output,
                elapsed: finished.elapsed,
                timed_out: finished.timed_out(),
            }
        }
        Err(e) => Verdict {
            ok: false,
            output: format!("could not run {}: {e}", bin.path.display()),
            elapsed: Duration::ZERO,
            timed_out: false,
        },
    }
}

static ERROR_MESSAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"error initializing configuration(?: '[^']*'|: unable to parse .* as a Bootstrap): (?P<message>.*)",
    )
    .expect("a valid regex")
});

/// A field path at the start of a message: `a.b[0].c["key"]: ...`, or `(root): ...`.
static LEADING_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"^(?:\(root\)|[A-Za-z_@][\w@]*(?:\[[^\]]*\])*(?:(?:\.[A-Za-z_@][\w@]*)(?:\[[^\]]*\])*|\[[^\]]*\])+): "#,
    )
    .expect("a valid regex")
});

/// Whether an Outrigger error names where the problem is: a field path such as
/// `static_resources.clusters[0].lb_policy`, `(root)`, or the position of a syntax error.
pub fn names_field_path(output: &str) -> bool {
    output.lines().any(|line| {
        ERROR_MESSAGE
            .captures(line)
            .and_then(|c| c.name("message"))
            .is_some_and(|m| {
                let message = m.as_str();
                LEADING_PATH.is_match(message)
                    || message.starts_with("YAML syntax")
                    || message.starts_with("JSON syntax")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::names_field_path;

    #[test]
    fn recognises_field_paths_and_syntax_errors() {
        assert!(names_field_path(
            "error initializing configuration 'x.yaml': static_resources.clusters[1].name: duplicate"
        ));
        assert!(names_field_path(
            "error initializing configuration: unable to parse x.yaml as a Bootstrap: static_resources.clusters[0]: unrecognized field name 'a'"
        ));
        assert!(names_field_path(
            "error initializing configuration: unable to parse x.yaml as a Bootstrap: (root): unknown"
        ));
        assert!(names_field_path(
            "error initializing configuration: unable to parse x.yaml as a Bootstrap: YAML syntax: did not find"
        ));
        assert!(names_field_path(
            "error initializing configuration 'x.yaml': a.b[\"envoy.k\"]: bad"
        ));
        assert!(!names_field_path(
            "error initializing configuration 'x.yaml': something went wrong"
        ));
        assert!(!names_field_path(
            "error initializing configuration 'x.yaml': listener: went wrong"
        ));
        assert!(!names_field_path("configuration 'x.yaml' OK"));
    }
}
