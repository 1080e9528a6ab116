//! Drain signals per filter chain. A listener update that changes only some filter chains
//! drains only the connections of those chains (Envoy's in-place filter chain update); a
//! chain that stays the same keeps its signal, so its connections never notice the update.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/lds#filter-chain-only-update

use crate::config::listener::Listener;
use std::collections::HashMap;
use tokio::sync::watch;

/// The manager's side: one sender per chain fingerprint of the current configuration.
#[derive(Debug, Default)]
pub struct ChainDrainSenders {
    chains: HashMap<u64, watch::Sender<bool>>,
}

impl ChainDrainSenders {
    /// Senders for every chain of `listener`, taking over those of `previous` whose chain is
    /// unchanged. Returns them with what is left of `previous`: the changed chains, to drain.
    pub fn for_listener(listener: &Listener, mut previous: ChainDrainSenders) -> (Self, Self) {
        let mut chains = HashMap::new();
        for chain in listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.as_ref())
        {
            let sender = previous
                .chains
                .remove(&chain.fingerprint)
                .unwrap_or_else(|| watch::channel(false).0);
            chains.insert(chain.fingerprint, sender);
        }
        (Self { chains }, previous)
    }

    /// How many chains there are.
    pub fn len(&self) -> usize {
        self.chains.len()
    }

    /// Tells every chain's connections to drain.
    pub fn drain_all(&self) {
        for sender in self.chains.values() {
            sender.send_replace(true);
        }
    }

    pub fn receivers(&self) -> ChainDrains {
        ChainDrains {
            chains: self
                .chains
                .iter()
                .map(|(fingerprint, s)| (*fingerprint, s.subscribe()))
                .collect(),
            never: watch::channel(false).0,
        }
    }
}

/// The connections' side, kept in the listener's runtime.
#[derive(Debug)]
pub struct ChainDrains {
    chains: HashMap<u64, watch::Receiver<bool>>,
    /// For a chain without a signal (not expected): a sender that never fires.
    never: watch::Sender<bool>,
}

impl ChainDrains {
    /// The signal a connection served by the chain with `fingerprint` watches.
    pub fn for_chain(&self, fingerprint: u64) -> watch::Receiver<bool> {
        self.chains
            .get(&fingerprint)
            .cloned()
            .unwrap_or_else(|| self.never.subscribe())
    }

    /// A runtime built outside a listener manager (tests): nothing ever drains.
    pub fn none() -> Self {
        Self {
            chains: HashMap::new(),
            never: watch::channel(false).0,
        }
    }
}
