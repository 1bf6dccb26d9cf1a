//! The floor under a `router.route` call: the default router called straight through
//! wasmtime's generated bindings, with no instance pool, metrics, deadline bookkeeping or
//! tracing around it — once with synchronous exports (`TypedFunc::call`, WASI linked with its
//! synchronous bindings) and once with async exports (`call_async` on a fiber, as the gateway
//! calls). Prints ns per call for each; the same session record (two strings) and 64-byte
//! body as `script_call`.
//!
//! Run: `cargo bench -p wasmgate --bench call_floor [-- sync|async]`. Times on this VM vary up
//! to 2x; for instruction counts run the binary under `valgrind --tool=callgrind` with one
//! mode and divide the inclusive count of `call_floor::main` (`sync`) or of
//! `call_floor::run_async::{{closure}}` (`async`) by 200,000 — the instance and its `init`
//! are in those counts too, a rounding error beside the calls (docs/benchmarks.md,
//! "Instructions per call").

use std::hint::black_box;
use std::time::Instant;

use wasmgate::script::bindings::auth::wasmgate::gateway::types::{Packet, Session, Transport};
use wasmgate::script::state::{ScriptMeta, ScriptState};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};

/// The router world with synchronous exports, on the gateway's host interfaces.
mod sync_world {
    wasmtime::component::bindgen!({
        world: "router-script",
        path: "../wit",
        with: {
            "wasmgate:gateway/types": ::wasmgate::script::bindings::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host": ::wasmgate::script::bindings::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster": ::wasmgate::script::bindings::auth::wasmgate::gateway::cluster,
        },
    });
}

/// The router world with async exports, as the gateway binds it.
mod async_world {
    wasmtime::component::bindgen!({
        world: "router-script",
        path: "../wit",
        exports: { default: async },
        with: {
            "wasmgate:gateway/types": ::wasmgate::script::bindings::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host": ::wasmgate::script::bindings::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster": ::wasmgate::script::bindings::auth::wasmgate::gateway::cluster,
        },
    });
}

/// Timed calls after 1 warm-up call (`init`).
const CALLS: usize = 200_000;

/// A store for the router: the gateway's script state, an epoch deadline that never comes
/// (no ticker runs here).
fn store(engine: &Engine) -> Store<ScriptState> {
    let meta = ScriptMeta::new("router", "floor", wasmgate::metrics::Metrics::new(), Default::default());
    let mut store = Store::new(engine, ScriptState::new(meta, StoreLimitsBuilder::new().build()));
    store.set_epoch_deadline(1 << 40);
    store
}

fn session() -> Session {
    Session {
        id: 1,
        node_id: 1,
        transport: Transport::Websocket,
        peer_addr: "127.0.0.1:50000".into(),
        user_id: Some("bench-user".into()),
    }
}

fn packet() -> Packet {
    Packet { msg_id: 150, seq: 1, body: vec![7; 64] }
}

fn report(mode: &str, started: Instant) {
    println!(
        "router.route, {mode:<5} bare call: {:>7.1} ns/call",
        started.elapsed().as_nanos() as f64 / CALLS as f64
    );
}

fn run_sync(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    use sync_world::exports::wasmgate::gateway::router::MessageRoute;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    sync_world::RouterScript::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    let mut store = store(engine);
    let router = sync_world::RouterScript::instantiate(&mut store, component, &linker)?;
    let routes: Vec<_> = (100..200).map(|msg_id| MessageRoute { msg_id, dest_id: 101 }).collect();
    router.wasmgate_gateway_router().call_init(&mut store, "{}", &routes)?.map_err(wasmtime::Error::msg)?;
    let (session, packet) = (session(), packet());
    let started = Instant::now();
    for _ in 0..CALLS {
        black_box(router.wasmgate_gateway_router().call_route(
            &mut store,
            black_box(&session),
            black_box(&packet),
        )?);
    }
    report("sync", started);
    Ok(())
}

async fn run_async(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    use async_world::exports::wasmgate::gateway::router::MessageRoute;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    async_world::RouterScript::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    let mut store = store(engine);
    let router = async_world::RouterScript::instantiate_async(&mut store, component, &linker).await?;
    let routes: Vec<_> = (100..200).map(|msg_id| MessageRoute { msg_id, dest_id: 101 }).collect();
    let init = router.wasmgate_gateway_router().call_init(&mut store, "{}", &routes).await?;
    init.map_err(wasmtime::Error::msg)?;
    let (session, packet) = (session(), packet());
    let started = Instant::now();
    for _ in 0..CALLS {
        let call =
            router.wasmgate_gateway_router().call_route(&mut store, black_box(&session), black_box(&packet));
        black_box(call.await?);
    }
    report("async", started);
    Ok(())
}

fn main() -> wasmtime::Result<()> {
    // The gateway's engine settings that bear on a call (script/engine.rs), without pooling.
    let mut config = Config::new();
    config.epoch_interruption(true).concurrency_support(false);
    let engine = Engine::new(&config)?;
    let component = Component::new(&engine, wasmgate::embedded::DEFAULT_ROUTER)?;
    let mode = std::env::args().skip(1).find(|a| a == "sync" || a == "async");
    if mode.as_deref() != Some("async") {
        run_sync(&engine, &component)?;
    }
    if mode.as_deref() != Some("sync") {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(run_async(&engine, &component))?;
    }
    Ok(())
}
