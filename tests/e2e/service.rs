//! The HTTP side (`/ping`, `/metrics`, `/healthz`), limits and graceful shutdown.

use std::time::Duration;
use wasmgate::config::RateLimitsConfig;

use wasmgate_tests::{Harness, PROMPT, expect_error_then_close, http_get, metric, metric_sum, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_metrics_and_health() {
    let h = Harness::start().await;
    let (status, body) = http_get(h.gateway.ws_addr().unwrap(), "/ping").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "pong");

    let mut c = h.logged_in_ws("m").await;
    let seq = c.send(100, b"count me").await.unwrap();
    c.recv_reply(100, seq, PROMPT).await.unwrap();
    let (status, metrics) = h.admin_get("/metrics").await;
    assert!(status.contains("200"));
    assert_eq!(metric(&metrics, "wasmgate_connections_total{transport=\"websocket\"}"), 1.0);
    assert_eq!(metric(&metrics, "wasmgate_sessions{transport=\"websocket\"}"), 1.0);
    assert_eq!(metric(&metrics, "wasmgate_messages_received_total{transport=\"websocket\"}"), 2.0);
    assert_eq!(metric(&metrics, "wasmgate_routed_total{dest=\"101\",outcome=\"ok\"}"), 1.0);
    assert_eq!(metric(&metrics, "wasmgate_upstream_connections_up{dest=\"101\"}"), 2.0);
    let auth_ok = ["script=\"auth\"", "outcome=\"ok\""];
    assert_eq!(metric_sum(&metrics, "wasmgate_script_calls_total", &auth_ok), 1.0);

    let (status, health) = h.admin_get("/healthz").await;
    assert!(status.contains("200"));
    assert!(health.contains("\"sessions\":1"), "{health}");
}

/// `/metrics` after real traffic (logins, routed messages, a room, script calls of two
/// scripts) passes `promtool check metrics` (Debian `prometheus`, installed by `.ci/run`), and
/// a scraper asking for OpenMetrics gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let h = Harness::start().await;
    let mut a = h.logged_in_ws("pa").await;
    let mut b = h.logged_in_ws("pb").await;
    for c in [&mut a, &mut b] {
        let seq = c.send(100, b"count me").await.unwrap();
        c.recv_reply(100, seq, PROMPT).await.unwrap();
        let seq = c.send(5, br#"{"room":"lobby"}"#).await.unwrap();
        c.recv_reply(5, seq, PROMPT).await.unwrap();
    }
    let (status, text) = h.admin_get("/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(text.contains("# TYPE wasmgate_routed_total counter"), "{text}");
    assert!(text.contains("wasmgate_script_call_duration_seconds_count{script=\"router\""), "{text}");
    assert!(text.contains("wasmgate_upstream_queue_depth{dest=\"101\"} 0"), "{text}");
    assert!(!text.contains("# EOF"));

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; .ci/run does)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");

    let addr = h.gateway.admin_addr().unwrap();
    let accept = [("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")];
    let (status, open) = wasmgate_tests::http(addr, "GET", "/metrics", &accept, b"").await;
    assert_eq!(status, 200);
    assert!(open.contains("# TYPE wasmgate_routed counter") && open.ends_with("# EOF\n"), "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_num_holds_extra_connections_until_one_leaves() {
    let h = Harness::start_with(|c| c.limits.max_conn_num = 2).await;
    let mut a = h.logged_in_ws("a").await;
    let _b = h.logged_in_ws("b").await;
    // The third connects at TCP level (kernel backlog) but is not served yet.
    let url = h.ws_url();
    let third = tokio::spawn(async move { wasmgate_examples::client::Client::ws(&url, false).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served beyond max_conn_num");
    a.send(3, b"").await.unwrap();
    let mut c = tokio::time::timeout(PROMPT, third).await.unwrap().unwrap().unwrap();
    c.login(1, &wasmgate_tests::token("c")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_going_away() {
    let h = Harness::start().await;
    let mut ws = h.logged_in_ws("w").await;
    let mut tcp = h.tcp().await;
    tcp.login(1, &wasmgate_tests::token("t")).await.unwrap();
    let Harness { gateway, backend: _backend, dir: _dir, .. } = h;
    let stopping = tokio::spawn(gateway.shutdown(Duration::from_secs(5)));
    expect_error_then_close(&mut ws, "going_away", Some(1001)).await;
    expect_error_then_close(&mut tcp, "going_away", None).await;
    tokio::time::timeout(PROMPT, stopping).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let h = Harness::start_with(|c| {
        c.limits.pending_write_num = 4;
        c.timeouts.write_ms = 500;
        // A load test: the abuse limits (docs/security.md) are tested on their own.
        c.rate_limits = RateLimitsConfig::off();
    })
    .await;
    let mut stalled = h.logged_in_ws("stalled").await;
    let mut bystander = h.logged_in_ws("bystander").await;
    // Echoes pile up behind a client that never reads: first in the kernel's socket buffers,
    // then in the session's 4-packet queue.
    flood_until_closed(&h, &mut stalled, 400).await;
    // Nobody else noticed.
    let seq = bystander.send(100, b"fine").await.unwrap();
    let (reply, _) = bystander.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"fine");
    assert_eq!(h.gateway.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reuse_port_two_gateway_processes_share_the_client_listeners() {
    let first = Harness::start_with(|c| c.listen.reuse_port = true).await;
    let (ws, tcp) = (first.gateway.ws_addr().unwrap(), first.gateway.tcp_addr().unwrap());
    let second = Harness::start_with(move |c| {
        c.listen.reuse_port = true;
        c.listen.ws = Some(ws);
        c.listen.tcp = Some(tcp);
    })
    .await;
    assert_eq!(second.gateway.ws_addr(), Some(ws));
    // The kernel spreads connections over both (by address hash): 40 clients land on both.
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(first.logged_in_ws(&format!("spread-{i}")).await);
    }
    wait_until("both gateways hold sessions", || async {
        first.gateway.sessions() + second.gateway.sessions() == 40
    })
    .await;
    assert!(first.gateway.sessions() > 0 && second.gateway.sessions() > 0);
    // Without the option the port is taken.
    let refused = wasmgate::RunningGateway::start({
        let mut config = first.config.clone();
        config.listen.reuse_port = false;
        config.listen.ws = Some(ws);
        config.listen.tcp = None;
        config.listen.admin = None;
        config
    })
    .await;
    let error = format!("{:#}", refused.err().expect("the port is in use"));
    assert!(error.contains("WebSocket listener"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_dest_with_no_connection_and_flips_back_when_it_returns() {
    let h = Harness::start().await;
    assert_eq!(h.admin("GET", "/readyz", "", false, None).await, (200, serde_json::json!({"ready": true})));
    let addr = h.backend.addr;
    h.backend.stop();
    wait_until("readyz reports the dest down", || async {
        let (status, body) = h.admin("GET", "/readyz", "", false, None).await;
        status == 503 && body["not_ready"]["upstream:101"].is_string()
    })
    .await;
    let _back = wasmgate_tests::Backend::start(addr).await;
    wait_until("readyz is ready again", || async {
        h.admin("GET", "/readyz", "", false, None).await.0 == 200
    })
    .await;
}

/// `limits.pending_write_bytes` closes a session that does not read once the replies queued
/// for it pass the bound, long before `pending_write_num` packets (and with `write_ms` far
/// away); `send_buffer_bytes` keeps the kernel from parking megabytes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_queue_is_bounded_in_bytes() {
    let h = Harness::start_with(|c| {
        c.limits.pending_write_num = 256;
        c.limits.pending_write_bytes = 200_000;
        c.limits.send_buffer_bytes = 8192;
        c.timeouts.write_ms = 60_000;
        c.rate_limits = RateLimitsConfig::off();
    })
    .await;
    let mut stalled = h.logged_in_ws("stalled").await;
    // 150 echoes: fewer than pending_write_num even if none reached the client.
    flood_until_closed(&h, &mut stalled, 150).await;
}

/// Sends `count` echo requests of 60 KB from a client that never reads (stopping when the
/// gateway stops taking them), then waits until the session is closed as a slow consumer.
async fn flood_until_closed(h: &Harness, stalled: &mut wasmgate_tests::Client, count: usize) {
    let body = vec![b'x'; 60_000];
    let flood = async {
        for _ in 0..count {
            if stalled.send(100, &body).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(PROMPT, flood).await;
    wait_until("the stalled client is closed", || async {
        h.metric("wasmgate_sessions_closed_total{reason=\"slow_consumer\"}") == 1.0
    })
    .await;
}

/// A queue overflow closes the session at once, but a client whose socket still takes data is
/// told why: the `slow_consumer` error frame, then (WebSocket) the 4005 close frame, after the
/// packets the writer already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_still_tells_a_reading_client_why() {
    let h = Harness::start_with(|c| {
        c.limits.pending_write_num = 2;
        c.rate_limits = RateLimitsConfig::off();
    })
    .await;
    for ws in [true, false] {
        let mut client = if ws { h.logged_in_ws("bursty").await } else { h.tcp().await };
        if !ws {
            client.login(1, &wasmgate_tests::token("bursty-tcp")).await.expect("login");
        }
        // Each message 101 is answered by a reply and a push: both queued back to back, faster
        // than a queue of 2 drains.
        for _ in 0..200 {
            if client.send(101, b"burst").await.is_err() {
                break;
            }
        }
        let mut packets = 0;
        let error = loop {
            let item = client.recv_within(PROMPT).await.expect("packets, then the notice");
            let packet = item.packet().expect("an error frame before the close");
            if packet.msg_id == 4 {
                break packet;
            }
            packets += 1;
        };
        assert_eq!(wasmgate_tests::error_of(&error.body).0, "slow_consumer", "after {packets} packets");
        wasmgate_tests::expect_closed(&mut client, ws.then_some(4005)).await;
    }
    wait_until("both closes are counted", || async {
        h.metric("wasmgate_sessions_closed_total{reason=\"slow_consumer\"}") == 2.0
    })
    .await;
}
