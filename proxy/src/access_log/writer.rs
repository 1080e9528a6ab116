//! One writer task per sink (file path, stdout, stderr), shared by every logger naming it.
//! Loggers append finished lines to the sink's buffer under a short lock (a copy of the line,
//! no allocation, no task wake-up); the writer task takes the whole buffer when it passes the
//! flush size (64 KiB unless `--file-flush-min-size-kb`) or when the flush interval
//! (`--file-flush-interval-msec`, Envoy's default 10 s) fires, and writes it out. This is the
//! shape of Envoy's file sinks, and it keeps the request path to a memcpy: an earlier version
//! sent each line over a channel, and waking the writer per line cost ≈ 10 % of requests/s
//! (benches/README.md). The stats are Envoy's `filesystem.*` ones.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-file-flush-interval-msec

use crate::config::access_log::Sink;
use crate::stats::{Counter, Gauge, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Bytes a sink may hold while its writer is behind (a stalled disk) before new lines are
/// dropped. Envoy's buffer grows without bound instead.
const MAX_PENDING: usize = 16 * 1024 * 1024;
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

    fn buffered(&self, added: u64, removed: u64) {
        let before = if added > 0 {
            self.buffered.fetch_add(added, Relaxed)
        } else {
            self.buffered.fetch_sub(removed, Relaxed)
        };
        self.write_total_buffered
            .set((before + added).saturating_sub(removed));
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

/// What loggers and the writer task of one sink share.
struct Pending {
    buffer: Mutex<Vec<u8>>,
    /// The sink, held while a write is in progress so a final flush keeps the order.
    output: tokio::sync::Mutex<Option<Output>>,
    /// Wakes the writer when the buffer passes `flush_bytes`.
    full: Notify,
    flush_bytes: usize,
    stats: Arc<FsStats>,
    dropped: Arc<Counter>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("flush_bytes", &self.flush_bytes)
            .finish_non_exhaustive()
    }
}

/// Where a logger writes its lines.
#[derive(Debug, Clone)]
pub struct LogSender {
    pending: Arc<Pending>,
}

impl LogSender {
    /// Appends `line` to the sink's buffer, or drops it (counted) when the writer is so far
    /// behind that the buffer is full.
    pub fn send(&self, line: &str) {
        let p = &*self.pending;
        let crossed = {
            let mut buffer = p.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.len() + line.len() > MAX_PENDING {
                drop(buffer);
                p.dropped.inc();
                return;
            }
            let before = buffer.len();
            buffer.extend_from_slice(line.as_bytes());
            before < p.flush_bytes && buffer.len() >= p.flush_bytes
        };
        p.stats.write_buffered.inc();
        p.stats.buffered(line.len() as u64, 0);
        if crossed {
            p.full.notify_one();
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
        // Outrigger's own stat: it appears with the first sink, so a proxy without access
        // logs shows only Envoy's stats.
        let dropped = self.store.counter("filesystem.write_dropped");
        let output = open_sink(sink);
        if output.is_none() {
            self.stats.reopen_failed.inc();
        }
        let pending = Arc::new(Pending {
            buffer: Mutex::new(Vec::with_capacity(self.flush_bytes.min(FLUSH_BYTES))),
            output: tokio::sync::Mutex::new(output),
            full: Notify::new(),
            flush_bytes: self.flush_bytes,
            stats: self.stats.clone(),
            dropped,
        });
        tokio::spawn(write_lines(pending.clone(), self.flush_interval));
        let sender = LogSender { pending };
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

impl Files {
    /// Writes out what every sink holds, for shutdown (Envoy flushes its logs on exit).
    pub async fn flush_all(&self) {
        let sinks: Vec<Arc<Pending>> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.pending.clone())
            .collect();
        let mut spare = Vec::new();
        for pending in sinks {
            pending.write_out(&mut spare, false).await;
        }
    }
}

impl Pending {
    /// Takes the buffer (swapping in `spare`) and writes it to the sink.
    async fn write_out(&self, spare: &mut Vec<u8>, by_timer: bool) {
        let mut output = self.output.lock().await;
        {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.is_empty() {
                return;
            }
            std::mem::swap(&mut *buffer, spare);
        }
        if by_timer {
            self.stats.flushed_by_timer.inc();
        }
        let ok = match &mut *output {
            Some(out) => out.write_all(spare).await.is_ok() && out.flush().await.is_ok(),
            None => false,
        };
        if ok {
            self.stats.write_completed.inc();
        } else {
            self.stats.write_failed.inc();
        }
        self.stats.buffered(0, spare.len() as u64);
        spare.clear();
    }
}

/// Writes the sink's buffer whenever it fills or the interval passes. It runs as long as the
/// process: sinks are shared and live as long as the listeners that log to them.
async fn write_lines(pending: Arc<Pending>, flush_interval: Duration) {
    // Swapped with the shared buffer, so neither side allocates in steady state.
    let mut spare: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_timer = tokio::select! {
            _ = pending.full.notified() => false,
            _ = tick.tick() => true,
        };
        pending.write_out(&mut spare, by_timer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_flushed_by_the_timer_and_a_full_buffer_drops() {
        let store = Store::new();
        let files = Files::new(Duration::from_millis(20), None, store.clone());
        let path = std::env::temp_dir().join(format!("outrigger-alog-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sink = Sink::File(path.clone());
        let sender = files.sender(&sink);
        sender.send("one\n");
        files.sender(&sink).send("two\n");
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

        // A writer that does not keep up: past the cap a line is dropped and counted, never
        // waited for.
        let dropped = store.counter("filesystem.write_dropped");
        let stalled = LogSender {
            pending: Arc::new(Pending {
                buffer: Mutex::new(vec![b'x'; MAX_PENDING - 4]),
                output: tokio::sync::Mutex::new(None),
                full: Notify::new(),
                flush_bytes: FLUSH_BYTES,
                stats: Arc::new(FsStats::new(&store)),
                dropped: dropped.clone(),
            }),
        };
        stalled.send("kep\n");
        stalled.send("dropped\n");
        assert_eq!(dropped.value(), 1);
    }
}
