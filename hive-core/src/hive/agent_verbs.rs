//! The agent verbs of DESIGN §3, each applied for the agent whose socket the
//! request came in on. `recv` is not here: waiting and pushing belong to the
//! connection (`agent_socket`), which uses [`Hive::unacked`] and
//! [`Hive::subscribe_inbox`].

use hive_proto::agent::AgentRequest;
use hive_proto::AgentName;

use super::{Hive, Refusal};

impl Hive {
    /// Applies one agent request for `me` and returns its JSON result.
    pub async fn agent_call(
        &self,
        me: &AgentName,
        req: AgentRequest,
    ) -> Result<serde_json::Value, Refusal> {
        let _ = (me, req);
        todo!()
    }
}
