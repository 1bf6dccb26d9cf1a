//! Session ids: unique across nodes and restarts.
//!
//! Seed 000 builds a session id from server id + peer address + timestamp. wasmgate packs the
//! same ingredients into a u64 (Snowflake layout), cheaper to hash, index and send to backends:
//!
//! ```text
//!  63        22 21      12 11        0
//! +------------+----------+-----------+
//! | ms since   | node id  | sequence  |
//! | 2024-01-01 | (10 bit) | (12 bit)  |
//! | (41 bit)   |          |           |
//! +------------+----------+-----------+
//! ```
//!
//! The timestamp half (time << 12 | sequence) is kept monotonic per node: each id takes
//! `max(previous + 1, now << 12)`, so ids never repeat within a process, and a restarted node
//! starts above every id it issued before unless it had run ahead of the clock (more than 4096
//! sessions per millisecond, sustained). The peer address is not needed for uniqueness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest node id that fits the 10-bit node field.
pub const MAX_NODE_ID: u32 = (1 << NODE_BITS) - 1;

const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// 2024-01-01T00:00:00Z in ms since the Unix epoch: 41 bits of ms last until 2093.
const EPOCH_MS: u64 = 1_704_067_200_000;

/// Hands out session ids for one node.
#[derive(Debug)]
pub struct SessionIdGen {
    node: u64,
    /// Last issued `time << SEQ_BITS | sequence`.
    last: AtomicU64,
}

impl SessionIdGen {
    /// `node_id` must be <= [`MAX_NODE_ID`] (checked by config validation); higher bits are
    /// masked off.
    pub fn new(node_id: u32) -> Self {
        Self { node: u64::from(node_id & MAX_NODE_ID), last: AtomicU64::new(0) }
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        let now = now_ms_since_epoch() << SEQ_BITS;
        let prev = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
            .unwrap_or_else(|last| last);
        let tick = now.max(prev + 1);
        let time = tick >> SEQ_BITS;
        let seq = tick & ((1 << SEQ_BITS) - 1);
        (time << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq
    }
}

/// The node id encoded in a session id.
pub fn node_of(session_id: u64) -> u32 {
    ((session_id >> SEQ_BITS) & u64::from(MAX_NODE_ID)) as u32
}

fn now_ms_since_epoch() -> u64 {
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (since_unix.as_millis() as u64).saturating_sub(EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_monotonic_and_carry_the_node() {
        let g = SessionIdGen::new(77);
        let mut seen = HashSet::new();
        let mut prev = 0;
        for _ in 0..100_000 {
            let id = g.next_id();
            assert!(id > prev);
            assert!(seen.insert(id));
            assert_eq!(node_of(id), 77);
            prev = id;
        }
    }

    #[test]
    fn different_nodes_never_collide() {
        let (a, b) = (SessionIdGen::new(1), SessionIdGen::new(2));
        let ids: HashSet<u64> = (0..10_000).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 20_000);
    }

    #[test]
    fn a_restarted_node_starts_above_its_old_ids() {
        let old = SessionIdGen::new(5);
        let last_old = (0..1000).map(|_| old.next_id()).max().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let restarted = SessionIdGen::new(5);
        assert!(restarted.next_id() > last_old);
    }
}
