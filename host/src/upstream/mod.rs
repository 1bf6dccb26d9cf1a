//! Upstream queue pools (connectsrv: `QueuePoolTable`): per dest id of `dest_map.json`,
//! `poolNums` TCP connections speaking backend protocol v1.
//!
//! - A session's messages take one connection of a pool (picked by a hash of the session id),
//!   so one session's messages reach the backend in order. While that connection is down they
//!   take another connected one and stay on it until the session pauses (see `pool.rs`).
//! - A message for a dest that has no pool, or none of whose connections is up, gets an error
//!   frame (`unknown_dest`, `upstream_unavailable`); a full connection queue makes the session wait
//!   up to `enqueue_timeout_ms`, then `upstream_busy`. Frames queued or unflushed when a
//!   connection fails are answered with `upstream_unavailable` too. A request already written
//!   to a backend that then dies gets no reply (the backend may or may not have handled it).
//! - [`Upstreams::apply`] swaps in a new `dest_map` atomically: unchanged dests keep their
//!   pools and connections, changed and removed ones are drained (queued frames are written,
//!   replies are read for a grace period) and closed.

mod dispatch;
mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use self::pool::Pool;
use crate::config::UpstreamConfig;
use crate::delivery::{Delivery, LocalDests};
use crate::maps::DestMap;
use crate::metrics::{DestLabel, DestOutcomeLabel, Metrics};
use crate::protocol::backend::BackendFrame;
use crate::rooms::Rooms;
use crate::session::{ErrorCode, Registry};

/// Why a message could not be handed to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("dest {0} is not in dest_map")]
    UnknownDest(u32),
    #[error("dest {0} is unavailable")]
    Unavailable(u32),
    #[error("dest {0} is busy")]
    Busy(u32),
}

impl UpstreamError {
    /// The error frame `code` for this error.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::UnknownDest(_) => ErrorCode::UnknownDest,
            Self::Unavailable(_) => ErrorCode::UpstreamUnavailable,
            Self::Busy(_) => ErrorCode::UpstreamBusy,
        }
    }
}

/// Who this gateway is, told to backends in the `Hello` frame.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: u32,
    pub name: String,
}

pub(crate) struct Shared {
    table: ArcSwap<HashMap<u32, Arc<Pool>>>,
    registry: Arc<Registry>,
    rooms: Arc<Rooms>,
    metrics: Metrics,
    settings: UpstreamConfig,
    node: NodeIdentity,
    tasks: TaskTracker,
    /// Where replies, pushes, kicks and relays from backends go.
    delivery: Arc<Delivery>,
    /// Frames written to backends (flushed to the socket), every dest together.
    frames_sent: AtomicU64,
}

/// The queue-pool table.
#[derive(Clone)]
pub struct Upstreams {
    shared: Arc<Shared>,
}

impl Upstreams {
    /// An empty table; pools appear with [`Upstreams::apply`]. Connection tasks are spawned on
    /// `tasks` (tracked for shutdown).
    pub fn new(
        registry: Arc<Registry>,
        rooms: Arc<Rooms>,
        metrics: Metrics,
        settings: UpstreamConfig,
        node: NodeIdentity,
        tasks: TaskTracker,
        delivery: Arc<Delivery>,
    ) -> Self {
        let shared = Shared {
            table: ArcSwap::default(),
            registry,
            rooms,
            metrics,
            settings,
            node,
            tasks,
            delivery,
            frames_sent: AtomicU64::new(0),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Makes the table match `map`: unchanged entries keep their pools, new and changed ones
    /// get new pools (connecting in the background), removed and replaced ones drain and close.
    /// Must run inside a tokio runtime.
    pub fn apply(&self, map: &DestMap) {
        let old = self.shared.table.load_full();
        let mut next = HashMap::with_capacity(map.len());
        for (&dest, entry) in map {
            match old.get(&dest) {
                Some(pool) if pool.entry == *entry => {
                    next.insert(dest, pool.clone());
                }
                _ => {
                    next.insert(dest, Pool::start(dest, entry.clone(), &self.shared));
                }
            }
        }
        self.shared.table.store(Arc::new(next));
        let new = self.shared.table.load();
        for (dest, pool) in old.iter() {
            if !new.get(dest).is_some_and(|p| Arc::ptr_eq(p, pool)) {
                tracing::info!(dest, "dest removed or changed: draining its old pool");
                pool.stop();
                if !new.contains_key(dest) {
                    self.shared
                        .metrics
                        .upstream_connections_wanted
                        .get_or_create(&DestLabel { dest: *dest })
                        .set(0);
                }
            }
        }
    }

    /// Queues `frame` for `dest` on the connection picked by `key` (the session id).
    ///
    /// Errors: [`UpstreamError::UnknownDest`] when `dest` has no pool,
    /// [`UpstreamError::Unavailable`] when none of its connections is up,
    /// [`UpstreamError::Busy`] when its queue stayed full for `enqueue_timeout_ms`.
    #[tracing::instrument(
        level = "debug",
        name = "upstream.send",
        skip_all,
        fields(wasmgate.dest_id = dest, wasmgate.outcome = tracing::field::Empty)
    )]
    pub async fn forward(&self, dest: u32, key: u64, frame: BackendFrame) -> Result<(), UpstreamError> {
        let result = match self.shared.table.load().get(&dest) {
            Some(pool) => {
                pool.send(key, frame, Duration::from_millis(self.shared.settings.enqueue_timeout_ms)).await
            }
            None => Err(UpstreamError::UnknownDest(dest)),
        };
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) => e.code().name(),
        };
        tracing::Span::current().record("wasmgate.outcome", outcome);
        self.shared.metrics.routed.get_or_create(&DestOutcomeLabel { dest, outcome }).inc();
        result
    }

    /// The dest ids with a pool, ascending (advertised in the cluster registration).
    pub fn dests(&self) -> Vec<u32> {
        let mut dests: Vec<u32> = self.shared.table.load().keys().copied().collect();
        dests.sort_unstable();
        dests
    }

    /// This node's pools as [`Delivery`] relays into them (without keeping them alive).
    pub fn local_dests(&self) -> Arc<dyn LocalDests> {
        Arc::new(WeakPools(Arc::downgrade(&self.shared)))
    }

    /// Queues `frame` (a `Relayed` from a script) into this node's pool of `dest` without
    /// waiting. Errors: `None` when there is no such dest here, `Some(why)` when its queue is
    /// full or its connection down.
    pub fn try_relay_here(&self, dest: u32, key: u64, frame: BackendFrame) -> Result<(), Option<String>> {
        let table = self.shared.table.load();
        let pool = table.get(&dest).ok_or(None)?;
        pool.try_send(key, frame).map_err(|(e, _)| Some(e.to_string()))
    }

    /// Whether this node has a queue pool for `dest`.
    pub fn has_dest(&self, dest: u32) -> bool {
        self.shared.table.load().contains_key(&dest)
    }

    /// Number of pool connections currently up for `dest` (0 if unknown).
    pub fn connections_up(&self, dest: u32) -> usize {
        self.shared.table.load().get(&dest).map_or(0, |p| p.connections_up())
    }

    /// Sets the `upstream_queue_depth` gauge of every dest from its pool's queues (called
    /// when `/metrics` is scraped, so the send path pays nothing for it).
    pub fn sample_queue_depths(&self) {
        for (&dest, pool) in self.shared.table.load().iter() {
            let gauge = self.shared.metrics.upstream_queue_depth.get_or_create(&DestLabel { dest });
            gauge.set(pool.queued() as i64);
        }
    }

    /// Frames written to backends so far (flushed to their sockets), every dest together.
    pub fn frames_sent(&self) -> u64 {
        self.shared.frames_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drains and closes every pool (graceful shutdown).
    pub fn shutdown(&self) {
        let table = self.shared.table.swap(Arc::default());
        for pool in table.values() {
            pool.stop();
        }
    }
}

/// [`LocalDests`] over the pool table, held weakly: delivery must not keep the pools of a
/// stopped gateway alive.
struct WeakPools(std::sync::Weak<Shared>);

impl LocalDests for WeakPools {
    fn has(&self, dest: u32) -> bool {
        self.0.upgrade().is_some_and(|shared| shared.table.load().contains_key(&dest))
    }

    /// Never waits; counted and logged when it cannot be queued (no such dest here any more,
    /// queue full, connection down).
    fn relay_here(&self, dest: u32, key: u64, frame: BackendFrame) {
        if let Some(shared) = self.0.upgrade() {
            dispatch::relay_local(&shared, dest, key, frame);
        }
    }
}
