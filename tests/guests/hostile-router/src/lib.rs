//! Test guest: a router that misbehaves on request, to prove the host's sandbox.
//!
//! - msg id 900: traps (`unreachable`, via a panic).
//! - msg id 901: loops forever (stopped by the epoch deadline).
//! - msg id 902: allocates until the memory cap traps it.
//! - msg id 903: recurses until the stack overflows.
//! - msg id 904: dropped (a legitimate decision, to check it is counted).
//! - any other id: forwarded to dest `id / 100 * 100 + 1` (100 -> 101), like the example map.

use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, Session};

struct Hostile;

impl Guest for Hostile {
    fn init(_config: String, _map: Vec<MessageRoute>) -> Result<(), String> {
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
            id => Decision::Forward(id / 100 * 100 + 1),
        }
    }
}

fn recurse(n: u64) -> u32 {
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[0].wrapping_add(1)).wrapping_add(buf[1] as u32)
}

wasmgate_guest::router::export!(Hostile);
