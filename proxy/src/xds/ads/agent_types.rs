//! The ADS client's side of the types the agent consumes (NDS): asking for them once per
//! stream after the first listener request, and answering what the consumer made of them.

use super::{AdsClient, Outbound, Response};
use crate::xds::agent_types::AgentType;
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_proto::pb::google::protobuf::Any;

impl AdsClient {
    /// Subscribes every agent type, wildcard and from scratch (no version, no nonce), as
    /// pilot-agent does on each new upstream stream.
    pub(super) fn request_agent_types(&mut self, out: &Outbound) {
        let urls: Vec<String> = self
            .agent_types
            .iter()
            .map(|t| t.type_url.clone())
            .collect();
        for type_url in urls {
            let node = self.node_for_request();
            match out {
                Outbound::Sotw(tx) => {
                    let _ = tx.send(DiscoveryRequest {
                        node,
                        type_url,
                        ..Default::default()
                    });
                }
                Outbound::Delta(tx) => {
                    let _ = tx.send(DeltaDiscoveryRequest {
                        node,
                        type_url,
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// Hands a response of an agent type to its consumer and answers it. An empty response is
    /// left unanswered, as pilot-agent leaves it (its types are singletons: nothing to do).
    /// A refused one is NACKed with the last accepted version; the consumer keeps what it had.
    pub(super) fn handle_agent_type(
        &mut self,
        agent_type: &AgentType,
        response: Response,
        out: &Outbound,
    ) {
        if response.updates.is_empty() {
            return;
        }
        let resources: Vec<Any> = response.updates.into_iter().map(|u| u.resource).collect();
        let error = (agent_type.consume)(&resources).err();
        let version = match &error {
            None => {
                self.agent_versions
                    .insert(agent_type.type_url.clone(), response.version.clone());
                response.version
            }
            Some(e) => {
                tracing::warn!(target: "config", "refusing (NACK) {}: {e}", agent_type.type_url);
                self.agent_versions
                    .get(&agent_type.type_url)
                    .cloned()
                    .unwrap_or_default()
            }
        };
        let node = self.node_for_request();
        self.send_ack(
            out,
            &agent_type.type_url,
            version,
            &response.nonce,
            node,
            error,
        );
    }
}
