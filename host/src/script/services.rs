//! The `cluster` interface scripts import (go-xserver's `INode` API): discovery from the node
//! table, and sends to a node's backend of a dest. Host calls never wait: a send is queued on
//! this node's pool of the dest (`try_send`) or on the cross-node bus, or refused at once with
//! `unavailable` — so a script's call needs no timeout of its own beyond the epoch deadline.
//!
//! Scripts are loaded before the gateway joins its cluster, so what the calls reach
//! ([`ClusterAccess`]) is set once the gateway is built ([`Services::connect`]); until then
//! (during the first `init`s) the node table is empty and sends are refused.

use std::sync::{Arc, OnceLock};

use super::bindings::auth::wasmgate::gateway::cluster::{NodeInfo, Pick, SendError};
use crate::cluster::Bus;
use crate::cluster::discovery::{self, NodeTable};
use crate::protocol::backend::BackendFrame;
use crate::upstream::Upstreams;

/// What host calls can reach beyond the script, shared by every script of a gateway.
#[derive(Default)]
pub struct Services {
    cluster: OnceLock<ClusterAccess>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("connected", &self.cluster.get().is_some()).finish()
    }
}

/// This node, its node table and its ways to send.
pub struct ClusterAccess {
    pub node_id: u32,
    /// Discovery's table; `None` standalone.
    pub nodes: Option<Arc<NodeTable>>,
    /// The cross-node bus; `None` without Redis.
    pub bus: Option<Bus>,
    pub upstreams: Upstreams,
}

impl Services {
    pub(super) fn cluster(&self) -> Option<&ClusterAccess> {
        self.cluster.get()
    }

    /// Gives scripts the gateway's cluster view (once; later calls are ignored).
    pub fn connect(&self, access: ClusterAccess) {
        let _ = self.cluster.set(access);
    }
}

pub(super) fn to_wit(node: discovery::NodeInfo) -> NodeInfo {
    NodeInfo {
        id: node.id,
        node_type: node.node_type,
        name: node.name,
        load: node.load,
        version: node.version,
        dests: node.dests,
    }
}

pub(super) fn pick_of(how: Pick) -> discovery::Pick {
    match how {
        Pick::Random => discovery::Pick::Random,
        Pick::LeastLoaded => discovery::Pick::LeastLoaded,
    }
}

impl ClusterAccess {
    pub(super) fn table(&self) -> Vec<discovery::NodeInfo> {
        self.nodes.as_ref().map(|t| t.all()).unwrap_or_default()
    }

    /// Nodes of `node_type` that have `dest`.
    pub(super) fn candidates(&self, node_type: &str, dest: u32) -> Vec<discovery::NodeInfo> {
        self.table().into_iter().filter(|n| n.node_type == node_type && n.dests.contains(&dest)).collect()
    }

    /// Queues the frame, or with `dry_run` only checks that the node and dest exist (a shadow
    /// candidate's or a replay's send: nothing is queued).
    pub(super) fn send(
        &self,
        node: u32,
        dest: u32,
        session: u64,
        msg_id: u32,
        body: Vec<u8>,
        dry_run: bool,
    ) -> Result<(), SendError> {
        if dry_run {
            return self.check_send(node, dest);
        }
        let frame =
            BackendFrame::Relayed { from_dest: 0, session_id: session, msg_id, seq: 0, body: body.into() };
        if node == self.node_id {
            return self.upstreams.try_relay_here(dest, session, frame).map_err(|e| match e {
                None => SendError::NoSuchDest,
                Some(why) => SendError::Unavailable(why),
            });
        }
        let info = self.nodes.as_ref().and_then(|t| t.by_id(node)).ok_or(SendError::NoSuchNode)?;
        if !info.dests.contains(&dest) {
            return Err(SendError::NoSuchDest);
        }
        let bus = self.bus.as_ref().ok_or(SendError::NoSuchNode)?;
        match bus.to_node_dest(node, dest, frame) {
            true => Ok(()),
            false => Err(SendError::Unavailable("the cluster bus queue is full".into())),
        }
    }

    /// What [`Self::send`] would refuse before queueing: an unknown node or dest.
    fn check_send(&self, node: u32, dest: u32) -> Result<(), SendError> {
        if node == self.node_id {
            return match self.upstreams.has_dest(dest) {
                true => Ok(()),
                false => Err(SendError::NoSuchDest),
            };
        }
        let info = self.nodes.as_ref().and_then(|t| t.by_id(node)).ok_or(SendError::NoSuchNode)?;
        if !info.dests.contains(&dest) {
            return Err(SendError::NoSuchDest);
        }
        self.bus.as_ref().map(|_| ()).ok_or(SendError::NoSuchNode)
    }
}
