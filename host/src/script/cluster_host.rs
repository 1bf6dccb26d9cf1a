//! The `cluster` interface as scripts call it: host calls on a store's [`ScriptState`],
//! answered from what [`super::services`] reaches.

use super::bindings::auth::wasmgate::gateway::cluster::{self, NodeInfo, Pick, SendError};
use super::services::{pick_of, to_wit};
use super::state::ScriptState;
use crate::cluster::discovery;

impl cluster::Host for ScriptState {
    fn self_id(&mut self) -> u32 {
        self.access().map_or(0, |a| a.node_id)
    }

    fn nodes(&mut self, node_type: Option<String>) -> Vec<NodeInfo> {
        let Some(access) = self.access() else { return Vec::new() };
        let all = access.table().into_iter();
        all.filter(|n| node_type.as_ref().is_none_or(|t| *t == n.node_type)).map(to_wit).collect()
    }

    fn node(&mut self, id: u32) -> Option<NodeInfo> {
        self.access()?.nodes.as_ref()?.by_id(id).map(to_wit)
    }

    fn pick_node(&mut self, node_type: String, how: Pick) -> Option<NodeInfo> {
        self.access()?.nodes.as_ref()?.pick(&node_type, pick_of(how)).map(to_wit)
    }

    fn send_to_node(
        &mut self,
        node: u32,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        self.access().ok_or(SendError::NoSuchNode)?.send(node, dest_id, session_id, msg_id, body)
    }

    fn send_to_type(
        &mut self,
        node_type: String,
        how: Pick,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
    ) -> Result<u32, SendError> {
        let access = self.access().ok_or(SendError::NoSuchNode)?;
        let chosen = discovery::choose(access.candidates(&node_type, dest_id), pick_of(how));
        let node = chosen.ok_or(SendError::NoSuchNode)?.id;
        access.send(node, dest_id, session_id, msg_id, body).map(|()| node)
    }

    fn broadcast_to_type(
        &mut self,
        node_type: String,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
        exclude_self: bool,
    ) -> u32 {
        let Some(access) = self.access() else { return 0 };
        let nodes = access.candidates(&node_type, dest_id);
        let targets = nodes.iter().filter(|n| !(exclude_self && n.id == access.node_id));
        targets.filter(|n| access.send(n.id, dest_id, session_id, msg_id, body.clone()).is_ok()).count()
            as u32
    }
}
