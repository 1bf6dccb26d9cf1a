//! User-centre notices: a login and a disconnect are POSTed to a real HTTP listener, retried
//! after a failure, and never hold up a login when the user centre is down.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wasmgate_tests::{Harness, PROMPT, metric};

/// A user centre on a free port: answers 500 to the first `failures` requests, then 200; sends
/// each request's JSON body (failed ones included) to the returned receiver.
pub(crate) async fn user_centre(failures: usize) -> (String, mpsc::UnboundedReceiver<(u16, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/notify", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = stream.read(&mut buf).await else { break None };
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body.to_string());
                    }
                }
            };
            let status = if served < failures { 500 } else { 200 };
            served += 1;
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            if let Some(body) = body {
                let _ = tx.send((status, serde_json::from_str(&body).unwrap_or(Value::Null)));
            }
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(PROMPT, rx.recv()).await.expect("a notice in time").expect("a notice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_disconnects_are_posted_in_order_with_retries() {
    let (url, mut notices) = user_centre(1).await;
    let h = Harness::start_with(move |c| c.user_centre.url = Some(url)).await;
    let alice = h.logged_in_ws("alice").await;
    // The first attempt fails (500) and is retried with the same notice.
    let (status, first) = next(&mut notices).await;
    assert_eq!((status, first["event"].as_str()), (500, Some("login")));
    let (status, login) = next(&mut notices).await;
    assert_eq!(status, 200);
    assert_eq!(login, first, "the retry carries the same notice");
    assert_eq!(login["user_id"], "alice");
    assert_eq!(login["node_id"], 1);
    assert!(login["session_id"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()), "{login}");
    assert!(login["peer_addr"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{login}");
    drop(alice);
    let (status, logout) = next(&mut notices).await;
    assert_eq!((status, logout["event"].as_str()), (200, Some("logout")));
    assert_eq!(logout["session_id"], login["session_id"]);
    wasmgate_tests::wait_until("both notices counted", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, "wasmgate_user_centre_notices_total{outcome=\"ok\"}") == 2.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_user_centre_never_holds_up_a_login() {
    // Nothing listens there: every attempt fails at once.
    let port = wasmgate_examples::bench::free_port().expect("port");
    let h = Harness::start_with(move |c| {
        c.user_centre.url = Some(format!("http://127.0.0.1:{port}/notify"));
        c.user_centre.retries = 1;
    })
    .await;
    let started = Instant::now();
    let _bob = h.logged_in_ws("bob").await;
    assert!(started.elapsed() < Duration::from_secs(2), "login took {:?}", started.elapsed());
    wasmgate_tests::wait_until("the notice is given up", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, "wasmgate_user_centre_notices_total{outcome=\"failed\"}") == 1.0
    })
    .await;
}
