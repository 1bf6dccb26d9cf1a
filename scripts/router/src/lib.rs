//! Default routing script: seed 000's routing. A message id found in `message_map` is
//! forwarded to its dest id's queue pool; any other id is rejected with `unknown_message`
//! (the seed only logged it; wasmgate tells the client).
//!
//! Configuration (JSON, the `config` table of `[scripts.router]`): none is required; unknown
//! keys are rejected so a typo is caught at start.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, RouteError, Session};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

thread_local! {
    static MESSAGE_MAP: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

struct Router;

impl Guest for Router {
    fn init(config: String, message_map: Vec<MessageRoute>) -> Result<(), String> {
        let _: Config = serde_json::from_str(&config).map_err(|e| format!("router config: {e}"))?;
        let map = message_map.into_iter().map(|r| (r.msg_id, r.dest_id)).collect();
        MESSAGE_MAP.with(|m| *m.borrow_mut() = map);
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        MESSAGE_MAP.with(|m| match m.borrow().get(&packet.msg_id) {
            Some(&dest) => Decision::Forward(dest),
            None => Decision::Reject(RouteError::UnknownMessage),
        })
    }
}

wasmgate_guest::router::export!(Router);
