//! Test guest: a stateful handler script, to prove that state survives swaps exactly once.
//!
//! - msg id 110: adds one to the sender's counter and answers (msg id 110) `<tag>:<count>`,
//!   `tag` being the config's string (`{"tag": "v1"}`), so a test can tell which version
//!   answered and that no increment was lost or applied twice.
//! - msg id 111: forwarded to dest 101 (the example echo backend).
//! - msg id 112: refused with `bad_request`.
//! - msg id 113: traps (a panic), losing the counters.
//! - msg id 114: answers (114) `self=<id> nodes=<id>,<id>...` from the `cluster` interface.
//! - msg id 115: broadcasts the packet's body to the backend of dest 101 on every `gateway`
//!   node (naming the sender's session) and answers (115) `sent:<n>`.
//! - msg id 116: sends to node 999 and answers (116) the error's name.
//! - `snapshot`: the counters as `user=count` lines; `restore` reads them back, or refuses
//!   when the config has `"fail_restore":true`. `init` refuses `{"fail":true}`, and refuses
//!   once the clock passes `fail_init_after_ms` (so an instance replacing a trapped one cannot
//!   be built).

use std::cell::RefCell;
use std::collections::BTreeMap;

use wasmgate_guest::cluster;
use wasmgate_guest::handler::{Answer, Guest, HandlerError, Outcome, Packet, Session};

thread_local! {
    static TAG: RefCell<String> = const { RefCell::new(String::new()) };
    static FAIL_RESTORE: RefCell<bool> = const { RefCell::new(false) };
    static COUNTS: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

#[path = "../../config_fields.rs"]
mod config_fields;
use config_fields::{number_field, string_field};

struct Counter;

impl Guest for Counter {
    fn init(config: String) -> Result<(), String> {
        if config.contains("\"fail\":true") {
            return Err("asked to refuse this config".into());
        }
        if number_field(&config, "fail_init_after_ms").is_some_and(|t| wasmgate_guest::host::now_ms() > t) {
            return Err("init refused: past fail_init_after_ms".into());
        }
        TAG.with(|t| *t.borrow_mut() = string_field(&config, "tag").unwrap_or_default());
        FAIL_RESTORE.with(|f| *f.borrow_mut() = config.contains("\"fail_restore\":true"));
        Ok(())
    }

    fn handle(session: Session, packet: Packet) -> Outcome {
        match packet.msg_id {
            110 => {
                let user = session.user_id.unwrap_or_default();
                let count = COUNTS.with(|c| {
                    let mut counts = c.borrow_mut();
                    let count = counts.entry(user).or_default();
                    *count += 1;
                    *count
                });
                let tag = TAG.with(|t| t.borrow().clone());
                Outcome::Reply(Answer { msg_id: 110, body: format!("{tag}:{count}").into_bytes() })
            }
            111 => Outcome::Forward(101),
            114 => {
                let ids: Vec<String> = cluster::nodes(None).iter().map(|n| n.id.to_string()).collect();
                let text = format!("self={} nodes={}", cluster::self_id(), ids.join(","));
                Outcome::Reply(Answer { msg_id: 114, body: text.into_bytes() })
            }
            115 => {
                let sent = cluster::broadcast_to_type("gateway", 101, session.id, 115, &packet.body, false);
                Outcome::Reply(Answer { msg_id: 115, body: format!("sent:{sent}").into_bytes() })
            }
            116 => {
                let answer = match cluster::send_to_node(999, 101, session.id, 116, b"x") {
                    Ok(()) => "sent".to_string(),
                    Err(cluster::SendError::NoSuchNode) => "no-such-node".to_string(),
                    Err(e) => format!("{e:?}"),
                };
                Outcome::Reply(Answer { msg_id: 116, body: answer.into_bytes() })
            }
            113 => panic!("counter: asked to trap"),
            _ => Outcome::Reject(HandlerError::BadRequest(format!(
                "counter does not handle {}",
                packet.msg_id
            ))),
        }
    }

    fn snapshot() -> Result<Vec<u8>, String> {
        let lines: Vec<String> =
            COUNTS.with(|c| c.borrow().iter().map(|(user, count)| format!("{user}={count}")).collect());
        Ok(lines.join("\n").into_bytes())
    }

    fn restore(state: Vec<u8>) -> Result<(), String> {
        if FAIL_RESTORE.with(|f| *f.borrow()) {
            return Err("asked to refuse the state".into());
        }
        let text = String::from_utf8(state).map_err(|e| e.to_string())?;
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (user, count) = line.rsplit_once('=').ok_or_else(|| format!("bad line `{line}`"))?;
            counts.insert(user.to_string(), count.parse::<u64>().map_err(|e| e.to_string())?);
        }
        COUNTS.with(|c| *c.borrow_mut() = counts);
        Ok(())
    }
}

wasmgate_guest::handler::export!(Counter);
