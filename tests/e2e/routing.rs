//! Routing through the router script and the queue pools to a real backend.

use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_tests::{Backend, Harness, PROMPT, error_of, expect_error_then_close, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_message_is_answered_by_the_backend_on_every_transport() {
    let h = Harness::start().await;
    let mut ws = h.logged_in_ws("alice").await;
    let seq = ws.send(100, b"hello over ws").await.unwrap();
    let (reply, _) = ws.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"hello over ws");

    let mut tcp = h.tcp().await;
    tcp.login(1, &wasmgate_tests::token("bob")).await.unwrap();
    let seq = tcp.send(100, b"hello over tcp").await.unwrap();
    let (reply, _) = tcp.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"hello over tcp");

    let mut text = h.ws(true).await;
    text.login(1, &wasmgate_tests::token("carol")).await.unwrap();
    let seq = text.send(100, br#"{"move":[1,2]}"#).await.unwrap();
    let (reply, _) = text.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], br#"{"move":[1,2]}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sessions_messages_arrive_in_order() {
    let h = Harness::start().await;
    let mut c = h.logged_in_ws("order").await;
    for i in 0..200u32 {
        c.send_seq(100, 1000 + i, i.to_string().as_bytes()).await.unwrap();
    }
    for i in 0..200u32 {
        let p = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
        assert_eq!((p.msg_id, p.seq), (100, 1000 + i));
        assert_eq!(p.body, i.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_id_gets_an_error_frame_and_the_session_goes_on() {
    let h = Harness::start().await;
    let mut c = h.logged_in_ws("u").await;
    let seq = c.send(777, b"?").await.unwrap();
    let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
    assert_eq!(error_of(&error.body).0, "unknown_message");
    let seq = c.send(100, b"still here").await.unwrap();
    c.recv_reply(100, seq, PROMPT).await.unwrap();
    // Counted by code and by who is to blame (docs/protocol.md).
    let metrics = h.gateway.metrics().render();
    let client = "wasmgate_client_errors_total{code=\"unknown_message\",blame=\"client\"}";
    assert_eq!(wasmgate_tests::metric(&metrics, client), 1.0);
    let upstream = "wasmgate_client_errors_total{code=\"upstream_unavailable\",blame=\"upstream\"}";
    assert_eq!(wasmgate_tests::metric(&metrics, upstream), 0.0, "every series exists from the start");
}

/// `scripts.native_router` decides as the default router script does (map lookup, else
/// `unknown_message`) without calling it, and follows a `message_map` reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_router_routes_like_the_default_script_without_calling_it() {
    let h = Harness::start_with(|c| c.scripts.native_router = true).await;
    let mut c = h.logged_in_ws("native").await;
    let seq = c.send(100, b"natively").await.unwrap();
    let (reply, _) = c.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"natively");
    let seq = c.send(777, b"?").await.unwrap();
    let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
    assert_eq!(error_of(&error.body).0, "unknown_message");

    wasmgate_tests::write_message_map(&h.dir, &[(100, 101), (777, 101)]);
    wait_until("777 routes after the reload", || {
        let metrics = h.gateway.metrics().render();
        async move { wasmgate_tests::metric(&metrics, "wasmgate_map_reloads_total{reason=\"ok\"}") >= 1.0 }
    })
    .await;
    let seq = c.send(777, b"now known").await.unwrap();
    c.recv_reply(777, seq, PROMPT).await.unwrap();
    let router_calls = wasmgate_tests::metric_sum(
        &h.gateway.metrics().render(),
        "wasmgate_script_calls_total",
        &["script=\"router\""],
    );
    assert_eq!(router_calls, 0.0, "the router script was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_user_relay_between_backends_and_kick() {
    let h = Harness::start().await;
    let mut a1 = h.logged_in_ws("pat").await;
    let mut a2 = h.logged_in_ws("pat").await;
    // 101: reply to the sender, push 500 to every session of the user.
    let seq = a1.send(101, b"ping").await.unwrap();
    let (_, before) = a1.recv_reply(101, seq, PROMPT).await.unwrap();
    let pushed = if before.iter().any(|p| p.msg_id == 500) {
        before.into_iter().find(|p| p.msg_id == 500).unwrap()
    } else {
        a1.recv_within(PROMPT).await.unwrap().packet().unwrap()
    };
    assert_eq!(pushed.msg_id, 500);
    assert!(String::from_utf8_lossy(&pushed.body).contains("pat"));
    let other = a2.recv_within(PROMPT).await.unwrap().packet().unwrap();
    assert_eq!((other.msg_id, other.seq), (500, 0));
    // 102: backend -> gateway -> backend (dest 101) -> reply.
    let seq = a1.send(102, b"via relay").await.unwrap();
    let (relayed, _) = a1.recv_reply(102, seq, PROMPT).await.unwrap();
    assert_eq!(&relayed.body[..], b"relayed from 101: via relay");
    // 103: the backend kicks the session.
    a2.send(103, b"").await.unwrap();
    expect_error_then_close(&mut a2, "kicked", Some(4004)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_gives_errors_then_recovers_when_it_returns() {
    let h = Harness::start().await;
    let mut c = h.logged_in_ws("resilient").await;
    let seq = c.send(100, b"before").await.unwrap();
    c.recv_reply(100, seq, PROMPT).await.unwrap();

    let addr: SocketAddr = h.backend.addr;
    h.backend.stop();
    // The gateway notices the backend left (a request written into the socket in that very
    // instant cannot be answered; docs/protocol.md says so).
    wait_until("the gateway notices the backend left", || async {
        h.gateway.upstream_connections_up(101) == 0
    })
    .await;
    // From then on every message is answered with an error, in order, while it is away.
    for _ in 0..5 {
        let seq = c.send(100, b"while down").await.unwrap();
        let (error, others) = c.recv_reply(4, seq, PROMPT).await.unwrap();
        assert!(others.is_empty(), "unexpected {others:?}");
        assert_eq!(error_of(&error.body).0, "upstream_unavailable");
    }
    let upstream = "wasmgate_client_errors_total{code=\"upstream_unavailable\",blame=\"upstream\"}";
    assert_eq!(wasmgate_tests::metric(&h.gateway.metrics().render(), upstream), 5.0);

    let _back = Backend::start(addr).await;
    h.wait_upstream(101, 2).await;
    let seq = c.send(100, b"after").await.unwrap();
    let (reply, _) = c.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dest_not_in_dest_map_gets_unknown_dest() {
    let h = Harness::start().await;
    wasmgate_tests::write_message_map(&h.dir, &[(100, 101), (150, 999)]);
    let mut c = h.logged_in_ws("nodest").await;
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let seq = c.send(150, b"x").await.unwrap();
        let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
        match error_of(&error.body).0.as_str() {
            "unknown_dest" => break,
            "unknown_message" => {
                assert!(tokio::time::Instant::now() < deadline, "message_map never reloaded")
            }
            other => panic!("unexpected error {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session whose own pool connection is down is served by another connected one of the same
/// dest (docs/configuration.md, maps): a backend that accepts one connection and then stops
/// listening leaves one of dest 301's two connections up; every session still gets answers, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_a_down_pool_connection_use_another_live_one() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use wasmgate::protocol::backend::BackendCodec;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        drop(listener);
        let mut framed = tokio_util::codec::Framed::new(stream, BackendCodec::default());
        while let Some(Ok(frame)) = framed.next().await {
            for answer in wasmgate_examples::backend::handle(frame, peer, Default::default()) {
                if framed.send(answer).await.is_err() {
                    return;
                }
            }
        }
    });
    let h = with_dest_301(addr).await;
    assert_eq!(h.gateway.upstream_connections_up(301), 1, "one connection up, one down");
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(h.logged_in_ws(&format!("failover-{i}")).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        for k in 0..20 {
            seqs.push(c.send(300, format!("{i}-{k}").as_bytes()).await.unwrap());
        }
        for (k, seq) in seqs.into_iter().enumerate() {
            let p = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
            assert_eq!((p.msg_id, p.seq), (300, seq), "session {i}: answered in order, no error frame");
            assert_eq!(p.body, format!("{i}-{k}").as_bytes());
        }
    }
    let (_, metrics) = h.admin_get("/metrics").await;
    let unavailable = "wasmgate_routed_total{dest=\"301\",outcome=\"upstream_unavailable\"}";
    assert_eq!(wasmgate_tests::metric(&metrics, unavailable), 0.0);
}

/// A backend that sends malformed frames (an unknown kind, a truncated reply, a gateway-only
/// kind) and a kick whose reason is not UTF-8 keeps its connection: the bad frames are skipped
/// and counted, the kick is applied, and the reply after them arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_frames_are_skipped_and_a_kick_with_a_bad_reason_applies() {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    use wasmgate::protocol::backend::{BackendCodec, BackendFrame};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (victim_tx, victim_rx) = tokio::sync::oneshot::channel::<u64>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        drop(listener); // one connection of the pool: the other stays down
        let (read, mut write) = stream.into_split();
        let mut frames = tokio_util::codec::FramedRead::new(read, BackendCodec::default());
        let victim = victim_rx.await.unwrap();
        while let Some(Ok(frame)) = frames.next().await {
            let BackendFrame::Forward { session_id, seq, .. } = frame else { continue };
            let frame = |payload: &[u8]| [&(payload.len() as u32).to_be_bytes()[..], payload].concat();
            let mut kick = vec![0x12];
            kick.extend_from_slice(&victim.to_be_bytes());
            kick.extend_from_slice(b"bad \xff\xfe reason");
            let mut reply = vec![0x10];
            reply.extend_from_slice(&session_id.to_be_bytes());
            reply.extend_from_slice(&300u32.to_be_bytes());
            reply.extend_from_slice(&seq.to_be_bytes());
            reply.extend_from_slice(b"after the bad frames");
            let bytes = [
                frame(&[0x7f, 1, 2, 3]),                // unknown kind
                frame(&[0x10, 0, 0, 0]),                // a reply cut short
                frame(&[0x01, 0, 1, 0, 0, 0, 7, 0, 0]), // a gateway -> backend kind (Hello)
                frame(&kick),
                frame(&reply),
            ]
            .concat();
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let h = with_dest_301(addr).await;
    let mut victim = h.ws(false).await;
    let answer = victim.login(1, &wasmgate_tests::token("victim")).await.expect("login");
    let answer: serde_json::Value = serde_json::from_slice(&answer.body).expect("login answer");
    let victim_id: u64 = answer["session_id"].as_str().and_then(|s| s.parse().ok()).expect("session id");
    victim_tx.send(victim_id).unwrap();
    let mut asker = h.logged_in_ws("asker").await;
    let seq = asker.send(300, b"anything").await.unwrap();
    let (reply, _) = asker.recv_reply(300, seq, PROMPT).await.expect("the reply after the bad frames");
    assert_eq!(&reply.body[..], b"after the bad frames");
    wasmgate_tests::expect_error_then_close(&mut victim, "kicked", Some(4004)).await;
    for error in ["unknown_kind", "truncated", "gateway_to_backend_kind", "kick_reason_not_utf8"] {
        let series = format!("wasmgate_upstream_bad_frames_total{{dest=\"301\",error=\"{error}\"}}");
        assert_eq!(h.metric(&series), 1.0, "{series}");
    }
    assert_eq!(h.gateway.upstream_connections_up(301), 1, "the connection stayed up");
    let seq = asker.send(300, b"again").await.unwrap();
    asker.recv_reply(300, seq, PROMPT).await.expect("the same connection answers again");
}

/// A gateway whose dest 301 (2 pool connections; message 300 routes there) is the one-shot
/// backend at `addr`: once one connection is up, the other's attempts are left to fail for a
/// while.
async fn with_dest_301(addr: std::net::SocketAddr) -> Harness {
    let h = Harness::start().await;
    wasmgate_tests::write_dest_map(&h.dir, &[(101, h.backend.addr), (301, addr)]);
    wasmgate_tests::write_message_map(&h.dir, &[(100, 101), (300, 301)]);
    h.wait_upstream(301, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h
}
