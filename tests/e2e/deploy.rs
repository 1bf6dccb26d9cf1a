//! Hot deploy: scripts swapped under load through the admin API, rollback, refused candidates.

use std::time::Duration;

use serde_json::{Value, json};
use wasmgate_tests::{
    ADMIN_TOKEN, Client, FORBIDDEN_IMPORT, HOSTILE_ROUTER, Harness, PROMPT, UNKNOWN_IMPORT, error_of, metric,
    token, with_admin_token,
};

const TAGGED: u32 = 905;

/// The hostile test router tagged `v0` (905 answers `v0:<body>`; ids 100-199 go to dest 101,
/// whose example backend echoes). The abuse limits are off (tested on their own).
async fn tagged_gateway() -> Harness {
    wasmgate_tests::tagged_router_gateway().await
}

/// The hostile router with a custom section `payload` appended: the same code, other bytes
/// (another version, another cache entry). `payload` must be under 100 bytes.
fn hostile_build(payload: &str) -> Vec<u8> {
    let mut wasm = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let name = b"build";
    wasm.push(0); // custom section id
    wasm.push((1 + name.len() + payload.len()) as u8); // section size (LEB128, < 128)
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(payload.as_bytes());
    wasm
}

/// Asks the router which version answers: the tag of the reply to message 905.
async fn tag_of(client: &mut Client) -> String {
    let seq = client.send(TAGGED, b"x").await.expect("send");
    let (reply, _) = client.recv_reply(TAGGED, seq, PROMPT).await.expect("tagged reply");
    String::from_utf8_lossy(&reply.body).trim_end_matches(":x").to_string()
}

#[tokio::test]
async fn router_swaps_under_load_lose_and_duplicate_nothing() {
    const ROUNDS: usize = 150;
    const WINDOW: usize = 10;
    const SWAPS: usize = 10;
    let h = tagged_gateway().await;
    let hostile = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = if i % 2 == 0 { h.ws(false).await } else { h.tcp().await };
        client.login(1, &token(&format!("load-{i}"))).await.expect("login");
        clients.push(client);
    }
    let load = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut tags = Vec::with_capacity(ROUNDS * WINDOW);
            for round in 0..ROUNDS {
                let mut seqs = Vec::with_capacity(WINDOW);
                for k in 0..WINDOW {
                    let body = format!("{round}-{k}");
                    seqs.push((client.send(TAGGED, body.as_bytes()).await.expect("send"), body));
                }
                for (seq, body) in seqs {
                    let packet =
                        client.recv_within(PROMPT).await.expect("a reply").packet().expect("a reply");
                    assert_eq!(
                        (packet.msg_id, packet.seq),
                        (TAGGED, seq),
                        "replies come once each, in order"
                    );
                    let text = String::from_utf8(packet.body.to_vec()).expect("utf-8");
                    let (tag, echoed) = text.split_once(':').expect("tag:body");
                    assert_eq!(echoed, body);
                    tags.push(tag[1..].parse::<usize>().expect("vN"));
                }
            }
            (tags, client)
        })
    });
    let load: Vec<_> = load.collect();
    for v in 1..=SWAPS {
        let (status, info) = h.deploy("router", &hostile, Some(json!({ "tag": format!("v{v}") }))).await;
        assert_eq!(status, 200, "{info}");
        assert!(info["swap_ms"].as_f64().is_some());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut seen_versions = std::collections::BTreeSet::new();
    let mut still_open = Vec::new();
    for task in load {
        let (tags, mut client) = task.await.expect("load task");
        assert_eq!(tags.len(), ROUNDS * WINDOW, "every message answered exactly once");
        assert!(tags.windows(2).all(|w| w[0] <= w[1]), "a session never goes back to an older version");
        seen_versions.extend(tags);
        // Still connected, now on the last version.
        assert_eq!(tag_of(&mut client).await, format!("v{SWAPS}"));
        still_open.push(client);
    }
    assert!(seen_versions.len() > 2, "the load spanned several versions: {seen_versions:?}");
    assert_eq!(h.gateway.sessions(), 4, "no session was dropped");
    let (_, scripts) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    let router = scripts["scripts"].as_array().expect("list").iter().find(|s| s["name"] == "router").cloned();
    let router = router.expect("router listed");
    assert!(router["calls"].as_u64().is_some_and(|c| c > 0) && router["previous"].is_string(), "{router}");
}

#[tokio::test]
async fn rollback_restores_the_previous_version() {
    let h = tagged_gateway().await;
    let hostile = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let mut client = h.logged_in_ws("alice").await;
    assert_eq!(tag_of(&mut client).await, "v0");
    let (status, v1) = h.deploy("router", &hostile, Some(json!({"tag": "v1"}))).await;
    assert_eq!(status, 200);
    assert_eq!(tag_of(&mut client).await, "v1");
    let (status, back) = h.admin("POST", "/scripts/router/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["previous"], v1["version"]);
    assert_eq!(tag_of(&mut client).await, "v0");
    // Rolling back again swaps back.
    h.admin("POST", "/scripts/router/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(tag_of(&mut client).await, "v1");
    let (status, answer) = h.admin("POST", "/scripts/auth/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("no_previous")));
}

#[tokio::test]
async fn refused_candidates_leave_the_live_version_running() {
    let h = tagged_gateway().await;
    let hostile = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let forbidden = std::fs::read(FORBIDDEN_IMPORT).expect("forbidden-import router");
    let mut client = h.logged_in_ws("alice").await;
    let (_, before) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    let compiles = || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        let count =
            |from: &str| metric(&metrics, &format!("wasmgate_script_compiles_total{{from=\"{from}\"}}"));
        (count("compiler"), count("memory_cache"))
    };
    let (compiled, cached) = compiles().await;
    let unknown = std::fs::read(UNKNOWN_IMPORT).expect("unknown-import router");
    let cases: [(&str, &[u8], Option<Value>, &str); 6] = [
        ("router", b"definitely not wasm", None, "cannot be loaded"),
        ("router", b"\0asm\x01\0\0\0", None, "not a component"),
        ("auth", &hostile, None, "does not export `wasmgate:gateway/auth`"),
        ("router", &unknown, None, "imports acme:secrets/vault, which the host does not provide"),
        // wasi:sockets is linked but denied: the connect in `init` fails.
        ("router", &forbidden, None, "failed to initialise"),
        ("router", &hostile, Some(json!({"fail": true})), "failed to initialise"),
    ];
    for (name, wasm, config, why) in cases {
        let (status, answer) = h.deploy(name, wasm, config).await;
        assert_eq!((status, answer["error"].as_str()), (422, Some("rejected")), "{answer}");
        assert!(answer["reason"].as_str().is_some_and(|r| r.contains(why)), "{why}: {answer}");
        assert_eq!(tag_of(&mut client).await, "v0", "the live router still answers");
    }
    // A wrong world or an unknown import is found from the component's declarations, before
    // any compile: only the two failing `init`s were compiled (one new, one from the cache).
    assert_eq!(compiles().await, (compiled + 1.0, cached + 1.0), "refused before compiling");
    let (_, after) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    for i in 0..3 {
        assert_eq!(before["scripts"][i]["version"], after["scripts"][i]["version"]);
    }
    let (status, _) = h.deploy("nope", &hostile, None).await;
    assert_eq!(status, 404);
    let addr = h.gateway.admin_addr().expect("admin");
    let (status, _) = wasmgate::http_client::request(
        &wasmgate::http_client::Endpoint::plain(addr),
        None,
        "POST",
        "/scripts/router",
        hostile.clone(),
    )
    .await
    .expect("post");
    assert_eq!(status, 401, "deploys need the token");
}

#[tokio::test]
async fn auth_and_rooms_swap_without_dropping_sessions_or_membership() {
    let h = Harness::start_with(with_admin_token).await;
    let mut alice = h.logged_in_ws("alice").await;
    let seq = alice.send(5, b"lobby").await.expect("join");
    alice.recv_reply(5, seq, PROMPT).await.expect("joined");

    // A new auth version with another secret: new logins need the new secret; alice stays.
    let (status, info) =
        h.deploy("auth", wasmgate::embedded::DEFAULT_AUTH, Some(json!({"secret": "rotated-secret"}))).await;
    assert_eq!(status, 200, "{info}");
    let mut old = h.ws(false).await;
    let seq = old.send(1, token("bob").as_bytes()).await.expect("login");
    let refused = old.recv_within(PROMPT).await.expect("answer").packet().expect("error frame");
    assert_eq!((refused.msg_id, refused.seq, error_of(&refused.body).0.as_str()), (4, seq, "invalid_token"));
    let mut new = h.ws(false).await;
    let rotated = wasmgate_examples::client::mint_token("rotated-secret", "carol", None, 60).expect("token");
    new.login(1, &rotated).await.expect("login with the rotated secret");

    // A new rooms version with a member cap of 1: the room keeps alice; carol is refused.
    let (status, _) =
        h.deploy("rooms", wasmgate::embedded::DEFAULT_ROOMS, Some(json!({"max_members": 1}))).await;
    assert_eq!(status, 200);
    let (_, rooms) = h.admin("GET", "/rooms", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(rooms["rooms"], json!([{"room": "lobby", "members": 1}]), "membership survived the swap");
    let seq = new.send(5, b"lobby").await.expect("join");
    let answer = new.recv_within(PROMPT).await.expect("answer").packet().expect("answer");
    assert_eq!((answer.seq, error_of(&answer.body).0.as_str()), (seq, "room_full"));
    // alice's session went through both swaps.
    let seq = alice.send(2, b"").await.expect("heartbeat");
    alice.recv_reply(2, seq, PROMPT).await.expect("alive");
}

#[tokio::test]
async fn a_restart_loads_compiled_scripts_from_the_disk_cache() {
    use sha2::Digest as _;
    let cache = tempfile::tempdir().expect("cache dir");
    // A router no other test compiles: the hostile router plus a unique custom section.
    let unique = format!("cache-{}-{}", std::process::id(), wasmgate_examples::bench::unix_ns());
    let wasm = hostile_build(&unique);
    let router = cache.path().join("router.wasm");
    std::fs::write(&router, &wasm).expect("write router");
    let hash: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let start = |cache: std::path::PathBuf, router: std::path::PathBuf| {
        Harness::start_with(move |c| {
            c.scripts.router.path = Some(router);
            c.scripts.router.config = toml::toml! { tag = "cached" };
            c.scripts.cache_dir = Some(cache);
        })
    };
    let compiles = |metrics: &str, from: &str| {
        wasmgate_tests::metric(metrics, &format!("wasmgate_script_compiles_total{{from=\"{from}\"}}"))
    };

    let first = start(cache.path().into(), router.clone()).await;
    let (_, metrics) = first.admin_get("/metrics").await;
    assert!(compiles(&metrics, "compiler") >= 1.0, "{metrics}");
    let files: Vec<String> = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&hash) && n.ends_with(".cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "the precompiled router is in the cache");
    first.gateway.shutdown(Duration::from_secs(2)).await;

    // The restart finds it on disk (the in-memory cache is gone, as in a new process).
    wasmgate::script::engine::ScriptEngine::shared().expect("engine").clear_memory_cache();
    let second = start(cache.path().into(), router.clone()).await;
    let (_, metrics) = second.admin_get("/metrics").await;
    assert!(compiles(&metrics, "disk_cache") >= 1.0, "{metrics}");
    let mut client = second.logged_in_ws("alice").await;
    assert_eq!(tag_of(&mut client).await, "cached");
    second.gateway.shutdown(Duration::from_secs(2)).await;

    // A damaged cache file is not trusted: the router is compiled again.
    std::fs::write(cache.path().join(&files[0]), b"garbage").expect("damage the cache");
    wasmgate::script::engine::ScriptEngine::shared().expect("engine").clear_memory_cache();
    let third = start(cache.path().into(), router).await;
    let (_, metrics) = third.admin_get("/metrics").await;
    assert!(compiles(&metrics, "compiler") >= 1.0, "{metrics}");
    let mut client = third.logged_in_ws("alice").await;
    assert_eq!(tag_of(&mut client).await, "cached");
}

#[tokio::test]
async fn a_script_that_cannot_be_rebuilt_backs_off_and_recovers_on_deploy() {
    let h = tagged_gateway().await;
    let hostile = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    // This version initialises now but refuses every init from 300 ms on.
    let config = json!({"tag": "doomed", "fail_init_after_ms": now_ms as u64 + 300});
    let (status, _) = h.deploy("router", &hostile, Some(config)).await;
    assert_eq!(status, 200);
    let mut client = h.logged_in_ws("alice").await;
    assert_eq!(tag_of(&mut client).await, "doomed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A trap discards the only instance; its replacement cannot be built.
    let seq = client.send(900, b"").await.expect("send");
    let answer = client.recv_within(PROMPT).await.expect("answer").packet().expect("error frame");
    assert_eq!((answer.seq, error_of(&answer.body).0.as_str()), (seq, "script_error"));
    // Further messages fail fast while rebuilds back off; the session stays.
    for _ in 0..5 {
        let seq = client.send(TAGGED, b"x").await.expect("send");
        let answer = client.recv_within(PROMPT).await.expect("answer").packet().expect("error frame");
        assert_eq!((answer.seq, error_of(&answer.body).0.as_str()), (seq, "script_error"));
    }
    let (_, metrics) = h.admin_get("/metrics").await;
    let unavailable = wasmgate_tests::metric_sum(
        &metrics,
        "wasmgate_script_calls_total",
        &["script=\"router\"", "outcome=\"unavailable\""],
    );
    assert!(unavailable >= 1.0, "calls refused during the back-off: {metrics}");
    // A good version goes live at once.
    let (status, _) = h.deploy("router", &hostile, Some(json!({"tag": "fixed"}))).await;
    assert_eq!(status, 200);
    assert_eq!(tag_of(&mut client).await, "fixed");
}

#[tokio::test]
async fn a_failing_router_falls_back_to_the_configured_dest() {
    let h = Harness::start_with(|c| {
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.router_fallback_dest = Some(101);
    })
    .await;
    let mut client = h.logged_in_ws("alice").await;
    // 900 traps the router: the fallback sends it to dest 101, whose example backend echoes.
    let seq = client.send(900, b"still served").await.expect("send");
    let (reply, _) = client.recv_reply(900, seq, PROMPT).await.expect("the backend's echo");
    assert_eq!(&reply.body[..], b"still served");
}

#[tokio::test]
async fn a_script_file_written_to_the_watched_directory_goes_live() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let dir = scripts.path().to_path_buf();
    let h = Harness::start_with(move |c| {
        with_admin_token(c);
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.router.config = toml::toml! { tag = "from-config" };
        c.scripts.dir = Some(dir);
    })
    .await;
    let mut client = h.logged_in_ws("alice").await;
    assert_eq!(tag_of(&mut client).await, "from-config");
    // A file that is not a component: refused, the live router stays.
    wasmgate_tests::write_atomic(scripts.path().join("router.wasm"), "not a component");
    wasmgate_tests::wait_until("the bad file is refused", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        wasmgate_tests::metric(&metrics, "wasmgate_script_deploys_total{reason=\"rejected\"}") == 1.0
    })
    .await;
    assert_eq!(tag_of(&mut client).await, "from-config");
    // A new build of the router (here: the same code plus a custom section) dropped in by
    // rename: it goes live with the running config.
    let wasm = hostile_build("");
    std::fs::write(scripts.path().join("router.tmp"), &wasm).expect("write");
    std::fs::rename(scripts.path().join("router.tmp"), scripts.path().join("router.wasm")).expect("rename");
    wasmgate_tests::wait_until("the new router is live", || async {
        let (_, metrics) = h.admin_get("/metrics").await;
        wasmgate_tests::metric(&metrics, "wasmgate_script_deploys_total{reason=\"ok\"}") == 1.0
    })
    .await;
    let expected = wasmgate::script::deploy::version_id(&wasm, r#"{"tag":"from-config"}"#);
    let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(list["scripts"][1]["name"], "router");
    assert_eq!(list["scripts"][1]["version"], expected.as_str());
    let previous = list["scripts"][1]["previous"].clone();
    assert!(previous.is_string() && previous != expected.as_str(), "{list}");
    assert_eq!(tag_of(&mut client).await, "from-config");
    // The same file dropped in again (and read, and touched): not a deploy; the rollback
    // target stays the version before it.
    for _ in 0..3 {
        std::fs::write(scripts.path().join("router.tmp"), &wasm).expect("write");
        std::fs::rename(scripts.path().join("router.tmp"), scripts.path().join("router.wasm"))
            .expect("rename");
        drop(std::fs::read(scripts.path().join("router.wasm")).expect("read"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (&list["scripts"][1]["version"], &list["scripts"][1]["previous"]),
        (&json!(expected), &previous)
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "wasmgate_script_deploys_total{reason=\"ok\"}"), 1.0);
    let (status, back) = h.admin("POST", "/scripts/router/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &back["version"]), (200, &previous), "{back}");
}

/// Deploying the live version again changes nothing: same version, same rollback target, the
/// answer says `unchanged`, counted as such.
#[tokio::test]
async fn redeploying_the_live_version_is_a_no_op() {
    let h = tagged_gateway().await;
    let hostile = std::fs::read(HOSTILE_ROUTER).expect("hostile router");
    let mut client = h.logged_in_ws("alice").await;
    let (_, v0) = h.deploy("router", &hostile, Some(json!({"tag": "v0"}))).await;
    assert_eq!(v0["unchanged"], true, "the start-up version redeployed: {v0}");
    assert!(v0["previous"].is_null(), "{v0}");
    let (status, v1) = h.deploy("router", &hostile, Some(json!({"tag": "v1"}))).await;
    assert_eq!(status, 200, "{v1}");
    assert!(v1.get("unchanged").is_none(), "a real deploy says nothing of it: {v1}");
    for _ in 0..3 {
        let (status, again) = h.deploy("router", &hostile, Some(json!({"tag": "v1"}))).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            (&again["version"], &again["previous"], &again["unchanged"]),
            (&v1["version"], &v1["previous"], &json!(true))
        );
    }
    assert_eq!(tag_of(&mut client).await, "v1");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "wasmgate_script_deploys_total{reason=\"unchanged\"}"), 4.0);
    assert_eq!(metric(&metrics, "wasmgate_script_deploys_total{reason=\"ok\"}"), 1.0);
    let (status, back) = h.admin("POST", "/scripts/router/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(tag_of(&mut client).await, "v0", "the rollback target survived the redeploys");
}

#[tokio::test]
async fn the_pooling_allocator_is_sized_from_the_config() {
    // Three slots: auth, router and rooms take one each at start.
    let h = Harness::start_with(|c| {
        with_admin_token(c);
        c.scripts.pooling.max_instances = 3;
        c.scripts.pooling.max_memories = 3;
    })
    .await;
    let mut client = h.logged_in_ws("alice").await;
    // A new router version needs a fourth slot: refused with the pool's error; the live one
    // keeps serving.
    let config = Some(json!({"default_dest": 101}));
    let (status, answer) = h.deploy("router", wasmgate::embedded::DEFAULT_ROUTER, config).await;
    assert_eq!(status, 422, "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("limit") && reason.contains("scripts.pooling"), "{answer}");
    let seq = client.send(100, b"still routed").await.expect("send");
    let (echo, _) = client.recv_reply(100, seq, PROMPT).await.expect("echo");
    assert_eq!(&echo.body[..], b"still routed");
}

/// `scripts.trap_unknown_imports`: a component importing an interface the host does not know
/// deploys; calling that import traps (that one message gets `script_error`), the rest works.
#[tokio::test]
async fn unknown_imports_can_be_linked_as_traps() {
    let h = Harness::start_with(|c| {
        with_admin_token(c);
        c.scripts.trap_unknown_imports = true;
    })
    .await;
    let unknown = std::fs::read(UNKNOWN_IMPORT).expect("unknown-import router");
    let (status, info) = h.deploy("router", &unknown, None).await;
    assert_eq!(status, 200, "{info}");
    let mut client = h.logged_in_ws("alice").await;
    let seq = client.send(666, b"reaches the vault").await.expect("send");
    let (error, _) = client.recv_reply(4, seq, PROMPT).await.expect("error frame");
    assert_eq!(error_of(&error.body).0, "script_error");
    let seq = client.send(100, b"x").await.expect("send");
    let (error, _) = client.recv_reply(4, seq, PROMPT).await.expect("error frame");
    assert_eq!(error_of(&error.body).0, "unknown_message", "the router still answers");
}

#[tokio::test]
async fn the_compile_cache_keeps_only_deployed_and_recent_components() {
    use sha2::Digest as _;
    use wasmgate::script::engine::{KEEP_RELEASED, ScriptEngine};
    let h = tagged_gateway().await;
    let engine = ScriptEngine::shared().expect("engine");
    let unique = format!("evict-{}-{}", std::process::id(), wasmgate_examples::bench::unix_ns());
    let builds: Vec<Vec<u8>> = (0..8).map(|i| hostile_build(&format!("{unique}-{i}"))).collect();
    let cached = |wasm: &[u8]| engine.is_cached(&sha2::Sha256::digest(wasm).into());
    let mut client = h.logged_in_ws("alice").await;
    for (i, wasm) in builds.iter().enumerate() {
        let (status, answer) = h.deploy("router", wasm, Some(json!({"tag": format!("v{i}")}))).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(tag_of(&mut client).await, "v7");
    // Live and rollback stay compiled; of the six released, at most the most recent few (other
    // tests' gateways release components into the same cache), never the oldest two.
    assert!(cached(&builds[7]) && cached(&builds[6]), "live and rollback versions are cached");
    assert!(!cached(&builds[0]) && !cached(&builds[1]), "released long ago: evicted");
    let released = builds[..6].iter().filter(|w| cached(w)).count();
    assert!(released <= KEEP_RELEASED, "{released} released components still cached");

    // A refused component is never kept.
    let refused = hostile_build(&format!("{unique}-refused"));
    let (status, answer) = h.deploy("router", &refused, Some(json!({"fail": true}))).await;
    assert_eq!(status, 422, "{answer}");
    assert!(!cached(&refused), "a refused component is not cached");

    // The rollback target still rolls back, and the replaced live version stays cached as the
    // new rollback target.
    let (status, back) = h.admin("POST", "/scripts/router/rollback", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(tag_of(&mut client).await, "v6");
    assert!(cached(&builds[7]) && cached(&builds[6]));
}
