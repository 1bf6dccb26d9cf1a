//! Login through the auth script, timers, local routes.

use std::time::Duration;

use wasmgate_examples::client::mint_token;
use wasmgate_tests::{
    Harness, ISSUER, PROMPT, Received, SECRET, error_of, expect_closed, expect_error_then_close, token,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_ws_binary_returns_user_and_session() {
    let h = Harness::start().await;
    let mut c = h.ws(false).await;
    let reply = c.login(1, &token("alice")).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["user_id"], "alice");
    let session_id: u64 = body["session_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(wasmgate::session::id::node_of(session_id), h.config.node.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_tcp_and_ws_text() {
    let h = Harness::start().await;
    let mut tcp = h.tcp().await;
    tcp.login(1, &token("bob")).await.unwrap();
    let mut text = h.ws(true).await;
    // Text mode: the token as a JSON string, and as {"token": ...}.
    let reply = text.login(1, &token("carol")).await.unwrap();
    assert!(String::from_utf8_lossy(&reply.body).contains("carol"));
    let mut text2 = h.ws(true).await;
    let body = serde_json::json!({ "token": token("dave") }).to_string();
    let seq = text2.send(1, body.as_bytes()).await.unwrap();
    let (reply, _) = text2.recv_reply(1, seq, PROMPT).await.unwrap();
    assert!(String::from_utf8_lossy(&reply.body).contains("dave"));
}

async fn expect_rejection(h: &Harness, token: &str, code: &str) {
    let mut c = h.ws(false).await;
    let seq = c.send(1, token.as_bytes()).await.unwrap();
    let error = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
    assert_eq!((error.msg_id, error.seq), (4, seq), "an error frame answering the login");
    assert_eq!(error_of(&error.body).0, code);
    expect_closed(&mut c, Some(4003)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_foreign_tokens_are_rejected_then_closed() {
    let h = Harness::start().await;
    expect_rejection(&h, "not-a-jwt", "invalid_token").await;
    let wrong_key = mint_token("another-secret", "eve", Some(ISSUER), 3600).unwrap();
    expect_rejection(&h, &wrong_key, "invalid_token").await;
    // Beyond the default 30 s leeway.
    let expired = mint_token(SECRET, "eve", Some(ISSUER), -120).unwrap();
    expect_rejection(&h, &expired, "expired").await;
    let wrong_issuer = mint_token(SECRET, "eve", Some("someone-else"), 3600).unwrap();
    expect_rejection(&h, &wrong_issuer, "forbidden").await;
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(wasmgate_tests::metric(&metrics, "wasmgate_logins_total{reason=\"rejected\"}"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_within_the_timeout_closes_4001() {
    let h = Harness::start_with(|c| c.timeouts.login_ms = 300).await;
    let mut c = h.tcp().await;
    let started = tokio::time::Instant::now();
    expect_error_then_close(&mut c, "login_timeout", None).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut ws = h.ws(false).await;
    let _error = ws.recv_within(PROMPT).await.unwrap().packet().unwrap();
    assert_eq!(
        ws.recv_within(PROMPT).await.unwrap(),
        Received::Closed { code: Some(4001), reason: "login_timeout: no login in time".into() }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_is_answered_and_silence_closes_4002() {
    let h = Harness::start_with(|c| c.timeouts.heartbeat_ms = 600).await;
    let mut c = h.logged_in_ws("hb").await;
    // Heartbeats keep the session alive past several heartbeat periods.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seq = c.send(2, b"").await.unwrap();
        let (reply, _) = c.recv_reply(2, seq, PROMPT).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let server_ms = body["server_time_ms"].as_u64().unwrap();
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now_ms.abs_diff(server_ms) < 5_000);
    }
    // Then silence.
    expect_error_then_close(&mut c, "heartbeat_timeout", Some(4002)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_login_get_not_logged_in() {
    let h = Harness::start().await;
    let mut c = h.ws(false).await;
    let seq = c.send(100, b"too early").await.unwrap();
    let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
    assert_eq!(error_of(&error.body).0, "not_logged_in");
    // The session is still usable.
    c.login(1, &token("late")).await.unwrap();
    let seq = c.send(1, token("late").as_bytes()).await.unwrap();
    let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
    assert_eq!(error_of(&error.body).0, "already_logged_in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_route_closes_normally() {
    let h = Harness::start().await;
    let mut c = h.logged_in_ws("bye").await;
    c.send(3, b"").await.unwrap();
    expect_closed(&mut c, Some(1000)).await;
}

/// Signs `claims` as an HS256 JWT (or with `algorithm`) with `secret`.
fn sign(claims: serde_json::Value, secret: &str, algorithm: jsonwebtoken::Algorithm) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).expect("signing")
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The claim rules of the default auth script, as docs/scripting.md states them: HS256 only,
/// `sub` is the user id (`user_id` is not read), `exp` required, `iss` required and equal
/// when `issuer` is configured, `nbf` honoured with the same leeway as `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_claims_are_checked_as_documented() {
    use jsonwebtoken::Algorithm::{HS256, HS384};
    use serde_json::json;
    let h = Harness::start().await;
    let now = now_s();
    let hs256 = |claims| sign(claims, SECRET, HS256);
    let refused = [
        (hs256(json!({"sub": "eve", "exp": now + 600})), "forbidden", "no iss although `issuer` is set"),
        (
            hs256(json!({"sub": "eve", "iss": ISSUER, "exp": now + 600, "nbf": now + 3600})),
            "forbidden",
            "nbf in an hour",
        ),
        (
            hs256(json!({"user_id": "eve", "iss": ISSUER, "exp": now + 600})),
            "invalid_token",
            "user_id instead of sub",
        ),
        (hs256(json!({"sub": "eve", "iss": ISSUER})), "invalid_token", "no exp"),
        (hs256(json!({"sub": "", "iss": ISSUER, "exp": now + 600})), "invalid_token", "empty sub"),
        (
            sign(json!({"sub": "eve", "iss": ISSUER, "exp": now + 600}), SECRET, HS384),
            "invalid_token",
            "HS384",
        ),
        (
            hs256(json!({"sub": "eve", "iss": ISSUER, "exp": now - 120})),
            "expired",
            "expired beyond the leeway",
        ),
    ];
    for (token, code, case) in &refused {
        let mut c = h.ws(false).await;
        let seq = c.send(1, token.as_bytes()).await.unwrap();
        let error = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
        assert_eq!((error.msg_id, error.seq), (4, seq), "{case}");
        assert_eq!(error_of(&error.body).0, *code, "{case}");
        expect_closed(&mut c, Some(4003)).await;
    }
    // Within the 30 s leeway: nbf 20 s ahead, exp 20 s ago; and without nbf.
    let accepted = [
        hs256(json!({"sub": "ann", "iss": ISSUER, "exp": now + 600, "nbf": now + 20})),
        hs256(json!({"sub": "ann", "iss": ISSUER, "exp": now - 20})),
        hs256(json!({"sub": "ann", "iss": ISSUER, "exp": now + 600, "extra": [1, 2]})),
    ];
    for token in &accepted {
        let mut c = h.ws(false).await;
        let reply = c.login(1, token).await.unwrap();
        assert!(String::from_utf8_lossy(&reply.body).contains("\"ann\""));
    }
}

/// The token-minting example of docs/scripting.md (Python, standard library only), run as a
/// user would: its token logs in; with another secret it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_token_example_logs_in() {
    let docs = include_str!("../../docs/scripting.md");
    let example = wasmgate_tests::doc_block(docs, "mint_token.py");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mint_token.py");
    std::fs::write(&script, example).unwrap();
    let mint = |secret: &str, user: &str| {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args([secret, user, ISSUER])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let h = Harness::start().await;
    let mut c = h.ws(false).await;
    let reply = c.login(1, &mint(SECRET, "from-the-docs")).await.unwrap();
    assert!(String::from_utf8_lossy(&reply.body).contains("from-the-docs"));
    expect_rejection(&h, &mint("not-the-secret", "x"), "invalid_token").await;
}
