//! Registration in etcd (connectsrv): this node's [`NodeInfo`] under
//! `/<prefix>/nodes/<node.name>/<id>`, attached to a lease of `cluster.ttl_s` kept alive every
//! third of it. When the lease is lost (etcd restarted, a partition longer than the TTL) the
//! node grants a new one and registers again. On shutdown the lease is revoked, which deletes
//! the key at once.
//!
//! Every write is a compare-and-set (an etcd transaction): the node updates the key only while
//! it is attached to its own lease, and creates it only when it does not exist. So a process
//! that lost its id (stalled past its TTL while another process claimed the id) cannot
//! overwrite the new holder's registration — which its lease revoke would then delete, hiding
//! the new holder from discovery. At every keepalive the node checks the key still holds its
//! current info under its lease; a key that vanished (deleted by hand, or by a stale holder's
//! revoke) is created again, a changed load is written, and a key held under another lease is
//! left alone (logged once) until it goes.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
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

/// What a compare-and-set registration found.
#[derive(Debug, PartialEq, Eq)]
enum Registered {
    /// The key holds our value under our lease (written now, or already).
    Ours,
    /// The key is attached to another lease (another process's registration, or a value put
    /// without a lease by hand); left as it is. The lease id, 0 for none.
    Taken(i64),
}

/// Makes `key` hold `value` under `lease` unless another lease holds it: updates the key if
/// it is ours, creates it if absent. Two transactions at most (etcd has no OR in a compare).
async fn register(
    client: &mut etcd_client::Client,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<Registered, etcd_client::Error> {
    // Put if `compare` holds; else read the key to see who holds it.
    let put_if = |compare: Compare| {
        Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))])
    };
    let response = client.txn(put_if(Compare::lease(key, CompareOp::Equal, lease))).await?;
    if response.succeeded() {
        return Ok(Registered::Ours);
    }
    if let Some(holder) = held_by(response.op_responses()) {
        return Ok(Registered::Taken(holder));
    }
    let response = client.txn(put_if(Compare::create_revision(key, CompareOp::Equal, 0))).await?;
    if response.succeeded() {
        return Ok(Registered::Ours);
    }
    Ok(Registered::Taken(held_by(response.op_responses()).unwrap_or(0)))
}

/// The lease of the key a transaction's `get` found, if it found one.
fn held_by(responses: Vec<TxnOpResponse>) -> Option<i64> {
    responses.into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
        _ => None,
    })
}

/// Whether `key` holds exactly `value` under `lease` (one read-only transaction).
async fn intact(
    client: &mut etcd_client::Client,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let check = Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, lease), Compare::value(key, CompareOp::Equal, value)]);
    Ok(client.txn(check).await?.succeeded())
}

/// Registers and keeps the registration alive until `shutdown`, then revokes it.
/// `info` gives the current node info (its load changes); `fence`, when given, says whether
/// this process still holds its node id (nothing is written once it does not).
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
            let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
            // The lease holder last reported, so a key held by another lease is logged once.
            let mut reported = None;
            let mut value = String::new();
            loop {
                let now = serde_json::to_string(&info()).unwrap_or_default();
                if holds_id() && (now != value || !intact(&mut client, &key, &now, id).await?) {
                    match register(&mut client, &key, &now, id).await? {
                        Registered::Ours => {
                            if value.is_empty() || reported.is_some() {
                                tracing::info!(key, lease = id, "registered in etcd");
                            }
                            reported = None;
                            value = now;
                        }
                        Registered::Taken(holder) => {
                            if reported != Some(holder) {
                                tracing::warn!(
                                    key,
                                    holder,
                                    "the registration key is held under another etcd lease (a process \
                                     that held this node id before?); registering once it is gone"
                                );
                            }
                            reported = Some(holder);
                            value.clear();
                        }
                    }
                }
                tokio::time::sleep(ttl / 3).await;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(response) if response.ttl() > 0 => {}
                    _ => {
                        tracing::warn!(key, lease = id, "etcd lease lost; registering again");
                        return Ok::<_, etcd_client::Error>(());
                    }
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
