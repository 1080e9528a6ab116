//! Child processes pinned to a core, stopped when dropped (SIGTERM, then SIGKILL), so an
//! error anywhere in a run leaves no proxy or upstream behind.

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where processes run: the proxies on one core, load generators and upstreams on another.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// False when `taskset` is missing or the machine has one CPU (smoke mode only).
    pub enabled: bool,
    /// How everything measured is prioritised; all targets get the same, so the comparison
    /// stays fair.
    pub priority: Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Normal,
    /// nice -20 (the default as root): a neighbour's work yields to the benchmark.
    Nice,
    /// SCHED_RR priority 1 (`--realtime`, root): on a machine shared with builds, the
    /// proxies wake up at once instead of waiting for a neighbour's time slice. The kernel
    /// still leaves 5% of each second to normal tasks (sched_rt_runtime_us).
    Realtime,
}

impl Priority {
    pub fn describe(self) -> &'static str {
        match self {
            Priority::Normal => "",
            Priority::Nice => "; all at nice -20",
            Priority::Realtime => "; all at SCHED_RR 1 (--realtime)",
        }
    }
}

pub const PROXY_CORE: u32 = 0;
pub const LOAD_CORE: u32 = 1;

impl Pinning {
    /// `program args...` under `taskset -c core` when pinning is enabled.
    /// `nice` and `taskset` exec their program, so the child's pid stays the program's.
    pub fn command(self, core: u32, program: &str) -> Command {
        let mut args: Vec<String> = Vec::new();
        match self.priority {
            Priority::Normal => {}
            Priority::Nice => args.extend(["nice", "-n", "-20"].map(String::from)),
            Priority::Realtime => args.extend(["chrt", "-r", "1"].map(String::from)),
        }
        if self.enabled {
            args.extend(["taskset".to_string(), "-c".to_string(), core.to_string()]);
        }
        args.push(program.to_string());
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    }
}

#[derive(Debug)]
pub struct Spawned {
    pub name: String,
    child: Child,
}

impl Spawned {
    /// Starts `command` with stdout discarded and stderr kept in a file for diagnostics.
    pub fn start(name: &str, mut command: Command, log: &std::path::Path) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections (or the process dies).
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} does not listen on {addr} after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers on it; SIGKILL would orphan them.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
