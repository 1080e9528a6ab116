//! An ALPN list a request asks its upstream connection to offer instead of the TLS context's
//! own (Istio's `istio.alpn` filter: `istio-http/1.1`, `istio-h2`, ... by upstream protocol).
//! Connections are pooled by offer, so it is compared by identity: each list is made once, at
//! config time, and every request that wants it carries the same `Arc`.

use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct AlpnOffer(Arc<[Vec<u8>]>);

impl AlpnOffer {
    pub fn new(protocols: Vec<Vec<u8>>) -> Self {
        Self(protocols.into())
    }

    pub fn protocols(&self) -> &[Vec<u8>] {
        &self.0
    }
}

impl PartialEq for AlpnOffer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AlpnOffer {}

impl std::hash::Hash for AlpnOffer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const u8 as usize).hash(state);
    }
}
