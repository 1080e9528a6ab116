//! One writer task per sink (file path, stdout, stderr), shared by every logger naming it.
//! Lines collect in a buffer that is written when it passes 64 KiB or when the flush interval
//! (`--file-flush-interval-msec`, Envoy's default 10 s) fires, as Envoy's file sinks do. The
//! stats are Envoy's `filesystem.*` ones.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-file-flush-interval-msec

use crate::config::access_log::Sink;
use crate::stats::{Counter, Gauge, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Lines waiting per sink before new ones are dropped. At a few hundred bytes a line this
/// bounds the memory a stalled disk can take to a few MiB per sink.
const QUEUE: usize = 8192;
/// The buffer size that triggers a write before the flush interval, unless
/// `--file-flush-min-size-kb` sets another (Envoy's default is 64 KiB).
const FLUSH_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct FsStats {
    write_buffered: Arc<Counter>,
    write_completed: Arc<Counter>,
    write_failed: Arc<Counter>,
    flushed_by_timer: Arc<Counter>,
    reopen_failed: Arc<Counter>,
    write_total_buffered: Arc<Gauge>,
    buffered: AtomicU64,
}

impl FsStats {
    fn new(store: &Store) -> Self {
        let c = |n: &str| store.counter(&format!("filesystem.{n}"));
        Self {
            write_buffered: c("write_buffered"),
            write_completed: c("write_completed"),
            write_failed: c("write_failed"),
            flushed_by_timer: c("flushed_by_timer"),
            reopen_failed: c("reopen_failed"),
            write_total_buffered: store.gauge("filesystem.write_total_buffered"),
            buffered: AtomicU64::new(0),
        }
    }

    fn buffered(&self, delta: i64) {
        let now = if delta >= 0 {
            self.buffered.fetch_add(delta as u64, Relaxed) + delta as u64
        } else {
            let d = delta.unsigned_abs();
            self.buffered.fetch_sub(d, Relaxed).saturating_sub(d)
        };
        self.write_total_buffered.set(now);
    }
}

/// The writers of all sinks, created on first use.
#[derive(Debug)]
pub struct Files {
    flush_interval: Duration,
    flush_bytes: usize,
    store: Arc<Store>,
    stats: Arc<FsStats>,
    open: Mutex<HashMap<Sink, LogSender>>,
}

/// Where a logger sends its lines.
#[derive(Debug, Clone)]
pub struct LogSender {
    tx: mpsc::Sender<String>,
    dropped: Arc<Counter>,
}

impl LogSender {
    /// Queues `line` for writing, or drops it (counted) when the writer is behind.
    pub fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

impl Files {
    pub fn new(flush_interval: Duration, flush_bytes: Option<usize>, store: Arc<Store>) -> Self {
        Self {
            flush_bytes: flush_bytes.unwrap_or(FLUSH_BYTES).max(1),
            // A zero interval would spin; Envoy treats it as "flush as soon as possible".
            flush_interval: flush_interval.max(Duration::from_millis(1)),
            // Envoy has its filesystem stats whether or not anything logs.
            stats: Arc::new(FsStats::new(&store)),
            store,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The sender for `sink`, starting its writer task the first time. Must run inside the
    /// runtime.
    pub fn sender(&self, sink: &Sink) -> LogSender {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get(sink) {
            return s.clone();
        }
        let stats = self.stats.clone();
        // Outrigger's own stat (Envoy's buffer grows without bound instead): it appears with the first
        // sink, so a proxy without access logs shows only Envoy's stats.
        let dropped = self.store.counter("filesystem.write_dropped");
        let (tx, rx) = mpsc::channel(QUEUE);
        let output = open_sink(sink);
        if output.is_none() {
            stats.reopen_failed.inc();
        }
        tokio::spawn(write_lines(
            output,
            rx,
            self.flush_interval,
            self.flush_bytes,
            stats.clone(),
        ));
        let sender = LogSender { tx, dropped };
        open.insert(sink.clone(), sender.clone());
        sender
    }
}

type Output = Box<dyn AsyncWrite + Send + Unpin>;

fn open_sink(sink: &Sink) -> Option<Output> {
    match sink {
        Sink::Stdout => Some(Box::new(tokio::io::stdout())),
        Sink::Stderr => Some(Box::new(tokio::io::stderr())),
        Sink::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(Box::new(tokio::fs::File::from_std(f))),
            Err(e) => {
                tracing::error!(target: "main", "access log file {}: cannot open: {e}", path.display());
                None
            }
        },
    }
}

async fn write_lines(
    mut output: Option<Output>,
    mut lines: mpsc::Receiver<String>,
    flush_interval: Duration,
    flush_bytes: usize,
    stats: Arc<FsStats>,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(flush_bytes.min(FLUSH_BYTES));
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                buffer.extend_from_slice(line.as_bytes());
                stats.write_buffered.inc();
                stats.buffered(line.len() as i64);
                if buffer.len() >= flush_bytes {
                    flush(&mut output, &mut buffer, &stats).await;
                }
            }
            _ = tick.tick() => {
                if !buffer.is_empty() {
                    stats.flushed_by_timer.inc();
                    flush(&mut output, &mut buffer, &stats).await;
                }
            }
        }
    }
    flush(&mut output, &mut buffer, &stats).await;
}

async fn flush(output: &mut Option<Output>, buffer: &mut Vec<u8>, stats: &FsStats) {
    if buffer.is_empty() {
        return;
    }
    let ok = match output {
        Some(out) => out.write_all(buffer).await.is_ok() && out.flush().await.is_ok(),
        None => false,
    };
    if ok {
        stats.write_completed.inc();
    } else {
        stats.write_failed.inc();
    }
    stats.buffered(-(buffer.len() as i64));
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_flushed_by_the_timer_and_a_full_queue_drops() {
        let store = Store::new();
        let files = Files::new(Duration::from_millis(20), None, store.clone());
        let path = std::env::temp_dir().join(format!("outrigger-alog-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sink = Sink::File(path.clone());
        let sender = files.sender(&sink);
        sender.send("one\n".to_string());
        files.sender(&sink).send("two\n".to_string());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(text, "one\ntwo\n");
        assert_eq!(store.counter("filesystem.write_buffered").value(), 2);
        assert!(store.counter("filesystem.flushed_by_timer").value() >= 1);
        let _ = std::fs::remove_file(&path);

        // A writer that does not keep up: the line is dropped and counted, never waited for.
        let (tx, _rx) = mpsc::channel(1);
        let dropped = store.counter("filesystem.write_dropped");
        let slow = LogSender {
            tx,
            dropped: dropped.clone(),
        };
        slow.send("kept".into());
        slow.send("dropped".into());
        assert_eq!(dropped.value(), 1);
    }
}
