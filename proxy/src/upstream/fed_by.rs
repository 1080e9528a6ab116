//! Which clusters each EDS service feeds, by cluster name: kept beside a set of clusters so
//! that an assignment finds its clusters without a scan (a push of a thousand clusters brings
//! a thousand assignments).

use crate::config::cluster::Cluster;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct FedBy(HashMap<String, Vec<String>, foldhash::fast::RandomState>);

impl FedBy {
    /// Records `cluster` under its EDS service (nothing for other clusters).
    pub fn add(&mut self, cluster: &Cluster) {
        if let Some(service) = cluster.eds_service_name() {
            self.0
                .entry(service.to_string())
                .or_default()
                .push(cluster.name.clone());
        }
    }

    /// Forgets `cluster` (the one named so, replaced or removed).
    pub fn remove(&mut self, cluster: &Cluster) {
        let Some(service) = cluster.eds_service_name() else {
            return;
        };
        if let Some(names) = self.0.get_mut(service) {
            names.retain(|n| *n != cluster.name);
            if names.is_empty() {
                self.0.remove(service);
            }
        }
    }

    /// The names of the clusters `service_name` feeds.
    pub fn names(&self, service_name: &str) -> impl Iterator<Item = &String> {
        self.0.get(service_name).into_iter().flatten()
    }
}
