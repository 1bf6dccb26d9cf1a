//! Client listeners: WebSocket ([`ws`]) and length-prefixed TCP ([`tcp`]).
//!
//! Both share one accept loop that enforces `max_conn_num` (seed 003 `MaxConnNum`) before
//! `accept`: a listener accepts only while the gateway has room, so a full gateway leaves new
//! connections in the kernel backlog instead of accepting and dropping them (at most one
//! accepted connection per listener can wait for room when two listeners race for the last
//! place). Each accepted socket is handed to its own task at once.

pub mod tcp;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::gateway::Core;

/// Accepts until shutdown, spawning `handle(core, stream, peer, permit)` per connection.
pub(crate) async fn accept_loop<F, Fut>(core: Arc<Core>, listener: TcpListener, kind: &'static str, handle: F)
where
    F: Fn(Arc<Core>, TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = core.shutdown.clone();
    loop {
        // Wait for room without reserving it: a reserved permit would sit idle in every
        // listener's `accept`, shrinking `max_conn_num` by one per listener.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            room = core.conn_limit.acquire() => if room.is_err() { break },
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
        // Another listener may have taken the room meanwhile: then this one connection waits
        // (at most one per listener) until a session ends.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = core.conn_limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        core.tasks.spawn(handle(core.clone(), stream, peer, permit));
    }
    tracing::debug!(listener = kind, "listener stopped");
}
