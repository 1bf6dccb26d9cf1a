//! Discovery: the node table, kept in sync with etcd by watching the registration prefix, and
//! go-xserver's `INode` queries on it (pick one of a type at random or least loaded, list by
//! type, all, by id, has).
//!
//! The table follows the registration prefix ([`super::etcd_watch`]: a full read, then a
//! watch; read again in full when the watch breaks).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::etcd_watch::Change;
use crate::metrics::Metrics;

/// What a node registers (the etcd value, JSON). Other services may register in the same
/// format under the same prefix to be discoverable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u32,
    /// Node type (go-xserver's `NodeType`): `gateway`, or a backend's own.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Server name (connectsrv's `serverName`).
    pub name: String,
    /// Client-facing WebSocket and TCP addresses, `ip:port`.
    pub ws_addr: Option<String>,
    pub tcp_addr: Option<String>,
    /// Internal (admin API) address.
    pub admin_addr: Option<String>,
    /// Current load: open sessions.
    pub load: u64,
    /// Dest ids this node has a queue pool for (its `dest_map`), ascending: where a
    /// backend -> backend relay for a dest this node lacks is sent. Absent: none.
    #[serde(default)]
    pub dests: Vec<u32>,
    /// Software version.
    pub version: String,
    /// Which process holds the id now: a random number drawn when the node claimed its id
    /// (a restarted node that claims the same id has a new one). 0 or absent: not given (a
    /// service registering without it); liveness then goes by id alone.
    #[serde(default)]
    pub incarnation: u64,
}

/// How [`NodeTable::pick`] chooses among the nodes of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Random,
    LeastLoaded,
}

/// The nodes registered under the prefix, by etcd key.
#[derive(Default)]
pub struct NodeTable {
    nodes: RwLock<BTreeMap<String, NodeInfo>>,
}

impl NodeTable {
    /// Every node, ordered by id.
    pub fn all(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self.nodes.read().values().cloned().collect();
        nodes.sort_by_key(|n| n.id);
        nodes
    }

    /// The nodes of `node_type`, ordered by id.
    pub fn of_type(&self, node_type: &str) -> Vec<NodeInfo> {
        self.all().into_iter().filter(|n| n.node_type == node_type).collect()
    }

    /// The node with `id`.
    pub fn by_id(&self, id: u32) -> Option<NodeInfo> {
        self.nodes.read().values().find(|n| n.id == id).cloned()
    }

    /// Whether a node with `id` is registered.
    pub fn has(&self, id: u32) -> bool {
        self.nodes.read().values().any(|n| n.id == id)
    }

    /// Whether node `id` is registered in `incarnation` (0: any incarnation; a registration
    /// without one matches any).
    pub fn has_incarnation(&self, id: u32, incarnation: u64) -> bool {
        self.nodes
            .read()
            .values()
            .any(|n| n.id == id && (incarnation == 0 || n.incarnation == 0 || n.incarnation == incarnation))
    }

    /// One node of `node_type`, chosen `how` ([`choose`]).
    pub fn pick(&self, node_type: &str, how: Pick) -> Option<NodeInfo> {
        choose(self.of_type(node_type), how)
    }

    /// The nodes other than `except` that have a pool for `dest`, ordered by id.
    pub fn with_dest(&self, dest: u32, except: u32) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .read()
            .values()
            .filter(|n| n.id != except && n.dests.binary_search(&dest).is_ok())
            .cloned()
            .collect();
        nodes.sort_by_key(|n| n.id);
        nodes
    }

    fn replace(&self, nodes: BTreeMap<String, NodeInfo>) {
        *self.nodes.write() = nodes;
    }

    fn put(&self, key: String, node: NodeInfo) {
        self.nodes.write().insert(key, node);
    }

    fn remove(&self, key: &str) {
        self.nodes.write().remove(key);
    }

    fn len(&self) -> usize {
        self.nodes.read().len()
    }
}

/// One of `nodes`: uniformly at random, or the least loaded (lowest id on ties); `None` when
/// there are none.
pub fn choose(nodes: Vec<NodeInfo>, how: Pick) -> Option<NodeInfo> {
    match how {
        Pick::Random if !nodes.is_empty() => nodes.get(fastrand::usize(..nodes.len())).cloned(),
        Pick::Random => None,
        Pick::LeastLoaded => nodes.into_iter().min_by_key(|n| (n.load, n.id)),
    }
}

fn parse(key: &str, value: &[u8]) -> Option<(String, NodeInfo)> {
    match serde_json::from_slice(value) {
        Ok(node) => Some((key.to_string(), node)),
        Err(e) => {
            tracing::warn!(key, "ignoring a registration that is not node info JSON: {e}");
            None
        }
    }
}

/// Keeps `table` equal to what etcd holds under `prefix` until `shutdown`.
pub(super) async fn watch(
    client: etcd_client::Client,
    prefix: String,
    table: Arc<NodeTable>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    super::etcd_watch::follow(client, prefix, "node registrations", shutdown, |change| {
        match change {
            Change::Snapshot(all) => {
                table.replace(all.iter().filter_map(|(k, v)| parse(k, v.as_bytes())).collect())
            }
            Change::Put(key, value) => {
                if let Some((key, node)) = parse(&key, value.as_bytes()) {
                    table.put(key, node);
                }
            }
            Change::Delete(key) => table.remove(&key),
        }
        metrics.cluster_nodes.set(table.len() as i64);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, node_type: &str, load: u64) -> NodeInfo {
        NodeInfo {
            id,
            node_type: node_type.into(),
            name: "n".into(),
            ws_addr: None,
            tcp_addr: None,
            admin_addr: None,
            load,
            version: "0".into(),
            dests: vec![100, 300],
            incarnation: 0,
        }
    }

    #[test]
    fn seed_004_queries() {
        let table = NodeTable::default();
        table.put("a".into(), node(3, "gateway", 10));
        table.put("b".into(), node(1, "gateway", 5));
        table.put("c".into(), node(7, "game", 0));
        assert_eq!(table.all().iter().map(|n| n.id).collect::<Vec<_>>(), [1, 3, 7]);
        assert_eq!(table.of_type("gateway").len(), 2);
        assert!(table.has(7) && !table.has(2));
        assert_eq!(table.by_id(3).map(|n| n.load), Some(10));
        assert_eq!(table.pick("gateway", Pick::LeastLoaded).map(|n| n.id), Some(1));
        assert!(table.pick("gateway", Pick::Random).is_some_and(|n| n.node_type == "gateway"));
        assert!(table.pick("chat", Pick::Random).is_none());
        assert_eq!(table.with_dest(300, 1).iter().map(|n| n.id).collect::<Vec<_>>(), [3, 7]);
        assert!(table.with_dest(301, 0).is_empty());
        table.remove("b");
        assert_eq!(table.pick("gateway", Pick::LeastLoaded).map(|n| n.id), Some(3));
    }

    #[test]
    fn node_info_without_dests_still_parses() {
        let json = br#"{"id":4,"type":"game","name":"g","ws_addr":null,"tcp_addr":null,"admin_addr":null,"load":0,"version":"1"}"#;
        let (_, node) = parse("/wasmgate/nodes/g/4", json).expect("parses");
        assert!(node.dests.is_empty());
    }
}
