//! A cluster's transport sockets, chosen per endpoint (`transport_socket_matches`): a host takes
//! the first match whose criteria its endpoint's `envoy.transport_socket_match` metadata meets,
//! else the first its locality's metadata meets, else the cluster's own `transport_socket`.
//! Istio's auto-mTLS rests on this: `{tlsMode: istio}` endpoints get mTLS, the rest plaintext.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-field-config-cluster-v3-cluster-transport-socket-matches

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use super::tls::{SecretSlots, UpstreamTls};
use std::sync::Arc;
use xds_proto::pb::envoy::config::cluster::v3::Cluster as ProtoCluster;
use xds_proto::pb::envoy::config::core::v3::{Metadata, TransportSocket as ProtoSocket};
use xds_proto::pb::google::protobuf::{Struct, Value};

/// The `filter_metadata` key both the criteria and the endpoints' labels live under.
pub const METADATA_KEY: &str = "envoy.transport_socket_match";

/// One upstream transport socket, compiled.
#[derive(Debug, Clone)]
pub enum UpstreamSocket {
    /// `raw_buffer`, or no transport socket at all.
    Plain,
    /// `envoy.transport_sockets.tls` with its `UpstreamTlsContext`.
    Tls(Arc<UpstreamTls>),
    /// A transport socket Outrigger does not speak (its name): connections using it are
    /// refused rather than sent in plain text.
    Unsupported(String),
}

/// One `transport_socket_matches` entry.
#[derive(Debug, Clone)]
pub struct TransportMatch {
    /// Its stats are `cluster.<name>.<match name>.total_match_count`.
    pub name: String,
    /// Every entry must be present, and equal, in the metadata; none matches every endpoint.
    criteria: Vec<(String, Value)>,
    pub socket: UpstreamSocket,
}

/// Everything a cluster's hosts choose their transport socket from.
#[derive(Debug, Clone)]
pub struct TransportSockets {
    /// The cluster's own `transport_socket`: hosts no match selects.
    pub default: UpstreamSocket,
    pub matches: Vec<TransportMatch>,
}

/// The labels an endpoint offers the matches: the `envoy.transport_socket_match` struct of its
/// own metadata and of its locality's, when present. Shared, not copied, by every host built
/// from the endpoint.
#[derive(Debug, Clone, Default)]
pub struct MatchLabels {
    pub endpoint: Option<Arc<Struct>>,
    pub locality: Option<Arc<Struct>>,
}

impl MatchLabels {
    /// The labels under `METADATA_KEY` of an endpoint's and its locality's metadata.
    pub fn of(endpoint: Option<&Metadata>, locality: Option<&Metadata>) -> Self {
        let labels = |m: Option<&Metadata>| {
            m.and_then(|m| m.filter_metadata.get(METADATA_KEY))
                .map(|s| Arc::new(s.clone()))
        };
        Self {
            endpoint: labels(endpoint),
            locality: labels(locality),
        }
    }
}

/// Which transport socket a host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selected {
    /// The `transport_socket_matches` entry at this index.
    Match(usize),
    /// The cluster's own `transport_socket`.
    Default,
}

impl TransportMatch {
    fn admits(&self, labels: Option<&Struct>) -> bool {
        // Metadata without the key (or none at all) meets only empty criteria.
        self.criteria.iter().all(|(key, want)| {
            labels
                .and_then(|l| l.fields.get(key))
                .is_some_and(|have| have == want)
        })
    }
}

impl TransportSockets {
    /// The socket for an endpoint with `labels`. The endpoint's own labels are tried against
    /// every match before its locality's are (so an empty match, which admits anything, wins
    /// over a locality label), as Envoy 1.40 resolves them.
    pub fn select(&self, labels: &MatchLabels) -> Selected {
        for source in [labels.endpoint.as_deref(), labels.locality.as_deref()] {
            if let Some(i) = self.matches.iter().position(|m| m.admits(source)) {
                return Selected::Match(i);
            }
        }
        Selected::Default
    }

    /// The SDS secrets of every socket (the cluster's own and its matches'): a cluster warms
    /// until they have arrived.
    pub fn sds_secrets(&self) -> Vec<Arc<super::slots::Slot<super::tls::Secret>>> {
        let mut slots = Vec::new();
        for socket in std::iter::once(&self.default).chain(self.matches.iter().map(|m| &m.socket)) {
            if let UpstreamSocket::Tls(tls) = socket {
                tls.common.sds_secrets(&mut slots);
            }
        }
        slots
    }

    pub fn socket(&self, selected: Selected) -> &UpstreamSocket {
        match selected {
            Selected::Match(i) => self.matches.get(i).map_or(&self.default, |m| &m.socket),
            Selected::Default => &self.default,
        }
    }

    /// Every socket of the cluster, its own first.
    pub fn all(&self) -> impl Iterator<Item = &UpstreamSocket> {
        std::iter::once(&self.default).chain(self.matches.iter().map(|m| &m.socket))
    }
}

/// `transport_socket` and `transport_socket_matches` of a cluster.
pub fn translate(
    c: &ProtoCluster,
    path: &FieldPath,
    secrets: &SecretSlots,
    acks: &mut Vec<Acknowledged>,
) -> Result<TransportSockets> {
    let default = match &c.transport_socket {
        None => UpstreamSocket::Plain,
        Some(ts) => upstream_socket(ts, &path.field("transport_socket"), secrets, acks)?,
    };
    let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let p = path.field("transport_socket_matches").index(i);
        if m.name.is_empty() {
            return Err(p
                .field("name")
                .error("value length must be at least 1 characters"));
        }
        let Some(ts) = &m.transport_socket else {
            return Err(p.field("transport_socket").error("is required"));
        };
        let socket = upstream_socket(ts, &p.field("transport_socket"), secrets, acks)?;
        let mut criteria: Vec<(String, Value)> = m
            .r#match
            .iter()
            .flat_map(|s| s.fields.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Sorted only so that configs and logs read the same each time.
        criteria.sort_by(|a, b| a.0.cmp(&b.0));
        matches.push(TransportMatch {
            name: m.name.clone(),
            criteria,
            socket,
        });
    }
    Ok(TransportSockets { default, matches })
}

/// One upstream transport socket at `path` (a cluster's own, or a match's).
fn upstream_socket(
    ts: &ProtoSocket,
    path: &FieldPath,
    secrets: &SecretSlots,
    acks: &mut Vec<Acknowledged>,
) -> Result<UpstreamSocket> {
    use super::listener::{transport_socket, Transport};
    Ok(match transport_socket(ts, path, acks)? {
        Transport::Raw => UpstreamSocket::Plain,
        Transport::Tls(any) => {
            let p = path.field("typed_config");
            let Some(xds_proto::Extension::UpstreamTlsContext(ctx)) =
                super::extension::decode(&any, &p)?
            else {
                return Err(p.error(format!(
                    "{} needs an UpstreamTlsContext on a cluster",
                    ts.name
                )));
            };
            let resolve = super::tls::TlsResolve { secrets };
            UpstreamSocket::Tls(Arc::new(super::tls::translate_upstream(
                &ctx, &p, &resolve, acks,
            )?))
        }
        Transport::Unsupported => UpstreamSocket::Unsupported(ts.name.clone()),
    })
}

#[cfg(test)]
#[path = "transport_match_tests.rs"]
mod tests;
