//! Following an etcd prefix: a full read, then a watch from the read's revision + 1 (so no
//! change between the two is missed); when the watch breaks (etcd restarted, compaction, a
//! cancel) the prefix is read again in full, after a back-off of 100 ms doubling to 5 s.
//! Used by discovery (the node table) and the config centre (the map keys).

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio_util::sync::CancellationToken;

/// What changed under the prefix. Keys are whole etcd keys, values their bytes as text
/// (lossy UTF-8).
pub enum Change {
    /// Everything under the prefix now (after a full read).
    Snapshot(Vec<(String, String)>),
    Put(String, String),
    Delete(String),
}

/// Calls `on` with a snapshot of `prefix`, then with each change, until `shutdown`. `what`
/// names the follower in logs.
pub async fn follow(
    mut client: etcd_client::Client,
    prefix: String,
    what: &'static str,
    shutdown: CancellationToken,
    mut on: impl FnMut(Change),
) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let synced = async {
            let all = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
            let revision = all.header().map_or(0, |h| h.revision());
            on(Change::Snapshot(all.kvs().iter().map(|kv| (text(kv.key()), text(kv.value()))).collect()));
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut stream = client.watch(prefix.as_str(), Some(options)).await?;
            while let Some(response) = stream.message().await? {
                if response.canceled() {
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    on(match event.event_type() {
                        EventType::Put => Change::Put(text(kv.key()), text(kv.value())),
                        EventType::Delete => Change::Delete(text(kv.key())),
                    });
                }
            }
            Ok::<_, etcd_client::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = synced => match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("etcd watch of the {what} failed, reading again in {backoff:?}: {e}"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
