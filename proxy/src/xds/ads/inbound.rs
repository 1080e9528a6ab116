//! What a discovery stream receives: responses of either wire variant reduced to one shape
//! (for state of the world, the names a wildcard type no longer lists are computed here).

use super::super::apply::{lock, SharedApplier, Update};
use super::super::records::Kind;
use std::collections::BTreeSet;
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};

pub(super) enum Inbound {
    Sotw(tonic::Streaming<DiscoveryResponse>),
    Delta(tonic::Streaming<DeltaDiscoveryResponse>),
}

/// A response of either variant, reduced to what applying it needs.
pub(super) struct Response {
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    pub updates: Vec<Update>,
    /// Delta: names removed. State of the world: computed for wildcard types.
    pub removed: Vec<String>,
    /// The response's `control_plane.identifier`, when it names one.
    pub control_plane: Option<String>,
}

/// The stream's next response; None when the control plane ended the stream.
pub(super) async fn next_response(
    inbound: &mut Inbound,
    applier: &SharedApplier,
) -> Result<Option<Response>, String> {
    match inbound {
        Inbound::Sotw(stream) => {
            let Some(r) = stream.message().await.map_err(|s| s.to_string())? else {
                return Ok(None);
            };
            let kind = Kind::from_type_url(&r.type_url);
            let mut updates = Vec::with_capacity(r.resources.len());
            for resource in r.resources {
                updates.push(Update {
                    name: super::super::resource_name(&resource),
                    version: r.version_info.clone(),
                    resource,
                });
            }
            // State of the world: a wildcard type's response is the whole set.
            let removed = match kind {
                Some(k) if k.is_wildcard() => {
                    let present: BTreeSet<&str> = updates.iter().map(|u| u.name.as_str()).collect();
                    lock(applier)
                        .dynamic_names(k)
                        .into_iter()
                        .filter(|n| !present.contains(n.as_str()))
                        .collect()
                }
                _ => Vec::new(),
            };
            Ok(Some(Response {
                type_url: r.type_url,
                version: r.version_info,
                nonce: r.nonce,
                updates,
                removed,
                control_plane: r.control_plane.map(|c| c.identifier),
            }))
        }
        Inbound::Delta(stream) => {
            let Some(r) = stream.message().await.map_err(|s| s.to_string())? else {
                return Ok(None);
            };
            let updates = r
                .resources
                .into_iter()
                .filter_map(|res| {
                    Some(Update {
                        name: res.name,
                        version: res.version,
                        resource: res.resource?,
                    })
                })
                .collect();
            Ok(Some(Response {
                type_url: r.type_url,
                version: r.system_version_info,
                nonce: r.nonce,
                updates,
                removed: r.removed_resources,
                control_plane: r.control_plane.map(|c| c.identifier),
            }))
        }
    }
}
