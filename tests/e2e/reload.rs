//! `dest_map.json` / `message_map.json` edits applied live, with no connection dropped.

use std::time::Duration;

use wasmgate_tests::{
    ADMIN_TOKEN, Backend, Harness, PROMPT, error_of, metric, wait_until, with_admin_token, write_atomic,
    write_dest_map, write_message_map,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_edits_apply_live_and_invalid_files_keep_the_old_maps() {
    let h = Harness::start_with(with_admin_token).await;
    let (status, maps) = h.admin("GET", "/maps", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &maps), (200, &serde_json::json!({ "last_applied": null, "last_error": null })));
    let second = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = h.logged_in_ws("live").await;

    let seq = c.send(200, b"x").await.unwrap();
    let (error, _) = c.recv_reply(4, seq, PROMPT).await.unwrap();
    assert_eq!(error_of(&error.body).0, "unknown_message");

    // Add dest 201 and route message 200 to it.
    write_dest_map(&h.dir, &[(101, h.backend.addr), (201, second.addr)]);
    h.wait_upstream(201, 2).await;
    assert_eq!(h.gateway.upstream_connections_up(101), 2, "an unchanged dest keeps its pool");
    write_message_map(&h.dir, &[(100, 101), (200, 201)]);
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let seq = c.send(200, b"to 201").await.unwrap();
        let p = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
        assert_eq!(p.seq, seq);
        if p.msg_id == 200 {
            assert_eq!(&p.body[..], b"to 201");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "message_map edit never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Broken files are rejected; the running maps stay.
    write_atomic(h.dir.path().join("message_map.json"), "{ not json");
    write_atomic(h.dir.path().join("dest_map.json"), r#"{"201": {"poolNums": 0, "srvAddr": "x:1"}}"#);
    wait_until("both invalid maps are reported", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, "wasmgate_map_reloads_total{reason=\"invalid\"}") >= 2.0
    })
    .await;
    // GET /maps (docs/api.md) names the last refusal and the last applied reload.
    let (_, maps) = h.admin("GET", "/maps", "", false, Some(ADMIN_TOKEN)).await;
    let refused = maps["last_error"]["detail"].as_str().unwrap_or_default();
    assert!(refused.contains("invalid"), "{maps}");
    assert!(maps["last_error"]["origin"].as_str().is_some_and(|o| o.ends_with(".json")), "{maps}");
    assert!(maps["last_applied"]["detail"].as_str().is_some_and(|d| d.contains("message ids")), "{maps}");
    let (status, _) = h.admin("GET", "/maps", "", false, None).await;
    assert_eq!(status, 401, "behind the token");
    let seq = c.send(200, b"still routed").await.unwrap();
    let (reply, _) = c.recv_reply(200, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"still routed");
    assert_eq!(h.gateway.upstream_connections_up(201), 2);

    // Removing the dest drains its pool; the session survived every edit.
    write_dest_map(&h.dir, &[(101, h.backend.addr)]);
    wait_until("the removed dest disconnects", || async { h.gateway.upstream_connections_up(201) == 0 })
        .await;
    let seq = c.send(100, b"same connection").await.unwrap();
    c.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(h.gateway.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_map_swaps_under_load_lose_and_duplicate_nothing() {
    let h = Harness::start().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.logged_in_ws(&format!("load-{i}")).await);
    }
    const PER_CLIENT: u32 = 400;
    let senders: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                // Send everything, then read; every seq must be answered exactly once, in order.
                for i in 0..PER_CLIENT {
                    c.send_seq(100, i, i.to_string().as_bytes()).await.unwrap();
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                for i in 0..PER_CLIENT {
                    let p = c.recv_within(PROMPT).await.unwrap().packet().unwrap();
                    assert_eq!(
                        (p.msg_id, p.seq),
                        (100, i),
                        "answer {i}: {:?}",
                        String::from_utf8_lossy(&p.body)
                    );
                    assert_eq!(p.body, i.to_string().as_bytes());
                }
                c
            })
        })
        .collect();
    // Meanwhile, swap the router's map again and again (message 100 stays routed).
    for round in 0..10u32 {
        write_message_map(&h.dir, &[(100, 101), (300 + round, 101)]);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut still_open = Vec::new();
    for s in senders {
        still_open.push(tokio::time::timeout(PROMPT * 3, s).await.unwrap().unwrap());
    }
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(metric(&metrics, "wasmgate_map_reloads_total{reason=\"ok\"}") >= 3.0, "maps were swapped");
    assert_eq!(
        metric(&metrics, "wasmgate_routed_total{dest=\"101\",outcome=\"ok\"}"),
        f64::from(4 * PER_CLIENT)
    );
    assert_eq!(h.gateway.sessions(), 4);
}

/// The watcher reacts to content changes only: after an edit settles nothing reloads again,
/// and opening, reading or rewriting a watched file with the same content triggers nothing
/// (the watcher used to wake on its own reads and reload ~10 times a second forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_does_not_reload_after_an_edit_settles() {
    let h = Harness::start().await;
    let reloads = || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, "wasmgate_map_reloads_total{reason=\"ok\"}")
    };
    assert_eq!(reloads().await, 0.0, "nothing reloaded at start (the series exists at zero)");
    let (_, metrics) = h.admin_get("/metrics").await;
    let precreated = [
        "wasmgate_map_reloads_total{reason=\"ok\"} 0",
        "wasmgate_map_reloads_total{reason=\"invalid\"} 0",
        "wasmgate_connections_total{transport=\"tcp\"} 0",
        "wasmgate_sessions_closed_total{reason=\"slow_consumer\"} 0",
        "wasmgate_script_deploys_total{reason=\"unchanged\"} 0",
        "wasmgate_routed_total{dest=\"101\",outcome=\"upstream_busy\"} 0",
    ];
    for series in precreated {
        assert!(metrics.lines().any(|l| l == series), "series created at zero: {series}");
    }

    write_message_map(&h.dir, &[(100, 101), (200, 101)]);
    wait_until("the edit is applied", || async { reloads().await == 1.0 }).await;
    // Several debounce periods: a self-triggering watcher would have reloaded many times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads().await, 1.0, "one edit, one reload");

    // Reads (open, read, close), a metadata change and a rewrite of identical content.
    let path = h.dir.path().join("message_map.json");
    let text = std::fs::read_to_string(&path).unwrap();
    drop(std::fs::File::open(h.dir.path().join("dest_map.json")).unwrap());
    let permissions = std::fs::metadata(&path).unwrap().permissions();
    std::fs::set_permissions(&path, permissions).unwrap();
    std::fs::write(&path, &text).unwrap();
    write_atomic(path.clone(), &text);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads().await, 1.0, "reads and identical rewrites are not reloads");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "wasmgate_map_reloads_total{reason=\"invalid\"}"), 0.0);

    // A real change still applies, once.
    write_message_map(&h.dir, &[(100, 101), (200, 101), (300, 101)]);
    wait_until("the second edit is applied", || async { reloads().await == 2.0 }).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(reloads().await, 2.0);
}
