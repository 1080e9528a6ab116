//! A bounded parallel map over a slice with scoped threads: enough to keep both cores busy
//! while Envoy (≈0.3 s of start-up per validation) and Outrigger run side by side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

/// Worker threads to use: twice the cores, as most of each job is waiting on a child process.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// `items.iter().map(f).collect()`, computed by `workers` threads; the order is kept.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let result = f(item);
                results.lock().expect("no worker panics holding the lock")[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .expect("no worker panicked holding the lock")
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}
