//! Default rooms script: go-push's room rules (seed 002) plus chat.
//!
//! - Join: refused with `too_many_rooms` when the session is in `max_rooms_per_session` rooms
//!   (go-push's `MaxJoinRoom`), `room_full` at `max_members` (enforced atomically by the host
//!   through the member cap).
//! - Room message: broadcast to every member, sender included (so it sees the room's order),
//!   as `{"room": "..", "from": "<user id>", "data": <the message's data>}` with the message's
//!   own id.
//! - With `announce`, joins and leaves are broadcast as
//!   `{"room": "..", "event": "join"|"leave", "user": ".."}` with id `announce_msg_id`.
//!
//! Configuration (JSON, `[scripts.rooms.config]`), every key optional; unknown keys are
//! rejected so a typo is caught at start:
//! `max_rooms_per_session` (32), `max_members` (100000), `announce` (false),
//! `announce_msg_id` (7).

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::value::RawValue;
use wasmgate_guest::rooms::{
    Broadcast, Effect, Guest, JoinAccept, JoinRefusal, JoinRequest, LeaveCause, MessageError, Packet,
    RoomInfo, Session,
};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
struct Config {
    max_rooms_per_session: u32,
    max_members: u32,
    announce: bool,
    announce_msg_id: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_rooms_per_session: 32, max_members: 100_000, announce: false, announce_msg_id: 7 }
    }
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

fn config() -> Config {
    CONFIG.with(|c| c.borrow().clone())
}

fn user(session: &Session) -> String {
    session.user_id.clone().unwrap_or_else(|| format!("session-{}", session.id))
}

/// `data` as JSON text: JSON as is, anything else as a JSON string.
fn json_data(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if serde_json::from_str::<&RawValue>(text).is_ok() => text.to_string(),
        _ => serde_json::Value::from(String::from_utf8_lossy(body).into_owned()).to_string(),
    }
}

fn announce(room: &str, event: &str, session: &Session) -> Vec<Effect> {
    let config = config();
    if !config.announce {
        return Vec::new();
    }
    let body = serde_json::json!({ "room": room, "event": event, "user": user(session) }).to_string();
    vec![Effect::Broadcast(Broadcast {
        room: room.to_string(),
        msg_id: config.announce_msg_id,
        body: body.into_bytes(),
        exclude_sender: false,
    })]
}

struct Rooms;

impl Guest for Rooms {
    fn init(config: String) -> Result<(), String> {
        let parsed: Config = serde_json::from_str(&config).map_err(|e| format!("rooms config: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn on_join(session: Session, request: JoinRequest) -> Result<JoinAccept, JoinRefusal> {
        let config = config();
        if request.rooms_joined >= config.max_rooms_per_session {
            return Err(JoinRefusal::TooManyRooms);
        }
        if request.room.members >= config.max_members {
            return Err(JoinRefusal::RoomFull);
        }
        let effects = announce(&request.room.name, "join", &session);
        Ok(JoinAccept { member_cap: Some(config.max_members), effects })
    }

    fn on_leave(session: Session, room: RoomInfo, _cause: LeaveCause) -> Vec<Effect> {
        if room.members == 0 { Vec::new() } else { announce(&room.name, "leave", &session) }
    }

    fn on_message(session: Session, room: RoomInfo, packet: Packet) -> Result<Vec<Effect>, MessageError> {
        if packet.body.is_empty() {
            return Err(MessageError::BadRequest("a room message needs `data`".into()));
        }
        let body = format!(
            r#"{{"room":{},"from":{},"data":{}}}"#,
            serde_json::Value::from(room.name.as_str()),
            serde_json::Value::from(user(&session)),
            json_data(&packet.body)
        );
        Ok(vec![Effect::Broadcast(Broadcast {
            room: room.name,
            msg_id: packet.msg_id,
            body: body.into_bytes(),
            exclude_sender: false,
        })])
    }
}

wasmgate_guest::rooms::export!(Rooms);
