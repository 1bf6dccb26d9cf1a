//! The `cluster` interface as scripts call it: host calls on a store's [`ScriptState`],
//! answered from what [`super::services`] reaches. Under a tape (evidence) each call is noted;
//! a shadow candidate's or a replay's sends are dry runs ([`ScriptState::taped`]).

use super::bindings::auth::wasmgate::gateway::cluster::{self, NodeInfo, Pick, SendError};
use super::evidence::{HostFn, HostResult};
use super::services::{pick_of, to_wit};
use super::state::ScriptState;
use crate::cluster::discovery;

/// One send's dest, session and message.
struct Outgoing<'a> {
    dest_id: u32,
    session_id: u64,
    msg_id: u32,
    body: &'a [u8],
}

impl ScriptState {
    fn nodes_now(&self, node_type: Option<&str>) -> Vec<NodeInfo> {
        let Some(access) = self.access() else { return Vec::new() };
        let all = access.table().into_iter();
        all.filter(|n| node_type.is_none_or(|t| t == n.node_type)).map(to_wit).collect()
    }

    fn send_now(&self, node: u32, out: &Outgoing, dry_run: bool) -> Result<(), SendError> {
        let access = self.access().ok_or(SendError::NoSuchNode)?;
        access.send(node, out.dest_id, out.session_id, out.msg_id, out.body.to_vec(), dry_run)
    }

    fn send_to_type_now(
        &self,
        node_type: &str,
        how: Pick,
        out: &Outgoing,
        dry_run: bool,
    ) -> Result<u32, SendError> {
        let access = self.access().ok_or(SendError::NoSuchNode)?;
        let chosen = discovery::choose(access.candidates(node_type, out.dest_id), pick_of(how));
        let node = chosen.ok_or(SendError::NoSuchNode)?.id;
        self.send_now(node, out, dry_run).map(|()| node)
    }

    fn broadcast_now(&self, node_type: &str, out: &Outgoing, exclude_self: bool, dry_run: bool) -> u32 {
        let Some(access) = self.access() else { return 0 };
        let nodes = access.candidates(node_type, out.dest_id);
        let targets = nodes.iter().filter(|n| !(exclude_self && n.id == access.node_id));
        targets.filter(|n| self.send_now(n.id, out, dry_run).is_ok()).count() as u32
    }
}

impl cluster::Host for ScriptState {
    fn self_id(&mut self) -> u32 {
        let id = |me: &Self| me.access().map_or(0, |a| a.node_id);
        if self.tape.is_none() {
            return id(self);
        }
        match self.taped(|| HostFn::SelfId, |me, _| HostResult::Number(id(me).into())) {
            HostResult::Number(n) => n as u32,
            _ => 0,
        }
    }

    fn nodes(&mut self, node_type: Option<String>) -> Vec<NodeInfo> {
        if self.tape.is_none() {
            return self.nodes_now(node_type.as_deref());
        }
        let call = || HostFn::Nodes { node_type: node_type.clone() };
        match self.taped(call, |me, _| HostResult::Nodes(me.nodes_now(node_type.as_deref()))) {
            HostResult::Nodes(nodes) => nodes,
            _ => Vec::new(),
        }
    }

    fn node(&mut self, id: u32) -> Option<NodeInfo> {
        let lookup = |me: &Self| me.access()?.nodes.as_ref()?.by_id(id).map(to_wit);
        if self.tape.is_none() {
            return lookup(self);
        }
        match self.taped(|| HostFn::Node { id }, |me, _| HostResult::Node(lookup(me))) {
            HostResult::Node(node) => node,
            _ => None,
        }
    }

    fn pick_node(&mut self, node_type: String, how: Pick) -> Option<NodeInfo> {
        let pick = |me: &Self| me.access()?.nodes.as_ref()?.pick(&node_type, pick_of(how)).map(to_wit);
        if self.tape.is_none() {
            return pick(self);
        }
        let call = || HostFn::PickNode { node_type: node_type.clone(), how };
        match self.taped(call, |me, _| HostResult::Node(pick(me))) {
            HostResult::Node(node) => node,
            _ => None,
        }
    }

    fn send_to_node(
        &mut self,
        node: u32,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        if self.tape.is_none() {
            return self.send_now(node, &Outgoing { dest_id, session_id, msg_id, body: &body }, false);
        }
        let call = || HostFn::SendToNode { node, dest_id, session_id, msg_id, body: body.clone() };
        let out = Outgoing { dest_id, session_id, msg_id, body: &body };
        let perform = |me: &mut Self, dry| HostResult::Sent(me.send_now(node, &out, dry));
        match self.taped(call, perform) {
            HostResult::Sent(result) => result,
            _ => Err(SendError::NoSuchNode),
        }
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
        if self.tape.is_none() {
            let out = Outgoing { dest_id, session_id, msg_id, body: &body };
            return self.send_to_type_now(&node_type, how, &out, false);
        }
        let call = || HostFn::SendToType {
            node_type: node_type.clone(),
            how,
            dest_id,
            session_id,
            msg_id,
            body: body.clone(),
        };
        let out = Outgoing { dest_id, session_id, msg_id, body: &body };
        let perform =
            |me: &mut Self, dry| HostResult::SentTo(me.send_to_type_now(&node_type, how, &out, dry));
        match self.taped(call, perform) {
            HostResult::SentTo(result) => result,
            _ => Err(SendError::NoSuchNode),
        }
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
        if self.tape.is_none() {
            let out = Outgoing { dest_id, session_id, msg_id, body: &body };
            return self.broadcast_now(&node_type, &out, exclude_self, false);
        }
        let call = || HostFn::BroadcastToType {
            node_type: node_type.clone(),
            dest_id,
            session_id,
            msg_id,
            body: body.clone(),
            exclude_self,
        };
        let out = Outgoing { dest_id, session_id, msg_id, body: &body };
        let perform = |me: &mut Self, dry| {
            HostResult::Number(me.broadcast_now(&node_type, &out, exclude_self, dry).into())
        };
        match self.taped(call, perform) {
            HostResult::Number(n) => n as u32,
            _ => 0,
        }
    }
}
