//! wasmgate router template (Rust).
//!
//! Forwards each message id of `message_map` to its dest, answers message 150 itself
//! (`router:rust:<body>`), and rejects any other id with `unknown_message`. Config keys:
//! `default_dest` (optional integer): where unmapped ids go instead.

use std::cell::RefCell;
use std::collections::HashMap;

use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, Reply, RouteError, Session};

const REPLY_MSG_ID: u32 = 150;

thread_local! {
    static ROUTES: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
    static DEFAULT_DEST: RefCell<Option<u32>> = const { RefCell::new(None) };
}

struct Router;

impl Guest for Router {
    fn init(config: String, message_map: Vec<MessageRoute>) -> Result<(), String> {
        let settings: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let default_dest = match settings.get("default_dest") {
            None => None,
            Some(v) => Some(v.as_u64().and_then(|d| u32::try_from(d).ok()).ok_or("default_dest: not a u32")?),
        };
        DEFAULT_DEST.with(|d| *d.borrow_mut() = default_dest);
        ROUTES.with(|r| *r.borrow_mut() = message_map.iter().map(|m| (m.msg_id, m.dest_id)).collect());
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        if packet.msg_id == REPLY_MSG_ID {
            let body = [b"router:rust:".as_slice(), &packet.body].concat();
            return Decision::Reply(Reply { msg_id: packet.msg_id, body });
        }
        let dest =
            ROUTES.with(|r| r.borrow().get(&packet.msg_id).copied()).or(DEFAULT_DEST.with(|d| *d.borrow()));
        match dest {
            Some(dest) => Decision::Forward(dest),
            None => Decision::Reject(RouteError::UnknownMessage),
        }
    }
}

wasmgate_guest::router::export!(Router);
