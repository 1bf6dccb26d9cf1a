//! The cross-node bus (Redis pub/sub) and user location (Redis keys).
//!
//! Messages are backend-protocol frames ([`BackendFrame`]: `Reply` as push-to-session,
//! `PushUser`, `PushRoom`, `PushAll`, `Kick`) prefixed by the publishing node's id and the
//! publish time: `<origin u32 BE><published ms since the Unix epoch u64 BE><frame as on a
//! backend connection>`. A backend -> backend relay for a dest this node has no pool for goes
//! to a node that has one (its registration lists its dests) as `<origin | 0x8000_0000 u32
//! BE><published u64 BE><dest u32 BE><Relayed frame>`, into that dest's pool. A receiver drops
//! a message older than `cluster.bus_max_age_ms` (counted `expired`).
//! Each node subscribes to its own channel `<prefix>:bus:<id>` and to `<prefix>:bus:all`, and
//! delivers what it receives to its local sessions, rooms and pools (never re-publishing),
//! skipping its own broadcasts.
//!
//! Writes (publishes and location updates) go through one bounded queue to one Redis writer,
//! which pipelines what has queued up; callers never wait on Redis. A full queue drops and
//! counts; a Redis error loses that batch (counted, logged). Delivery is therefore **at most
//! once**, in order per publishing node; see docs/cluster.md for why pub/sub was chosen.
//!
//! User location: on login `<prefix>:user:<user id>` = `<node id>:<session id>:<incarnation>`
//! ([`super::Location`]) with a TTL
//! (`cluster.location_ttl_s`) refreshed (or restored after a Redis restart) every third of it
//! and whenever the bus subscription comes back, for every logged-in session; on
//! close it is deleted only if it still names that session (a fast reconnect elsewhere is
//! not undone). A push to a user goes to the node the key names, decided inside Redis by a
//! script, so a lookup costs no round trip on the caller's side.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::discovery::NodeTable;
use super::location::{FencingToken, TAKE_OVER};
use crate::delivery::{Delivery, REPLACED, Remote, Scope};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::protocol::backend::{BackendCodec, BackendFrame};
use crate::session::{CloseReason, DuplicateRule, Registry, SessionHandle};

/// Set in the origin word of a message that carries a target dest (a relay).
const TO_DEST: u32 = 0x8000_0000;

/// Publishes to the node a user's location names, unless it is this node.
/// KEYS[1] user key; ARGV[1] channel prefix, ARGV[2] this node's id, ARGV[3] payload.
const PUSH_USER: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local node = string.match(v, '^(%d+):')
if not node or node == ARGV[2] then return 0 end
return redis.call('PUBLISH', ARGV[1] .. node, ARGV[3])";

/// Keeps a user's location: sets it when it is missing (Redis restarted) or still ours (1);
/// otherwise returns the value naming the other session; 0 when this process no longer holds
/// its node id (the fencing token differs). KEYS[1] user key, KEYS[2] node id key; ARGV[1]
/// fencing token, ARGV[2] `<node>:<session>:<incarnation>`, ARGV[3] TTL in ms.
const KEEP_LOCATION: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return v";

/// A login's location write, if this process still holds its node id. KEYS[1] user key,
/// KEYS[2] node id key; ARGV[1] fencing token, ARGV[2] value, ARGV[3] TTL in ms, ARGV[4] `nx`
/// (only if the user has no location) or `any`.
const SET_LOCATION: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] == 'nx' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1";

/// Most queued writes sent in one pipeline.
const BATCH: usize = 256;

enum Op {
    /// To one node's channel, or to every node (`None`).
    Publish {
        node: Option<u32>,
        payload: Bytes,
    },
    PushUser {
        user: String,
        payload: Bytes,
    },
    SetLocation {
        user: Arc<str>,
        session: u64,
        /// Only if the user has no location (`SET NX`): a login whose duplicate check could
        /// not reach Redis must not hide another session; the refresh reconciles the two.
        if_free: bool,
    },
    DelLocation {
        user: Arc<str>,
        session: u64,
    },
}

/// The sending side of the bus, cheap to clone. Every method queues and returns at once.
#[derive(Clone)]
pub struct Bus {
    tx: mpsc::Sender<Op>,
    node_id: u32,
    /// This process's incarnation (written into user locations).
    incarnation: u64,
    /// Carried by every location write, checked by Redis.
    fencing: FencingToken,
    metrics: Metrics,
    nodes: Arc<NodeTable>,
}

impl Bus {
    /// Sends `frame` (a `Relayed`) to the pool of `dest` on node `node`. Returns whether it
    /// was queued (`false`: the queue is full, counted as dropped).
    pub fn to_node_dest(&self, node: u32, dest: u32, frame: BackendFrame) -> bool {
        let mut buf = BytesMut::new();
        buf.put_u32(self.node_id | TO_DEST);
        buf.put_u64(unix_ms());
        buf.put_u32(dest);
        match BackendCodec::default().encode(frame, &mut buf) {
            Ok(()) => self.enqueue(Op::Publish { node: Some(node), payload: buf.freeze() }),
            Err(e) => {
                tracing::warn!("cannot encode a bus message: {e}");
                false
            }
        }
    }

    /// Records that `user` is logged in on `session` of this node.
    pub fn logged_in(&self, user: Arc<str>, session: u64) {
        self.enqueue(Op::SetLocation { user, session, if_free: false });
    }

    /// Records that `user` is logged in on `session` of this node, which was admitted without
    /// its duplicate-login check (Redis did not answer): only if the user has no location.
    /// Should another node have admitted a session of the user meanwhile, the location
    /// refresh finds the two and reconciles them by the duplicate-login rule.
    pub fn logged_in_unchecked(&self, user: Arc<str>, session: u64) {
        self.enqueue(Op::SetLocation { user, session, if_free: true });
    }

    /// Forgets `user`'s location if it still names `session`.
    pub fn closed(&self, user: Arc<str>, session: u64) {
        self.enqueue(Op::DelLocation { user, session });
    }

    fn envelope(&self, frame: BackendFrame) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        buf.put_u32(self.node_id);
        buf.put_u64(unix_ms());
        match BackendCodec::default().encode(frame, &mut buf) {
            Ok(()) => Some(buf.freeze()),
            Err(e) => {
                tracing::warn!("cannot encode a bus message: {e}");
                None
            }
        }
    }

    fn enqueue(&self, op: Op) -> bool {
        let queued = self.tx.try_send(op).is_ok();
        if !queued {
            self.count("dropped", 1);
        }
        queued
    }

    fn count(&self, outcome: &'static str, n: u64) {
        self.metrics.cluster_messages.get_or_create(&OutcomeLabel { outcome }).inc_by(n);
    }
}

/// Key names.
#[derive(Clone)]
pub(super) struct Keys {
    pub prefix: String,
}

impl Keys {
    pub(super) fn user(&self, user: &str) -> String {
        format!("{}:user:{user}", self.prefix)
    }

    fn channel_prefix(&self) -> String {
        format!("{}:bus:", self.prefix)
    }

    fn node_channel(&self, node: u32) -> String {
        format!("{}:bus:{node}", self.prefix)
    }

    fn all_channel(&self) -> String {
        format!("{}:bus:all", self.prefix)
    }
}

/// Wall-clock milliseconds since the Unix epoch (the bus messages' publish time).
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn location(node: u32, session: u64, incarnation: u64) -> String {
    super::Location { node, session, incarnation }.value()
}

/// The bus as [`crate::delivery`] sends through it.
impl Remote for Bus {
    fn node_id(&self) -> u32 {
        self.node_id
    }

    fn to_node(&self, node: u32, frame: BackendFrame) {
        if let Some(payload) = self.envelope(frame) {
            self.enqueue(Op::Publish { node: Some(node), payload });
        }
    }

    fn to_all(&self, frame: BackendFrame) {
        if let Some(payload) = self.envelope(frame) {
            self.enqueue(Op::Publish { node: None, payload });
        }
    }

    /// The node is read from the user's location inside Redis (one script), so the lookup
    /// costs the caller no round trip.
    fn to_user(&self, user: &str, frame: BackendFrame) {
        if let Some(payload) = self.envelope(frame) {
            self.enqueue(Op::PushUser { user: user.to_string(), payload });
        }
    }

    /// Among the nodes listing `dest`, picked by `key % n`: one session's relays keep to one
    /// node, in order.
    fn to_dest(&self, dest: u32, key: u64, frame: BackendFrame) -> Option<u32> {
        let nodes = self.nodes.with_dest(dest, self.node_id);
        let node = nodes.get((key % nodes.len().max(1) as u64) as usize)?.id;
        self.to_node_dest(node, dest, frame);
        Some(node)
    }
}

/// The bus and the writer task that drains it (spawn the future).
#[allow(clippy::too_many_arguments)]
pub(super) fn bus(
    conn: ConnectionManager,
    keys: Keys,
    (node_id, incarnation, fencing): (u32, u64, FencingToken),
    queue_len: usize,
    location_ttl: Duration,
    metrics: Metrics,
    nodes: Arc<NodeTable>,
    stop: CancellationToken,
) -> (Bus, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(queue_len.max(1));
    let bus = Bus { tx, node_id, incarnation, fencing, metrics: metrics.clone(), nodes };
    (bus.clone(), writer(conn, keys, rx, bus, location_ttl, stop))
}

async fn writer(
    mut conn: ConnectionManager,
    keys: Keys,
    mut rx: mpsc::Receiver<Op>,
    bus: Bus,
    location_ttl: Duration,
    stop: CancellationToken,
) {
    let ttl_ms = location_ttl.as_millis() as u64;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            // Leaving: refuse new writes, then send what is queued.
            _ = stop.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut published = 0;
        for op in batch.drain(..) {
            match op {
                Op::Publish { node, payload } => {
                    let channel = node.map_or_else(|| keys.all_channel(), |n| keys.node_channel(n));
                    pipe.cmd("PUBLISH").arg(channel).arg(payload.as_ref()).ignore();
                    published += 1;
                }
                Op::PushUser { user, payload } => {
                    pipe.cmd("EVAL")
                        .arg(PUSH_USER)
                        .arg(1)
                        .arg(keys.user(&user))
                        .arg(keys.channel_prefix())
                        .arg(bus.node_id)
                        .arg(payload.as_ref())
                        .ignore();
                    published += 1;
                }
                Op::SetLocation { user, session, if_free } => {
                    let value = location(bus.node_id, session, bus.incarnation);
                    pipe.cmd("EVAL")
                        .arg(SET_LOCATION)
                        .arg(2)
                        .arg(keys.user(&user))
                        .arg(&*bus.fencing.node_key)
                        .arg(&*bus.fencing.token)
                        .arg(value)
                        .arg(ttl_ms)
                        .arg(if if_free { "nx" } else { "any" })
                        .ignore();
                }
                Op::DelLocation { user, session } => {
                    let value = location(bus.node_id, session, bus.incarnation);
                    pipe.cmd("EVAL")
                        .arg(super::node_id::RELEASE)
                        .arg(1)
                        .arg(keys.user(&user))
                        .arg(value)
                        .ignore();
                }
            }
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => bus.count("published", published),
            Err(e) => {
                bus.count("failed", published);
                tracing::warn!("Redis bus write failed, {published} messages lost: {e}");
            }
        }
    }
}

/// Keeps this node's user locations in Redis ([`Locations::run`]).
pub(super) struct Locations {
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub registry: Arc<Registry>,
    /// Where a reconciliation's kick of the other session goes (here or its node).
    pub delivery: Arc<Delivery>,
    pub fencing: FencingToken,
    /// This process (node id, incarnation) and whether a session a location names still
    /// exists.
    pub liveness: super::Liveness,
    pub ttl: Duration,
}

/// Why a session closed by reconciliation under `refuse-new` was closed (a `Kick`, 4004).
const RECONCILED: &str = "duplicate login (reconciled after a partition)";

impl Locations {
    /// Refreshes the location of every logged-in session of this node, every third of the
    /// TTL, and at once when the bus subscription comes back after a failure (`reconnected`
    /// changes: Redis may have restarted empty). Restores locations a Redis restart lost. For
    /// a session admitted without its duplicate check (Redis did not answer), a location
    /// naming another live session of the user means the nodes could not agree: the two are
    /// reconciled by the rule the session recorded — `kick-older` keeps the newer session (the
    /// other closes with 4006 `replaced`), `refuse-new` the older one (the other closes with
    /// 4004 `kicked`); session ids order by creation time. A location naming a gone session is
    /// taken over. A failed or refused refresh is retried after [`RETRY`].
    pub(super) async fn run(
        mut self,
        mut reconnected: tokio::sync::watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut wait = self.ttl / 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = reconnected.changed() => {}
            }
            wait = match self.refresh().await {
                Ok(true) => self.ttl / 3,
                // Refused for want of the node id key (Redis restarted empty and the id is not
                // claimed again yet, or it is lost): try again soon.
                Ok(false) => RETRY.min(self.ttl / 3),
                Err(e) => {
                    tracing::warn!("cannot refresh user locations in Redis (retrying in {RETRY:?}): {e}");
                    RETRY.min(self.ttl / 3)
                }
            };
        }
    }

    /// One refresh of every location; `false` when Redis refused some for want of our node
    /// id (the fencing token did not match).
    async fn refresh(&mut self) -> redis::RedisResult<bool> {
        let ttl_ms = self.ttl.as_millis() as u64;
        let sessions: Vec<(SessionHandle, Arc<str>)> = self
            .registry
            .all()
            .into_iter()
            .filter_map(|s| {
                let user = s.user_id()?.clone();
                // A closing session no longer holds its user's place.
                s.close_reason().is_none().then_some((s, user))
            })
            .collect();
        if sessions.is_empty() {
            return Ok(true);
        }
        let mut pipe = redis::pipe();
        for (session, user) in &sessions {
            pipe.cmd("EVAL")
                .arg(KEEP_LOCATION)
                .arg(2)
                .arg(self.keys.user(user))
                .arg(&*self.fencing.node_key)
                .arg(&*self.fencing.token)
                .arg(location(self.liveness.node_id, session.id(), self.liveness.incarnation))
                .arg(ttl_ms);
        }
        let kept: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
        let mut all_kept = true;
        for ((session, user), kept) in sessions.iter().zip(kept) {
            match kept {
                redis::Value::Int(0) => all_kept = false,
                redis::Value::BulkString(other) => {
                    if let Some(other) = std::str::from_utf8(&other).ok().and_then(super::Location::parse) {
                        self.reconcile(session, user, other).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(all_kept)
    }

    /// `session` of `user` found the user's location naming `other`.
    async fn reconcile(
        &mut self,
        session: &SessionHandle,
        user: &str,
        other: super::Location,
    ) -> redis::RedisResult<()> {
        let rule = session.duplicate_rule();
        let live = self.liveness.session_live(other, &self.registry);
        let ours_wins = match rule {
            _ if !live => true,
            DuplicateRule::Allow => return Ok(()), // the location names the latest login
            DuplicateRule::KickOlder => session.id() > other.session,
            DuplicateRule::RefuseNew => session.id() < other.session,
        };
        if !ours_wins {
            let (why, text) = match rule {
                DuplicateRule::RefuseNew => (CloseReason::Kicked, RECONCILED),
                _ => (CloseReason::Replaced, REPLACED),
            };
            session.close(why, text);
            return Ok(());
        }
        let ours = location(self.liveness.node_id, session.id(), self.liveness.incarnation);
        let taken: i64 = redis::cmd("EVAL")
            .arg(TAKE_OVER)
            .arg(2)
            .arg(self.keys.user(user))
            .arg(&*self.fencing.node_key)
            .arg(&*self.fencing.token)
            .arg(other.value())
            .arg(ours)
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.conn)
            .await?;
        if taken == 1 && live {
            tracing::info!(user, kept = session.id(), closed = other.session, "duplicate login reconciled");
            let (why, text) = match rule {
                DuplicateRule::RefuseNew => (CloseReason::Kicked, RECONCILED),
                _ => (CloseReason::Replaced, REPLACED),
            };
            self.delivery.kick(other.session, why, text, Scope::Cluster);
        }
        Ok(())
    }
}

/// How soon a failed Redis refresh (locations, node id) is tried again.
pub(super) const RETRY: Duration = Duration::from_secs(1);

/// Where bus messages are delivered on this node.
pub(super) struct Local {
    pub node_id: u32,
    pub delivery: Arc<Delivery>,
    pub metrics: Metrics,
    /// `cluster.bus_max_age_ms`: older messages are dropped (`None`: never).
    pub max_age_ms: Option<u64>,
    /// The node id claim: once lost, nothing addressed to the id is delivered here (another
    /// process may hold it).
    pub fence: Option<Arc<super::Fence>>,
}

/// Receives this node's and the broadcast channel until `shutdown`, reconnecting with
/// back-off (messages published while disconnected are lost: at most once). Each successful
/// re-subscription after a failure bumps `reconnected`, so the location refresh and the node
/// id claim run at once.
pub(super) async fn subscribe(
    client: redis::Client,
    keys: Keys,
    local: Local,
    reconnected: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut subscribed_before = false;
    while !shutdown.is_cancelled() {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys.node_channel(local.node_id)).await?;
            pubsub.subscribe(keys.all_channel()).await?;
            tracing::info!(node = local.node_id, "subscribed to the cluster bus");
            if subscribed_before {
                reconnected.send_modify(|n| *n += 1);
            }
            subscribed_before = true;
            backoff = Duration::from_millis(100);
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                deliver(&local, message.get_payload_bytes()).await;
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => match result {
                Ok(()) => tracing::warn!("cluster bus subscription ended; reconnecting in {backoff:?}"),
                Err(e) => tracing::warn!("cluster bus subscription failed, retrying in {backoff:?}: {e}"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Delivers one bus message on this node only ([`Delivery::from_bus`]).
async fn deliver(local: &Local, payload: &[u8]) {
    let mut buf = BytesMut::from(payload);
    if buf.len() < 12 {
        return tracing::warn!("bus message shorter than its header; ignored");
    }
    if local.fence.as_ref().is_some_and(|f| !f.valid()) {
        return; // the id is lost: these may be meant for the process that holds it now
    }
    let origin = buf.get_u32();
    if origin == local.node_id {
        return; // our own broadcast
    }
    let published = buf.get_u64();
    if let Some(max_age) = local.max_age_ms
        && unix_ms().saturating_sub(published) > max_age
    {
        // Published while Redis was paused, the publisher's writes were stuck, or this node
        // stalled: a late realtime push is worse than none.
        local.metrics.cluster_messages.get_or_create(&OutcomeLabel { outcome: "expired" }).inc();
        return;
    }
    let (origin, dest) = match origin & TO_DEST {
        0 => (origin, None),
        _ if buf.len() >= 4 => (origin & !TO_DEST, Some(buf.get_u32())),
        _ => return tracing::warn!("bus relay shorter than its header; ignored"),
    };
    let frame = match BackendCodec::default().decode(&mut buf) {
        Ok(Some(frame)) => frame,
        Ok(None) => return tracing::warn!(origin, "truncated bus message; ignored"),
        Err(e) => return tracing::warn!(origin, "undecodable bus message: {e}"),
    };
    local.metrics.cluster_messages.get_or_create(&OutcomeLabel { outcome: "received" }).inc();
    if !local.delivery.from_bus(dest, frame).await {
        tracing::warn!(origin, "unexpected bus frame; ignored");
    }
}
