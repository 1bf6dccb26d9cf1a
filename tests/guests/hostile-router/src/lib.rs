//! Test guest: a router that misbehaves on request, to prove the host's sandbox.
//!
//! - msg id 900: traps (`unreachable`, via a panic).
//! - msg id 901: loops forever (stopped by the epoch deadline).
//! - msg id 902: allocates until the memory cap traps it.
//! - msg id 903: recurses until the stack overflows.
//! - msg id 904: dropped (a legitimate decision, to check it is counted).
//! - msg id 905: answered directly with `<tag>:<body>`, where `tag` is the config's string
//!   (`{"tag": "v1"}`), so a test can tell which deployed version answered.
//! - msg id 906: computes for a while and answers 906: the body is the iteration count
//!   (decimal; ~1 ns each), to make calls of a chosen CPU length.
//! - init fails when the config is `{"fail": true}` (a refused deploy candidate), or once the
//!   clock passes `fail_init_after_ms` (ms since the Unix epoch): instances built after that
//!   (to replace a trapped one) fail, to exercise the rebuild back-off.
//! - any other id: forwarded to dest `id / 100 * 100 + 1` (100 -> 101), like the example map.

use std::cell::RefCell;

use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, Reply, Session};

thread_local! {
    static TAG: RefCell<String> = const { RefCell::new(String::new()) };
}

#[path = "../../config_fields.rs"]
mod config_fields;
use config_fields::{number_field, string_field};

struct Hostile;

impl Guest for Hostile {
    fn init(config: String, _map: Vec<MessageRoute>) -> Result<(), String> {
        if config.contains("\"fail\":true") {
            return Err("asked to refuse this config".into());
        }
        if number_field(&config, "fail_init_after_ms").is_some_and(|t| wasmgate_guest::host::now_ms() > t) {
            return Err("init refused: past fail_init_after_ms".into());
        }
        TAG.with(|t| *t.borrow_mut() = string_field(&config, "tag").unwrap_or_default());
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        match packet.msg_id {
            900 => panic!("hostile router: asked to trap"),
            901 => loop {
                std::hint::black_box(packet.seq);
            },
            902 => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            903 => Decision::Forward(recurse(packet.seq as u64)),
            904 => Decision::Drop,
            905 => {
                let mut body = TAG.with(|t| t.borrow().clone()).into_bytes();
                body.push(b':');
                body.extend_from_slice(&packet.body);
                Decision::Reply(Reply { msg_id: 905, body })
            }
            906 => {
                let n: u64 = std::str::from_utf8(&packet.body).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                let mut x = u64::from(packet.seq);
                for i in 0..n {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
                }
                Decision::Reply(Reply { msg_id: 906, body: x.to_le_bytes().to_vec() })
            }
            id => Decision::Forward(id / 100 * 100 + 1),
        }
    }
}

fn recurse(n: u64) -> u32 {
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[0].wrapping_add(1)).wrapping_add(buf[1] as u32)
}

wasmgate_guest::router::export!(Hostile);
