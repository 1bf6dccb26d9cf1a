//! Rooms: named groups of sessions that one message reaches at once (go-push).
//!
//! Membership is host state, kept here, so swapping the rooms script never loses it; the
//! script only decides (see [`crate::script::Rooms`]). A session may be in several rooms (up
//! to `rooms.max_rooms_per_session`, a hard cap over what the script allows); joining twice is
//! a no-op; the last member leaving deletes the room; a closing session leaves all its rooms.
//!
//! Locks, always taken in this order and never across an `.await`: the session's memberships,
//! then the room's index shard (64, by name hash), then the ordered name index (only when a
//! room is created or deleted) or one fan-out bucket. Broadcasts take an
//! index shard only to see which buckets hold members, then queue one job per such bucket
//! ([`fanout`]).

mod fanout;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::fanout::{Bucket, FanoutCounters, Job};
use crate::config::RoomsConfig;
use crate::metrics::Metrics;
use crate::protocol::client::SharedPacket;
use crate::session::{Registry, SessionHandle};

const INDEX_SHARDS: usize = 64;

/// One shard of the room index: room name -> entry.
type IndexShard = Mutex<HashMap<Arc<str>, RoomEntry>>;

/// One room's entry in the index.
struct RoomEntry {
    members: u32,
    /// Member cap set by the rooms script when the room was last joined (`None`: no cap).
    cap: Option<u32>,
    /// Members per fan-out bucket.
    per_bucket: Box<[u32]>,
}

/// Result of [`Rooms::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined; the room now has `members` members.
    Joined { members: u32 },
    /// Already a member (nothing changed).
    AlreadyMember { members: u32 },
    /// The room is at its member cap.
    Full,
    /// The session is in `rooms.max_rooms_per_session` rooms already.
    TooManyRooms,
    /// The session is closing.
    Closed,
}

/// Why a room name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {0} bytes")]
    TooLong(usize),
    #[error("room name contains control characters")]
    Control,
}

/// A room and its member count, for listings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    pub room: String,
    pub members: u32,
}

/// The rooms of one gateway node.
pub struct Rooms {
    index: Box<[IndexShard]>,
    /// Every room name, ordered: a prefix query with a limit reads `limit` names after one
    /// O(log n) seek instead of sorting the table.
    names: Mutex<BTreeSet<Arc<str>>>,
    hasher: RandomState,
    buckets: Box<[Bucket]>,
    max_per_session: usize,
    max_name_len: usize,
    rooms_gauge: Gauge,
    members_gauge: Gauge,
    registry: Arc<Registry>,
}

impl Rooms {
    /// Creates the table and starts the fan-out workers on `tasks` (they stop at `shutdown`).
    pub(crate) fn new(
        config: &RoomsConfig,
        registry: Arc<Registry>,
        metrics: &Metrics,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let counters = FanoutCounters {
            delivered: metrics.fanout_delivered.clone(),
            undelivered: metrics.fanout_undelivered.clone(),
        };
        let buckets = fanout::start(
            config.buckets,
            config.bucket_queue_len,
            registry.clone(),
            counters,
            tasks,
            shutdown,
        );
        Self {
            index: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            names: Mutex::default(),
            hasher: RandomState::new(),
            buckets,
            max_per_session: config.max_rooms_per_session,
            max_name_len: config.max_name_len,
            rooms_gauge: metrics.rooms.clone(),
            members_gauge: metrics.room_members.clone(),
            registry,
        }
    }

    fn shard(&self, room: &str) -> &IndexShard {
        &self.index[(self.hasher.hash_one(room) as usize) % INDEX_SHARDS]
    }

    fn bucket_of(&self, session: u64) -> usize {
        (session as usize) % self.buckets.len()
    }

    /// Checks a room name: 1..=`rooms.max_name_len` bytes, no control characters.
    pub fn check_name(&self, room: &str) -> Result<(), NameError> {
        if room.is_empty() {
            Err(NameError::Empty)
        } else if room.len() > self.max_name_len {
            Err(NameError::TooLong(self.max_name_len))
        } else if room.chars().any(char::is_control) {
            Err(NameError::Control)
        } else {
            Ok(())
        }
    }

    /// Members of `room`, `None` if there is no such room.
    pub fn members(&self, room: &str) -> Option<u32> {
        self.shard(room).lock().get(room).map(|e| e.members)
    }

    /// Adds `session` to `room` (created if needed). `cap` (from the rooms script) refuses the
    /// join when the room already has that many members; it becomes the room's cap. The name
    /// must have passed [`Self::check_name`].
    pub fn join(&self, session: &SessionHandle, room: &str, cap: Option<u32>) -> JoinOutcome {
        let mut mine = session.memberships().lock();
        if mine.closed {
            return JoinOutcome::Closed;
        }
        if mine.rooms.iter().any(|r| &**r == room) {
            return JoinOutcome::AlreadyMember { members: self.members(room).unwrap_or(0) };
        }
        if mine.rooms.len() >= self.max_per_session {
            return JoinOutcome::TooManyRooms;
        }
        let bucket = self.bucket_of(session.id());
        let mut shard = self.shard(room).lock();
        let key = match shard.get_key_value(room) {
            Some((key, entry)) => {
                if cap.or(entry.cap).is_some_and(|cap| entry.members >= cap) {
                    return JoinOutcome::Full;
                }
                key.clone()
            }
            None => {
                if cap == Some(0) {
                    return JoinOutcome::Full;
                }
                let key: Arc<str> = room.into();
                let entry = RoomEntry { members: 0, cap, per_bucket: vec![0; self.buckets.len()].into() };
                shard.insert(key.clone(), entry);
                self.names.lock().insert(key.clone());
                self.rooms_gauge.inc();
                key
            }
        };
        let Some(entry) = shard.get_mut(room) else { return JoinOutcome::Closed };
        entry.members += 1;
        entry.per_bucket[bucket] += 1;
        if cap.is_some() {
            entry.cap = cap;
        }
        let members = entry.members;
        self.buckets[bucket]
            .members
            .write()
            .entry(key.clone())
            .or_default()
            .insert(session.id(), session.clone());
        drop(shard);
        mine.rooms.push(key);
        self.members_gauge.inc();
        JoinOutcome::Joined { members }
    }

    /// Removes `session` from `room`. Returns the members left, `None` if it was not a member.
    /// The room is deleted when its last member leaves.
    pub fn leave(&self, session: &SessionHandle, room: &str) -> Option<u32> {
        let mut mine = session.memberships().lock();
        let position = mine.rooms.iter().position(|r| &**r == room)?;
        let key = mine.rooms.swap_remove(position);
        Some(self.remove_member(session, &key))
    }

    /// Removes `session` from every room, for good (later joins return
    /// [`JoinOutcome::Closed`]). Returns each room left with the members it has left.
    pub fn leave_all(&self, session: &SessionHandle) -> Vec<(Arc<str>, u32)> {
        let rooms = {
            let mut mine = session.memberships().lock();
            mine.closed = true;
            std::mem::take(&mut mine.rooms)
        };
        rooms
            .into_iter()
            .map(|room| {
                let left = self.remove_member(session, &room);
                (room, left)
            })
            .collect()
    }

    fn remove_member(&self, session: &SessionHandle, room: &Arc<str>) -> u32 {
        let bucket = self.bucket_of(session.id());
        let mut shard = self.shard(room).lock();
        {
            let mut members = self.buckets[bucket].members.write();
            if let Some(map) = members.get_mut(room) {
                map.remove(&session.id());
                if map.is_empty() {
                    members.remove(room);
                }
            }
        }
        self.members_gauge.dec();
        let Some(entry) = shard.get_mut(room) else { return 0 };
        entry.members = entry.members.saturating_sub(1);
        entry.per_bucket[bucket] = entry.per_bucket[bucket].saturating_sub(1);
        let left = entry.members;
        if left == 0 {
            shard.remove(room);
            self.names.lock().remove(room);
            self.rooms_gauge.dec();
        }
        left
    }

    /// Queues `packet` to every member of `room` but `exclude`. Waits (asynchronously) only
    /// when a fan-out bucket's job queue is full. Returns the members the room had, `None` if
    /// there is no such room. Delivery happens on the bucket workers, after this returns.
    pub async fn broadcast(&self, room: &str, packet: SharedPacket, exclude: Option<u64>) -> Option<u32> {
        let (key, members, buckets) = {
            let shard = self.shard(room).lock();
            let (key, entry) = shard.get_key_value(room)?;
            let buckets: u64 = entry
                .per_bucket
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .fold(0, |mask, (i, _)| mask | (1 << i));
            (key.clone(), entry.members, buckets)
        };
        let packet = Arc::new(packet);
        for (i, bucket) in self.buckets.iter().enumerate() {
            if buckets & (1 << i) != 0 {
                let job = Job::Room { room: key.clone(), packet: packet.clone(), exclude };
                // The receiver lives as long as the worker; after shutdown nothing is delivered.
                let _ = bucket.jobs.send(job).await;
            }
        }
        Some(members)
    }

    /// Queues `packet` to every logged-in session of this node. Returns how many sessions
    /// were open when it was queued.
    pub async fn push_all(&self, packet: SharedPacket) -> usize {
        let packet = Arc::new(packet);
        for bucket in self.buckets.iter() {
            let _ = bucket.jobs.send(Job::All { packet: packet.clone() }).await;
        }
        self.registry.len()
    }

    /// Rooms whose name starts with `prefix`, in name order, at most `limit`, with their
    /// member counts; and how many rooms match, counted up to [`LIST_COUNT_CAP`] (a larger
    /// number means at least that many). Costs O(log n + limit) plus the count (capped).
    pub fn list(&self, prefix: &str, limit: usize) -> (Vec<RoomSummary>, usize) {
        let (names, total) = {
            let names = self.names.lock();
            let matching = || {
                names
                    .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                    .take_while(|name| name.starts_with(prefix))
            };
            let total = if prefix.is_empty() { names.len() } else { matching().take(LIST_COUNT_CAP).count() };
            (matching().take(limit).cloned().collect::<Vec<_>>(), total)
        };
        let rooms = names
            .into_iter()
            .filter_map(|name| {
                let members = self.shard(&name).lock().get(&name)?.members;
                Some(RoomSummary { room: name.to_string(), members })
            })
            .collect();
        (rooms, total)
    }
}

/// Matching rooms counted by [`Rooms::list`] beyond its page, at most.
pub const LIST_COUNT_CAP: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TransportKind;
    use bytes::Bytes;

    fn session(id: u64, queue: usize) -> (SessionHandle, crate::session::OutboundReceiver) {
        SessionHandle::new(id, TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), 4, (queue, usize::MAX))
    }

    fn rooms(max_per_session: usize) -> (Rooms, Arc<Registry>) {
        let config = RoomsConfig { max_rooms_per_session: max_per_session, ..RoomsConfig::default() };
        let registry = Arc::new(Registry::default());
        let rooms = Rooms::new(
            &config,
            registry.clone(),
            &Metrics::new(),
            &TaskTracker::new(),
            CancellationToken::new(),
        );
        (rooms, registry)
    }

    #[tokio::test]
    async fn join_leave_duplicate_cap_and_deletion() {
        let (rooms, _) = rooms(2);
        let (a, _ra) = session(1, 8);
        let (b, _rb) = session(2, 8);
        assert_eq!(rooms.join(&a, "r", None), JoinOutcome::Joined { members: 1 });
        assert_eq!(rooms.join(&a, "r", None), JoinOutcome::AlreadyMember { members: 1 });
        assert_eq!(rooms.join(&b, "r", Some(2)), JoinOutcome::Joined { members: 2 });
        let (c, _rc) = session(3, 8);
        assert_eq!(rooms.join(&c, "r", None), JoinOutcome::Full, "the cap set by the last join holds");
        assert_eq!(rooms.join(&a, "s", None), JoinOutcome::Joined { members: 1 });
        assert_eq!(rooms.join(&a, "t", None), JoinOutcome::TooManyRooms);
        assert_eq!(rooms.leave(&a, "r"), Some(1));
        assert_eq!(rooms.leave(&a, "r"), None);
        assert_eq!(rooms.leave(&b, "r"), Some(0));
        assert_eq!(rooms.members("r"), None, "the last leave deletes the room");
        assert_eq!(rooms.leave_all(&a), vec![("s".into(), 0)]);
        assert_eq!(rooms.join(&a, "u", None), JoinOutcome::Closed);
        assert_eq!(rooms.list("", 10), (vec![], 0));
    }

    #[tokio::test]
    async fn broadcast_reaches_members_once_and_skips_the_excluded() {
        let (rooms, _) = rooms(4);
        let mut receivers = Vec::new();
        for id in 0..20u64 {
            let (s, rx) = session(id, 8);
            rooms.join(&s, "r", None);
            receivers.push((s, rx));
        }
        let packet = SharedPacket::new(7, 0, Bytes::from_static(b"hi"));
        assert_eq!(rooms.broadcast("r", packet, Some(3)).await, Some(20));
        assert_eq!(rooms.broadcast("nope", SharedPacket::new(7, 0, Bytes::new()), None).await, None);
        for (s, rx) in &mut receivers {
            let got = tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await;
            if s.id() == 3 {
                assert!(got.is_err(), "the excluded member got the broadcast");
            } else {
                assert!(matches!(got, Ok(crate::session::Outbound::Shared(_))));
            }
            assert!(rx.try_recv().is_none(), "delivered once");
        }
        let (list, total) = rooms.list("", 10);
        assert_eq!((list, total), (vec![RoomSummary { room: "r".into(), members: 20 }], 1));
    }

    #[tokio::test]
    async fn list_pages_a_prefix_in_name_order_from_the_ordered_index() {
        let (rooms, _) = rooms(1);
        let mut sessions = Vec::new();
        // Names inserted out of order; "lobby-" sorts between "arena-" and "lobbz".
        for (id, name) in [(1, "lobby-3"), (2, "arena-1"), (3, "lobby-1"), (4, "lobbz"), (5, "lobby-2")] {
            let (s, rx) = session(id, 8);
            assert!(matches!(rooms.join(&s, name, None), JoinOutcome::Joined { .. }));
            sessions.push((s, rx));
        }
        let names = |list: Vec<RoomSummary>| list.into_iter().map(|r| r.room).collect::<Vec<_>>();
        let (page, total) = rooms.list("lobby-", 2);
        assert_eq!((names(page), total), (vec!["lobby-1".to_string(), "lobby-2".into()], 3));
        let (page, total) = rooms.list("", 10);
        assert_eq!(total, 5);
        assert_eq!(names(page), ["arena-1", "lobby-1", "lobby-2", "lobby-3", "lobbz"]);
        assert_eq!(rooms.list("zzz", 10), (vec![], 0));
        // A deleted room leaves the index.
        assert_eq!(rooms.leave(&sessions[2].0, "lobby-1"), Some(0));
        let (page, total) = rooms.list("lobby-", 10);
        assert_eq!((names(page), total), (vec!["lobby-2".to_string(), "lobby-3".into()], 2));
    }
}
