//! `loadgen`: the load generator of the benchmark suite (docs/benchmarks.md). Scenarios, each
//! against wasmgate and, where one exists, a peer on the same machine in the same run:
//! - `idle`: hold N logged-in WebSocket or TCP sessions from several processes and source
//!   addresses; server RSS per session, connect + login rate (peer: Node `ws`): `idle.rs`.
//! - `relay`: round trips through the router script and a backend (peer: nginx -> Node `ws`;
//!   also the native router): `relay.rs`.
//! - `fanout`: deliveries/s and latency in rooms of 1k and 10k (peers: Node `ws` broadcast,
//!   mosquitto topics): `fanout.rs`.
//! - `login-storm`: logins/s through the auth script over fresh connections: `login_storm.rs`.
//! - `swap`: relay while the router is redeployed, steady vs swapping: `swap.rs`.
//! - `tls`: idle memory per `wss` session and new TLS sessions/s, against plain WebSocket and
//!   nginx terminating TLS in front of Node `ws`: `tls.rs`.
//! - `hostile`, `soak`, `memory`: latency while scripts loop, resources over a long run of
//!   abuse, RSS after the probes that inflate a heap: `hostile.rs`, `soak.rs`, `memory.rs`.
//!
//! Build first: `cargo build --release -p wasmgate -p wasmgate-examples`; for `node-ws`, run
//! `examples/peers/setup.sh` once.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wasmgate_examples::bench::NO_RATE_LIMITS;

mod conn;
mod fanout;
mod hostile;
mod idle;
mod login_storm;
mod memory;
mod peers;
mod relay;
mod soak;
mod swap;
mod tls;

const SECRET: &str = "loadgen-bench-secret";
/// Login message id of the default routes.
const LOGIN: u32 = 1;

/// A WebSocket session on the gateway at `ws` (path `/ws`), logged in as `user` with a token
/// signed with [`SECRET`].
async fn logged_in(ws: SocketAddr, user: &str) -> anyhow::Result<wasmgate_examples::client::Client> {
    let mut client = wasmgate_examples::client::Client::ws(&format!("ws://{ws}/ws"), false).await?;
    client.login(LOGIN, &wasmgate_examples::client::mint_token(SECRET, user, None, 3600)?).await?;
    Ok(client)
}

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold `--sessions` logged-in sessions; report server RSS per session.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Server processes sharing the listener (each holds at most ~19k sessions).
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        /// Sessions per worker process (one source address each; at most ~19k).
        #[arg(long, default_value_t = 15_000)]
        per_worker: usize,
        /// Connections a worker has in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Targets, in the order run (`--target` works too); with wasmgate and node-ws, prints
        /// wasmgate's ratios.
        #[arg(long, alias = "target", value_enum, value_delimiter = ',', default_value = "wasmgate")]
        targets: Vec<idle::Target>,
        /// The sessions' transport (tcp: wasmgate's length-prefixed TCP listener).
        #[arg(long, value_enum, default_value = "ws")]
        transport: conn::Transport,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Round trips through the server and an echo behind it (wasmgate: router script + queue
    /// pool + `echo-backend`; nginx-node: nginx proxying to Node ws): saturation, then half
    /// of it offered open-loop. With both targets, prints wasmgate's ratio.
    Relay {
        /// Targets, in the order run.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "wasmgate,nginx-node")]
        targets: Vec<relay::RelayTarget>,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Length of each measured phase, seconds (after 1 s of warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Packets in flight per connection at saturation.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Fixed offered loads (packets/s over all connections, open-loop) run after the
        /// saturation and half-saturation phases.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
        /// A router component for the wasmgate targets instead of the default router (e.g. a
        /// template of examples/scripts: it must forward message 100 by `message_map`).
        #[arg(long)]
        router: Option<PathBuf>,
    },
    /// One room of each `--members` size; one member publishes `--messages` and every member
    /// counts its deliveries (wasmgate: rooms script; node-ws: broadcast to every connection;
    /// mosquitto: a topic over MQTT/WebSocket). Prints wasmgate's ratio to each peer.
    Fanout {
        #[arg(long, value_enum, value_delimiter = ',', default_value = "wasmgate,node-ws,mosquitto")]
        targets: Vec<fanout::FanoutTarget>,
        /// Room sizes, comma-separated (fresh servers for each).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        members: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages/s the publisher offers; 0: as fast as it can write (saturation).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Padding of each message, bytes (on top of the 8-byte send time).
        #[arg(long, default_value_t = 32)]
        payload: usize,
        /// One member in this many records delivery latency.
        #[arg(long, default_value_t = 50)]
        sample: usize,
        /// Members connecting at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// A reconnect storm: `--logins` fresh sessions, `--concurrency` at a time, each connects,
    /// logs in through the auth script and closes; logins/s and login latency.
    LoginStorm {
        #[arg(long, default_value_t = 20_000)]
        logins: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Relay round trips while the router is redeployed through the admin API: latency
    /// steady vs during swaps, messages lost.
    Swap {
        /// Concurrent sessions, each with one message in flight.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Length of each phase (steady, swapping), in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Time between two deploys in the swapping phase, in ms.
        #[arg(long, default_value_t = 200)]
        every_ms: u64,
        /// Run the gateway without wasmtime's pooling allocator, to compare instantiation.
        #[arg(long)]
        no_pooling: bool,
        /// A router component to alternate with the default router, the first deploy of it
        /// cold (e.g. examples/scripts/python/build/router.wasm: do sessions stall while it
        /// compiles?). It must forward message 100 by `message_map`.
        #[arg(long)]
        component: Option<PathBuf>,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// What TLS costs: idle memory per logged-in session and new sessions/s (full handshakes)
    /// on plain ws, wasmgate's wss, and nginx terminating TLS in front of Node ws.
    Tls {
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "wasmgate-ws,wasmgate-wss,nginx-node-wss"
        )]
        targets: Vec<tls::TlsTarget>,
        /// Idle sessions held (from this process: at most ~19k).
        #[arg(long, default_value_t = 5_000)]
        sessions: usize,
        /// Length of the new-sessions phase, seconds.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Clients connecting at once in that phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Runaway scripts against everyone else: echo round trips with and without sessions
    /// keeping an endless-looping router call in flight, per `scripts.long_calls` value.
    Hostile {
        /// The hostile test router (built by `examples/scripts/build.sh` / the tests:
        /// target/wasm-guests/wasm32-wasip2/release/wasmgate_test_hostile_router.wasm).
        #[arg(long)]
        router: PathBuf,
        /// Sessions measuring echo round trips.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Sessions each keeping one endless loop in flight.
        #[arg(long, default_value_t = 8)]
        loopers: usize,
        /// Length of each phase, seconds.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// `scripts.deadline_ms`.
        #[arg(long, default_value_t = 200)]
        deadline_ms: u64,
        /// `scripts.long_calls` values to compare (0 = no lanes).
        #[arg(long, value_delimiter = ',', default_value = "0,1")]
        lanes: Vec<usize>,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Soak: held sessions through repeated deploys, bursts to stalled clients, backend flaps
    /// and junk frames; the gateway's RSS, descriptors and threads must come back within 20 %.
    Soak {
        /// Length of the run, seconds (cycles of a few seconds each).
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Sessions held connected throughout.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Memory return: the gateway's RSS after a burst to stalled and reading clients, a CPU
    /// profile and (with `--component`) a large compile, each against the start (20 % allowed).
    Memory {
        /// Sessions held connected throughout, reading every push.
        #[arg(long, default_value_t = 1_000)]
        sessions: usize,
        /// The held sessions' transport (the burst's stalled clients are WebSocket).
        #[arg(long, value_enum, default_value = "ws")]
        transport: conn::Transport,
        /// A large component (e.g. the Python router) for the compile probe; skipped without.
        #[arg(long)]
        component: Option<PathBuf>,
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// (internal) Open sessions from one source address and hold them until stdin closes.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, value_enum)]
        transport: conn::Transport,
        #[arg(long)]
        source: Ipv4Addr,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.command {
        Scenario::Idle { sessions, gateways, per_worker, concurrency, targets, transport, gateway } => {
            let load = idle::Load {
                sessions,
                gateways: gateways.max(1),
                per_worker: per_worker.max(1),
                concurrency: concurrency.max(1),
                transport,
            };
            runtime.block_on(async {
                let mut results = Vec::new();
                for target in targets {
                    results.push((target, idle::run(load, target, gateway.clone()).await?));
                }
                idle::ratio(&results);
                Ok(())
            })
        }
        Scenario::Relay { targets, connections, seconds, window, rates, gateway, router } => runtime
            .block_on(relay_all(
                &targets,
                connections.max(1),
                seconds.max(0.5),
                window.max(1),
                &rates,
                gateway.as_deref(),
                router.as_deref(),
            )),
        Scenario::Fanout { targets, members, messages, rate, payload, sample, concurrency, gateway } => {
            let load = |members: usize| fanout::Load {
                members: members.max(1),
                messages: messages.max(1),
                rate,
                payload,
                sample: sample.max(1),
                concurrency: concurrency.max(1),
            };
            let loads: Vec<_> = members.into_iter().map(load).collect();
            runtime.block_on(fanout_all(&targets, &loads, gateway.as_deref()))
        }
        Scenario::LoginStorm { logins, concurrency, gateway } => {
            runtime.block_on(login_storm::run(logins.max(1), concurrency.max(1), gateway.as_deref()))
        }
        Scenario::Swap { clients, seconds, every_ms, no_pooling, gateway, component } => {
            let swaps = swap::Swaps {
                clients: clients.max(1),
                seconds: seconds.max(0.5),
                every_ms,
                no_pooling,
                component,
            };
            runtime.block_on(swap::run(swaps, gateway.as_deref()))
        }
        Scenario::Tls { targets, sessions, seconds, concurrency, gateway } => {
            let load = tls::Load {
                sessions: sessions.max(1),
                seconds: seconds.max(0.5),
                concurrency: concurrency.max(1),
            };
            runtime.block_on(tls::run(&targets, load, gateway.as_deref()))
        }
        Scenario::Hostile { router, clients, loopers, seconds, deadline_ms, lanes, gateway } => {
            let load =
                hostile::Load { clients: clients.max(1), loopers, seconds: seconds.max(0.5), deadline_ms };
            runtime.block_on(hostile::run(load, &lanes, &router, gateway.as_deref()))
        }
        Scenario::Soak { seconds, sessions, gateway } => {
            runtime.block_on(soak::run(seconds, sessions, gateway.as_deref()))
        }
        Scenario::Memory { sessions, transport, component, gateway } => {
            runtime.block_on(memory::run(sessions, transport, component.as_deref(), gateway.as_deref()))
        }
        Scenario::Worker { server, transport, source, first, sessions, concurrency } => {
            runtime.block_on(idle::worker(server, transport, source, first, sessions, concurrency))
        }
    }
}

/// Runs `relay` on each target; prints the JSON of all and wasmgate's ratios to nginx-node.
async fn relay_all(
    targets: &[relay::RelayTarget],
    connections: usize,
    seconds: f64,
    window: usize,
    rates: &[f64],
    gateway: Option<&std::path::Path>,
    router: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &target in targets {
        results
            .push((target, relay::run(target, connections, seconds, window, rates, gateway, router).await?));
    }
    let find = |t| results.iter().find(|(target, _)| *target == t).map(|(_, run)| run);
    let mut ratio = serde_json::Value::Null;
    if let (Some(ours), Some(peer)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::NginxNode))
    {
        let r = ours.saturation.round_trips_per_s / peer.saturation.round_trips_per_s;
        println!(
            "relay ratio: wasmgate / nginx-node = {r:.2}x round trips/s at saturation (target >= 1.5x); p99 at half load: wasmgate {:.3} ms, nginx-node {:.3} ms (target <= 2 ms)",
            ours.half.p99_ms, peer.half.p99_ms
        );
        ratio = serde_json::json!(r);
    }
    let mut scripting = serde_json::Value::Null;
    if let (Some(wasm), Some(native)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::WasmgateNative))
    {
        let r = wasm.saturation.round_trips_per_s / native.saturation.round_trips_per_s;
        println!(
            "relay scripting: WASM router / native router = {:.0} % of round trips/s at saturation (target >= 90 %)",
            r * 100.0
        );
        scripting = serde_json::json!(r);
    }
    let mut tcp = serde_json::Value::Null;
    if let (Some(ws), Some(over_tcp)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::WasmgateTcp))
    {
        let r = over_tcp.saturation.round_trips_per_s / ws.saturation.round_trips_per_s;
        println!(
            "relay transport: wasmgate over TCP / over WebSocket = {r:.2}x round trips/s at saturation; p99 at half load: TCP {:.3} ms, WebSocket {:.3} ms",
            over_tcp.half.p99_ms, ws.half.p99_ms
        );
        tcp = serde_json::json!(r);
    }
    let mut wss = serde_json::Value::Null;
    if let (Some(ws), Some(over_tls)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::WasmgateWss))
    {
        let r = over_tls.saturation.round_trips_per_s / ws.saturation.round_trips_per_s;
        println!(
            "relay TLS: wasmgate over wss / over ws = {r:.2}x round trips/s at saturation; p99 at half load: wss {:.3} ms, ws {:.3} ms",
            over_tls.half.p99_ms, ws.half.p99_ms
        );
        wss = serde_json::json!(r);
    }
    let mut thrift = serde_json::Value::Null;
    if let (Some(v1), Some(over_thrift)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::WasmgateThrift))
    {
        let r = over_thrift.saturation.round_trips_per_s / v1.saturation.round_trips_per_s;
        println!(
            "relay upstream protocol: Thrift dest / backend protocol v1 dest = {r:.2}x round trips/s at saturation (target >= 0.8x); p99 at half load: Thrift {:.3} ms, v1 {:.3} ms",
            over_thrift.half.p99_ms, v1.half.p99_ms
        );
        thrift = serde_json::json!(r);
    }
    let mut shadow = serde_json::Value::Null;
    if let (Some(plain), Some(shadowed)) =
        (find(relay::RelayTarget::Wasmgate), find(relay::RelayTarget::WasmgateShadow))
    {
        let r = shadowed.saturation.round_trips_per_s / plain.saturation.round_trips_per_s;
        let p99 = shadowed.half.p99_ms / plain.half.p99_ms;
        println!(
            "relay shadow: 100 % router shadow / no shadow = {r:.2}x round trips/s at saturation (target >= 0.85x); p99 at half load {p99:.2}x (target <= 1.2x): shadow {:.3} ms, none {:.3} ms",
            shadowed.half.p99_ms, plain.half.p99_ms
        );
        shadow = serde_json::json!({ "throughput": r, "p99_half": p99 });
    }
    let runs: Vec<_> = results
        .iter()
        .map(|(t, run)| {
            let fixed: Vec<_> = run.fixed.iter().map(|(rate, p)| serde_json::json!({ "offered": rate, "figures": relay::json(p) })).collect();
            serde_json::json!({ "target": format!("{t:?}"), "saturation": relay::json(&run.saturation), "half": relay::json(&run.half), "fixed": fixed })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "scenario": "relay", "connections": connections, "window": window, "runs": runs, "ratio_vs_nginx_node": ratio, "wasm_vs_native_router": scripting, "tcp_vs_websocket": tcp, "wss_vs_ws": wss, "thrift_vs_v1": thrift, "shadow_vs_none": shadow })
    );
    Ok(())
}

/// Runs `fanout` on each target for each room size; prints the JSON of all and wasmgate's
/// ratios to each peer.
async fn fanout_all(
    targets: &[fanout::FanoutTarget],
    loads: &[fanout::Load],
    gateway: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut rooms = Vec::new();
    for load in loads {
        let mut results = Vec::new();
        for &target in targets {
            results.push((target, fanout::run(target, load, gateway).await?));
        }
        let ours = results.iter().find(|(t, _)| *t == fanout::FanoutTarget::Wasmgate).map(|(_, f)| *f);
        let mut ratios = serde_json::Map::new();
        for (peer, theirs) in results.iter().filter(|(t, _)| *t != fanout::FanoutTarget::Wasmgate) {
            let Some(ours) = ours else { break };
            let (rate, cpu) = (
                ours.deliveries_per_s / theirs.deliveries_per_s,
                theirs.server_ns_per_delivery / ours.server_ns_per_delivery,
            );
            // The targets are for saturation; at a fixed offered load every server delivers
            // the offered rate, and latency and CPU are what differ.
            let target = match (load.rate > 0.0, *peer == fanout::FanoutTarget::NodeWs) {
                (true, _) => "the offered rate: compare latency and CPU",
                (false, true) => "target >= 3x",
                (false, false) => "target >= 1x",
            };
            println!(
                "fanout ratio, room of {}: wasmgate / {peer:?} = {rate:.2}x deliveries/s ({target}); server CPU per delivery {cpu:.2}x less",
                load.members
            );
            ratios.insert(
                format!("{peer:?}"),
                serde_json::json!({ "deliveries": rate, "cpu_per_delivery": cpu }),
            );
        }
        let runs: Vec<_> = results
            .iter()
            .map(|(t, f)| serde_json::json!({ "target": format!("{t:?}"), "figures": fanout::json(f) }))
            .collect();
        rooms.push(serde_json::json!({ "members": load.members, "runs": runs, "wasmgate_ratio": ratios }));
    }
    let first = loads.first().context("no room sizes")?;
    println!(
        "{}",
        serde_json::json!({ "scenario": "fanout", "messages": first.messages, "rate": first.rate, "payload": first.payload, "rooms": rooms })
    );
    Ok(())
}

/// The gateway config of every scenario: WebSocket listener `ws` and TCP listener `tcp` (0:
/// the kernel's choice, for scenarios that do not use it; both shared: `reuse_port`), admin
/// port `admin`, room for
/// `per_process` sessions (plus 1,000), `limits` (lines of `[limits]`, may be empty), no abuse
/// limits (every client comes from loopback), long timeouts, the auth script's secret.
fn gateway_config(ws: u16, tcp: u16, admin: u16, per_process: usize, limits: &str) -> String {
    format!(
        r#"
[listen]
ws = "127.0.0.1:{ws}"
tcp = "127.0.0.1:{tcp}"
admin = "127.0.0.1:{admin}"
reuse_port = true
[limits]
max_conn_num = {per_process}
{limits}{NO_RATE_LIMITS}[timeouts]
heartbeat_ms = 3600000
login_ms = 600000
[scripts.auth]
config = {{ secret = "{SECRET}" }}
"#,
        per_process = per_process + 1000,
    )
}

/// Sets Linux's `IP_BIND_ADDRESS_NO_PORT`: `bind(source:0)` then leaves the port to `connect`,
/// which picks it per destination from the whole ephemeral range. Without it each bind takes
/// a port unique per source address from half the range, and the kernel's search for a free
/// one slows to a crawl beyond ~5,000 sockets per source (measured: 318 connects/s at 7,000).
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
