//! Registration in etcd (seed 000 step 3): this node's [`NodeInfo`] under
//! `/<prefix>/nodes/<node.name>/<id>`, attached to a lease of `cluster.ttl_s` kept alive every
//! third of it. When the lease is lost (etcd restarted, a partition longer than the TTL) the
//! node grants a new one and registers again; the value is re-put when the load changes
//! (checked every keepalive). On shutdown the lease is revoked, which deletes the key at once.

use std::time::Duration;

use etcd_client::PutOptions;
use tokio_util::sync::CancellationToken;

use super::discovery::NodeInfo;

/// The registration key of node `id` named `name`.
pub(super) fn key(prefix: &str, name: &str, id: u32) -> String {
    format!("{}{name}/{id}", nodes_prefix(prefix))
}

/// Where every node registers: `/<prefix>/nodes/`.
pub(super) fn nodes_prefix(prefix: &str) -> String {
    format!("/{prefix}/nodes/")
}

/// Registers and keeps the registration alive until `shutdown`, then revokes it.
/// `info` gives the current node info (its load changes).
pub(super) async fn run(
    mut client: etcd_client::Client,
    key: String,
    ttl: Duration,
    info: impl Fn() -> NodeInfo,
    fence: Option<std::sync::Arc<super::Fence>>,
    shutdown: CancellationToken,
) {
    // Never (re-)register under an id this node no longer holds: the key may be another
    // process's registration now.
    let holds_id = || fence.as_ref().is_none_or(|f| f.valid());
    let mut backoff = Duration::from_millis(100);
    let mut lease = None;
    while !shutdown.is_cancelled() {
        let kept = async {
            if !holds_id() {
                return Ok(());
            }
            let granted = client.lease_grant(ttl.as_secs().max(1) as i64, None).await?;
            let id = granted.id();
            lease = Some(id);
            let mut current = info();
            let value = serde_json::to_string(&current).unwrap_or_default();
            if !holds_id() {
                return Ok(());
            }
            client.put(key.as_str(), value, Some(PutOptions::new().with_lease(id))).await?;
            tracing::info!(key, lease = id, "registered in etcd");
            let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
            loop {
                tokio::time::sleep(ttl / 3).await;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(response) if response.ttl() > 0 => {}
                    _ => {
                        tracing::warn!(key, lease = id, "etcd lease lost; registering again");
                        return Ok::<_, etcd_client::Error>(());
                    }
                }
                let now = info();
                if now != current && holds_id() {
                    let value = serde_json::to_string(&now).unwrap_or_default();
                    client.put(key.as_str(), value, Some(PutOptions::new().with_lease(id))).await?;
                    current = now;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            result = kept => match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!(key, "etcd registration failed, retrying in {backoff:?}: {e}"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    if let Some(id) = lease {
        match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await {
            Ok(Ok(_)) => tracing::info!(key, "etcd lease revoked"),
            Ok(Err(e)) => tracing::warn!(key, "cannot revoke the etcd lease (it expires): {e}"),
            Err(_) => tracing::warn!(key, "revoking the etcd lease timed out (it expires)"),
        }
    }
}
