//! Delivery local vs remote, with a recording [`Remote`] standing in for the bus (the bus
//! itself is tested against real Redis in `tests/e2e/cluster.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::config::RoomsConfig;
use crate::metrics::Metrics;
use crate::session::{Outbound, SessionHandle, TransportKind, node_of};

/// What was sent where: `(node or None for all, frame)`, and relays `(dest, key)`.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<(Option<u32>, BackendFrame)>>,
    users: Mutex<Vec<String>>,
    dests: Mutex<Vec<(u32, u64)>>,
}

const HERE: u32 = 5;

impl Remote for Recorder {
    fn node_id(&self) -> u32 {
        HERE
    }
    fn to_node(&self, node: u32, frame: BackendFrame) {
        self.sent.lock().push((Some(node), frame));
    }
    fn to_all(&self, frame: BackendFrame) {
        self.sent.lock().push((None, frame));
    }
    fn to_user(&self, user: &str, _frame: BackendFrame) {
        self.users.lock().push(user.into());
    }
    fn to_dest(&self, dest: u32, key: u64, _frame: BackendFrame) -> Option<u32> {
        (dest == 9).then(|| {
            self.dests.lock().push((dest, key));
            7
        })
    }
}

impl LocalDests for Recorder {
    fn has(&self, dest: u32) -> bool {
        dest == 1
    }
    fn relay_here(&self, dest: u32, key: u64, _frame: BackendFrame) {
        self.dests.lock().push((dest, key));
    }
}

struct Setup {
    delivery: Delivery,
    registry: Arc<Registry>,
    rooms: Arc<Rooms>,
    bus: Arc<Recorder>,
}

fn setup(with_bus: bool) -> Setup {
    let registry = Arc::new(Registry::default());
    let rooms = Arc::new(Rooms::new(
        &RoomsConfig::default(),
        registry.clone(),
        &Metrics::new(),
        &TaskTracker::new(),
        CancellationToken::new(),
    ));
    let bus = Arc::new(Recorder::default());
    let remote = with_bus.then(|| bus.clone() as Arc<dyn Remote>);
    let delivery = Delivery::new(registry.clone(), rooms.clone(), remote);
    delivery.connect_dests(bus.clone());
    Setup { delivery, registry, rooms, bus }
}

/// A fresh session id naming node `node` (docs/protocol.md: time, node, sequence).
fn id_on(node: u32) -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xfff;
    let id = (1 << 22) | (u64::from(node) << 12) | seq;
    assert_eq!(node_of(id), node);
    id
}

/// A logged-in session of `user` on node `node`, in `registry`.
fn session(registry: &Registry, node: u32, user: &str) -> (SessionHandle, crate::session::OutboundReceiver) {
    let id = id_on(node);
    let (handle, rx) =
        SessionHandle::new(id, TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), 4, (8, usize::MAX));
    registry.insert(handle.clone());
    registry.bind_user(&handle, &Arc::from(user));
    (handle, rx)
}

/// The msg ids of what waits in a session's queue.
fn queued(rx: &crate::session::OutboundReceiver) -> Vec<u32> {
    std::iter::from_fn(|| rx.try_recv())
        .filter_map(|o| match o {
            Outbound::Packet { msg_id, .. } => Some(msg_id),
            Outbound::Shared(p) => Some(p.msg_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_session_here_is_served_here_and_one_elsewhere_goes_to_its_node() {
    let s = setup(true);
    let (alice, rx) = session(&s.registry, HERE, "alice");
    let body = Bytes::from_static(b"x");
    assert_eq!(s.delivery.to_session(alice.id(), (600, 3), body.clone(), Scope::Cluster), Reached::Here);
    assert_eq!(queued(&rx), [600]);
    assert!(s.bus.sent.lock().is_empty(), "nothing leaves the node for a session here");
    let elsewhere = id_on(8);
    let reached = s.delivery.to_session(elsewhere, (600, 0), body.clone(), Scope::Cluster);
    assert_eq!(reached, Reached::Relayed { node: 8 });
    assert!(matches!(&s.bus.sent.lock()[..], [(Some(8), BackendFrame::Reply { msg_id: 600, .. })]));
    // From the bus: never published again; a session of this node's id that is gone: nowhere.
    assert_eq!(s.delivery.to_session(elsewhere, (600, 0), body.clone(), Scope::Local), Reached::Nowhere);
    let gone = id_on(HERE);
    assert_eq!(s.delivery.to_session(gone, (600, 0), body.clone(), Scope::Cluster), Reached::Nowhere);
    assert_eq!(s.bus.sent.lock().len(), 1);
    // Its writer gone (closed): not queued.
    drop(rx);
    assert_eq!(s.delivery.to_session(alice.id(), (600, 0), body, Scope::Cluster), Reached::Closing);
}

#[tokio::test]
async fn without_a_bus_nothing_is_relayed() {
    let s = setup(false);
    let elsewhere = id_on(8);
    let body = Bytes::from_static(b"x");
    assert_eq!(s.delivery.to_session(elsewhere, (1, 0), body.clone(), Scope::Cluster), Reached::Nowhere);
    assert_eq!(
        s.delivery.to_user("nobody", 1, body.clone(), Scope::Cluster),
        FannedOut { here: Some(0), relayed: false }
    );
    let room = s.delivery.to_room("none", None, 1, body, Scope::Cluster).await;
    assert_eq!(room, FannedOut { here: None, relayed: false });
}

#[tokio::test]
async fn a_user_push_reaches_every_local_session_and_the_users_node() {
    let s = setup(true);
    let (_a, rx_a) = session(&s.registry, HERE, "bob");
    let (_b, rx_b) = session(&s.registry, HERE, "bob");
    let out = s.delivery.to_user("bob", 9, Bytes::from_static(b"hi"), Scope::Cluster);
    assert_eq!(out, FannedOut { here: Some(2), relayed: true });
    assert_eq!((queued(&rx_a), queued(&rx_b)), (vec![9], vec![9]));
    assert_eq!(*s.bus.users.lock(), ["bob"]);
    // What came over the bus is delivered here only.
    assert!(
        s.delivery
            .from_bus(None, BackendFrame::PushUser { user_id: "bob".into(), msg_id: 10, body: Bytes::new() })
            .await
    );
    assert_eq!((queued(&rx_a), queued(&rx_b)), (vec![10], vec![10]));
    assert_eq!(s.bus.users.lock().len(), 1);
}

#[tokio::test]
async fn room_and_everyone_fan_out_here_and_to_every_node_unless_local() {
    let s = setup(true);
    let (a, rx_a) = session(&s.registry, HERE, "a");
    let (b, rx_b) = session(&s.registry, HERE, "b");
    s.rooms.join(&a, "lobby", None);
    s.rooms.join(&b, "lobby", None);
    let out = s.delivery.to_room("lobby", Some(b.id()), 7, Bytes::from_static(b"m"), Scope::Cluster).await;
    assert_eq!(out, FannedOut { here: Some(2), relayed: true });
    assert!(matches!(
        &s.bus.sent.lock()[..],
        [(None, BackendFrame::PushRoom { exclude_session, .. })] if *exclude_session == b.id()
    ));
    tokio::time::sleep(Duration::from_millis(50)).await; // bucket workers deliver
    assert_eq!((queued(&rx_a), queued(&rx_b)), (vec![7], vec![]), "all members but the excluded one");
    let frame =
        BackendFrame::PushRoom { room: "lobby".into(), exclude_session: 0, msg_id: 8, body: Bytes::new() };
    assert!(s.delivery.from_bus(None, frame).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((queued(&rx_a), queued(&rx_b)), (vec![8], vec![8]));
    assert_eq!(s.bus.sent.lock().len(), 1, "a broadcast from the bus is not published again");
    let out = s.delivery.to_all(11, Bytes::new(), Scope::Local).await;
    assert!(!out.relayed, "from the bus: here only");
}

#[tokio::test]
async fn kicks_close_here_or_cross_with_their_reason() {
    let s = setup(true);
    let (a, _rx) = session(&s.registry, HERE, "a");
    assert_eq!(s.delivery.kick(a.id(), CloseReason::Kicked, "cheating", Scope::Cluster), Reached::Here);
    assert_eq!(a.close_reason(), Some((CloseReason::Kicked, "cheating")));
    assert_eq!(s.delivery.kick(a.id(), CloseReason::Kicked, "again", Scope::Cluster), Reached::Closing);
    let elsewhere = id_on(8);
    s.delivery.kick(elsewhere, CloseReason::Replaced, "ignored", Scope::Cluster);
    let (node, frame) = s.bus.sent.lock().pop().expect("a kick on the bus");
    assert_eq!(node, Some(8));
    // The receiving node maps it back to `replaced` (4006).
    let BackendFrame::Kick { reason, .. } = &frame else { panic!("{frame:?}") };
    assert_eq!(kick_reason(reason), CloseReason::Replaced);
    let (b, _rx) = session(&s.registry, HERE, "b");
    assert!(s.delivery.from_bus(None, kick_frame(b.id(), CloseReason::Replaced, "")).await);
    assert_eq!(b.close_reason(), Some((CloseReason::Replaced, REPLACED)));
    let (c, _rx) = session(&s.registry, HERE, "c");
    assert!(s.delivery.from_bus(None, kick_frame(c.id(), CloseReason::Kicked, "by backend")).await);
    assert_eq!(c.close_reason(), Some((CloseReason::Kicked, "by backend")));
}

#[tokio::test]
async fn relays_go_to_a_local_pool_else_to_a_node_that_has_the_dest() {
    let s = setup(true);
    let relayed =
        || BackendFrame::Relayed { from_dest: 2, session_id: 42, msg_id: 1, seq: 0, body: Bytes::new() };
    assert_eq!(s.delivery.relay(1, 42, relayed(), Scope::Cluster), Some(None), "this node's pool");
    assert_eq!(s.delivery.relay(9, 42, relayed(), Scope::Cluster), Some(Some(7)), "node 7 has dest 9");
    assert_eq!(s.delivery.relay(3, 42, relayed(), Scope::Cluster), None, "no node has dest 3");
    // From the bus: into this node's pool only (a relay crosses the bus at most once).
    assert!(s.delivery.from_bus(Some(3), relayed()).await);
    assert_eq!(*s.bus.dests.lock(), [(1, 42), (9, 42), (3, 42)]);
}
