//! Scripts in every language the docs claim: the templates of `examples/scripts/` (Rust, C
//! with wit-bindgen + wasi-libc, Python with componentize-py, JavaScript with componentize-js
//! and componentize-qjs), built with their toolchains' default
//! output (`examples/scripts/build.sh`), deployed through the scripts directory's manifest +
//! a `message_map` reload and through the admin API, and a stateful handler's state carried
//! across swaps from one language to another.

use std::path::{Path, PathBuf};

use serde_json::json;
use wasmgate_tests::{
    ADMIN_TOKEN, Client, Harness, PROMPT, error_of, wait_until, with_admin_token, write_atomic,
};

/// Message ids the templates' routers answer themselves / the echo backend answers.
const ROUTER_REPLY: u32 = 150;
const ECHOED: u32 = 100;
/// Message id `message_map` gives the handler script `counter`.
const COUNTER: u32 = 120;

/// A template component: Rust ones from the tests' build script, the others from
/// `examples/scripts/<lang>/build/` (built by `examples/scripts/build.sh`).
fn template(lang: &str, kind: &str) -> PathBuf {
    match (lang, kind) {
        ("rust", "router") => PathBuf::from(wasmgate_tests::RUST_TEMPLATE_ROUTER),
        ("rust", "handler") => PathBuf::from(wasmgate_tests::RUST_TEMPLATE_HANDLER),
        _ => {
            // QuickJS builds sit beside the StarlingMonkey ones: js/build/<kind>-qjs.wasm.
            let (dir, file) = match lang {
                "qjs" => ("js", format!("{kind}-qjs.wasm")),
                "qjs-async" => ("js", format!("{kind}-qjs-async.wasm")),
                _ => (lang, format!("{kind}.wasm")),
            };
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/scripts")
                .join(dir)
                .join("build")
                .join(file);
            assert!(path.exists(), "{} is missing: run examples/scripts/build.sh first", path.display());
            path
        }
    }
}

/// Rust, C, Python, JavaScript on StarlingMonkey, JavaScript on QuickJS.
const LANGUAGES: [&str; 5] = ["rust", "c", "python", "js", "qjs"];

/// Sends `msg_id` with `body`; returns the answer's body, or `error:<code>` for an error frame.
async fn ask(client: &mut Client, msg_id: u32, body: &str) -> String {
    let seq = client.send(msg_id, body.as_bytes()).await.expect("send");
    let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("a packet");
    assert_eq!(packet.seq, seq, "{packet:?}");
    if packet.msg_id == 4 {
        return format!("error:{}", error_of(&packet.body).0);
    }
    assert_eq!(packet.msg_id, msg_id);
    String::from_utf8_lossy(&packet.body).into_owned()
}

/// Copies `lang`'s handler template into the scripts directory and makes the manifest's
/// stateful `counter` entry name it.
fn write_manifest(dir: &Path, lang: &str) {
    let file = format!("counter-{lang}.wasm");
    std::fs::copy(template(lang, "handler"), dir.join(&file)).expect("copying the handler");
    let manifest =
        format!("[[script]]\nname = \"counter\"\nworld = \"handler\"\nfile = \"{file}\"\nstateful = true\n");
    write_atomic(dir.join("manifest.toml"), &manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_in_every_language_route_handle_and_carry_state_across_languages() {
    let scripts = tempfile::tempdir().expect("scripts dir");
    let dir = scripts.path().to_path_buf();
    let h = Harness::start_with(move |c| {
        with_admin_token(c);
        c.scripts.dir = Some(dir);
        c.scripts.deadline_ms = 2_000;
        // The client sends nothing while a cold Python or StarlingMonkey component compiles
        // (12 s idle, longer on CI's loaded cores): no heartbeat timeout meanwhile.
        c.timeouts.heartbeat_ms = 600_000;
    })
    .await;
    let mut client = h.logged_in_ws("polyglot").await;

    // Routers, through the admin API: each answers 150 itself, forwards 100 to the echo
    // backend, refuses an unmapped id.
    for lang in LANGUAGES {
        let wasm = std::fs::read(template(lang, "router")).expect("router template");
        let (status, info) = h.deploy("router", &wasm, None).await;
        assert_eq!(status, 200, "{lang} router: {info}");
        let memory = info["instance_memory_bytes"].as_u64().expect("instance memory");
        let max = info["max_instances"].as_u64().expect("max instances");
        assert!(memory >= 64 << 10 && max >= 1 && max * memory <= 128 << 20 || max == 1, "{lang}: {info}");
        let (_, metrics) = h.admin_get("/metrics").await;
        let series = format!(
            "wasmgate_script_instance_memory_bytes{{script=\"router\",version=\"{}\"}} {memory}",
            info["version"].as_str().expect("version")
        );
        assert!(metrics.lines().any(|l| l == series), "{series}");
        assert_eq!(ask(&mut client, ROUTER_REPLY, "hi").await, format!("router:{lang}:hi"));
        assert_eq!(ask(&mut client, ECHOED, "echo").await, "echo", "{lang} router forwards");
        assert_eq!(ask(&mut client, 777, "").await, "error:unknown_message", "{lang} router refuses");
    }
    // The config reaches each language's init the same way; a bad one is refused by init.
    for lang in LANGUAGES {
        let wasm = std::fs::read(template(lang, "router")).expect("router template");
        let (status, info) = h.deploy("router", &wasm, Some(json!({"default_dest": 101}))).await;
        assert_eq!(status, 200, "{lang}: {info}");
        assert_eq!(ask(&mut client, 777, "unmapped").await, "unmapped", "{lang}");
        let (status, info) = h.deploy("router", &wasm, Some(json!({"default_dest": "x"}))).await;
        assert_eq!(status, 422, "{lang}: {info}");
        assert!(info["reason"].as_str().is_some_and(|r| r.contains("default_dest")), "{lang}: {info}");
    }

    // A stateful handler, first through the manifest and a message_map reload (Rust), then
    // swapped to another language by a manifest change (Python) and by the admin API (JS):
    // the count goes on across languages.
    write_manifest(scripts.path(), "rust");
    let mut map: serde_json::Map<String, serde_json::Value> =
        (100..=106).map(|id| (id.to_string(), json!(101))).collect();
    map.insert(COUNTER.to_string(), json!("counter"));
    write_atomic(h.dir.path().join("message_map.json"), &serde_json::Value::Object(map).to_string());
    // The manifest's reload counts too: wait for the message_map's, which loads `counter`.
    wait_until("the handler is loaded", || async {
        let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
        list["scripts"].as_array().is_some_and(|all| all.iter().any(|s| s["name"] == "counter"))
    })
    .await;
    assert_eq!(ask(&mut client, COUNTER, "a").await, "rust:1:a");
    assert_eq!(ask(&mut client, COUNTER, "b").await, "rust:2:b");
    write_manifest(scripts.path(), "python");
    // Until the reload lands, the Rust version answers (and counts).
    let deadline = tokio::time::Instant::now() + PROMPT * 3;
    let answer = loop {
        let answer = ask(&mut client, COUNTER, "c").await;
        if answer.starts_with("python:") {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "the Python handler never went live: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let python_count: u64 = answer.split(':').nth(1).and_then(|n| n.parse().ok()).expect("count");
    assert!(python_count >= 3, "the Python handler restored the Rust handler's count: {answer}");
    let wasm = std::fs::read(template("js", "handler")).expect("handler template");
    let (status, info) = h.deploy("counter", &wasm, None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(ask(&mut client, COUNTER, "d").await, format!("js:{}:d", python_count + 1));
    let wasm = std::fs::read(template("qjs", "handler")).expect("handler template");
    let (status, info) = h.deploy("counter", &wasm, None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(ask(&mut client, COUNTER, "e").await, format!("qjs:{}:e", python_count + 2));
    let wasm = std::fs::read(template("c", "handler")).expect("handler template");
    let (status, info) = h.deploy("counter", &wasm, None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(ask(&mut client, COUNTER, "f").await, format!("c:{}:f", python_count + 3));

    // QuickJS's default build uses component-model async, which scripts run without: refused,
    // naming the flag that fixes it.
    let wasm = std::fs::read(template("qjs-async", "router")).expect("async QuickJS router");
    let (status, answer) = h.deploy("router", &wasm, None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["reason"].as_str().is_some_and(|r| r.contains("--backend-qjs-disable-async")), "{answer}");
    let (_, list) = h.admin("GET", "/scripts", "", false, Some(ADMIN_TOKEN)).await;
    let counter = list["scripts"].as_array().expect("list").iter().find(|s| s["name"] == "counter").cloned();
    assert!(counter.is_some_and(|c| c["traps"] == 0), "{list}");
    assert_eq!(h.gateway.sessions(), 1, "the session lived through every swap");
}

/// The recording example of docs/evidence.md plus one message 150 that the Rust template
/// answered, replayed offline against every language's router template: the forward and the
/// rejection decide the same everywhere; only the reply's body (`router:<lang>:`) differs, as
/// `content`, for the other languages.
#[tokio::test]
async fn a_recording_replays_against_every_language_router() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/evidence.md"))
        .expect("docs/evidence.md");
    let example = doc.split("```jsonl\n").nth(1).and_then(|rest| rest.split("```").next()).expect("example");
    let mut lines: Vec<String> = example.lines().map(str::to_string).collect();
    let reply = json!({
        "seq": 2, "at_ms": 1_795_355_135_700u64,
        "call": {"route": {"session": {"id": 1, "node_id": 1, "transport": "Tcp", "peer_addr": "127.0.0.1:50001",
                                        "user_id": "bob"},
                           "packet": {"msg_id": ROUTER_REPLY, "seq": 3, "body": b"x".to_vec()}, "es_id": null}},
        "answer": {"route": {"Reply": {"msg_id": ROUTER_REPLY, "body": b"router:rust:x".to_vec()}}},
        "host": []
    });
    lines.push(reply.to_string());
    let recording = lines.join("\n");
    let limits = wasmgate::script::check::offline_limits(&wasmgate::Config::default());
    for lang in LANGUAGES {
        let bytes = std::fs::read(template(lang, "router")).expect("template");
        let summary = wasmgate::script::evidence::replay::replay(&recording, bytes, None, limits.clone())
            .await
            .unwrap_or_else(|e| panic!("{lang}: {e}"));
        let expected = if lang == "rust" { 0 } else { 1 };
        assert_eq!((summary.events, summary.different), (3, expected), "{lang}: {summary}");
        assert_eq!(summary.differences["content"], expected, "{lang}: {summary}");
        if lang != "rust" {
            assert_eq!(summary.listed[0]["seq"], 2);
            let shown = summary.listed[0]["candidate"].to_string();
            assert!(shown.contains(&format!("router:{lang}:x")), "{lang}: {shown}");
        }
    }
}
