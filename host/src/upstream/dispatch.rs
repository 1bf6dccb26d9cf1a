//! What the gateway does with frames from backends: replies, pushes, kicks and relays
//! (backend -> backend through the gateway) go through [`crate::delivery`] (this node, or
//! another over the bus), room membership frames to the room table. What could not be
//! delivered is counted (`wasmgate_undeliverable_total`) and logged at debug.
//!
//! Nothing here waits for a client; the one wait is a room or push-to-all fan-out whose
//! bucket job queue is full: the backend connection's reader then slows down with the
//! fan-out (backpressure, no loss).

use std::sync::Arc;

use super::Shared;
use crate::delivery::{FannedOut, Reached, Scope};
use crate::metrics::{DestErrorLabel, TargetLabel};
use crate::protocol::backend::BackendFrame;
use crate::rooms::JoinOutcome;
use crate::session::{CloseReason, ErrorCode};

/// Handles one frame received from the backend of `from_dest`.
pub(super) async fn from_backend(shared: &Arc<Shared>, from_dest: u32, frame: BackendFrame) {
    let count_push =
        |target: &'static str| shared.metrics.pushes.get_or_create(&TargetLabel { target }).inc();
    let delivery = &shared.delivery;
    match frame {
        BackendFrame::Reply { session_id, msg_id, seq, body } => {
            let span = tracing::debug_span!(
                "reply",
                session.id = session_id,
                wasmgate.msg_id = msg_id,
                wasmgate.seq = seq,
                wasmgate.dest_id = from_dest,
            );
            let _entered = span.enter();
            if delivery.to_session(session_id, (msg_id, seq), body, Scope::Cluster) == Reached::Nowhere {
                not_here(shared, from_dest, "reply", session_id);
            }
        }
        BackendFrame::PushUser { user_id, msg_id, body } => {
            count_push("user");
            let out = delivery.to_user(&user_id, msg_id, body, Scope::Cluster);
            if out == (FannedOut { here: Some(0), relayed: false }) {
                shared.metrics.undeliverable.inc();
                tracing::debug!(from_dest, user_id, "push for a user with no session on this node");
            }
        }
        BackendFrame::Kick { session_id, reason } => {
            if reason.contains(char::REPLACEMENT_CHARACTER) {
                bad_frame(shared, from_dest, "kick_reason_not_utf8");
            }
            if delivery.kick(session_id, CloseReason::Kicked, &reason, Scope::Cluster) == Reached::Nowhere {
                not_here(shared, from_dest, "kick", session_id);
            }
        }
        BackendFrame::Relay { dest_id, session_id, msg_id, seq, body } => {
            let relayed = BackendFrame::Relayed { from_dest, session_id, msg_id, seq, body };
            match delivery.relay(dest_id, session_id, relayed, Scope::Cluster) {
                Some(Some(node)) => {
                    tracing::debug!(dest_id, node, "relay sent to the node that has the dest")
                }
                Some(None) => {}
                None => {
                    shared.metrics.undeliverable.inc();
                    tracing::warn!(dest_id, "relay to a dest in no dest_map of the cluster; dropped");
                }
            }
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
            let except = (exclude_session != 0).then_some(exclude_session);
            if delivery.to_room(&room, except, msg_id, body, Scope::Cluster).await.here.is_none() {
                tracing::debug!(from_dest, room, "push to a room with no members on this node");
            }
        }
        BackendFrame::PushAll { msg_id, body } => {
            count_push("all");
            delivery.to_all(msg_id, body, Scope::Cluster).await;
        }
        BackendFrame::Hello { .. } | BackendFrame::Forward { .. } | BackendFrame::Relayed { .. } => {
            bad_frame(shared, from_dest, "gateway_to_backend_kind");
        }
        BackendFrame::Malformed { kind, error } => {
            tracing::debug!(from_dest, kind, error, "malformed frame from a backend, skipped");
            bad_frame(shared, from_dest, error);
        }
    }
}

/// Counts a bad frame from the backend of `dest` in `wasmgate_upstream_bad_frames_total{dest,
/// error}`; logs a warning at the 1st, 2nd, 4th, 8th... of each kind, so a backend that
/// sends nothing else cannot flood the log (the count says how many there were).
pub(super) fn bad_frame(shared: &Shared, dest: u32, error: &'static str) {
    let counter = shared.metrics.upstream_bad_frames.get_or_create(&DestErrorLabel { dest, error }).clone();
    let seen = counter.inc() + 1;
    if seen.is_power_of_two() {
        tracing::warn!(
            dest,
            error,
            seen,
            "bad frames from a backend (skipped; a kick with a bad reason is applied)"
        );
    }
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

pub(super) fn not_here(shared: &Shared, from_dest: u32, what: &str, session_id: u64) {
    shared.metrics.undeliverable.inc();
    tracing::debug!(from_dest, session_id, "{what} for a session not on this node");
}

/// A frame for `dest` that could not be written: the session it came from gets an
/// `upstream_unavailable` error frame; a relay is counted and logged.
pub(super) fn undeliverable(shared: &Shared, dest: u32, frame: BackendFrame, why: &str) {
    match frame {
        BackendFrame::Forward { session_id, seq, .. } => {
            if let Some(session) = shared.registry.get(session_id) {
                shared.metrics.client_error(ErrorCode::UpstreamUnavailable);
                session.send_error(seq, ErrorCode::UpstreamUnavailable, &format!("dest {dest}: {why}"));
            }
        }
        other => {
            shared.metrics.undeliverable.inc();
            tracing::warn!(dest, why, kind = ?std::mem::discriminant(&other), "relayed frame not delivered");
        }
    }
}
