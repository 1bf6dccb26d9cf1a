//! Cluster: three gateway nodes on a real redis-server and a real etcd (started here on free
//! loopback ports). Node ids, registration and discovery, cross-node pushes and room
//! broadcasts, graceful leave, a node killed with SIGKILL, etcd and Redis restarts.

use std::time::Duration;

use serde_json::{Value, json};
use wasmgate_examples::backend::BackendOptions;
use wasmgate_tests::servers::{EtcdServer, RedisServer};
use wasmgate_tests::{
    ADMIN_TOKEN, Backend, Client, Harness, PROMPT, wait_until, with_admin_token, write_dest_map,
};

const JOIN: u32 = 5;
const ROOM_MESSAGE: u32 = 7;
const PUSH: u32 = 9;
/// Node id and lease TTL of the test nodes, s.
const TTL_S: u64 = 2;

/// A gateway in the cluster of `redis` and `etcd` (either optional), asking for node id 1.
async fn node(redis: Option<&RedisServer>, etcd: Option<&EtcdServer>) -> Harness {
    let (redis_url, etcd_endpoint) = (redis.map(RedisServer::url), etcd.map(EtcdServer::endpoint));
    Harness::start_with(move |c| {
        with_admin_token(c);
        c.node.id = 1;
        c.cluster.redis_url = redis_url;
        c.cluster.etcd_endpoints = etcd_endpoint.into_iter().collect();
        c.cluster.ttl_s = TTL_S;
        c.cluster.location_ttl_s = 3;
    })
    .await
}

async fn three_nodes(redis: &RedisServer, etcd: &EtcdServer) -> [Harness; 3] {
    let (a, b, c) = tokio::join!(
        node(Some(redis), Some(etcd)),
        node(Some(redis), Some(etcd)),
        node(Some(redis), Some(etcd))
    );
    [a, b, c]
}

/// Waits until `h`'s discovery table lists exactly `ids`.
async fn wait_nodes(h: &Harness, ids: &[u32]) {
    wait_until(&format!("node {} sees nodes {ids:?}", h.gateway.node_id()), || async {
        h.gateway.nodes().iter().map(|n| n.id).collect::<Vec<_>>() == ids
    })
    .await;
}

/// Reads packets until one with `msg_id` arrives; returns its body as JSON (or the raw text).
async fn next_with(client: &mut Client, msg_id: u32) -> Value {
    loop {
        let packet = client.recv_within(PROMPT).await.expect("a packet").packet().expect("a packet");
        if packet.msg_id == msg_id {
            return serde_json::from_slice(&packet.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&packet.body).into_owned()));
        }
    }
}

/// Asserts nothing else with `msg_id` arrives within a short while (no duplicate).
async fn nothing_more(client: &mut Client, msg_id: u32) {
    let quiet = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Ok(received)) = tokio::time::timeout_at(quiet, client.recv_within(PROMPT)).await {
        if let Ok(packet) = received.packet() {
            assert_ne!(packet.msg_id, msg_id, "a duplicate: {packet:?}");
        }
    }
}

async fn join(client: &mut Client, room: &str) {
    let seq = client.send(JOIN, room.as_bytes()).await.expect("send");
    let (answer, _) = client.recv_reply(JOIN, seq, PROMPT).await.expect("joined");
    assert!(String::from_utf8_lossy(&answer.body).contains("joined"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_claim_distinct_ids_register_and_discover_each_other() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let nodes = three_nodes(&redis, &etcd).await;
    let mut ids: Vec<u32> = nodes.iter().map(|h| h.gateway.node_id()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "started at once, each took its own id");
    for h in &nodes {
        wait_nodes(h, &[1, 2, 3]).await;
    }
    // The registration: seed 000's key (server name + id) and node info with the load.
    let keys = etcd.keys("/wasmgate/nodes/").await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.contains(&"/wasmgate/nodes/wasmgate/1".to_string()), "{keys:?}");
    let _client = nodes[0].logged_in_ws("loaded").await;
    let first = nodes[0].gateway.node_id();
    wait_until("the load reaches discovery", || async {
        nodes[1].gateway.nodes().iter().any(|n| n.id == first && n.load == 1)
    })
    .await;
    let (status, listed) =
        nodes[2].admin("GET", "/cluster/nodes?type=gateway", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["nodes"].as_array().map(Vec::len), Some(3), "{listed}");
    assert!(listed["nodes"][0]["ws_addr"].is_string(), "{listed}");
    let token: String = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{first}"))).await;
    assert!(!token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_room_broadcasts_cross_nodes_exactly_once() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let [a, b, c] = three_nodes(&redis, &etcd).await;
    let mut alice = b.logged_in_ws("alice").await;
    // Her location is in Redis: node b, this session.
    wait_until("alice's location is stored", || async {
        let location: Option<String> = redis.query(redis::cmd("GET").arg("wasmgate:user:alice")).await;
        location.is_some_and(|l| l.starts_with(&format!("{}:", b.gateway.node_id())))
    })
    .await;

    // Push to a user on another node, through node a's API (once a has discovered b: a node
    // not in discovery is not relayed to).
    wait_nodes(&a, &[1, 2, 3]).await;
    let body = json!({ "user_id": "alice", "data": {"n": 1} }).to_string();
    let (status, answer) = a.admin("POST", "/push/user", &body, false, Some(ADMIN_TOKEN)).await;
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:alice")).await;
    let session_id = location.split(':').nth(1).map(str::to_string).expect("node:session:incarnation");
    let b_id = b.gateway.node_id();
    let expected = json!({
        "delivered": 0, "relayed": true, "node_live": true,
        "location": {"node": b_id, "session": session_id},
    });
    assert_eq!((status, &answer), (200, &expected));
    assert_eq!(next_with(&mut alice, PUSH).await, json!({"n": 1}));
    nothing_more(&mut alice, PUSH).await;
    // A user with no location: nothing relayed, and the answer says why.
    let body = json!({ "user_id": "nobody", "data": 1 }).to_string();
    let (status, answer) = a.admin("POST", "/push/user", &body, false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, answer), (200, json!({"delivered": 0, "location": null, "relayed": false})));

    // Push to a session of another node: its id names the node (202, handed to the bus).
    let body = json!({ "session_id": session_id, "data": "to her session" }).to_string();
    let (status, answer) = a.admin("POST", "/push/session", &body, false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, answer), (202, json!({"relayed_to_node": b_id, "node_live": true})));
    assert_eq!(next_with(&mut alice, PUSH).await, json!("to her session"));
    nothing_more(&mut alice, PUSH).await;
    // A session id naming a node that is not in discovery: the answer says so.
    let ghost = wasmgate::session::SessionIdGen::new(999).next_id().to_string();
    let body = json!({ "session_id": ghost, "data": "to nobody" }).to_string();
    let (status, answer) = a.admin("POST", "/push/session", &body, false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, answer), (202, json!({"relayed_to_node": 999, "node_live": false})));

    // A room with a member on every node.
    let mut members = [a.logged_in_ws("m-a").await, b.logged_in_ws("m-b").await, c.logged_in_ws("m-c").await];
    for member in &mut members {
        join(member, "world").await;
    }
    // A member's room message (the rooms script broadcasts it to every member).
    let message = json!({"room": "world", "data": {"hello": "from a"}}).to_string();
    members[0].send(ROOM_MESSAGE, message.as_bytes()).await.expect("send");
    for member in &mut members {
        let broadcast = next_with(member, ROOM_MESSAGE).await;
        assert_eq!(broadcast["data"], json!({"hello": "from a"}), "{broadcast}");
    }
    for member in &mut members {
        nothing_more(member, ROOM_MESSAGE).await;
    }
    // The push API's room push from node c reaches the members of every node once.
    let body = json!({ "room": "world", "data": "to all members" }).to_string();
    let (status, answer) = c.admin("POST", "/push/room", &body, false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    for member in &mut members {
        assert_eq!(next_with(member, PUSH).await, json!("to all members"));
    }
    for member in &mut members {
        nothing_more(member, PUSH).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_revokes_the_registration_and_frees_the_id() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let [a, b, c] = three_nodes(&redis, &etcd).await;
    wait_nodes(&a, &[1, 2, 3]).await;
    let leaving = b.gateway.node_id();
    let started = std::time::Instant::now();
    b.gateway.shutdown(Duration::from_secs(4)).await;
    let remaining: Vec<u32> = [1, 2, 3].into_iter().filter(|id| *id != leaving).collect();
    wait_nodes(&a, &remaining).await;
    // Revoked, not expired: gone well before the TTL would have run out.
    assert!(started.elapsed() < Duration::from_secs(TTL_S), "took {:?}", started.elapsed());
    let held: Option<String> = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{leaving}"))).await;
    assert_eq!(held, None, "the id is released");
    // A new node takes the freed id.
    let d = node(Some(&redis), Some(&etcd)).await;
    assert_eq!(d.gateway.node_id(), leaving);
    wait_nodes(&c, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_held_under_another_lease_is_not_overwritten_and_is_retaken_when_it_goes() {
    // A process that held id 1 before (stalled, fenced, not yet revoked) left its
    // registration under its own lease; the new holder of the id must not overwrite it (the
    // stale process's revoke would then delete the new holder's registration) and must
    // register as soon as it is gone.
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let key = "/wasmgate/nodes/wasmgate/1";
    let stale = json!({"id": 1, "type": "gateway", "name": "wasmgate", "ws_addr": "127.0.0.1:9",
        "tcp_addr": null, "admin_addr": null, "load": 0, "version": "0", "incarnation": 7})
    .to_string();
    let stale_lease = etcd.put_leased(key, &stale, 60).await;
    let a = node(Some(&redis), Some(&etcd)).await;
    assert_eq!(a.gateway.node_id(), 1);
    // Three keepalive rounds (every ttl_s / 3) without touching the other lease's key.
    tokio::time::sleep(Duration::from_millis(TTL_S * 1000)).await;
    assert_eq!(etcd.get(key).await, Some((stale.clone(), stale_lease)), "not overwritten");
    etcd.revoke(stale_lease).await;
    wait_until("the node registers again once the other registration is gone", || async {
        etcd.get(key).await.is_some_and(|(value, lease)| {
            let info: Value = serde_json::from_str(&value).unwrap_or_default();
            lease != stale_lease && info["incarnation"].as_u64().is_some_and(|i| i != 7 && i != 0)
        })
    })
    .await;
    // Deleted behind its back (as a stale revoke would): back within a keepalive round.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("etcd");
    client.delete(key, None).await.expect("etcd delete");
    wait_until("the node registers again after its key was deleted", || async {
        etcd.get(key).await.is_some()
    })
    .await;
    wait_nodes(&a, &[1]).await;
}

/// A gateway node in a child process (`cluster-node`), killed with SIGKILL when dropped.
struct NodeProcess {
    child: std::process::Child,
    id: u32,
    ws: std::net::SocketAddr,
    /// The node's `node <id> ws <addr>` lines, read on a thread of their own.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node in the cluster of `redis` and `etcd` whose auth script refuses duplicate
    /// logins; waits for its `node <id> ws <addr>` line.
    async fn start(redis: &RedisServer, etcd: &EtcdServer) -> Self {
        Self::start_with(redis, etcd, TTL_S, "").await
    }

    /// As [`NodeProcess::start`], with the id and lease TTL `ttl_s` and `extra` TOML tables
    /// appended to the config.
    async fn start_with(redis: &RedisServer, etcd: &EtcdServer, ttl_s: u64, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            r#"
[node]
id = 1
[listen]
ws = "127.0.0.1:0"
tcp = "127.0.0.1:0"
admin = "127.0.0.1:0"
[scripts.auth]
config = {{ secret = "{secret}", issuer = "{issuer}", duplicate_login = "refuse-new" }}
[cluster]
redis_url = "{redis}"
etcd_endpoints = ["{etcd}"]
ttl_s = {ttl_s}
location_ttl_s = 60
{extra}
"#,
            secret = wasmgate_tests::SECRET,
            issuer = wasmgate_tests::ISSUER,
            redis = redis.url(),
            etcd = etcd.endpoint(),
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write the config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cluster-node"))
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start cluster-node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut node = Self { child, id: 0, ws: loopback(), lines, _dir: dir };
        node.next_start(PROMPT).await;
        node
    }

    /// Waits for the node's next `node <id> ws <addr>` line (its start, or its rejoin under a
    /// new id) and records both.
    async fn next_start(&mut self, within: Duration) {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .expect("the node (re)started in time")
            .expect("the node is running");
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, id, _, ws] = words[..] else { panic!("unexpected line {line:?}") };
        (self.id, self.ws) = (id.parse().expect("id"), ws.parse().expect("ws addr"));
    }
}

impl NodeProcess {
    /// Sends `signal` (`STOP`, `CONT`) to the node's process.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node in-process asking for id 1, refusing duplicate logins, locations kept 60 s.
async fn refuse_new_node(redis: &RedisServer, etcd: &EtcdServer) -> Harness {
    let (redis_url, etcd_endpoint) = (redis.url(), etcd.endpoint());
    Harness::start_with(move |c| {
        c.node.id = 1;
        c.cluster.redis_url = Some(redis_url);
        c.cluster.etcd_endpoints = vec![etcd_endpoint];
        c.cluster.ttl_s = TTL_S;
        c.cluster.location_ttl_s = 60;
        c.scripts.auth.config.insert("duplicate_login".into(), "refuse-new".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_leaves_discovery_within_its_ttl_and_frees_its_id_and_users() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let a = refuse_new_node(&redis, &etcd).await;
    let killed = NodeProcess::start(&redis, &etcd).await;
    let killed_id = killed.id;
    wait_nodes(&a, &[1, 2]).await;
    // A user logged in on the node that will be killed: her location names it for 60 s.
    let mut hank = Client::ws(&format!("ws://{}/", killed.ws), false).await.expect("connect");
    hank.login(1, &wasmgate_tests::token("hank")).await.expect("login");
    let mut refused = a.ws(false).await;
    refused.send(1, wasmgate_tests::token("hank").as_bytes()).await.expect("send");
    wasmgate_tests::expect_error_then_close(&mut refused, "duplicate_login", Some(4003)).await;

    let started = std::time::Instant::now();
    drop(killed); // SIGKILL: no revoke, no release, no location delete
    wait_nodes(&a, &[a.gateway.node_id()]).await;
    let gone_after = started.elapsed();
    assert!(gone_after < Duration::from_secs(TTL_S + 3), "left discovery after {gone_after:?}");
    // Her location still names the dead node, but its node is gone: the login takes it over.
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:hank")).await;
    assert!(location.starts_with(&format!("{killed_id}:")), "{location}");
    let _hank_again = a.logged_in_ws("hank").await;
    wait_until("the killed node's id key expires", || async {
        let held: Option<String> =
            redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{killed_id}"))).await;
        held.is_none()
    })
    .await;
    let d = node(Some(&redis), Some(&etcd)).await;
    assert_eq!(d.gateway.node_id(), killed_id, "the id is claimable again");
}

/// Fencing: a node stalled past its TTL (SIGSTOP) while another process claims its id finds
/// on resume that its claim's deadline has passed; it closes its sessions with 1012
/// `node_restarting` and rejoins under a fresh id instead of serving beside the new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stalled_past_its_ttl_fences_itself_and_rejoins_under_a_new_id() {
    let session_of = |login: &wasmgate::protocol::client::Packet| -> u64 {
        let answer: Value = serde_json::from_slice(&login.body).expect("login answer");
        answer["session_id"].as_str().and_then(|id| id.parse().ok()).expect("a session id")
    };
    // Session ids: 41 bits of time, the 10-bit node id, a 12-bit sequence (docs/protocol.md).
    let node_of = |session: u64| ((session >> 12) & 0x3ff) as u32;
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let mut stalled = NodeProcess::start(&redis, &etcd).await;
    let id = stalled.id;
    let mut ivy = Client::ws(&format!("ws://{}/", stalled.ws), false).await.expect("connect");
    let ivy_before = session_of(&ivy.login(1, &wasmgate_tests::token("ivy")).await.expect("login"));
    stalled.signal("STOP");
    wait_until("the stalled node's id key expires", || async {
        let held: Option<String> = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{id}"))).await;
        held.is_none()
    })
    .await;
    let usurper = node(Some(&redis), Some(&etcd)).await;
    assert_eq!(usurper.gateway.node_id(), id, "another process claims the id");
    let mut jack = usurper.ws(false).await;
    let jack_session = session_of(&jack.login(1, &wasmgate_tests::token("jack")).await.expect("login"));
    stalled.signal("CONT");
    wasmgate_tests::expect_error_then_close(&mut ivy, "node_restarting", Some(1012)).await;
    stalled.next_start(PROMPT).await;
    assert_ne!(stalled.id, id, "rejoined under a fresh id");
    let mut both = [id, stalled.id];
    both.sort();
    wait_nodes(&usurper, &both).await;
    let held: String = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{id}"))).await;
    let mut ivy = Client::ws(&format!("ws://{}/", stalled.ws), false).await.expect("reconnect");
    let ivy_after =
        session_of(&ivy.login(1, &wasmgate_tests::token("ivy")).await.expect("login after the rejoin"));
    let still: String = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{id}"))).await;
    assert_eq!(held, still, "the usurper keeps its claim");
    // No session id minted twice; the resumed process mints under its new id only.
    assert_eq!((node_of(ivy_before), node_of(jack_session), node_of(ivy_after)), (id, id, stalled.id));
    assert!(ivy_before != jack_session && ivy_after != jack_session && ivy_before != ivy_after);
    // A push for a session id reaches at most the one session that owns it: the old process's
    // session is gone everywhere, the usurper's gets its own push once, nobody else anything.
    let push =
        |session: u64| json!({"session_id": session.to_string(), "msg_id": PUSH, "data": 1}).to_string();
    let (status, answer) =
        usurper.admin("POST", "/push/session", &push(ivy_before), false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "the stalled process's old session is gone: {answer}");
    let (status, answer) =
        usurper.admin("POST", "/push/session", &push(jack_session), false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(next_with(&mut jack, PUSH).await, json!(1));
    nothing_more(&mut jack, PUSH).await;
    nothing_more(&mut ivy, PUSH).await;
}

/// Location writes carry the node id key's token and Redis refuses them once another process
/// holds the id: a write from a process that lost its id (even one in flight when it did)
/// never lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_location_writes_from_a_process_that_no_longer_holds_its_id() {
    let redis = RedisServer::start().await;
    let h = Harness::start_with(|c| {
        c.cluster.redis_url = Some(redis.url());
        c.cluster.ttl_s = 30; // no refresh during the test: only Redis's check can refuse
    })
    .await;
    let id = h.gateway.node_id();
    let _una = h.logged_in_ws("una").await;
    wait_until("una's location is written", || async {
        let location: Option<String> = redis.query(redis::cmd("GET").arg("wasmgate:user:una")).await;
        location.is_some()
    })
    .await;
    // Another process takes the id (as after a stall past the TTL).
    let _: () =
        redis.query(redis::cmd("SET").arg(format!("wasmgate:node:{id}")).arg("another-process")).await;
    let _vic = h.logged_in_ws("vic").await;
    // una's write above landed within milliseconds; give vic's ample time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let location: Option<String> = redis.query(redis::cmd("GET").arg("wasmgate:user:vic")).await;
    assert_eq!(location, None, "a location written under a lost id");
}

/// A bus message published longer ago than `cluster.bus_max_age_ms` is dropped on receipt and
/// counted `expired`; the same message with a fresh publish time is delivered. The envelope is
/// the one docs/cluster.md gives: origin u32, publish time u64 (ms), backend frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_messages_older_than_the_max_age_are_dropped_and_counted() {
    use tokio_util::codec::Encoder as _;
    use wasmgate::protocol::backend::{BackendCodec, BackendFrame};
    let redis = RedisServer::start().await;
    let h = Harness::start_with(|c| {
        with_admin_token(c);
        c.cluster.redis_url = Some(redis.url());
        c.cluster.bus_max_age_ms = 2_000;
    })
    .await;
    let mut jill = h.logged_in_ws("jill").await;
    let channel = format!("wasmgate:bus:{}", h.gateway.node_id());
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let publish = |published_ms: u64, body: &'static str| {
        let mut payload = bytes::BytesMut::new();
        bytes::BufMut::put_u32(&mut payload, 999); // origin: a node that is not this one
        bytes::BufMut::put_u64(&mut payload, published_ms);
        let frame = BackendFrame::PushUser { user_id: "jill".into(), msg_id: PUSH, body: body.into() };
        BackendCodec::default().encode(frame, &mut payload).expect("encode");
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&channel).arg(payload.to_vec());
        publish
    };
    let expired = || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        let line =
            metrics.lines().find(|l| l.starts_with("wasmgate_cluster_messages_total{outcome=\"expired\"}"));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).expect("the expired series")
    };
    assert_eq!(expired().await, 0);
    wait_until("the node subscribes to its channel", || async {
        let subscribed: (String, u64) = redis.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel)).await;
        subscribed.1 == 1
    })
    .await;
    let receivers: u64 = redis.query(&mut publish(now_ms - 10_000, "stale")).await;
    assert_eq!(receivers, 1, "the node is subscribed");
    let receivers: u64 = redis.query(&mut publish(now_ms, "fresh")).await;
    assert_eq!(receivers, 1);
    // In order per channel: the first packet to arrive is the fresh one, the stale one is gone.
    assert_eq!(next_with(&mut jill, PUSH).await, Value::String("fresh".into()));
    wait_until("the stale message is counted", || async { expired().await == 1 }).await;
    nothing_more(&mut jill, PUSH).await;
}

/// A node stalled (SIGSTOP) for longer than `heartbeat_ms` while its client kept sending
/// heartbeats: on resume the node reads what waited in the socket before judging the session
/// silent, so the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resumed_after_a_stall_keeps_sessions_whose_clients_kept_sending() {
    const HEARTBEAT: u32 = 2;
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    // A TTL longer than the stall: the node keeps its id (a longer stall fences it: below).
    let node = NodeProcess::start_with(&redis, &etcd, 10, "[timeouts]\nheartbeat_ms = 1500\n").await;
    let mut client = Client::ws(&format!("ws://{}/", node.ws), false).await.expect("connect");
    client.login(1, &wasmgate_tests::token("ivy")).await.expect("login");
    let sender = tokio::spawn(async move {
        // Heartbeats every 250 ms for 4 s; the node is stopped from 0.5 s to 3.5 s.
        for _ in 0..16 {
            client.send(HEARTBEAT, b"").await.expect("send a heartbeat");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        client
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await; // twice heartbeat_ms
    node.signal("CONT");
    let mut client = sender.await.expect("sender");
    // Every heartbeat is answered and the session is not closed.
    let seq = client.send(HEARTBEAT, b"").await.expect("send");
    loop {
        match client.recv_within(PROMPT).await.expect("an answer") {
            wasmgate_tests::Received::Packet(p) if p.seq == seq => break,
            wasmgate_tests::Received::Packet(p) => assert_eq!(p.msg_id, HEARTBEAT, "{p:?}"),
            closed => panic!("the session was closed after the stall: {closed:?}"),
        }
    }
}

/// `refuse-new` and a crashed node whose id a new process claimed: the user's location names
/// the id, but not the incarnation now registered under it, so the user logs in elsewhere at
/// once instead of being refused until the location's TTL (60 s here) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_does_not_lock_out_the_users_of_a_crashed_node_whose_id_was_reused() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let a = refuse_new_node(&redis, &etcd).await;
    let crashed = NodeProcess::start(&redis, &etcd).await;
    let id = crashed.id;
    let mut hank = Client::ws(&format!("ws://{}/", crashed.ws), false).await.expect("connect");
    hank.login(1, &wasmgate_tests::token("hank")).await.expect("login");
    drop(crashed); // SIGKILL
    wait_until("the crashed node's id key expires", || async {
        let held: Option<String> = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{id}"))).await;
        held.is_none()
    })
    .await;
    let restarted = NodeProcess::start(&redis, &etcd).await;
    assert_eq!(restarted.id, id, "the new process claims the freed id");
    wait_nodes(&a, &[1, id]).await;
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:hank")).await;
    assert!(location.starts_with(&format!("{id}:")), "still the crashed process's session: {location}");
    let _hank_again = a.logged_in_ws("hank").await;
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:hank")).await;
    assert!(location.starts_with("1:"), "taken over by node a: {location}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_after_etcd_loses_everything_and_recover_after_a_redis_restart() {
    let (mut redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let [a, b, _c] = three_nodes(&redis, &etcd).await;
    wait_nodes(&a, &[1, 2, 3]).await;
    // etcd comes back empty: every node registers again and discovery fills up.
    let etcd = etcd.restart_empty().await;
    wait_until("every node registered again", || async { etcd.keys("/wasmgate/nodes/").await.len() == 3 })
        .await;
    wait_nodes(&a, &[1, 2, 3]).await;

    // Redis comes back empty: ids are claimed again and locations restored by the refresh.
    let mut alice = b.logged_in_ws("alice").await;
    redis.restart().await;
    let b_id = b.gateway.node_id();
    wait_until("node ids and alice's location are back", || async {
        let id: Option<String> = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{b_id}"))).await;
        let location: Option<String> = redis.query(redis::cmd("GET").arg("wasmgate:user:alice")).await;
        id.is_some() && location.is_some()
    })
    .await;
    // The bus works again (the subscriber reconnected): a push from node a reaches alice.
    let body = json!({ "user_id": "alice", "data": "after the restart" }).to_string();
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let (status, answer) = a.admin("POST", "/push/user", &body, false, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{answer}");
        if tokio::time::timeout(Duration::from_millis(500), next_with(&mut alice, PUSH)).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no cross-node push after the Redis restart");
    }
}

/// Redis restarted empty: as soon as a node's bus subscription is back it re-writes its users'
/// locations, so a cross-node push to a user works again at once, not at the next periodic
/// refresh (a third of `location_ttl_s`: 200 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_locations_are_rewritten_on_reconnect() {
    let (mut redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let start = || {
        let (redis_url, etcd_endpoint) = (redis.url(), etcd.endpoint());
        Harness::start_with(move |c| {
            with_admin_token(c);
            c.cluster.redis_url = Some(redis_url);
            c.cluster.etcd_endpoints = vec![etcd_endpoint];
            c.cluster.ttl_s = TTL_S;
            c.cluster.location_ttl_s = 600;
        })
    };
    let (a, b) = tokio::join!(start(), start());
    wait_nodes(&a, &{
        let mut ids = [a.gateway.node_id(), b.gateway.node_id()];
        ids.sort();
        ids
    })
    .await;
    let mut alice = b.logged_in_ws("alice").await;
    redis.restart().await;
    let restarted = std::time::Instant::now();
    let body = json!({ "user_id": "alice", "data": "after the restart" }).to_string();
    loop {
        let (status, answer) = a.admin("POST", "/push/user", &body, false, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{answer}");
        if tokio::time::timeout(Duration::from_millis(200), next_with(&mut alice, PUSH)).await.is_ok() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no cross-node push 5 s after the Redis restart"
        );
    }
}

#[tokio::test]
async fn without_redis_and_etcd_the_gateway_runs_standalone() {
    let h = node(None, None).await;
    assert_eq!(h.gateway.node_id(), 1);
    assert!(h.gateway.nodes().is_empty());
    let (status, listed) = h.admin("GET", "/cluster/nodes", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, listed), (200, json!({"node_id": 1, "nodes": []})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_relay_to_a_dest_only_another_node_has_crosses_the_bus_and_the_reply_comes_back() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    // Node a: its backend (dest 101) relays message 102 to dest 300, which a does not have.
    let maps_a = tempfile::tempdir().expect("temp dir");
    let relaying = Backend::start_with(loopback(), BackendOptions { relay_to: 300 }).await;
    write_dest_map(&maps_a, &[(101, relaying.addr)]);
    // Node b: dest 300 -> a backend that answers a relayed message with a reply to its session.
    let maps_b = tempfile::tempdir().expect("temp dir");
    let answering = Backend::start(loopback()).await;
    write_dest_map(&maps_b, &[(101, answering.addr), (300, answering.addr)]);
    let in_cluster = |maps: std::path::PathBuf| {
        let (redis_url, etcd_url) = (redis.url(), etcd.endpoint());
        move |c: &mut wasmgate::Config| {
            c.node.id = 1;
            c.maps.dest_map = Some(maps);
            c.cluster.redis_url = Some(redis_url);
            c.cluster.etcd_endpoints = vec![etcd_url];
            c.cluster.ttl_s = TTL_S;
        }
    };
    let a = Harness::start_with(in_cluster(maps_a.path().join("dest_map.json"))).await;
    let b = Harness::start_with(in_cluster(maps_b.path().join("dest_map.json"))).await;
    b.wait_upstream(300, 1).await;
    wait_until("node a sees that node b has dest 300", || async {
        a.gateway.nodes().iter().any(|n| n.id == b.gateway.node_id() && n.dests == [101, 300])
    })
    .await;

    let mut client = a.logged_in_ws("ivan").await;
    for i in 0..3 {
        let body = format!("across {i}");
        let seq = client.send(102, body.as_bytes()).await.expect("send");
        let (reply, _) = client.recv_reply(102, seq, PROMPT).await.expect("the relayed reply");
        assert_eq!(reply.body, format!("relayed from 101: {body}").as_bytes());
    }
    let (_, text) = b.admin_get("/metrics").await;
    assert!(wasmgate_tests::metric(&text, "wasmgate_cluster_messages_total{outcome=\"received\"}") >= 3.0);
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A node whose `message_map` sends 114-116 to the counter handler script, which uses the
/// `cluster` host interface.
async fn scripted_node(redis: &RedisServer, etcd: &EtcdServer) -> (Harness, tempfile::TempDir) {
    let scripts = tempfile::tempdir().expect("temp dir");
    std::fs::copy(wasmgate_tests::COUNTER_HANDLER, scripts.path().join("counter.wasm")).expect("copy");
    let manifest = "[[script]]\nname = \"counter\"\nworld = \"handler\"\nfile = \"counter.wasm\"\n";
    std::fs::write(scripts.path().join("manifest.toml"), manifest).expect("manifest");
    let mut map: serde_json::Map<String, Value> =
        (100..=106).map(|id| (id.to_string(), json!(101))).collect();
    for id in 114..=116 {
        map.insert(id.to_string(), json!("counter"));
    }
    std::fs::write(scripts.path().join("message_map.json"), Value::Object(map).to_string()).expect("map");
    let (redis_url, etcd_url, dir) = (redis.url(), etcd.endpoint(), scripts.path().to_path_buf());
    let h = Harness::start_with(move |c| {
        c.node.id = 1;
        c.cluster.redis_url = Some(redis_url);
        c.cluster.etcd_endpoints = vec![etcd_url];
        c.cluster.ttl_s = TTL_S;
        c.maps.message_map = Some(dir.join("message_map.json"));
        c.scripts.dir = Some(dir);
    })
    .await;
    (h, scripts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_see_the_node_table_and_send_to_the_backends_of_every_node() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let ((a, _a_dir), (b, _b_dir)) = tokio::join!(scripted_node(&redis, &etcd), scripted_node(&redis, &etcd));
    let (ida, idb) = (a.gateway.node_id(), b.gateway.node_id());
    wait_nodes(&a, &[ida.min(idb), ida.max(idb)]).await;
    wait_until("node a sees node b's dests", || async { a.gateway.nodes().iter().all(|n| n.dests == [101]) })
        .await;
    let mut client = a.logged_in_ws("jane").await;

    let seq = client.send(114, b"").await.expect("send");
    let (answer, _) = client.recv_reply(114, seq, PROMPT).await.expect("node table");
    let expected = format!("self={ida} nodes={},{}", ida.min(idb), ida.max(idb));
    assert_eq!(String::from_utf8_lossy(&answer.body), expected);

    // A broadcast to the dest-101 backend of every gateway node: both backends answer the
    // session named in the relay, b's answer crossing back over the bus.
    // The script's answer and the backends' may arrive in any order.
    let seq = client.send(115, b"to every node").await.expect("send");
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("a packet");
        if packet.msg_id == 115 {
            answers.push((packet.seq, String::from_utf8_lossy(&packet.body).into_owned()));
        }
    }
    answers.sort();
    let relayed = "relayed from 0: to every node".to_string();
    assert_eq!(answers, [(0, relayed.clone()), (0, relayed), (seq, "sent:2".to_string())]);
    nothing_more(&mut client, 115).await;

    let seq = client.send(116, b"").await.expect("send");
    let (answer, _) = client.recv_reply(116, seq, PROMPT).await.expect("send error");
    assert_eq!(answer.body, "no-such-node".as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let h = node(Some(&redis), None).await;
    assert_eq!(h.admin("GET", "/readyz", "", false, None).await, (200, json!({"ready": true})));
    redis.stop();
    wait_until("readyz reports Redis", || async {
        let (status, body) = h.admin("GET", "/readyz", "", false, None).await;
        status == 503 && body["not_ready"]["redis"].is_string()
    })
    .await;
    redis.restart().await;
    wait_until("readyz is ready again", || async {
        h.admin("GET", "/readyz", "", false, None).await.0 == 200
    })
    .await;
}
