//! The node id, claimed in Redis (seed 000 step 2: start from the configured id, take the
//! first one whose key does not exist).
//!
//! Key `<prefix>:node:<id>`, value a token unique to this process, set with `SET .. NX PX ttl`
//! (atomic: two nodes starting at once cannot both get an id). The holder refreshes the TTL
//! every third of it with a compare-and-expire script, so a crashed node's id frees itself
//! after the TTL. If the key was lost (Redis restarted, or the node stalled past the TTL) the
//! node claims the same id again; if another node has taken it meanwhile, the clash is logged
//! as an error (session ids embed the node id, so the node keeps it).

use std::time::Duration;

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

pub(super) fn key(prefix: &str, id: u32) -> String {
    format!("{prefix}:node:{id}")
}

/// Claims the first free id from `start` up to [`MAX_NODE_ID`].
///
/// Errors: Redis unreachable, or every id taken.
pub(super) async fn claim(
    conn: &mut ConnectionManager,
    prefix: &str,
    start: u32,
    token: &str,
    ttl: Duration,
) -> anyhow::Result<u32> {
    for id in start..=MAX_NODE_ID {
        let set: Option<String> = redis::cmd("SET")
            .arg(key(prefix, id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(conn)
            .await?;
        if set.is_some() {
            return Ok(id);
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
    id: u32,
    token: String,
    ttl: Duration,
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
            Ok(()) = reconnected.changed() => {}
        }
        wait = ttl / 3;
        let kept: redis::RedisResult<i64> =
            refresh.key(&key).arg(&token).arg(ttl.as_millis() as u64).invoke_async(&mut conn).await;
        match kept {
            Ok(1) => {}
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
                    Ok(Some(_)) => tracing::warn!(node = id, "node id key was lost in Redis; claimed again"),
                    Ok(None) => tracing::error!(
                        node = id,
                        "node id {id} is now held by another process in Redis: two nodes share an id"
                    ),
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
