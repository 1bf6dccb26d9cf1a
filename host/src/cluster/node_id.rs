//! The node id, claimed in Redis (connectsrv: start from the configured id, take the
//! first one whose key does not exist).
//!
//! Key `<prefix>:node:<id>`, value a token unique to this process, set with `SET .. NX PX ttl`
//! (atomic: two nodes starting at once cannot both get an id). The holder refreshes the TTL
//! every third of it with a compare-and-expire script, so a crashed node's id frees itself
//! after the TTL.
//!
//! **Fencing** ([`Fence`]): the node knows the deadline of its claim — when it sent the last
//! refresh that succeeded, plus the TTL, on the monotonic clock: the key cannot have expired
//! in Redis before then. Past the deadline (the node stalled, or Redis was unreachable for a
//! whole TTL) or when the key is found held by another process, the node has lost its id: the
//! fence closes, the bus stops delivering, the listeners stop accepting, registration stops,
//! and the gateway closes its sessions (1012 `node_restarting`) and rejoins under a freshly
//! claimed id ([`crate::RunningGateway::fenced`]). So no two live nodes serve sessions under
//! one id, and session ids (which embed the node id) stay unique. A key lost while the
//! deadline still holds (Redis restarted empty) is claimed again with `SET NX`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::bus::RETRY;
use crate::session::MAX_NODE_ID;

/// Extends the key's TTL only if it still holds our token.
const REFRESH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the key only if it still holds our token.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The claim's deadline and whether the id is lost; shared by everything that acts under the
/// node id.
pub struct Fence {
    base: Instant,
    /// Deadline in ms since `base`.
    deadline_ms: AtomicU64,
    lost: CancellationToken,
}

impl Fence {
    /// A fence whose claim, sent at `sent`, holds for `ttl`.
    pub(super) fn new(sent: Instant, ttl: Duration) -> Self {
        let fence = Self { base: sent, deadline_ms: AtomicU64::new(0), lost: CancellationToken::new() };
        fence.extend(sent, ttl);
        fence
    }

    /// Moves the deadline to `sent + ttl` (a refresh sent at `sent` succeeded).
    fn extend(&self, sent: Instant, ttl: Duration) {
        let ms = (sent.saturating_duration_since(self.base) + ttl).as_millis() as u64;
        self.deadline_ms.fetch_max(ms, Ordering::Release);
    }

    fn deadline(&self) -> Instant {
        self.base + Duration::from_millis(self.deadline_ms.load(Ordering::Acquire))
    }

    /// Whether this node still holds its id: not fenced and the deadline not passed.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.deadline()
    }

    /// Completes once the id is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    fn close(&self, id: u32, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::error!(
                node = id,
                "node id {id} lost ({why}): closing every session and rejoining the cluster"
            );
            self.lost.cancel();
        }
    }
}

pub(super) fn key(prefix: &str, id: u32) -> String {
    format!("{prefix}:node:{id}")
}

/// Claims the first free id from `start` up to [`MAX_NODE_ID`]; returns it with the claim's
/// [`Fence`].
///
/// Errors: Redis unreachable, or every id taken.
pub(super) async fn claim(
    conn: &mut ConnectionManager,
    prefix: &str,
    start: u32,
    token: &str,
    ttl: Duration,
) -> anyhow::Result<(u32, Fence)> {
    for id in start..=MAX_NODE_ID {
        let sent = Instant::now();
        let set: Option<String> = redis::cmd("SET")
            .arg(key(prefix, id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(conn)
            .await?;
        if set.is_some() {
            return Ok((id, Fence::new(sent, ttl)));
        }
    }
    anyhow::bail!("every node id from {start} to {MAX_NODE_ID} is taken in Redis ({prefix}:node:*)")
}

/// Keeps the claim alive until `shutdown`, then releases it: refreshes every third of `ttl`,
/// at once when the bus subscription comes back after a failure (`reconnected` changes), and
/// after [`RETRY`] when a refresh failed.
pub(super) async fn hold(
    mut conn: ConnectionManager,
    prefix: String,
    (id, token): (u32, String),
    ttl: Duration,
    fence: std::sync::Arc<Fence>,
    mut reconnected: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let key = key(&prefix, id);
    let refresh = redis::Script::new(REFRESH);
    let mut wait = ttl / 3;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::time::sleep_until(fence.deadline().into()) => {}
            Ok(()) = reconnected.changed() => {}
        }
        wait = ttl / 3;
        if !fence.valid() {
            // Stalled or cut off for a whole TTL: another process may hold the id now.
            fence.close(id, "its claim's deadline passed");
            return;
        }
        let sent = Instant::now();
        let kept: redis::RedisResult<i64> =
            refresh.key(&key).arg(&token).arg(ttl.as_millis() as u64).invoke_async(&mut conn).await;
        match kept {
            Ok(1) => fence.extend(sent, ttl),
            Ok(_) => {
                // Expired or taken: claim it again if it is free.
                let again: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await;
                match again {
                    Ok(Some(_)) => {
                        fence.extend(sent, ttl);
                        tracing::warn!(node = id, "node id key was lost in Redis; claimed again");
                    }
                    Ok(None) => {
                        fence.close(id, "another process holds it in Redis");
                        return;
                    }
                    Err(e) => tracing::warn!(node = id, "cannot claim the node id again: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!(node = id, "cannot refresh the node id in Redis (retrying in {RETRY:?}): {e}");
                wait = wait.min(RETRY);
            }
        }
    }
    let released: redis::RedisResult<i64> =
        redis::Script::new(RELEASE).key(&key).arg(&token).invoke_async(&mut conn).await;
    if let Err(e) = released {
        tracing::warn!(node = id, "cannot release the node id in Redis (it expires): {e}");
    }
}
