//! wasmgate handler template (Rust): a stateful counter.
//!
//! Answers each packet with `rust:<count>:<body>`, where count is how many packets this
//! handler has handled, across swaps: `snapshot` gives the count as decimal ASCII and
//! `restore` reads it back, the same format as the other languages' templates, so the state
//! survives a swap from one language to another. Mark it `stateful = true` in the manifest.

use std::cell::Cell;

use wasmgate_guest::handler::{Answer, Guest, Outcome, Packet, Session};

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

struct Handler;

impl Guest for Handler {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn handle(_session: Session, packet: Packet) -> Outcome {
        let count = COUNT.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let body = [format!("rust:{count}:").as_bytes(), &packet.body].concat();
        Outcome::Reply(Answer { msg_id: packet.msg_id, body })
    }

    fn snapshot() -> Result<Vec<u8>, String> {
        Ok(COUNT.with(Cell::get).to_string().into_bytes())
    }

    fn restore(state: Vec<u8>) -> Result<(), String> {
        let text = String::from_utf8(state).map_err(|_| "state is not UTF-8")?;
        let count =
            if text.is_empty() { 0 } else { text.parse().map_err(|_| format!("bad state `{text}`"))? };
        COUNT.with(|c| c.set(count));
        Ok(())
    }
}

wasmgate_guest::handler::export!(Handler);
