//! docs/security.md end to end: the abuse limits tripped by real clients from another source
//! address (127.0.0.2) while a client from 127.0.0.1 keeps being served, the admin listener's
//! connection caps and token scopes, the WebSocket `Origin` and `?token=` switches. TLS is in
//! `tls.rs`.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmgate::config::{AdminToken, RateLimitsConfig, Scope};
use wasmgate_tests::tls::connect_from;
use wasmgate_tests::{
    ADMIN_TOKEN, Client, Harness, PROMPT, Received, echoes, error_of, expect_closed, http, token, wait_until,
    with_admin_token,
};

/// The heartbeat route (`routes.heartbeat`).
const HEARTBEAT: u32 = 2;
const OTHER_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Connections per IP and new connections per IP per second: the third connection from
/// 127.0.0.2 is refused (TCP: a `rate_limited` error frame; WebSocket: HTTP 429) while
/// 127.0.0.1 connects and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_and_connect_rate_refuse_one_address_only() {
    let h = Harness::start_with(|c| {
        c.rate_limits = RateLimitsConfig { conn_per_ip: 2, ..RateLimitsConfig::off() };
    })
    .await;
    let tcp = h.gateway.tcp_addr().expect("tcp");
    let ws = h.gateway.ws_addr().expect("ws");
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = connect_from(OTHER_IP, tcp).await.expect("connect");
        let mut client = Client::tcp_over(stream, &h.config.tcp);
        client.login(1, &token("held")).await.expect("login within the cap");
        held.push(client);
    }
    let mut refused = Client::tcp_over(connect_from(OTHER_IP, tcp).await.unwrap(), &h.config.tcp);
    let error = refused.recv_within(PROMPT).await.expect("an error frame").packet().expect("an error frame");
    assert_eq!(error_of(&error.body).0, "rate_limited");
    expect_closed(&mut refused, None).await;
    let stream = connect_from(OTHER_IP, ws).await.unwrap();
    let upgrade = Client::ws_over(stream, &format!("ws://{ws}/ws"), false).await;
    // The 429 is written at once; the client may see it, or a reset if its request crossed
    // the close.
    let said = format!("{:#}", upgrade.err().expect("the upgrade is refused"));
    assert!(said.contains("429") || said.to_lowercase().contains("reset"), "{said}");
    assert_eq!(h.metric("wasmgate_limited_total{limit=\"conn_per_ip\"}"), 2.0);

    let mut healthy = h.logged_in_ws("healthy").await;
    echoes(&mut healthy, "from 127.0.0.1").await;
    // A place given back is taken again.
    drop(held.pop());
    wait_until("the place is given back", || async {
        let stream = connect_from(OTHER_IP, tcp).await.unwrap();
        let mut client = Client::tcp_over(stream, &h.config.tcp);
        client.login(1, &token("again")).await.is_ok()
    })
    .await;

    let h = Harness::start_with(|c| {
        c.rate_limits =
            RateLimitsConfig { connect_per_ip_per_s: 1, connect_burst_per_ip: 2, ..RateLimitsConfig::off() };
    })
    .await;
    let tcp = h.gateway.tcp_addr().expect("tcp");
    // Three connections at once (accepted in order): the third overdraws the burst of 2.
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(Client::tcp_over(connect_from(OTHER_IP, tcp).await.unwrap(), &h.config.tcp));
    }
    let mut refused = three.pop().expect("the third");
    for mut client in three {
        client.login(1, &token("burst")).await.expect("login within the burst");
    }
    let error = refused.recv_within(PROMPT).await.unwrap().packet().expect("an error frame");
    assert_eq!(error_of(&error.body).0, "rate_limited");
    assert_eq!(h.metric("wasmgate_limited_total{limit=\"connect_rate\"}"), 1.0);
    let mut healthy = h.tcp().await;
    healthy.login(1, &token("healthy")).await.expect("127.0.0.1 has its own bucket");
}

/// Messages per session: the excess is answered `rate_limited` and sustained excess closes
/// with 4007; bytes per session likewise; another session is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_bytes_per_session_are_refused_then_closed() {
    let h = Harness::start_with(|c| {
        c.limits.max_msg_len = 1000;
        c.rate_limits = RateLimitsConfig {
            msg_per_s: 1,
            msg_burst: 4,
            bytes_per_s: 100,
            bytes_burst: 3000,
            ..RateLimitsConfig::off()
        };
    })
    .await;
    let mut healthy = h.logged_in_ws("healthy").await;
    let mut flooder = h.logged_in_ws("flooder").await;
    // Twelve heartbeats at once (answered by the gateway itself, in order): the burst of 4
    // (less the login's, plus what refilled since) is answered, the next are answered
    // `rate_limited` until their own bucket of 4 is empty, and the next closes the session
    // with 4007.
    let mut sent = Vec::new();
    for _ in 0..12 {
        // Sends after the close may fail (broken pipe): the answers tell what was processed.
        match flooder.send(HEARTBEAT, b"").await {
            Ok(seq) => sent.push(seq),
            Err(_) => break,
        }
    }
    let mut echoed = Vec::new();
    let mut refused = Vec::new();
    let closed = loop {
        match flooder.recv_within(PROMPT).await.expect("answers, then the close") {
            Received::Closed { code, .. } => break code,
            Received::Packet(p) if p.msg_id == HEARTBEAT => echoed.push(p.seq),
            Received::Packet(p) if p.seq != 0 => {
                assert_eq!(error_of(&p.body).0, "rate_limited");
                refused.push(p.seq);
            }
            Received::Packet(p) => assert_eq!(error_of(&p.body).0, "rate_limited", "the close's error frame"),
        }
    };
    assert_eq!(closed, Some(4007));
    assert!((3..=5).contains(&echoed.len()), "answered {echoed:?}");
    assert_eq!(echoed, sent[..echoed.len()], "the first packets pass");
    assert!((4..=5).contains(&refused.len()), "refused {refused:?}");
    assert_eq!(refused, sent[echoed.len()..echoed.len() + refused.len()], "then refusals, in order");
    assert!(h.metric("wasmgate_limited_total{limit=\"messages\"}") >= 5.0);
    wait_until("the close is counted", || async {
        h.metric("wasmgate_sessions_closed_total{reason=\"rate_limited\"}") == 1.0
    })
    .await;
    echoes(&mut healthy, "still unaffected").await;

    // Bytes: the login and two full-size packets fit the burst of 3000 bytes, a third does not.
    let mut big = h.logged_in_ws("big").await;
    let body = "x".repeat(990);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let seq = big.send(100, body.as_bytes()).await.unwrap();
        let packet = big.recv_within(PROMPT).await.unwrap().packet().unwrap();
        assert_eq!(packet.seq, seq);
        answers.push(packet.msg_id);
    }
    assert_eq!(answers, [100, 100, 4], "the third packet overdraws the byte bucket");
    assert_eq!(h.metric("wasmgate_limited_total{limit=\"bytes\"}"), 1.0);
}

/// Login attempts per IP, and accepted logins per user, each refused with `rate_limited`
/// before the login takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_per_ip_and_logins_per_user_are_limited() {
    let h = Harness::start_with(|c| {
        c.rate_limits = RateLimitsConfig {
            login_per_ip_per_min: 3,
            login_per_user_per_min: 1,
            ..RateLimitsConfig::off()
        };
    })
    .await;
    let ws = h.gateway.ws_addr().unwrap();
    let mut guesser =
        Client::ws_over(connect_from(OTHER_IP, ws).await.unwrap(), &h.ws_url(), false).await.unwrap();
    let mut answers = Vec::new();
    for i in 0..4 {
        let seq = guesser.send(1, format!("not-a-token-{i}").as_bytes()).await.unwrap();
        let packet = guesser.recv_within(PROMPT).await.unwrap().packet().expect("an answer");
        assert_eq!(packet.seq, seq);
        answers.push(error_of(&packet.body).0);
        if answers.last().is_some_and(|a| a != "rate_limited") {
            // A refused token closes the session: try again on a new one.
            expect_closed(&mut guesser, Some(4003)).await;
            guesser =
                Client::ws_over(connect_from(OTHER_IP, ws).await.unwrap(), &h.ws_url(), false).await.unwrap();
        }
    }
    assert_eq!(answers, ["invalid_token", "invalid_token", "invalid_token", "rate_limited"]);
    assert_eq!(h.metric("wasmgate_limited_total{limit=\"login_per_ip\"}"), 1.0);
    // 127.0.0.1 logs in; the same user's second login within the minute is refused.
    let _first = h.logged_in_ws("popular").await;
    let mut second = h.ws(false).await;
    let seq = second.send(1, token("popular").as_bytes()).await.unwrap();
    let packet = second.recv_reply(4, seq, PROMPT).await.expect("an error frame").0;
    assert_eq!(error_of(&packet.body).0, "rate_limited");
    assert_eq!(h.metric("wasmgate_limited_total{limit=\"login_per_user\"}"), 1.0);
    let _other = h.logged_in_ws("someone-else").await;
}

/// Room lists per source IP: a burst of twice the rate, then `rate_limited`; another address
/// keeps its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lists_are_limited_per_address() {
    const ROOM_LIST: u32 = 8;
    let h = Harness::start_with(|c| {
        c.rate_limits = RateLimitsConfig { room_list_per_ip_per_s: 2, ..RateLimitsConfig::off() };
    })
    .await;
    let mut lister = h.logged_in_ws("lister").await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let seq = lister.send(ROOM_LIST, b"").await.unwrap();
        let packet = lister.recv_within(PROMPT).await.unwrap().packet().expect("an answer");
        assert_eq!(packet.seq, seq);
        answers.push(if packet.msg_id == 4 { error_of(&packet.body).0 } else { "list".into() });
    }
    // The burst is 4: the first four pass (a token may come back meanwhile on a slow run).
    assert_eq!(answers[..4], ["list", "list", "list", "list"]);
    assert!(answers[4..].iter().any(|a| a == "rate_limited"), "{answers:?}");
    assert!(h.metric("wasmgate_limited_total{limit=\"room_list\"}") >= 1.0);
    let ws = h.gateway.ws_addr().unwrap();
    let mut other =
        Client::ws_over(connect_from(OTHER_IP, ws).await.unwrap(), &h.ws_url(), false).await.unwrap();
    other.login(1, &token("other")).await.unwrap();
    let seq = other.send(ROOM_LIST, b"").await.unwrap();
    let (list, _) = other.recv_reply(ROOM_LIST, seq, PROMPT).await.expect("another address lists");
    assert!(String::from_utf8_lossy(&list.body).contains("\"rooms\""));
}

/// 500 half-open admin connections from 127.0.0.2 take at most their per-IP places, are
/// closed after `request_timeout_ms`, and neither `/healthz` nor game clients from
/// 127.0.0.1 wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admin_connections_do_not_starve_healthz_or_clients() {
    let h = Harness::start_with(|c| {
        c.admin.request_timeout_ms = 1000;
        c.rate_limits = RateLimitsConfig::off();
    })
    .await;
    let admin = h.gateway.admin_addr().unwrap();
    let mut half_open = Vec::new();
    for _ in 0..500 {
        let mut stream = connect_from(OTHER_IP, admin).await.expect("admin connect");
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        half_open.push(stream);
    }
    let started = tokio::time::Instant::now();
    let (status, body) = http(admin, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let mut client = h.logged_in_ws("player").await;
    echoes(&mut client, "served").await;
    assert!(started.elapsed() < PROMPT);
    assert!(h.metric("wasmgate_limited_total{limit=\"admin_connections\"}") >= 400.0);
    // The 16 that got a place are closed once their headers are late.
    let mut closed = 0;
    for stream in half_open.iter_mut() {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 500, "every half-open connection was closed");
}

/// Each scoped token is refused (403 `insufficient_scope`) outside its endpoints and served
/// inside them; `/metrics` needs `read` when `open_metrics = false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_refused_outside_their_scope() {
    let h = Harness::start_with(|c| {
        with_admin_token(c);
        c.admin.open_metrics = false;
        c.admin.tokens = vec![
            AdminToken { token: "push-only-token".into(), scopes: vec![Scope::Push] },
            AdminToken { token: "deploy-only-token".into(), scopes: vec![Scope::Deploy] },
            AdminToken { token: "read-only-token".into(), scopes: vec![Scope::Read] },
        ];
    })
    .await;
    let push = json!({ "user_id": "nobody", "msg_id": 200, "data": "hi" }).to_string();
    let cases: [(&str, &str, &str, [u16; 4]); 4] = [
        // (method, path, body): answers to push-only, deploy-only, read-only, the full token
        ("POST", "/push/user", &push, [404, 403, 403, 404]), // 404: the user is not online
        ("POST", "/scripts/router/rollback", "", [403, 409, 403, 409]),
        ("GET", "/sessions", "", [403, 403, 200, 200]),
        ("GET", "/metrics", "", [403, 403, 200, 200]),
    ];
    for (method, path, body, expected) in cases {
        let mut got = Vec::new();
        for token in ["push-only-token", "deploy-only-token", "read-only-token", ADMIN_TOKEN] {
            let (status, answer) = h.admin(method, path, body, false, Some(token)).await;
            if status == 403 {
                assert_eq!(answer["error"], "insufficient_scope", "{method} {path}: {answer}");
            }
            got.push(status);
        }
        assert_eq!(got, expected, "{method} {path}");
    }
    let (status, _) = h.admin("GET", "/metrics", "", false, None).await;
    assert_eq!(status, 401, "/metrics needs a token when open_metrics = false");
    let (status, _) = h.admin("GET", "/healthz", "", false, None).await;
    assert_eq!(status, 200, "/healthz stays open");
    let (status, _) = http(
        h.gateway.admin_addr().unwrap(),
        "GET",
        "/sessions",
        &[("Authorization", "bearer read-only-token")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "the scheme name is case-insensitive");
}

/// `security.allowed_origins` refuses a browser upgrade from another site; `token_in_query =
/// false` refuses `?token=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_url_tokens_can_be_restricted() {
    let h = Harness::start_with(|c| {
        c.security.allowed_origins = vec!["https://game.example".into()];
        c.security.token_in_query = false;
    })
    .await;
    let ws = h.gateway.ws_addr().unwrap();
    let upgrade = |origin: &str, query: &str| {
        let origin = origin.to_string();
        let query = query.to_string();
        async move {
            let origin_line = if origin.is_empty() { String::new() } else { format!("Origin: {origin}\r\n") };
            let request = format!(
                "GET /ws{query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin_line}\r\n"
            );
            let mut stream = tokio::net::TcpStream::connect(ws).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = vec![0u8; 256];
            let n = tokio::time::timeout(PROMPT, stream.read(&mut head)).await.unwrap().unwrap();
            String::from_utf8_lossy(&head[..n]).split_whitespace().nth(1).unwrap_or_default().to_string()
        }
    };
    assert_eq!(upgrade("https://evil.example", "").await, "403");
    assert_eq!(upgrade("https://game.example", "").await, "101");
    assert_eq!(upgrade("", "").await, "101", "clients that are not browsers send no Origin");
    assert_eq!(upgrade("", &format!("?token={}", token("u"))).await, "400");
}
