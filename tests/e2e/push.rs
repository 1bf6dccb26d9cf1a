//! The push API (admin port, bearer token), backend room frames, and go-push JSON clients.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wasmgate_examples::backend::ids;
use wasmgate_tests::{ADMIN_TOKEN, Client, Harness, PROMPT, metric, token, with_admin_token};

/// Reads packets until one with `msg_id` arrives; returns its seq and body.
async fn expect_packet(client: &mut Client, msg_id: u32) -> (u32, Vec<u8>) {
    loop {
        let packet = client.recv_within(PROMPT).await.expect("a packet").packet().expect("a packet");
        if packet.msg_id == msg_id {
            return (packet.seq, packet.body.to_vec());
        }
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn push_api_reaches_each_target_only_with_the_token() {
    let h = Harness::start_with(with_admin_token).await;
    let mut alice = h.ws(false).await;
    let login = alice.login(1, &token("alice")).await.expect("login");
    let alice_id = json_of(&login.body)["session_id"].as_str().expect("session id").to_string();
    let mut alice2 = h.logged_in_ws("alice").await;
    let mut bob = h.tcp().await;
    bob.login(1, &token("bob")).await.expect("login");
    let seq = alice.send(5, b"r").await.expect("join");
    assert_eq!(alice.recv_reply(5, seq, PROMPT).await.expect("joined").0.msg_id, 5);

    // Without the token, or with a wrong one: 401 and nothing is delivered.
    let body = json!({"session_id": alice_id, "msg_id": 600, "data": {"k": 1}}).to_string();
    for token in [None, Some("wrong-token-value")] {
        let (status, answer) = h.admin("POST", "/push/session", &body, false, token).await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")));
    }
    let (status, _) = h.admin("GET", "/rooms", "", false, None).await;
    assert_eq!(status, 401);

    let ok = Some(ADMIN_TOKEN);
    assert_eq!(h.admin("POST", "/push/session", &body, false, ok).await, (200, json!({"delivered": 1})));
    let (seq, got) = expect_packet(&mut alice, 600).await;
    assert_eq!((seq, json_of(&got)), (0, json!({"k": 1})), "the 401 attempts delivered nothing before");

    let body = json!({"user_id": "alice", "data": "hello"}).to_string();
    assert_eq!(h.admin("POST", "/push/user", &body, false, ok).await, (200, json!({"delivered": 2})));
    for client in [&mut alice, &mut alice2] {
        assert_eq!(expect_packet(client, 9).await.1, b"hello", "default push id 9");
    }

    let body = json!({"room": "r", "msg_id": 601, "data": [1, 2]}).to_string();
    assert_eq!(
        h.admin("POST", "/push/room", &body, false, ok).await,
        (200, json!({"room": "r", "members": 1}))
    );
    assert_eq!(json_of(&expect_packet(&mut alice, 601).await.1), json!([1, 2]));
    // `curl -d '{..}'` sends JSON labelled as a form: still JSON.
    let (status, _) = h.admin("POST", "/push/room", r#"{"room":"r","msg_id":603}"#, true, ok).await;
    assert_eq!(status, 200);
    assert_eq!(expect_packet(&mut alice, 603).await.1, b"");
    let (status, _) = h.admin("POST", "/push/room", "room=r&msg=%7B%22x%22%3A1%7D", true, ok).await;
    assert_eq!(status, 200, "go-push's form");
    assert_eq!(json_of(&expect_packet(&mut alice, 9).await.1), json!({"x": 1}));

    let body = json!({"msg_id": 602, "data_b64": "AAE="}).to_string();
    assert_eq!(h.admin("POST", "/push/all", &body, false, ok).await, (200, json!({"sessions": 3})));
    for client in [&mut alice, &mut alice2, &mut bob] {
        assert_eq!(expect_packet(client, 602).await.1, [0, 1]);
    }
    assert_eq!(h.admin("GET", "/sessions", "", false, ok).await, (200, json!({"sessions": 3})));

    // Errors say why, as JSON.
    let cases = [
        ("POST", "/push/session", json!({"session_id": "1", "data": 1}).to_string(), 404, "not_found"),
        ("POST", "/push/user", json!({"user_id": "nobody"}).to_string(), 404, "not_found"),
        ("POST", "/push/room", json!({"room": "empty"}).to_string(), 404, "not_found"),
        ("POST", "/push/room", json!({"data": 1}).to_string(), 400, "bad_request"),
        ("POST", "/push/all", "{not json".to_string(), 400, "bad_request"),
        ("POST", "/push/all", json!({"data": 1, "extra": 2}).to_string(), 400, "bad_request"),
        ("GET", "/push/all", String::new(), 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = h.admin(method, path, &body, false, ok).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{method} {path} {body}: {answer}");
        assert!(answer["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    // Counted by target once the target is known (the 404s too, not the 400s).
    let (_, metrics) = h.admin_get("/metrics").await;
    for (target, count) in [("session", 2.0), ("user", 2.0), ("room", 4.0), ("all", 1.0)] {
        assert_eq!(
            metric(&metrics, &format!("wasmgate_pushes_total{{target=\"{target}\"}}")),
            count,
            "{target}"
        );
    }
}

#[tokio::test]
async fn the_push_api_is_off_without_a_configured_token() {
    let h = Harness::start().await;
    let (status, answer) =
        h.admin("POST", "/push/all", r#"{"data":1}"#, false, Some("anything-at-all")).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("api_disabled")));
    // The dashboard is off with the API.
    let (status, answer) = h.admin("GET", "/ui", "", false, None).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("api_disabled")));
}

#[tokio::test]
async fn backends_join_sessions_and_push_to_rooms_and_everyone() {
    let h = Harness::start_with(with_admin_token).await;
    let mut alice = h.logged_in_ws("alice").await;
    let mut bob = h.tcp().await;
    bob.login(1, &token("bob")).await.expect("login");
    let seq = alice.send(ids::JOIN, b"guild").await.expect("send");
    alice.recv_reply(ids::JOIN, seq, PROMPT).await.expect("backend answered");
    let (_, rooms) = h.admin("GET", "/rooms", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(rooms["rooms"], json!([{"room": "guild", "members": 1}]), "the backend joined alice");

    let seq = bob.send(ids::ROOM_PUSH, b"guild").await.expect("send");
    bob.recv_reply(ids::ROOM_PUSH, seq, PROMPT).await.expect("backend answered");
    assert_eq!(json_of(&expect_packet(&mut alice, ids::ROOM_PUSHED).await.1), json!({"room_push": "bob"}));

    bob.send(ids::PUSH_ALL, b"").await.expect("send");
    for client in [&mut alice, &mut bob] {
        assert_eq!(json_of(&expect_packet(client, ids::ALL_PUSHED).await.1), json!({"push_all": "bob"}));
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn gopush_send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

async fn gopush_recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(PROMPT, ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a go-push text message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_go_push_client_joins_and_receives_room_pushes() {
    let h = Harness::start_with(with_admin_token).await;
    // go-push clients send no login packet: the token rides on the URL.
    let url = format!("{}?token={}", h.ws_url(), token("gopher"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    gopush_send(&mut ws, r#"{"type":"PING"}"#).await;
    assert_eq!(gopush_recv(&mut ws).await, json!({"type": "PONG", "data": {}}));
    gopush_send(&mut ws, r#"{"type":"JOIN","data":{"room":"chrome-plugin"}}"#).await;
    assert_eq!(gopush_recv(&mut ws).await["data"]["status"], "joined");

    let (status, _) = h
        .admin("POST", "/push/room", "room=chrome-plugin&msg=%7B%22n%22%3A1%7D", true, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(gopush_recv(&mut ws).await, json!({"type": "PUSH", "data": {"items": [{"n": 1}]}}));
    let (status, _) = h.admin("POST", "/push/all", "msg=%22all%22", true, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(gopush_recv(&mut ws).await, json!({"type": "PUSH", "data": {"items": ["all"]}}));

    gopush_send(&mut ws, r#"{"type":"LEAVE","data":{"room":"chrome-plugin"}}"#).await;
    assert_eq!(gopush_recv(&mut ws).await["data"]["status"], "left");
    let (_, rooms) = h.admin("GET", "/rooms", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(rooms["total"], 0, "leaving the last member deleted the room");

    // A bad URL token closes the connection with 4003.
    let url = format!("{}?token=not-a-jwt", h.ws_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let code = loop {
        match tokio::time::timeout(PROMPT, ws.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, Some(4003));
}

#[tokio::test]
async fn anonymous_go_push_clients_need_the_config_switch() {
    for anonymous in [false, true] {
        let h = Harness::start_with(|c| c.rooms.gopush_anonymous = anonymous).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url()).await.expect("connect");
        gopush_send(&mut ws, r#"{"type":"JOIN","data":{"room":"news"}}"#).await;
        let answer = gopush_recv(&mut ws).await;
        if anonymous {
            assert_eq!(answer["type"], "JOIN", "{answer}");
            assert_eq!(answer["data"]["members"], 1);
        } else {
            assert_eq!(
                answer,
                json!({"type": "ERROR", "data": {
                "code": "not_logged_in", "message": "log in first (WebSocket URL `?token=`)"}})
            );
        }
    }
}
