//! What the gateway does with frames from backends (seed 000 step 7.1.1): replies and pushes
//! go to sessions found in the registry, kicks close sessions, relays go to another dest's
//! pool (backend -> backend through the gateway), room frames go to the room table.
//! In a cluster, what concerns other nodes goes over the bus (docs/cluster.md): a reply or
//! kick for a session of another node to that node, a push to a user to the node holding the
//! user's latest session, room pushes and pushes to all to every node.
//!
//! Nothing here waits for a client: a session's queue is pushed without blocking (its
//! slow-consumer policy applies) and a relay that finds the target queue full is counted and
//! logged. The one wait is a room or push-to-all fan-out whose bucket job queue is full: the
//! backend connection's reader then slows down with the fan-out (backpressure, no loss).

use std::sync::Arc;

use super::Shared;
use crate::metrics::TargetLabel;
use crate::protocol::backend::BackendFrame;
use crate::protocol::client::SharedPacket;
use crate::rooms::JoinOutcome;
use crate::session::{CloseReason, node_of};

/// Handles one frame received from the backend of `from_dest`.
pub(super) async fn from_backend(shared: &Arc<Shared>, from_dest: u32, frame: BackendFrame) {
    let count_push =
        |target: &'static str| shared.metrics.pushes.get_or_create(&TargetLabel { target }).inc();
    match frame {
        BackendFrame::Reply { session_id, msg_id, seq, body } => match shared.registry.get(session_id) {
            Some(session) => {
                let span = tracing::debug_span!(
                    "reply",
                    session.id = session_id,
                    wasmgate.msg_id = msg_id,
                    wasmgate.seq = seq,
                    wasmgate.dest_id = from_dest,
                );
                let _entered = span.enter();
                session.send(msg_id, seq, body);
            }
            None => {
                let frame = BackendFrame::Reply { session_id, msg_id, seq, body };
                elsewhere(shared, from_dest, "reply", session_id, frame);
            }
        },
        BackendFrame::PushUser { user_id, msg_id, body } => {
            count_push("user");
            let sessions = shared.registry.of_user(&user_id);
            for session in &sessions {
                session.send(msg_id, 0, body.clone());
            }
            match &shared.relay {
                Some(relay) => relay
                    .push_user(&user_id, BackendFrame::PushUser { user_id: user_id.clone(), msg_id, body }),
                None if sessions.is_empty() => {
                    shared.metrics.undeliverable.inc();
                    tracing::debug!(from_dest, user_id, "push for a user with no session on this node");
                }
                None => {}
            }
        }
        BackendFrame::Kick { session_id, reason } => match shared.registry.get(session_id) {
            Some(session) => session.close(CloseReason::Kicked, &reason),
            None => {
                elsewhere(shared, from_dest, "kick", session_id, BackendFrame::Kick { session_id, reason })
            }
        },
        BackendFrame::Relay { dest_id, session_id, msg_id, seq, body } => {
            let relayed = BackendFrame::Relayed { from_dest, session_id, msg_id, seq, body };
            relay(shared, dest_id, session_id, relayed);
        }
        BackendFrame::JoinRoom { session_id, room } => {
            let Some(session) = shared.registry.get(session_id) else {
                return not_here(shared, from_dest, "join", session_id);
            };
            if let Err(e) = shared.rooms.check_name(&room) {
                tracing::warn!(from_dest, room, "backend join refused: {e}");
                return;
            }
            match shared.rooms.join(&session, &room, None) {
                JoinOutcome::Joined { .. } | JoinOutcome::AlreadyMember { .. } | JoinOutcome::Closed => {}
                refused => tracing::warn!(from_dest, session_id, room, ?refused, "backend join refused"),
            }
        }
        BackendFrame::LeaveRoom { session_id, room } => match shared.registry.get(session_id) {
            Some(session) => {
                shared.rooms.leave(&session, &room);
            }
            None => not_here(shared, from_dest, "leave", session_id),
        },
        BackendFrame::PushRoom { room, exclude_session, msg_id, body } => {
            count_push("room");
            let exclude = (exclude_session != 0).then_some(exclude_session);
            if let Some(relay) = &shared.relay {
                let frame = BackendFrame::PushRoom {
                    room: room.clone(),
                    exclude_session,
                    msg_id,
                    body: body.clone(),
                };
                relay.to_all(frame);
            }
            if shared.rooms.broadcast(&room, SharedPacket::new(msg_id, 0, body), exclude).await.is_none() {
                tracing::debug!(from_dest, room, "push to a room with no members on this node");
            }
        }
        BackendFrame::PushAll { msg_id, body } => {
            count_push("all");
            if let Some(relay) = &shared.relay {
                relay.to_all(BackendFrame::PushAll { msg_id, body: body.clone() });
            }
            shared.rooms.push_all(SharedPacket::new(msg_id, 0, body)).await;
        }
        BackendFrame::Hello { .. } | BackendFrame::Forward { .. } | BackendFrame::Relayed { .. } => {
            tracing::warn!(from_dest, "backend sent a gateway-to-backend frame; ignored");
        }
    }
}

/// A backend -> backend relay: into this node's pool of `dest`, or, when this node has none,
/// over the bus to a node whose registration lists `dest` (docs/cluster.md).
fn relay(shared: &Arc<Shared>, dest: u32, key: u64, frame: BackendFrame) {
    if shared.table.load().contains_key(&dest) {
        return relay_local(shared, dest, key, frame);
    }
    if let Some(node) = shared.relay.as_ref().and_then(|r| r.to_dest(dest, key, frame)) {
        tracing::debug!(dest, node, "relay sent to the node that has the dest");
        return;
    }
    shared.metrics.undeliverable.inc();
    tracing::warn!(dest, "relay to a dest in no dest_map of the cluster; dropped");
}

/// A relay into this node's pool of `dest` (counted and logged when it cannot be queued).
pub(super) fn relay_local(shared: &Shared, dest: u32, key: u64, frame: BackendFrame) {
    let table = shared.table.load();
    let Some(pool) = table.get(&dest) else {
        shared.metrics.undeliverable.inc();
        tracing::warn!(dest, "relay to a dest not in dest_map; dropped");
        return;
    };
    if let Err((e, frame)) = pool.try_send(key, frame) {
        undeliverable(shared, dest, frame, &e.to_string());
    }
}

/// A frame for a session not on this node: to its node over the bus when it is another node
/// of the cluster, else counted as undeliverable.
fn elsewhere(shared: &Shared, from_dest: u32, what: &str, session_id: u64, frame: BackendFrame) {
    let node = node_of(session_id);
    match &shared.relay {
        Some(relay) if node != relay.node_id() => relay.to_node(node, frame),
        _ => not_here(shared, from_dest, what, session_id),
    }
}

fn not_here(shared: &Shared, from_dest: u32, what: &str, session_id: u64) {
    shared.metrics.undeliverable.inc();
    tracing::debug!(from_dest, session_id, "{what} for a session not on this node");
}

/// A frame for `dest` that could not be written: the session it came from gets an
/// `upstream_unavailable` error frame; a relay is counted and logged.
pub(super) fn undeliverable(shared: &Shared, dest: u32, frame: BackendFrame, why: &str) {
    match frame {
        BackendFrame::Forward { session_id, seq, .. } => {
            if let Some(session) = shared.registry.get(session_id) {
                session.send_error(seq, "upstream_unavailable", &format!("dest {dest}: {why}"));
            }
        }
        other => {
            shared.metrics.undeliverable.inc();
            tracing::warn!(dest, why, kind = ?std::mem::discriminant(&other), "relayed frame not delivered");
        }
    }
}
