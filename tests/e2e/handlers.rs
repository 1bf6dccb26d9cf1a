//! Handler scripts: named in `message_map.json`, described by the scripts directory's manifest,
//! brought in / replaced / retired live; a stateful one keeps its state across swaps.

use std::path::Path;
use wasmgate::config::RateLimitsConfig;

use serde_json::json;
use wasmgate_tests::{
    ADMIN_TOKEN, COUNTER_HANDLER, Client, Harness, PROMPT, error_of, metric, wait_until, with_admin_token,
    write_atomic,
};

const COUNT: u32 = 110;
const FORWARDED: u32 = 111;
const REFUSED: u32 = 112;
const TRAP: u32 = 113;
/// Client error frames' message id.
const ERROR: u32 = 4;

/// Writes the scripts directory's manifest with one `counter` entry.
fn write_manifest(dir: &Path, config: &str, stateful: bool) {
    let manifest = format!(
        "[[script]]\nname = \"counter\"\nworld = \"handler\"\nfile = \"counter.wasm\"\n\
         stateful = {stateful}\nconfig = {config}\n"
    );
    write_atomic(dir.join("manifest.toml"), &manifest);
}

/// `message_map.json`: the example routes plus `scripts` (message id -> script name).
fn write_map(h: &Harness, scripts: &[(u32, &str)]) {
    let mut map: serde_json::Map<String, serde_json::Value> =
        (100..=106).map(|id| (id.to_string(), json!(101))).collect();
    for (id, name) in scripts {
        map.insert(id.to_string(), json!(name));
    }
    write_atomic(h.dir.path().join("message_map.json"), &serde_json::Value::Object(map).to_string());
}

async fn wait_reloads(h: &Harness, reason: &str, n: f64) {
    wait_until(&format!("{n} map reloads {reason}"), || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        metric(&metrics, &format!("wasmgate_map_reloads_total{{reason=\"{reason}\"}}")) >= n
    })
    .await;
}

/// Sends message 110 and returns the answer `<tag>:<count>`, or the error code.
async fn count(client: &mut Client) -> String {
    let seq = client.send(COUNT, b"").await.expect("send");
    let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("a packet");
    assert_eq!(packet.seq, seq);
    if packet.msg_id == ERROR {
        return error_of(&packet.body).0;
    }
    assert_eq!(packet.msg_id, COUNT);
    String::from_utf8_lossy(&packet.body).into_owned()
}

/// Waits until the live `counter` is the counter component with `config_json`.
async fn wait_counter_version(h: &Harness, config_json: &str) {
    let bytes = std::fs::read(COUNTER_HANDLER).expect("counter");
    let expected = wasmgate::script::deploy::version_id(&bytes, config_json);
    wait_until(&format!("counter {config_json} is live"), || async {
        let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
        let scripts = list["scripts"].as_array().cloned().unwrap_or_default();
        scripts.iter().any(|s| s["name"] == "counter" && s["version"] == expected.as_str())
    })
    .await;
}

/// The hostile router's answer to message 905 with body `x`: `<tag>:x`.
async fn tag_905(client: &mut Client) -> String {
    let seq = client.send(905, b"x").await.expect("send");
    let (reply, _) = client.recv_reply(905, seq, PROMPT).await.expect("tagged reply");
    String::from_utf8_lossy(&reply.body).into_owned()
}

async fn script_names(h: &Harness) -> Vec<String> {
    let (status, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    list["scripts"]
        .as_array()
        .expect("scripts")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").into())
        .collect()
}

/// A gateway with the admin API and a scripts directory holding the counter handler.
async fn gateway_with_counter(scripts: &tempfile::TempDir, stateful: bool) -> Harness {
    std::fs::copy(COUNTER_HANDLER, scripts.path().join("counter.wasm")).expect("copy the counter");
    write_manifest(scripts.path(), r#"{ tag = "v1" }"#, stateful);
    let dir = scripts.path().to_path_buf();
    Harness::start_with(move |c| {
        with_admin_token(c);
        c.scripts.dir = Some(dir);
    })
    .await
}

#[tokio::test]
async fn a_message_map_reload_brings_in_replaces_and_retires_a_handler_script() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let h = gateway_with_counter(&scripts, true).await;
    let mut client = h.logged_in_ws("alice").await;
    assert_eq!(count(&mut client).await, "unknown_message");
    assert!(!script_names(&h).await.contains(&"counter".to_string()));

    // Brought in by the map.
    write_map(&h, &[(COUNT, "counter"), (FORWARDED, "counter"), (REFUSED, "counter")]);
    wait_counter_version(&h, r#"{"tag":"v1"}"#).await;
    assert_eq!(count(&mut client).await, "v1:1");
    assert_eq!(count(&mut client).await, "v1:2");
    let seq = client.send(FORWARDED, b"to the backend").await.expect("send");
    let (echo, _) = client.recv_reply(FORWARDED, seq, PROMPT).await.expect("the backend's echo");
    assert_eq!(&echo.body[..], b"to the backend");
    let seq = client.send(REFUSED, b"").await.expect("send");
    let (error, _) = client.recv_reply(ERROR, seq, PROMPT).await.expect("an error frame");
    assert_eq!(error_of(&error.body).0, "bad_request");

    // Replaced by a manifest change (new config): the counters are carried over.
    write_manifest(scripts.path(), r#"{ tag = "v2" }"#, true);
    wait_counter_version(&h, r#"{"tag":"v2"}"#).await;
    assert_eq!(count(&mut client).await, "v2:3");

    // A version whose restore refuses the state is not swapped in: v2 stays with its state.
    write_manifest(scripts.path(), r#"{ tag = "v3", fail_restore = true }"#, true);
    wait_reloads(&h, "invalid", 1.0).await;
    assert_eq!(count(&mut client).await, "v2:4");

    // A map naming a script the manifest lacks is refused; the running map stays.
    write_map(&h, &[(COUNT, "counter"), (113, "missing")]);
    wait_reloads(&h, "invalid", 2.0).await;
    assert_eq!(count(&mut client).await, "v2:5");

    // Rollback through the admin API: v1 again, still with the counters.
    let (status, info) = h.admin("POST", "/scripts/counter/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(count(&mut client).await, "v1:6");

    // Retired by the map: the message is unknown again and the script is gone.
    write_map(&h, &[]);
    wait_until("the counter is retired", || async {
        !script_names(&h).await.contains(&"counter".to_string())
    })
    .await;
    assert_eq!(count(&mut client).await, "unknown_message");
    let (status, _) = h.admin("POST", "/scripts/counter/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn stateful_handler_swaps_under_load_count_every_message_exactly_once() {
    const MAX_MESSAGES: usize = 20_000;
    const WINDOW: usize = 8;
    const SWAPS: usize = 10;
    let scripts = tempfile::tempdir().expect("scripts dir");
    std::fs::copy(COUNTER_HANDLER, scripts.path().join("counter.wasm")).expect("copy the counter");
    write_manifest(scripts.path(), r#"{ tag = "v0" }"#, true);
    // The initial map already names the counter: it is loaded at start.
    let message_map = scripts.path().join("message_map.json");
    write_atomic(message_map.clone(), &json!({ "100": 101, "110": "counter" }).to_string());
    let dir = scripts.path().to_path_buf();
    let h = Harness::start_with(move |c| {
        with_admin_token(c);
        // A load test: the abuse limits (docs/security.md) are tested on their own.
        c.rate_limits = RateLimitsConfig::off();
        c.scripts.dir = Some(dir);
        c.maps.message_map = Some(message_map);
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = if i % 2 == 0 { h.ws(false).await } else { h.tcp().await };
        client.login(1, &wasmgate_tests::token(&format!("counter-{i}"))).await.expect("login");
        clients.push(client);
    }
    // Clients send until the swaps are over (at most MAX_MESSAGES each).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = clients.into_iter().map(|mut client| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && answers.len() < MAX_MESSAGES {
                let mut seqs = Vec::new();
                for _ in 0..WINDOW {
                    seqs.push(client.send(COUNT, b"").await.expect("send"));
                }
                for seq in seqs {
                    let (reply, _) = client.recv_reply(COUNT, seq, PROMPT).await.expect("an answer");
                    answers.push(String::from_utf8_lossy(&reply.body).into_owned());
                }
            }
            answers
        })
    });
    let load: Vec<_> = load.collect();
    let counter = std::fs::read(COUNTER_HANDLER).expect("counter");
    for v in 1..=SWAPS {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let (status, info) = h.deploy("counter", &counter, Some(json!({ "tag": format!("v{v}") }))).await;
        assert_eq!(status, 200, "{info}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions_seen = std::collections::BTreeSet::new();
    for task in load {
        let answers = task.await.expect("client task");
        let mut last_version = 0;
        for (i, answer) in answers.iter().enumerate() {
            let (tag, n) = answer.split_once(':').expect("tag:count");
            // Every increment applied once, in order, whatever version answered.
            assert_eq!(n.parse::<usize>().ok(), Some(i + 1), "answer {i}: {answer}");
            let version: usize = tag.trim_start_matches('v').parse().expect("version");
            assert!(version >= last_version, "went back from v{last_version} to {tag}");
            last_version = version;
            versions_seen.insert(version);
        }
    }
    // The swaps happened under the load, not after it.
    assert!(versions_seen.len() >= 3, "answers came from versions {versions_seen:?} only");
    eprintln!("answers from versions {versions_seen:?}");
    let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    let counter_info =
        list["scripts"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "counter")).cloned();
    assert!(counter_info.is_some_and(|c| c["traps"] == 0), "{list}");
}

#[tokio::test]
async fn a_stateless_handler_runs_without_carrying_state_and_a_bad_map_refuses_the_start() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let h = gateway_with_counter(&scripts, false).await;
    let mut client = h.logged_in_ws("bob").await;
    write_map(&h, &[(COUNT, "counter")]);
    wait_counter_version(&h, r#"{"tag":"v1"}"#).await;
    assert_eq!(count(&mut client).await, "v1:1");
    // Stateless: a new version starts from its own (empty) state.
    write_manifest(scripts.path(), r#"{ tag = "v2" }"#, false);
    wait_counter_version(&h, r#"{"tag":"v2"}"#).await;
    assert_eq!(count(&mut client).await, "v2:1");

    // A gateway whose initial map names a script it cannot find does not start.
    let mut config = h.config.clone();
    config.scripts.dir = None;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    (config.listen.ws, config.listen.tcp, config.listen.admin) = (Some(any), Some(any), Some(any));
    let error = wasmgate::RunningGateway::start(config).await.err().expect("refused").to_string();
    assert!(error.contains("scripts.dir"), "{error}");
}

#[tokio::test]
async fn a_stateful_handler_with_no_live_instance_can_still_be_replaced() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let h = gateway_with_counter(&scripts, true).await;
    let mut client = h.logged_in_ws("carol").await;
    // Instances built from now on refuse to start.
    let fail_after =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    write_manifest(
        scripts.path(),
        &format!("{{ tag = \"v1\", fail_init_after_ms = {} }}", fail_after + 1_500),
        true,
    );
    write_map(&h, &[(COUNT, "counter"), (TRAP, "counter")]);
    wait_until("the counter is live", || async { script_names(&h).await.contains(&"counter".to_string()) })
        .await;
    assert_eq!(count(&mut client).await, "v1:1");
    tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
    // The trap loses the only instance and its replacement cannot be built.
    let seq = client.send(TRAP, b"").await.expect("send");
    let (error, _) = client.recv_reply(ERROR, seq, PROMPT).await.expect("an error frame");
    assert_eq!(error_of(&error.body).0, "script_error");
    assert_eq!(count(&mut client).await, "script_error");
    // A fixed version goes live although there is no state to snapshot; it starts empty.
    let counter = std::fs::read(COUNTER_HANDLER).expect("counter");
    let (status, info) = h.deploy("counter", &counter, Some(json!({ "tag": "fixed" }))).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(count(&mut client).await, "fixed:1");
}

#[tokio::test]
async fn the_manifest_can_describe_a_built_in_script() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    std::fs::copy(wasmgate_tests::HOSTILE_ROUTER, scripts.path().join("router.wasm")).expect("copy");
    let router_entry = |tag: &str| {
        format!(
            "[[script]]\nname = \"router\"\nworld = \"router\"\nfile = \"router.wasm\"\nconfig = {{ tag = \"{tag}\" }}\n"
        )
    };
    write_atomic(scripts.path().join("manifest.toml"), &router_entry("m1"));
    let dir = scripts.path().to_path_buf();
    // The manifest's entry wins over [scripts.router] (the default router here).
    let h = Harness::start_with(move |c| {
        with_admin_token(c);
        c.scripts.dir = Some(dir);
    })
    .await;
    let mut client = h.logged_in_ws("dave").await;
    let answer = tag_905(&mut client).await;
    assert_eq!(answer, "m1:x");
    // A config change in the manifest redeploys the router live.
    write_atomic(scripts.path().join("manifest.toml"), &router_entry("m2"));
    let bytes = std::fs::read(wasmgate_tests::HOSTILE_ROUTER).expect("router");
    let expected = wasmgate::script::deploy::version_id(&bytes, r#"{"tag":"m2"}"#);
    wait_until("the manifest's router is live", || async {
        let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
        list["scripts"][1]["version"] == expected.as_str()
    })
    .await;
    assert_eq!(tag_905(&mut client).await, "m2:x");
}

/// Evidence for a stateful handler (docs/evidence.md): the shadow candidate starts from a
/// copy of the live state, so the same code decides the same; a recording carries the live
/// snapshot, so its replay starts where the live version was.
#[tokio::test]
async fn a_stateful_handler_shadow_and_replay_start_from_the_live_state() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let h = gateway_with_counter(&scripts, true).await;
    let mut client = h.logged_in_ws("alice").await;
    write_map(&h, &[(COUNT, "counter")]);
    wait_counter_version(&h, r#"{"tag":"v1"}"#).await;
    for n in 1..=3 {
        assert_eq!(count(&mut client).await, format!("v1:{n}"));
    }
    let counter = std::fs::read(COUNTER_HANDLER).expect("counter");
    let (status, started) = h.deploy("counter/shadow", &counter, None).await;
    assert_eq!(status, 200, "{started}");
    for n in 4..=6 {
        assert_eq!(count(&mut client).await, format!("v1:{n}"), "the live state goes on");
    }
    wait_until("the shadow compared 3 events", || async {
        let (_, report) = h.admin("GET", "/scripts/counter/shadow", "", false, Some(ADMIN_TOKEN)).await;
        report["events"]["compared"] == 3
    })
    .await;
    let (_, report) = h.admin("GET", "/scripts/counter/shadow", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (&report["events"]["same"], &report["events"]["different"]),
        (&json!(3), &json!(0)),
        "{report}"
    );

    // A recording starts from the live snapshot (alice at 6).
    let to = wasmgate::http_client::Endpoint::plain(h.gateway.admin_addr().expect("admin"));
    let record = tokio::spawn(async move {
        let path = "/scripts/counter/record?max_events=4&seconds=60";
        wasmgate::http_client::request(&to, Some(ADMIN_TOKEN), "POST", path, vec![]).await.expect("record")
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for n in 7..=10 {
        assert_eq!(count(&mut client).await, format!("v1:{n}"));
    }
    let (status, text) = record.await.expect("record task");
    assert_eq!(status, 200, "{text}");
    let (header, entries) = wasmgate::script::evidence::record::parse(&text).expect("a recording");
    assert!(header.state.is_some() && entries.len() == 4, "{}", text.lines().next().unwrap_or(""));
    let limits = wasmgate::script::check::offline_limits(&wasmgate::Config::default());
    let replay = wasmgate::script::evidence::replay::replay;
    let same = replay(&text, counter.clone(), None, limits.clone()).await.expect("replay");
    assert_eq!((same.events, same.different), (4, 0), "{same}");
    let retagged = replay(&text, counter, Some(r#"{"tag":"v2"}"#.into()), limits).await.expect("replay");
    assert_eq!(retagged.differences["content"], 4, "{retagged}");
    assert!(retagged.listed[0]["candidate"].to_string().contains("v2:7"), "{retagged}");
}
