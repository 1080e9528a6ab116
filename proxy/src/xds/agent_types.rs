//! Resource types the agent itself consumes over the ADS stream (NDS for the DNS proxy, later
//! PCDS), the way pilot-agent's xDS proxy handles them: subscribed (wildcard) on each stream
//! right after the first listener request, handed to a callback, ACKed or NACKed; never applied
//! to the proxy's configuration. With none registered the stream is exactly Envoy's.

use std::sync::{Arc, Mutex};
use xds_proto::pb::google::protobuf::Any;

/// Takes the resources of one response; an error is sent back as the NACK's message.
pub type Consume = Arc<dyn Fn(&[Any]) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct AgentType {
    pub type_url: String,
    pub consume: Consume,
}

impl std::fmt::Debug for AgentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentType")
            .field("type_url", &self.type_url)
            .finish_non_exhaustive()
    }
}

/// The registered types; read once when the ADS client starts, so register before that.
#[derive(Debug, Default)]
pub struct AgentTypes {
    types: Mutex<Vec<AgentType>>,
}

impl AgentTypes {
    /// Adds a type; a second registration of a type URL replaces the first.
    pub fn register(&self, agent_type: AgentType) {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.retain(|t| t.type_url != agent_type.type_url);
        types.push(agent_type);
    }

    pub fn list(&self) -> Vec<AgentType> {
        self.types.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
