//! Running a child process to completion with a deadline, capturing its output. The deadline
//! is a channel receive with a timeout, not a sleep: the waiting thread reports the exit and a
//! stuck child is killed.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or killed) child left behind.
#[derive(Debug, Clone)]
pub struct Finished {
    /// None when the child was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `command` with stdin closed and stdout/stderr captured; kills it after `timeout`.
/// The child leads a process group of its own, so a kill also reaches anything it started
/// (which would otherwise hold the output pipes open).
pub fn run(command: &mut Command, timeout: Duration) -> std::io::Result<Finished> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        // The receiver may have given up; nothing to do then.
        let _ = tx.send(status);
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => Some(status?),
        Err(_) => {
            // The waiter has not reaped the child, so its pid (and group id) is still ours.
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = rx.recv();
            None
        }
    };
    waiter.join().expect("the waiter thread does not panic");
    let elapsed = started.elapsed();
    Ok(Finished {
        status,
        stdout: stdout.join().expect("the stdout reader does not panic"),
        stderr: stderr.join().expect("the stderr reader does not panic"),
        elapsed,
    })
}

/// Starts `command` in `dir`, its own process group (so it can be killed with everything it
/// started), stdin closed and its output in `dir/stdout.log` and `dir/stderr.log`.
pub fn spawn_logged(command: &mut Command, dir: &std::path::Path) -> std::io::Result<Child> {
    let stdout = std::fs::File::create(dir.join("stdout.log"))?;
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the capture; what was read so far is still worth showing.
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::run;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn captures_output_and_status() {
        let finished = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(finished.stdout, "out\n");
        assert_eq!(finished.stderr, "err\n");
        assert_eq!(finished.status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn kills_a_child_that_outlives_the_deadline() {
        let finished = run(
            Command::new("sh").args(["-c", "echo started; sleep 30; echo late"]),
            Duration::from_millis(300),
        )
        .expect("sh runs");
        assert!(finished.timed_out());
        assert!(!finished.success());
        assert_eq!(finished.stdout, "started\n");
        assert!(finished.elapsed < Duration::from_secs(10));
    }
}
