//! The room routes of a session (docs/protocol.md "Rooms"): join, leave, room message, room
//! list, and leaving every room when the session closes. The rooms script decides; the
//! membership lives in [`crate::rooms::Rooms`].
//!
//! Request bodies are JSON `{"room": "..", "data": <any>}` (`data` optional; for join and
//! leave a body that is not a JSON object is the room name itself). Answers go on the
//! request's own message id with its seq: `{"room": "..", "members": n, "status": "joined" |
//! "already_member" | "left"}`; refusals are error frames (`bad_request`, `forbidden`,
//! `room_full`, `too_many_rooms`, `not_in_room`, `rooms_unavailable`).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::driver::Session;
use crate::delivery::{Reached, Scope};
use crate::metrics::ReasonLabel;
use crate::protocol::client::data_body;
use crate::rooms::JoinOutcome;
use crate::script::bindings::{Effect, JoinRefusal, JoinRequest, LeaveCause, MessageError, Packet, RoomInfo};
use crate::session::{CloseReason, ErrorCode};

#[derive(Deserialize)]
struct RoomRequest<'a> {
    room: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `(room, data)` of a request body. With `name_only`, a body that is not a JSON object is
/// the room name.
fn parse_request(body: &[u8], name_only: bool) -> Result<(String, Bytes), String> {
    if name_only && body.first() != Some(&b'{') {
        let name = std::str::from_utf8(body).map_err(|_| "room name is not UTF-8")?;
        return Ok((name.trim().to_string(), Bytes::new()));
    }
    let request: RoomRequest<'_> =
        serde_json::from_slice(body).map_err(|e| format!("expected {{\"room\": .., \"data\": ..}}: {e}"))?;
    let data = data_body(request.data).map_err(|e| format!("data: {e}"))?;
    Ok((request.room, data))
}

fn answer(room: &str, members: u32, status: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "room": room, "members": members, "status": status }).to_string())
}

impl Session {
    fn count_join(&self, result: &'static str) {
        self.ctx.metrics.room_joins.get_or_create(&ReasonLabel { reason: result }).inc();
    }

    pub(super) async fn join_request(&mut self, seq: u32, body: &[u8]) {
        match parse_request(body, true) {
            Ok((room, data)) => self.join(seq, room, data).await,
            Err(e) => {
                self.reject(seq, ErrorCode::BadRequest, &e);
            }
        }
    }

    /// Joins `room` if the rooms script allows it.
    pub(super) async fn join(&mut self, seq: u32, room: String, data: Bytes) {
        let (rooms, join_id) = (&self.ctx.rooms, self.ctx.config.routes.join);
        if let Err(e) = rooms.check_name(&room) {
            self.count_join("bad_request");
            self.reject(seq, ErrorCode::BadRequest, &e.to_string());
            return;
        }
        let (joined, member) = {
            let mine = self.handle.memberships().lock();
            (mine.rooms.len(), mine.rooms.iter().any(|r| **r == *room))
        };
        if member {
            self.count_join("already_member");
            let members = rooms.members(&room).unwrap_or(0);
            self.handle.send(join_id, seq, answer(&room, members, "already_member"));
            return;
        }
        let request = JoinRequest {
            room: RoomInfo { name: room.clone(), members: rooms.members(&room).unwrap_or(0) },
            rooms_joined: joined as u32,
            body: data.to_vec(),
        };
        let accept = match self.ctx.scripts.rooms.on_join(&self.info(), &request).await {
            Ok(Ok(accept)) => accept,
            Ok(Err(refusal)) => {
                let (code, message) = match &refusal {
                    JoinRefusal::Forbidden(m) => (ErrorCode::Forbidden, m.as_str()),
                    JoinRefusal::RoomFull => (ErrorCode::RoomFull, "the room is full"),
                    JoinRefusal::TooManyRooms => {
                        (ErrorCode::TooManyRooms, "this session is in too many rooms")
                    }
                    JoinRefusal::BadRequest(m) => (ErrorCode::BadRequest, m.as_str()),
                };
                self.count_join(code.name());
                self.reject(seq, code, message);
                return;
            }
            Err(e) => {
                tracing::debug!("rooms script failed on join: {e}");
                self.count_join("script_error");
                self.reject(seq, ErrorCode::RoomsUnavailable, "the room logic failed; join refused");
                return;
            }
        };
        match rooms.join(&self.handle, &room, accept.member_cap) {
            JoinOutcome::Joined { members } => {
                self.count_join("ok");
                self.handle.send(join_id, seq, answer(&room, members, "joined"));
                self.apply(accept.effects, seq).await;
            }
            JoinOutcome::AlreadyMember { members } => {
                self.count_join("already_member");
                self.handle.send(join_id, seq, answer(&room, members, "already_member"));
            }
            JoinOutcome::Full => {
                self.count_join("room_full");
                self.reject(seq, ErrorCode::RoomFull, "the room is full");
            }
            JoinOutcome::TooManyRooms => {
                self.count_join("too_many_rooms");
                self.reject(seq, ErrorCode::TooManyRooms, "this session is in too many rooms");
            }
            JoinOutcome::Closed => {}
        }
    }

    pub(super) async fn leave_request(&mut self, seq: u32, body: &[u8]) {
        match parse_request(body, true) {
            Ok((room, _)) => self.leave(seq, &room).await,
            Err(e) => {
                self.reject(seq, ErrorCode::BadRequest, &e);
            }
        }
    }

    /// Leaves `room`, then gives the rooms script its say (effects only).
    pub(super) async fn leave(&mut self, seq: u32, room: &str) {
        let Some(members) = self.ctx.rooms.leave(&self.handle, room) else {
            self.reject(seq, ErrorCode::NotInRoom, "this session is not in that room");
            return;
        };
        self.handle.send(self.ctx.config.routes.leave, seq, answer(room, members, "left"));
        let info = RoomInfo { name: room.to_string(), members };
        self.after_leave(info, LeaveCause::Requested, seq).await;
    }

    async fn after_leave(&mut self, room: RoomInfo, cause: LeaveCause, seq: u32) {
        match self.ctx.scripts.rooms.on_leave(&self.info(), &room, cause).await {
            Ok(effects) => self.apply(effects, seq).await,
            Err(e) => tracing::debug!(room = room.name, "rooms script failed on leave; effects lost: {e}"),
        }
    }

    /// Leaves every room as the session ends (each with the script's `on-leave`).
    pub(super) async fn leave_rooms_on_close(&mut self) {
        for (room, members) in self.ctx.rooms.leave_all(&self.handle) {
            let info = RoomInfo { name: room.to_string(), members };
            self.after_leave(info, LeaveCause::Closed, 0).await;
        }
    }

    /// A member's message to one of its rooms.
    pub(super) async fn room_message(&mut self, packet: crate::protocol::client::Packet) {
        let seq = packet.seq;
        let (room, data) = match parse_request(&packet.body, false) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.reject(seq, ErrorCode::BadRequest, &e);
                return;
            }
        };
        if !self.handle.memberships().lock().rooms.iter().any(|r| **r == *room) {
            self.reject(seq, ErrorCode::NotInRoom, "join the room before sending to it");
            return;
        }
        let info = RoomInfo { members: self.ctx.rooms.members(&room).unwrap_or(0), name: room };
        let record = Packet { msg_id: packet.msg_id, seq, body: data.to_vec() };
        match self.ctx.scripts.rooms.on_message(&self.info(), &info, &record).await {
            Ok(Ok(effects)) => self.apply(effects, seq).await,
            Ok(Err(MessageError::BadRequest(m))) => {
                self.reject(seq, ErrorCode::BadRequest, &m);
            }
            Ok(Err(MessageError::Forbidden(m))) => {
                self.reject(seq, ErrorCode::Forbidden, &m);
            }
            Err(e) => {
                tracing::debug!("rooms script failed on a message: {e}");
                self.reject(seq, ErrorCode::RoomsUnavailable, "the room logic failed on this message");
            }
        }
    }

    /// The room list (connectsrv's "room list" route): body optional `{"prefix": ".."}`.
    pub(super) fn room_list(&self, seq: u32, body: &[u8]) {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct ListRequest {
            prefix: String,
        }
        if !self.ctx.peers.room_list_from(self.handle.peer().ip()) {
            self.reject(seq, ErrorCode::RateLimited, "too many room lists from this address");
            return;
        }
        let request: ListRequest = if body.is_empty() {
            ListRequest::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => {
                    self.reject(seq, ErrorCode::BadRequest, &format!("expected {{\"prefix\": ..}}: {e}"));
                    return;
                }
            }
        };
        let (rooms, total) = self.ctx.rooms.list(&request.prefix, self.ctx.config.rooms.list_limit);
        let body = serde_json::json!({ "rooms": rooms, "total": total }).to_string();
        self.handle.send(self.ctx.config.routes.room_list, seq, Bytes::from(body));
    }

    /// Carries out a rooms script's effects, in order. `seq` is the request's (for replies).
    async fn apply(&self, effects: Vec<Effect>, seq: u32) {
        for effect in effects {
            match effect {
                Effect::Broadcast(b) => {
                    let exclude = b.exclude_sender.then_some(self.handle.id());
                    let body = Bytes::from(b.body);
                    let out =
                        self.ctx.delivery.to_room(&b.room, exclude, b.msg_id, body, Scope::Cluster).await;
                    if out.here.is_none() {
                        tracing::debug!(
                            room = b.room,
                            "rooms script broadcast to a room that does not exist"
                        );
                    }
                }
                Effect::Send(d) => {
                    let body = Bytes::from(d.body);
                    let reached =
                        self.ctx.delivery.to_session(d.session_id, (d.msg_id, 0), body, Scope::Cluster);
                    if reached == Reached::Nowhere {
                        tracing::debug!(session = d.session_id, "rooms script sent to a session not here");
                    }
                }
                Effect::Reply(a) => {
                    self.handle.send(a.msg_id, seq, Bytes::from(a.body));
                }
                Effect::Kick(k) => {
                    let reason: String = k.reason.chars().take(120).collect();
                    let reached =
                        self.ctx.delivery.kick(k.session_id, CloseReason::Kicked, &reason, Scope::Cluster);
                    if reached == Reached::Nowhere {
                        tracing::debug!(session = k.session_id, "rooms script kicked a session not here");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_request;

    #[test]
    fn room_requests_parse() {
        assert_eq!(parse_request(br#"{"room":"r","data":{"a":1}}"#, false).unwrap().1, &br#"{"a":1}"#[..]);
        assert_eq!(parse_request(br#"{"room":"r","data":"hi"}"#, false).unwrap(), ("r".into(), "hi".into()));
        assert_eq!(parse_request(b"lobby", true).unwrap().0, "lobby");
        assert!(parse_request(b"lobby", false).is_err());
        assert!(parse_request(br#"{"data":1}"#, true).is_err());
    }
}
