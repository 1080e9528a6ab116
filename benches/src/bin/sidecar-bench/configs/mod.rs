//! One configuration generator per proxy, each turning the same `Job` into that proxy's
//! file: a listener per `Listener` kind, a route `/` to one cluster of two endpoints, and a
//! TCP passthrough to the TCP cluster. Envoy and Outrigger share the Envoy bootstrap.

pub mod envoy;
pub mod haproxy;
pub mod nginx;

#[cfg(test)]
use crate::scenario::Job;
use crate::scenario::Listener;

/// The port a target listens on for `listener`, given the first port of its block.
pub fn port(block: u16, listener: Listener) -> u16 {
    block + listener.offset()
}

/// Endpoint addresses as `host:port` strings, in the cluster's order.
pub fn endpoints(ports: &[u16; 2]) -> impl Iterator<Item = String> + '_ {
    ports.iter().map(|p| format!("127.0.0.1:{p}"))
}

#[cfg(test)]
pub fn test_job() -> Job {
    Job::new(19000)
}
