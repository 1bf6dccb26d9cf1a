//! Delivery: the one way a packet or a kick reaches sessions — one session, a user's
//! sessions, a room's members, everyone — on this node through the registry and the room
//! table, and on other nodes through an injected [`Remote`] (the cluster bus). Backend frames
//! (`upstream`), the push API (`admin`), rooms-script effects and logins (`downstream`) and
//! what arrives over the bus (`cluster`) all deliver through [`Delivery`], so they agree on
//! what goes where:
//!
//! | target | this node | other nodes ([`Scope::Cluster`] only) |
//! |---|---|---|
//! | session | the session, if here | its node (the id names it), if not this one |
//! | user | every session of the user here, one shared encoding | the node the user's location names ([`Remote::to_user`]) |
//! | room | members here, minus `except` | every node |
//! | all | every admitted session here | every node |
//! | kick | the session, if here | its node, if not this one |
//!
//! Nothing here waits for a client: session queues are pushed without blocking (their
//! slow-consumer policy applies); the one wait is a room or everyone fan-out whose bucket
//! job queue is full (backpressure on the caller, no loss).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::protocol::backend::BackendFrame;
use crate::protocol::client::SharedPacket;
use crate::rooms::Rooms;
use crate::session::{CloseReason, Registry, node_of};

#[cfg(test)]
mod tests;

/// Reason text of a cross-node kick that closes the session as [`CloseReason::Replaced`]
/// (4006) rather than `kicked`: the user logged in again on another node. The bus carries a
/// kick as a backend `Kick` frame, whose only field is this text ([`kick_frame`],
/// [`kick_reason`]).
pub const REPLACED: &str = "the user logged in again";

/// Sends frames to other nodes (the cluster bus). Every method queues and returns at once;
/// delivery there is at most once (docs/cluster.md).
pub trait Remote: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> u32;
    /// `frame` to node `node` (a push to one of its sessions, a kick).
    fn to_node(&self, node: u32, frame: BackendFrame);
    /// `frame` to every other node (room broadcasts, push to all).
    fn to_all(&self, frame: BackendFrame);
    /// `frame` (a `PushUser`) to the node `user`'s location names, if another node.
    fn to_user(&self, user: &str, frame: BackendFrame);
    /// `frame` (a `Relayed`) to the pool of `dest` on another node that has one, picked by
    /// `key`; the node, or `None` when no node lists `dest`.
    fn to_dest(&self, dest: u32, key: u64, frame: BackendFrame) -> Option<u32>;
}

/// This node's queue pools, for relays into a dest (backend -> backend, possibly from
/// another node).
pub trait LocalDests: Send + Sync {
    /// Whether this node has a pool for `dest`.
    fn has(&self, dest: u32) -> bool;
    /// Queues `frame` on the pool of `dest` (connection picked by `key`); counted and logged
    /// when it cannot be queued.
    fn relay_here(&self, dest: u32, key: u64, frame: BackendFrame);
}

/// Whether a delivery may leave this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Here, and to other nodes as the target needs.
    Cluster,
    /// Here only: what arrived over the bus is never published again.
    Local,
}

/// Where a delivery to one session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Queued to the session on this node.
    Here,
    /// The session is on this node but closing (or its queue just overflowed): not queued.
    Closing,
    /// Handed to the bus for node `node` (not confirmed).
    Relayed { node: u32 },
    /// No such session here, and none elsewhere it could be sent to.
    Nowhere,
}

/// What a fan-out (user, room, everyone) reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FannedOut {
    /// Sessions (user, everyone) or members (room) on this node; `None`: no such room here.
    pub here: Option<u32>,
    /// Handed to the bus for other nodes.
    pub relayed: bool,
}

/// The delivery service: the registry and rooms of this node, plus the bus when in a cluster.
pub struct Delivery {
    registry: Arc<Registry>,
    rooms: Arc<Rooms>,
    remote: Option<Arc<dyn Remote>>,
    /// Set once the queue pools exist (they are built after delivery).
    dests: OnceLock<Arc<dyn LocalDests>>,
}

/// The bus frame of a kick of `session` for `reason`, whose text is `text`.
pub fn kick_frame(session: u64, reason: CloseReason, text: &str) -> BackendFrame {
    let reason = if reason == CloseReason::Replaced { REPLACED.into() } else { text.into() };
    BackendFrame::Kick { session_id: session, reason }
}

/// The close reason of a kick that arrived with `text` ([`kick_frame`]'s inverse).
pub fn kick_reason(text: &str) -> CloseReason {
    if text == REPLACED { CloseReason::Replaced } else { CloseReason::Kicked }
}

impl Delivery {
    /// Delivers into `registry` and `rooms`, and through `remote` when given.
    pub fn new(registry: Arc<Registry>, rooms: Arc<Rooms>, remote: Option<Arc<dyn Remote>>) -> Self {
        Self { registry, rooms, remote, dests: OnceLock::new() }
    }

    /// Connects this node's queue pools (once; later calls are ignored).
    pub fn connect_dests(&self, dests: Arc<dyn LocalDests>) {
        let _ = self.dests.set(dests);
    }

    /// The bus, when in a cluster with one.
    pub fn remote(&self) -> Option<&dyn Remote> {
        self.remote.as_deref()
    }

    /// The bus, unless `scope` is local.
    fn remote_in(&self, scope: Scope) -> Option<&dyn Remote> {
        self.remote.as_deref().filter(|_| scope == Scope::Cluster)
    }

    /// A packet to session `session` (`seq` answers a request; 0 for a push).
    pub fn to_session(&self, session: u64, (msg_id, seq): (u32, u32), body: Bytes, scope: Scope) -> Reached {
        if let Some(handle) = self.registry.get(session) {
            return if handle.send(msg_id, seq, body) { Reached::Here } else { Reached::Closing };
        }
        let frame = || BackendFrame::Reply { session_id: session, msg_id, seq, body };
        self.to_session_node(session, frame, scope)
    }

    /// Closes session `session` for `reason` (`text`: why, shown to the client in the error
    /// frame and close reason; a replaced session is told [`REPLACED`]).
    pub fn kick(&self, session: u64, reason: CloseReason, text: &str, scope: Scope) -> Reached {
        if let Some(handle) = self.registry.get(session) {
            let closing = handle.close_reason().is_some();
            handle.close(reason, if reason == CloseReason::Replaced { REPLACED } else { text });
            return if closing { Reached::Closing } else { Reached::Here };
        }
        self.to_session_node(session, || kick_frame(session, reason, text), scope)
    }

    /// The half of a session delivery that leaves this node: to the node the id names.
    fn to_session_node(&self, session: u64, frame: impl FnOnce() -> BackendFrame, scope: Scope) -> Reached {
        let node = node_of(session);
        match self.remote_in(scope) {
            Some(remote) if node != remote.node_id() => {
                remote.to_node(node, frame());
                Reached::Relayed { node }
            }
            _ => Reached::Nowhere,
        }
    }

    /// A push to every session of `user` here (one shared encoding); in a cluster also to the
    /// node of the user's latest session ([`Remote::to_user`]). `here` counts the sessions it
    /// was queued to.
    pub fn to_user(&self, user: &str, msg_id: u32, body: Bytes, scope: Scope) -> FannedOut {
        let here = self.to_user_here(user, msg_id, body.clone());
        let remote = self.remote_in(scope);
        if let Some(remote) = remote {
            remote.to_user(user, BackendFrame::PushUser { user_id: user.into(), msg_id, body });
        }
        FannedOut { here: Some(here), relayed: remote.is_some() }
    }

    /// A push to every session of `user` on this node only; returns how many it was queued to.
    pub fn to_user_here(&self, user: &str, msg_id: u32, body: Bytes) -> u32 {
        let packet = Arc::new(SharedPacket::new(msg_id, 0, body));
        let sessions = self.registry.of_user(user);
        sessions.iter().filter(|s| s.send_shared(packet.clone())).count() as u32
    }

    /// A push to `user` on node `node` (the caller read the user's location): `false`
    /// without a bus.
    pub fn to_user_on(&self, node: u32, user: &str, msg_id: u32, body: Bytes) -> bool {
        let Some(remote) = &self.remote else { return false };
        remote.to_node(node, BackendFrame::PushUser { user_id: user.into(), msg_id, body });
        true
    }

    /// A broadcast to the members of `room` but `except`, here and (cluster) on every node.
    pub async fn to_room(
        &self,
        room: &str,
        except: Option<u64>,
        msg_id: u32,
        body: Bytes,
        scope: Scope,
    ) -> FannedOut {
        let remote = self.remote_in(scope);
        if let Some(remote) = remote {
            let exclude_session = except.unwrap_or(0);
            remote.to_all(BackendFrame::PushRoom {
                room: room.into(),
                exclude_session,
                msg_id,
                body: body.clone(),
            });
        }
        let here = self.rooms.broadcast(room, SharedPacket::new(msg_id, 0, body), except).await;
        FannedOut { here, relayed: remote.is_some() }
    }

    /// A push to every admitted session, here and (cluster) on every node.
    pub async fn to_all(&self, msg_id: u32, body: Bytes, scope: Scope) -> FannedOut {
        let remote = self.remote_in(scope);
        if let Some(remote) = remote {
            remote.to_all(BackendFrame::PushAll { msg_id, body: body.clone() });
        }
        let here = self.rooms.push_all(SharedPacket::new(msg_id, 0, body)).await;
        FannedOut { here: Some(u32::try_from(here).unwrap_or(u32::MAX)), relayed: remote.is_some() }
    }

    /// A backend -> backend relay (`frame`, a `Relayed`) into the pool of `dest`: this node's
    /// when it has one, else (cluster) a node whose registration lists `dest`. Returns where
    /// it went: `Some(None)` here, `Some(Some(node))` to `node`, `None` nowhere.
    pub fn relay(&self, dest: u32, key: u64, frame: BackendFrame, scope: Scope) -> Option<Option<u32>> {
        let dests = self.dests.get()?;
        if dests.has(dest) || scope == Scope::Local {
            dests.relay_here(dest, key, frame);
            return Some(None);
        }
        self.remote_in(scope)?.to_dest(dest, key, frame).map(Some)
    }

    /// Delivers a frame that arrived over the bus, on this node only: `Reply` (a push to a
    /// session), `PushUser`, `PushRoom`, `PushAll`, `Kick`; with `dest`, a relay into that
    /// pool. Returns `false` for a frame the bus does not carry.
    pub async fn from_bus(&self, dest: Option<u32>, frame: BackendFrame) -> bool {
        if let Some(dest) = dest {
            let key = match &frame {
                BackendFrame::Relayed { session_id, .. } => *session_id,
                _ => 0,
            };
            self.relay(dest, key, frame, Scope::Local);
            return true;
        }
        match frame {
            BackendFrame::Reply { session_id, msg_id, seq, body } => {
                self.to_session(session_id, (msg_id, seq), body, Scope::Local);
            }
            BackendFrame::PushUser { user_id, msg_id, body } => {
                self.to_user_here(&user_id, msg_id, body);
            }
            BackendFrame::PushRoom { room, exclude_session, msg_id, body } => {
                let except = (exclude_session != 0).then_some(exclude_session);
                self.to_room(&room, except, msg_id, body, Scope::Local).await;
            }
            BackendFrame::PushAll { msg_id, body } => {
                self.to_all(msg_id, body, Scope::Local).await;
            }
            BackendFrame::Kick { session_id, reason } => {
                self.kick(session_id, kick_reason(&reason), &reason, Scope::Local);
            }
            _ => return false,
        }
        true
    }
}
