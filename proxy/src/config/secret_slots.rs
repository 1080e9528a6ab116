//! The secrets TLS contexts name (`sds_config`): their slots, and where each is subscribed
//! from (ADS, or a gRPC config source such as Istio's `sds-grpc`), so the xDS clients know
//! what to ask for.

use super::dynamic::{AdsConfig, SecretSource};
use super::slots::{Slot, Slots};
use super::tls::Secret;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct SecretSlots {
    slots: Slots<Secret>,
    /// Secret name → its source.
    sources: Mutex<BTreeMap<String, SecretSource>>,
    /// Secret name → when it was first asked for (`/config_dump` lists a secret that has not
    /// arrived as warming since then).
    since: Mutex<BTreeMap<String, std::time::SystemTime>>,
}

impl SecretSlots {
    pub fn slot(&self, name: &str) -> Arc<Slot<Secret>> {
        self.slots.slot(name)
    }

    pub fn find(&self, name: &str) -> Option<Arc<Slot<Secret>>> {
        self.slots.find(name)
    }

    /// Records that a TLS context wants `name` from `source`. The first source named for a
    /// secret is the one it is fetched from.
    pub fn subscribe(&self, name: &str, source: SecretSource) {
        self.lock().entry(name.to_string()).or_insert(source);
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(std::time::SystemTime::now);
    }

    /// The secrets asked for that have not arrived, with when they were first asked for.
    pub fn waiting(&self) -> Vec<(String, std::time::SystemTime)> {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(name, _)| self.find(name).is_none_or(|slot| slot.get().is_none()))
            .map(|(name, since)| (name.clone(), *since))
            .collect()
    }

    /// Whether what waits for secret `name` has waited past its source's initial fetch timeout
    /// (never, for `0s`).
    pub fn fetch_timed_out(&self, name: &str, waited: std::time::Duration) -> bool {
        self.lock()
            .get(name)
            .and_then(|s| s.initial_fetch_timeout)
            .is_some_and(|timeout| waited >= timeout)
    }

    /// The secret names fetched from `source` (None: over ADS).
    pub fn names_from(&self, source: Option<&AdsConfig>) -> std::collections::BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.grpc.as_ref() == source)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The distinct gRPC sources secrets come from.
    pub fn grpc_sources(&self) -> Vec<AdsConfig> {
        let mut sources: Vec<AdsConfig> = Vec::new();
        for source in self.lock().values().filter_map(|s| s.grpc.as_ref()) {
            if !sources.contains(source) {
                sources.push(source.clone());
            }
        }
        sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SecretSource>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}
