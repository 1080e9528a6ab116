//! Named slots for resources that can change at run time (clusters from CDS, route tables from
//! RDS). A route holds the slot of the cluster it names, resolved once at config time; a
//! request reads the slot's current value with one atomic load, never a lookup by name. The
//! value is replaced or cleared as the control plane updates or removes the resource, and the
//! routes that name it see the change on their next request.

use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One name and what it currently refers to (nothing while the resource is unknown).
pub struct Slot<T> {
    pub name: Arc<str>,
    current: ArcSwapOption<T>,
}

impl<T> Slot<T> {
    /// The current value. The caller keeps it for as long as it needs it: a request that
    /// started on one version of a cluster finishes on it even if the cluster is replaced.
    pub fn get(&self) -> Option<Arc<T>> {
        self.current.load_full()
    }

    pub fn set(&self, value: Option<Arc<T>>) {
        self.current.store(value);
    }
}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("set", &self.current.load().is_some())
            .finish()
    }
}

/// Every slot by name. Slots are created on first reference and live as long as something
/// refers to them; a slot whose resource was removed simply reads as empty.
pub struct Slots<T> {
    by_name: RwLock<HashMap<Arc<str>, Arc<Slot<T>>>>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            by_name: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> std::fmt::Debug for Slots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

impl<T> Slots<T> {
    /// The slot for `name`, created empty if nothing referred to it yet. Config time only.
    pub fn slot(&self, name: &str) -> Arc<Slot<T>> {
        if let Some(slot) = self.find(name) {
            return slot;
        }
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        by_name
            .entry(Arc::from(name))
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: Arc::from(name),
                    current: ArcSwapOption::empty(),
                })
            })
            .clone()
    }

    /// The slot for `name` if one exists; never creates one (for names that come from
    /// requests, such as `cluster_header`, which must not grow the table).
    pub fn find(&self, name: &str) -> Option<Arc<Slot<T>>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_shared_by_name_and_follows_updates() {
        let slots: Slots<u32> = Slots::default();
        let a = slots.slot("backend");
        assert!(a.get().is_none());
        assert!(slots.find("other").is_none());
        slots.slot("backend").set(Some(Arc::new(7)));
        assert_eq!(a.get().as_deref(), Some(&7));
        let held = a.get();
        a.set(None);
        assert!(a.get().is_none());
        assert_eq!(held.as_deref(), Some(&7), "a holder keeps the old value");
    }
}
