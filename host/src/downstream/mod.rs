//! Downstream: the client listeners — WebSocket ([`ws`]) and length-prefixed TCP ([`tcp`]) —
//! and the life of each connection (`driver`: timers, local routes, scripts, upstream sends;
//! `session_io`: the connection read and the outbound queue written by the session's one task;
//! `login`: the auth script and duplicate-login policies; `room_routes`: join, leave, room
//! messages, room list), given a [`SessionCtx`] of what sessions use and nothing else.
//!
//! Both listeners share one accept loop that enforces `max_conn_num` (leaf's `MaxConnNum`) before
//! `accept`: a listener accepts only while the gateway has room, so a full gateway leaves new
//! connections in the kernel backlog instead of accepting and dropping them (at most one
//! accepted connection per listener can wait for room when two listeners race for the last
//! place). Then the abuse limits per source IP (connections open, new connections per second;
//! [`abuse`]) admit the socket or close it at once — after a `429` response (WebSocket) or a
//! `rate_limited` error frame (TCP) on plain listeners, with nothing on TLS ones. Each admitted
//! socket is handed to its own task at once.

pub(crate) mod abuse;
pub(crate) mod driver;
mod es;
mod login;
mod out_buf;
mod room_routes;
pub(crate) mod session_io;
mod shared_read;
pub mod tcp;
#[cfg(test)]
mod tests;
pub mod ws;
pub(crate) mod ws_io;
pub mod ws_read;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::abuse::{IpSlot, PeerLimits};
use crate::cluster::{Bus, Cluster};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::rooms::Rooms;
use crate::script::Scripts;
use crate::session::{Deadlines, Registry, SessionIdGen};
use crate::upstream::Upstreams;
use crate::user_centre::UserCentre;

/// What listeners and sessions use, shared by all of them.
pub struct SessionCtx {
    pub config: Arc<Config>,
    pub ids: SessionIdGen,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    /// The live scripts (login, routing, rooms, handlers).
    pub scripts: Arc<Scripts>,
    pub rooms: Arc<Rooms>,
    /// Every push, reply, kick and broadcast: this node, or others over the bus.
    pub delivery: Arc<Delivery>,
    /// Membership of a cluster (Redis, etcd); `None` standalone.
    pub cluster: Option<Arc<Cluster>>,
    /// Login/logout notices to the user centre; `None` without `user_centre.url`.
    pub user_centre: Option<UserCentre>,
    pub upstreams: Upstreams,
    /// `limits.max_conn_num` places.
    pub conn_limit: Arc<Semaphore>,
    /// `[rate_limits]` per source IP, per user and per session.
    pub(crate) peers: Arc<PeerLimits>,
    /// The login and heartbeat deadlines of every session (one timer wheel).
    pub deadlines: Arc<Deadlines>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl SessionCtx {
    /// The cross-node bus (user locations), when the gateway runs in a cluster with Redis.
    pub(crate) fn bus(&self) -> Option<&Bus> {
        self.cluster.as_ref().and_then(|c| c.bus.as_ref())
    }
}

/// Outbound frames are gathered up to this many bytes before a write, on both transports; a
/// flush writes the rest. With no write buffer every frame costs a syscall, which caps fan-out
/// (docs/benchmarks.md). The buffer itself grows only with what is queued.
pub(crate) const WRITE_BUFFER: usize = 8 * 1024;

/// An admitted connection's places: one of `max_conn_num`, one of its IP's `conn_per_ip`.
/// Dropped when the connection ends.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    _peer: Option<IpSlot>,
}

/// Accepts until shutdown, spawning `handle(ctx, stream, peer, admission)` per admitted
/// connection; `refused` is written (best effort, without waiting) to one an abuse limit
/// refuses before it is closed.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<SessionCtx>,
    listener: TcpListener,
    kind: &'static str,
    refused: Bytes,
    handle: F,
) where
    F: Fn(Arc<SessionCtx>, TcpStream, SocketAddr, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = ctx.shutdown.clone();
    loop {
        // Wait for room without reserving it: a reserved permit would sit idle in every
        // listener's `accept`, shrinking `max_conn_num` by one per listener.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            room = ctx.conn_limit.acquire() => if room.is_err() { break },
        }
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = kind, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if ctx.cluster.as_ref().is_some_and(|c| !c.holds_id()) {
            drop(stream); // the node lost its id: no session may be minted under it
            continue;
        }
        let peer_slot = match ctx.peers.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(limit) => {
                tracing::debug!(listener = kind, %peer, limit, "connection refused by an abuse limit");
                let _ = stream.try_write(&refused);
                continue;
            }
        };
        // Another listener may have taken the room meanwhile: then this one connection waits
        // (at most one per listener) until a session ends.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = ctx.conn_limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        if ctx.config.limits.send_buffer_bytes > 0 {
            // Bounds what a stalled client parks in the kernel (autotuning grows it to MBs).
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(ctx.config.limits.send_buffer_bytes);
        }
        let admission = Admission { _permit: permit, _peer: peer_slot };
        ctx.tasks.spawn(handle(ctx.clone(), stream, peer, admission));
    }
    tracing::debug!(listener = kind, "listener stopped");
}
