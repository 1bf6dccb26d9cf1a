//! The config centre (seed 000 step 1): maps and gateway config held in a real etcd, the maps
//! watched and applied live.

use wasmgate_tests::servers::EtcdServer;
use wasmgate_tests::{Client, Harness, PROMPT, error_of, metric, wait_until};

/// Where a gateway named `wasmgate` (the default) finds its keys.
const PREFIX: &str = "/wasmgate/config/wasmgate/";

/// Sends `msg_id` and says whether it was routed (answered by the echo backend) rather than
/// refused with `unknown_message`.
async fn routed(client: &mut Client, msg_id: u32) -> bool {
    let seq = client.send(msg_id, b"ping").await.expect("send");
    loop {
        let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("a packet");
        if packet.seq != seq {
            continue;
        }
        if packet.msg_id == msg_id {
            return true;
        }
        assert_eq!((packet.msg_id, error_of(&packet.body).0.as_str()), (4, "unknown_message"));
        return false;
    }
}

async fn reloads(h: &Harness, reason: &str) -> f64 {
    let (_, text) = h.admin_get("/metrics").await;
    metric(&text, &format!("wasmgate_map_reloads_total{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_map_in_etcd_replaces_the_file_and_each_put_is_applied_live() {
    let etcd = EtcdServer::start().await;
    etcd.put(&format!("{PREFIX}message_map.json"), r#"{"120": 101}"#).await;
    let endpoint = etcd.endpoint();
    let h = Harness::start_with(move |c| {
        c.config_centre.enabled = true;
        c.config_centre.etcd_endpoints = vec![endpoint];
    })
    .await;
    let mut client = h.logged_in_ws("olga").await;
    assert!(routed(&mut client, 120).await, "the etcd map is in force");
    assert!(!routed(&mut client, 100).await, "the file's map is not");

    etcd.put(&format!("{PREFIX}message_map.json"), r#"{"121": 101}"#).await;
    wait_until("the new map from etcd is live", || async { reloads(&h, "ok").await == 1.0 }).await;
    assert!(routed(&mut client, 121).await);
    assert!(!routed(&mut client, 120).await);

    // An invalid map is refused; the running one stays.
    etcd.put(&format!("{PREFIX}message_map.json"), r#"{"122": "#).await;
    wait_until("the invalid map is refused", || async { reloads(&h, "invalid").await == 1.0 }).await;
    assert!(routed(&mut client, 121).await);
    // A change to the file is not applied: etcd is the source.
    wasmgate_tests::write_message_map(&h.dir, &[(123, 101)]);
    tokio::time::sleep(wasmgate::control::watch::DEBOUNCE * 3).await;
    assert!(!routed(&mut client, 123).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_config_in_etcd_is_merged_over_the_file_and_errors_name_key_and_field() {
    let etcd = EtcdServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wasmgate.toml");
    let file = format!(
        "[node]\nname = \"gw-7\"\n[timeouts]\nlogin_ms = 5000\nheartbeat_ms = 30000\n\
         [config_centre]\nenabled = true\netcd_endpoints = [\"{}\"]\n",
        etcd.endpoint()
    );
    std::fs::write(&path, file).expect("write the file");
    // No key yet: the file alone.
    let config =
        wasmgate::control::config_centre::load(Some(&path), &Default::default()).await.expect("loads");
    assert_eq!(config.timeouts.login_ms, 5000);

    let key = "/wasmgate/config/gw-7/wasmgate.toml";
    etcd.put(key, "[timeouts]\nlogin_ms = 1234\n[rooms]\nlist_limit = 9\n").await;
    let config =
        wasmgate::control::config_centre::load(Some(&path), &Default::default()).await.expect("loads");
    assert_eq!((config.timeouts.login_ms, config.timeouts.heartbeat_ms), (1234, 30000));
    assert_eq!((config.rooms.list_limit, config.node.name.as_str()), (9, "gw-7"));

    etcd.put(key, "[timeouts]\nlogin_ms = \"soon\"\n").await;
    let error = format!(
        "{:#}",
        wasmgate::control::config_centre::load(Some(&path), &Default::default()).await.expect_err("refused")
    );
    assert!(error.contains(key) && error.contains("login_ms"), "{error}");
}
