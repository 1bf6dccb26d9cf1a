//! Default routing script: seed 000's routing. A message id found in `message_map` is
//! forwarded to its dest id's queue pool; any other id is rejected with `unknown_message`
//! (the seed only logged it; wasmgate tells the client).
//!
//! Configuration (JSON, the `config` table of `[scripts.router]`), every key optional; unknown
//! keys are rejected so a typo is caught at start:
//! - `default_dest` (integer dest id): where message ids missing from `message_map` go,
//!   instead of being rejected with `unknown_message`.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, RouteError, Session};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    default_dest: Option<u32>,
}

thread_local! {
    static MESSAGE_MAP: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
    static DEFAULT_DEST: RefCell<Option<u32>> = const { RefCell::new(None) };
}

struct Router;

impl Guest for Router {
    fn init(config: String, message_map: Vec<MessageRoute>) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| format!("router config: {e}"))?;
        DEFAULT_DEST.with(|d| *d.borrow_mut() = config.default_dest);
        let map = message_map.into_iter().map(|r| (r.msg_id, r.dest_id)).collect();
        MESSAGE_MAP.with(|m| *m.borrow_mut() = map);
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        MESSAGE_MAP.with(|m| match m.borrow().get(&packet.msg_id) {
            Some(&dest) => Decision::Forward(dest),
            None => match DEFAULT_DEST.with(|d| *d.borrow()) {
                Some(dest) => Decision::Forward(dest),
                None => Decision::Reject(RouteError::UnknownMessage),
            },
        })
    }
}

wasmgate_guest::router::export!(Router);
