//! Rooms from the client side: join/leave/limits, room messages to 1,000 members, and a
//! stalled member under the slow-consumer policy.

use std::time::Duration;
use wasmgate::config::RateLimitsConfig;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wasmgate_tests::{ADMIN_TOKEN, Client, Harness, PROMPT, metric, token, wait_until, with_admin_token};

const JOIN: u32 = 5;
const LEAVE: u32 = 6;
const ROOM_MESSAGE: u32 = 7;
const ROOM_LIST: u32 = 8;

/// Sends `msg_id` with `body` and returns the answer to it (a reply or an error frame).
async fn ask(client: &mut Client, msg_id: u32, body: &str) -> (u32, Value) {
    let seq = client.send(msg_id, body.as_bytes()).await.expect("send");
    loop {
        let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("an answer");
        if packet.seq == seq {
            return (packet.msg_id, serde_json::from_slice(&packet.body).expect("JSON answer"));
        }
    }
}

async fn expect_error(client: &mut Client, msg_id: u32, body: &str, code: &str) {
    let (id, answer) = ask(client, msg_id, body).await;
    assert_eq!((id, answer["code"].as_str()), (4, Some(code)), "{answer}");
}

#[tokio::test]
async fn join_leave_duplicates_limits_and_room_deletion() {
    let h = Harness::start_with(|c| {
        with_admin_token(c);
        c.scripts.rooms.config = toml::toml! { max_rooms_per_session = 2
        max_members = 2 };
    })
    .await;
    let mut alice = h.logged_in_ws("alice").await;
    let mut bob = h.logged_in_ws("bob").await;
    let mut carol = h.logged_in_ws("carol").await;

    let (id, answer) = ask(&mut alice, JOIN, r#"{"room":"lobby"}"#).await;
    assert_eq!((id, answer), (JOIN, json!({"room": "lobby", "members": 1, "status": "joined"})));
    let (_, answer) = ask(&mut alice, JOIN, "lobby").await;
    assert_eq!(answer, json!({"room": "lobby", "members": 1, "status": "already_member"}), "joining twice");
    let (_, answer) = ask(&mut bob, JOIN, r#"{"room":"lobby"}"#).await;
    assert_eq!(answer["members"], 2);
    expect_error(&mut carol, JOIN, "lobby", "room_full").await;
    assert_eq!(ask(&mut alice, JOIN, "side").await.1["status"], "joined");
    expect_error(&mut alice, JOIN, "third", "too_many_rooms").await;
    expect_error(&mut carol, JOIN, "", "bad_request").await;
    expect_error(&mut carol, JOIN, &"x".repeat(65), "bad_request").await;
    expect_error(&mut carol, JOIN, r#"{"nope":1}"#, "bad_request").await;
    expect_error(&mut carol, ROOM_MESSAGE, r#"{"room":"lobby","data":"hi"}"#, "not_in_room").await;

    let (id, list) = ask(&mut carol, ROOM_LIST, "").await;
    assert_eq!(id, ROOM_LIST);
    assert_eq!(
        list,
        json!({"rooms": [{"room": "lobby", "members": 2}, {"room": "side", "members": 1}], "total": 2})
    );
    let (status, rooms) = h.admin("GET", "/rooms?prefix=lo", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, rooms), (200, json!({"rooms": [{"room": "lobby", "members": 2}], "total": 1})));

    let (id, answer) = ask(&mut alice, LEAVE, r#"{"room":"lobby"}"#).await;
    assert_eq!((id, answer), (LEAVE, json!({"room": "lobby", "members": 1, "status": "left"})));
    expect_error(&mut alice, LEAVE, "lobby", "not_in_room").await;
    assert_eq!(ask(&mut carol, JOIN, "lobby").await.1["members"], 2, "room has space again");
    assert_eq!(ask(&mut bob, LEAVE, "lobby").await.1["members"], 1);
    assert_eq!(ask(&mut carol, LEAVE, "lobby").await.1["members"], 0);
    let (_, list) = ask(&mut carol, ROOM_LIST, "").await;
    assert_eq!(list["rooms"], json!([{"room": "side", "members": 1}]), "the empty room is deleted");

    // A closing session leaves every room it is in.
    alice.close().await.expect("close");
    wait_until("alice's rooms are gone", || async {
        h.admin("GET", "/rooms", "", false, Some(ADMIN_TOKEN)).await.1["total"] == 0
    })
    .await;
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "wasmgate_rooms "), 0.0);
    assert_eq!(metric(&metrics, "wasmgate_room_members "), 0.0);
    assert_eq!(metric(&metrics, "wasmgate_room_joins_total{reason=\"room_full\"}"), 1.0);
}

/// Reads room broadcasts until `count` arrived; returns their bodies in order.
async fn read_broadcasts(client: &mut Client, count: usize) -> Vec<Value> {
    let mut bodies = Vec::with_capacity(count);
    while bodies.len() < count {
        let packet = client.recv_within(PROMPT).await.expect("a broadcast").packet().expect("a broadcast");
        assert_eq!((packet.msg_id, packet.seq), (ROOM_MESSAGE, 0), "{packet:?}");
        bodies.push(serde_json::from_slice(&packet.body).expect("JSON broadcast"));
    }
    bodies
}

/// Every sender's messages, in the order one member received them, must be 0, 1, 2, ...
fn assert_in_order_per_sender(bodies: &[Value], senders: usize, per_sender: usize) {
    let mut next = vec![0u64; senders];
    for body in bodies {
        let (s, n) =
            (body["data"]["s"].as_u64().expect("s") as usize, body["data"]["n"].as_u64().expect("n"));
        assert_eq!(n, next[s], "sender {s} out of order: {bodies:?}");
        next[s] += 1;
    }
    assert!(next.iter().all(|&n| n as usize == per_sender), "{next:?}");
}

#[tokio::test]
async fn a_thousand_members_receive_every_message_in_order_per_sender() {
    const MEMBERS: usize = 1000;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 20;
    // A thousand connections from one address: the abuse limits are tested on their own.
    let h = Harness::start_with(|c| c.rate_limits = RateLimitsConfig::off()).await;
    // Half WebSocket, half TCP, joined in concurrent batches.
    let mut members = Vec::with_capacity(MEMBERS);
    for batch in 0..MEMBERS / 100 {
        let joins = (0..100).map(|i| {
            let h = &h;
            async move {
                let n = batch * 100 + i;
                let mut client = if n % 2 == 0 { h.ws(false).await } else { h.tcp().await };
                client.login(1, &token(&format!("member-{n}"))).await.expect("login");
                let (_, answer) = ask(&mut client, JOIN, "big").await;
                assert_eq!(answer["status"], "joined");
                client
            }
        });
        members.extend(futures_util::future::join_all(joins).await);
    }
    let mut senders: Vec<Client> = members.drain(..SENDERS).collect();
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move { read_broadcasts(&mut client, SENDERS * PER_SENDER).await })
        })
        .collect();
    let sending = senders.iter_mut().enumerate().map(|(s, client)| async move {
        for n in 0..PER_SENDER {
            let body = json!({"room": "big", "data": {"s": s, "n": n}}).to_string();
            client.send(ROOM_MESSAGE, body.as_bytes()).await.expect("room message");
        }
        // The sender is a member too: it gets its own messages, in order.
        read_broadcasts(client, SENDERS * PER_SENDER).await
    });
    let sent: Vec<Vec<Value>> = futures_util::future::join_all(sending).await;
    for bodies in sent {
        assert_in_order_per_sender(&bodies, SENDERS, PER_SENDER);
    }
    for reader in readers {
        let bodies = reader.await.expect("reader task");
        assert_in_order_per_sender(&bodies, SENDERS, PER_SENDER);
        assert_eq!(bodies[0]["room"], "big");
        assert!(bodies[0]["from"].as_str().is_some_and(|f| f.starts_with("member-")));
    }
    let (_, metrics) = h.admin_get("/metrics").await;
    let delivered = metric(&metrics, "wasmgate_fanout_delivered_total ");
    assert_eq!(delivered, (MEMBERS * SENDERS * PER_SENDER) as f64);
}

/// A TCP client that logs in, joins `room`, then never reads again, with a small receive
/// buffer so the gateway's writes to it stall soon.
async fn stalled_member(h: &Harness, room: &str) -> Framed<tokio::net::TcpStream, LengthDelimitedCodec> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(h.gateway.tcp_addr().expect("tcp listener")).await.expect("connect");
    let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
    for (msg_id, seq, body) in [(1u32, 1u32, token("stalled")), (JOIN, 2, room.to_string())] {
        let mut frame = BytesMut::new();
        frame.put_u32(msg_id);
        frame.put_u32(seq);
        frame.put_slice(body.as_bytes());
        framed.send(frame.freeze()).await.expect("send");
        let answer = framed.next().await.expect("an answer").expect("an answer");
        assert_eq!(&answer[..4], &msg_id.to_be_bytes(), "answer to {msg_id}");
    }
    framed
}

#[tokio::test]
async fn a_stalled_member_is_disconnected_and_does_not_delay_the_others() {
    const MESSAGES: usize = 300;
    let h = Harness::start_with(|c| {
        c.limits.pending_write_num = 16;
        // A load test: the abuse limits (docs/security.md) are tested on their own.
        c.rate_limits = RateLimitsConfig::off();
    })
    .await;
    let _stalled = stalled_member(&h, "arena").await;
    let mut sender = h.logged_in_ws("sender").await;
    assert_eq!(ask(&mut sender, JOIN, "arena").await.1["status"], "joined");
    let mut readers = Vec::new();
    for i in 0..4 {
        let mut member = h.logged_in_ws(&format!("reader-{i}")).await;
        assert_eq!(ask(&mut member, JOIN, "arena").await.1["status"], "joined");
        readers.push(tokio::spawn(async move { (read_broadcasts(&mut member, MESSAGES).await, member) }));
    }
    // 300 x 30 KB: far more than the stalled member's socket buffers and queue can hold. The
    // sender waits for its own copy of each message before sending the next, so the room's
    // pace is visible: it must not stop when the stalled member's queue fills.
    let filler = "x".repeat(30_000);
    for n in 0..MESSAGES {
        let body = json!({"room": "arena", "data": {"s": 0, "n": n, "pad": filler}}).to_string();
        sender.send(ROOM_MESSAGE, body.as_bytes()).await.expect("send");
        let own = tokio::time::timeout(Duration::from_secs(5), read_broadcasts(&mut sender, 1))
            .await
            .unwrap_or_else(|_| panic!("message {n} took over 5 s to come back: the room stalled"));
        assert_eq!(own[0]["data"]["n"], n);
    }
    let mut members = Vec::new();
    for reader in readers {
        let (bodies, member) = reader.await.expect("reader");
        assert_in_order_per_sender(&bodies, 1, MESSAGES);
        members.push(member);
    }
    wait_until("the stalled member is closed as a slow consumer", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, "wasmgate_sessions_closed_total{reason=\"slow_consumer\"}") == 1.0
    })
    .await;
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(metric(&metrics, "wasmgate_fanout_undelivered_total ") >= 1.0);
    // The stalled member left the room when it was closed.
    let (_, list) = ask(&mut sender, ROOM_LIST, "").await;
    assert_eq!(list["rooms"], json!([{"room": "arena", "members": 5}]));
}
