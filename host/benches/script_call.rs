//! Micro-benchmark of one script call into a live instance: ns per `route` (default router)
//! and per `authenticate` (default auth, HS256 JWT), next to the same routing done natively
//! (a `HashMap` lookup). Prints median and p99 over batches.
//!
//! With `--router NAME=FILE` / `--handler NAME=FILE` (repeatable) it also times the given
//! router components' `route` (message 150, which the templates answer themselves) and
//! handler components' `handle`: the per-call cost of each language's template
//! (examples/scripts; examples/bench/languages.sh passes them).
//!
//! Run: `cargo bench -p wasmgate --bench script_call [-- --router c=FILE ...]` (release
//! profile). Figures are recorded in docs/benchmarks.md. With `SCRIPT_CALL_ON_DEMAND=1` the
//! engine allocates instances on demand instead of from the pooling allocator, whose address
//! space reservation valgrind cannot map (for `valgrind --tool=callgrind` instruction counts).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use wasmgate::embedded;
use wasmgate::metrics::Metrics;
use wasmgate::script::bindings::{MessageRoute, Packet, Session, Transport};
use wasmgate::script::{Auth, Handler, Limits, Router, ScriptSource};

const BATCH: usize = 1_000;
const BATCHES: usize = 200;

/// Runs `batches` batches of `batch` calls of `f`; returns the mean ns per call of each batch.
async fn time_batches<F, Fut>(batches: usize, batch: usize, mut f: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..batch {
            f().await;
        }
        samples.push(start.elapsed().as_nanos() as f64 / batch as f64);
    }
    samples
}

/// Prints the median and p99 of per-call ns samples (each the mean of a `batch`-call batch).
fn summarize(name: &str, batch: usize, mut per_call_ns: Vec<f64>) {
    per_call_ns.sort_by(f64::total_cmp);
    let median = per_call_ns[per_call_ns.len() / 2];
    let p99 = per_call_ns[per_call_ns.len() * 99 / 100];
    println!("{name:<28} median {median:>9.1} ns/call   p99 (of {batch}-call batches) {p99:>9.1} ns/call");
}

fn token() -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(wasmgate::config::DEV_JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &Claims { sub: "bench-user", exp }, &key).unwrap()
}

/// `--router NAME=FILE` and `--handler NAME=FILE` arguments, in order: (world, name, file).
fn components() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let world = match arg.as_str() {
            "--router" => "router",
            "--handler" => "handler",
            _ => continue, // cargo's own `--bench`
        };
        let value = args.next().unwrap_or_else(|| panic!("{arg} needs NAME=FILE"));
        let (name, file) =
            value.split_once('=').unwrap_or_else(|| panic!("{arg} {value}: expected NAME=FILE"));
        out.push((world.to_string(), name.to_string(), file.to_string()));
    }
    out
}

/// One instance per script, the default deadline and memory cap.
fn limits_one() -> Limits {
    Limits {
        deadline: std::time::Duration::from_millis(200),
        memory_bytes: 64 << 20,
        instances: 1,
        cache_dir: None,
        engine: if std::env::var_os("SCRIPT_CALL_ON_DEMAND").is_some() {
            wasmgate::script::engine::EngineSettings { pooling: None }
        } else {
            Default::default()
        },
        services: Default::default(),
        trap_unknown_imports: false,
        long_calls: None,
    }
}

fn main() {
    let components = components();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let metrics = Metrics::new();
        let limits = limits_one();
        let routes: Vec<MessageRoute> =
            (100..200).map(|m| MessageRoute { msg_id: m, dest_id: 101 }).collect();
        let native: HashMap<u32, u32> = routes.iter().map(|r| (r.msg_id, r.dest_id)).collect();
        let router = Router::load(
            &ScriptSource {
                name: "router".into(),
                bytes: embedded::DEFAULT_ROUTER.into(),
                config_json: "{}".into(),
            },
            limits.clone(),
            &metrics,
            routes,
        )
        .await
        .unwrap();
        let secret = serde_json::json!({ "secret": wasmgate::config::DEV_JWT_SECRET }).to_string();
        let auth = Auth::load(
            &ScriptSource { name: "auth".into(), bytes: embedded::DEFAULT_AUTH.into(), config_json: secret },
            limits,
            &metrics,
        )
        .await
        .unwrap();
        let session = Session {
            id: 1,
            node_id: 1,
            transport: Transport::Websocket,
            peer_addr: "127.0.0.1:50000".into(),
            user_id: Some("bench-user".into()),
        };
        let packet = Packet { msg_id: 150, seq: 1, body: vec![7; 64] };

        for _ in 0..10_000 {
            black_box(router.route(&session, &packet, None).await.unwrap());
        }
        let route = || async {
            black_box(router.route(black_box(&session), black_box(&packet), None).await.unwrap());
        };
        summarize("router.route (wasm)", BATCH, time_batches(BATCHES, BATCH, route).await);
        let native_route = || async {
            black_box(native.get(&black_box(packet.msg_id)));
        };
        summarize("route (native HashMap)", BATCH, time_batches(BATCHES, BATCH, native_route).await);
        let token = token();
        let login = || async {
            black_box(auth.authenticate(&session, &token).await.unwrap().unwrap());
        };
        summarize(
            "auth.authenticate (wasm)",
            BATCH / 10,
            time_batches(BATCHES / 10, BATCH / 10, login).await,
        );

        for (world, name, file) in components {
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let source = ScriptSource { name: name.clone(), bytes: bytes.into(), config_json: "{}".into() };
            let label = format!("{world} {name}");
            // Fewer calls for interpreters: a batch of 100 still spans milliseconds.
            let (batches, batch) = (BATCHES / 2, BATCH / 10);
            if world == "router" {
                let routes = (100..200).map(|m| MessageRoute { msg_id: m, dest_id: 101 }).collect();
                let router = Router::load(&source, limits_one(), &metrics, routes).await.unwrap();
                let call = || async {
                    black_box(router.route(black_box(&session), black_box(&packet), None).await.unwrap());
                };
                time_batches(1, 1_000, call).await; // warm-up
                summarize(&label, batch, time_batches(batches, batch, call).await);
            } else {
                let handler = Handler::load(true, &source, limits_one(), &metrics).await.unwrap();
                let call = || async {
                    black_box(handler.handle(black_box(&session), black_box(&packet), None).await.unwrap());
                };
                time_batches(1, 1_000, call).await; // warm-up
                summarize(&label, batch, time_batches(batches, batch, call).await);
            }
        }
    });
}
