//! The `server.*` stats about the process beside its state and uptime: connections, hot
//! restart, version, resident memory, how long initialisation took, and Envoy's counters of
//! events Outrigger has no source of (debug assertions kept in release builds, `ENVOY_BUG`,
//! notifications, dropped stats flushes, work-in-progress protos, unknown fields in dynamic
//! resources, which are refused), kept at 0 as in an Envoy that has none of them.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/statistics#server

use crate::stats::{Gauge, Store};
use std::sync::Arc;

/// `server.memory_physical_size`, which the uptime tick refreshes. (Envoy's
/// `memory_allocated` and `memory_heap_size` come from tcmalloc's accounting; mimalloc keeps
/// none that is cheap to read, so Outrigger does not have them.)
pub struct Memory {
    physical_size: Arc<Gauge>,
}

/// What the stats are made from, known at startup.
pub struct Startup {
    pub restart_epoch: u32,
    /// `stats_server_version_override`. Envoy falls back to its SCM revision; Outrigger's
    /// build records none, so the gauge shows 0 without the override.
    pub version_override: Option<u64>,
}

/// Makes the stats, with their values at startup.
pub fn register(store: &Store, startup: &Startup) {
    store
        .gauge("server.hot_restart_epoch")
        .set(u64::from(startup.restart_epoch));
    // No hot restart: there is never a parent process with connections of its own.
    store.gauge("server.parent_connections").set(0);
    store.gauge("server.total_connections");
    store
        .gauge("server.version")
        .set(startup.version_override.unwrap_or(0));
    store.gauge("server.compilation_settings.fips_mode").set(0);
    for never in [
        "debug_assertion_failures",
        "envoy_bug_failures",
        "envoy_notifications",
        "dropped_stat_flushes",
        "dynamic_unknown_fields",
        "wip_protos",
    ] {
        store.counter(&format!("server.{never}"));
    }
    store.histogram("server.initialization_time_ms");
    Memory::new(store).refresh();
}

impl Memory {
    pub fn new(store: &Store) -> Self {
        Self {
            physical_size: store.gauge("server.memory_physical_size"),
        }
    }

    /// Reads the resident memory again (the uptime tick calls this every second).
    pub fn refresh(&self) {
        if let Some(bytes) = resident_bytes() {
            self.physical_size.set(bytes);
        }
    }
}

/// The process's resident memory: the second field of `/proc/self/statm`, in pages.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
