//! Default routing script: seed 000's routing. A message id found in `message_map` is
//! forwarded to its dest id's queue pool; any other id is rejected with `unknown_message`
//! (the seed only logged it; wasmgate tells the client).
//!
//! Configuration (JSON, the `config` table of `[scripts.router]`), every key optional; unknown
//! keys are rejected so a typo is caught at start:
//! - `default_dest` (integer dest id): where message ids missing from `message_map` go,
//!   instead of being rejected with `unknown_message`.
//! - `es_dests` (object, ES id as a decimal string -> dest id): a packet that came with seed
//!   001's ES header (`tcp.header = "es"`) and whose `es_id` is listed goes to that dest,
//!   whatever its message id (the seed's cluster proxy routes by ESID). Login and the other
//!   built-in routes are handled by the gateway before the router.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use wasmgate_guest::host::packet_es_id;
use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, RouteError, Session};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    default_dest: Option<u32>,
    #[serde(default)]
    es_dests: HashMap<String, u32>,
}

thread_local! {
    static MESSAGE_MAP: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
    static DEFAULT_DEST: RefCell<Option<u32>> = const { RefCell::new(None) };
    static ES_DESTS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

struct Router;

impl Guest for Router {
    fn init(config: String, message_map: Vec<MessageRoute>) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| format!("router config: {e}"))?;
        DEFAULT_DEST.with(|d| *d.borrow_mut() = config.default_dest);
        let mut es_dests = HashMap::new();
        for (es_id, dest) in config.es_dests {
            let id = es_id
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("router config: es_dests key `{es_id}` is not a u32 ES id"))?;
            es_dests.insert(id, dest);
        }
        ES_DESTS.with(|d| *d.borrow_mut() = es_dests);
        let map = message_map.into_iter().map(|r| (r.msg_id, r.dest_id)).collect();
        MESSAGE_MAP.with(|m| *m.borrow_mut() = map);
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        // The host is asked only when ES routes are configured: a route call stays one lookup.
        if let Some(dest) = ES_DESTS.with(|d| {
            let d = d.borrow();
            if d.is_empty() { None } else { packet_es_id().and_then(|es| d.get(&es).copied()) }
        }) {
            return Decision::Forward(dest);
        }
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
