//! `loadgen`: the load generator of the benchmark suite (docs/benchmarks.md). Scenarios, each
//! against wasmgate and, where one exists, a peer on the same machine in the same run:
//! - `idle`: hold N logged-in WebSocket sessions; server RSS per session, connect + login rate
//!   (peer: Node `ws`). Below.
//! - `relay`: round trips through the router script and a backend (peer: nginx -> Node `ws`;
//!   also the native router): `relay.rs`.
//! - `fanout`: deliveries/s and latency in rooms of 1k and 10k (peers: Node `ws` broadcast,
//!   mosquitto topics): `fanout.rs`.
//! - `login-storm`: logins/s through the auth script over fresh connections: `login_storm.rs`.
//! - `swap`: relay while the router is redeployed, steady vs swapping: `swap.rs`.
//!
//! Idle details:
//! Every process here may hold at most 20,000 open files, so N sessions are opened by
//! ceil(N / `--per-worker`) worker processes (this binary, `loadgen worker`), each from its own
//! source address (127.0.0.2, .3, ...: ~28k ports per source/destination pair), and wasmgate
//! runs as `--gateways` processes sharing the WebSocket listener (`listen.reuse_port`). A
//! worker holds its sessions without a task each (the streams sit in a vector, unread), so
//! the generator stays small next to the server it measures.
//!
//! Targets: `wasmgate` (the release binary next to this one, default scripts: each login runs
//! the auth script's JWT check) or `node-ws` (Node's `ws` echo server from
//! `examples/peers/node-ws`, `--gateways` processes through Node's cluster module; its
//! "login" is the same frame, echoed). RSS is the sum over the server's processes (Linux
//! `/proc`), before the sessions open and after they are all up.
//!
//! Build first: `cargo build --release -p wasmgate -p wasmgate-examples`; for `node-ws`, run
//! `examples/peers/setup.sh` once.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wasmgate::protocol::client::encode_binary;
use wasmgate_examples::bench::{GatewayProcess, free_port, rss_kib};
use wasmgate_examples::client::mint_token;

mod fanout;
mod login_storm;
mod peers;
mod relay;
mod swap;

const SECRET: &str = "loadgen-bench-secret";
/// Login message id of the default routes.
const LOGIN: u32 = 1;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Target {
    Wasmgate,
    NodeWs,
    /// wasmgate inside this process (no binary needed; the smoke test). Its RSS includes the
    /// generator's parent process, so per-session figures are for the real targets.
    InProcess,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold `--sessions` logged-in WebSocket sessions; report server RSS per session.
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
        targets: Vec<Target>,
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
        /// The gateway binary (default: `wasmgate` next to this binary).
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// (internal) Open sessions from one source address and hold them until stdin closes.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        url: String,
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
        Scenario::Idle { sessions, gateways, per_worker, concurrency, targets, gateway } => {
            runtime.block_on(async {
                let mut results = Vec::new();
                for target in targets {
                    let (g, w, c) = (gateways.max(1), per_worker.max(1), concurrency.max(1));
                    results.push((target, idle(sessions, g, w, c, target, gateway.clone()).await?));
                }
                idle_ratio(&results);
                Ok(())
            })
        }
        Scenario::Relay { targets, connections, seconds, window, rates, gateway } => {
            runtime.block_on(relay_all(
                &targets,
                connections.max(1),
                seconds.max(0.5),
                window.max(1),
                &rates,
                gateway.as_deref(),
            ))
        }
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
        Scenario::Swap { clients, seconds, every_ms, no_pooling, gateway } => {
            let swaps =
                swap::Swaps { clients: clients.max(1), seconds: seconds.max(0.5), every_ms, no_pooling };
            runtime.block_on(swap::run(swaps, gateway.as_deref()))
        }
        Scenario::Worker { url, source, first, sessions, concurrency } => {
            runtime.block_on(worker(&url, source, first, sessions, concurrency))
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
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &target in targets {
        results.push((target, relay::run(target, connections, seconds, window, rates, gateway).await?));
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
    let runs: Vec<_> = results
        .iter()
        .map(|(t, run)| {
            let fixed: Vec<_> = run.fixed.iter().map(|(rate, p)| serde_json::json!({ "offered": rate, "figures": relay::json(p) })).collect();
            serde_json::json!({ "target": format!("{t:?}"), "saturation": relay::json(&run.saturation), "half": relay::json(&run.half), "fixed": fixed })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "scenario": "relay", "connections": connections, "window": window, "runs": runs, "ratio_vs_nginx_node": ratio, "wasm_vs_native_router": scripting })
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

/// The server processes under test; killed on drop.
enum Server {
    Wasmgate(Vec<GatewayProcess>),
    NodeWs(Child),
    InProcess(Vec<wasmgate::RunningGateway>),
}

impl Server {
    /// Every process id of the server (Node's cluster workers included).
    fn pids(&self) -> Vec<u32> {
        match self {
            Server::Wasmgate(processes) => processes.iter().map(GatewayProcess::pid).collect(),
            Server::InProcess(_) => vec![std::process::id()],
            Server::NodeWs(primary) => {
                let mut pids = vec![primary.id()];
                pids.extend(children(primary.id()));
                pids
            }
        }
    }

    /// Sessions the server reports holding, when it can tell (in-process).
    fn sessions(&self) -> Option<usize> {
        match self {
            Server::InProcess(gateways) => Some(gateways.iter().map(|g| g.sessions()).sum()),
            _ => None,
        }
    }

    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(rss_kib).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::NodeWs(primary) = self {
            for pid in children(primary.id()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
            let _ = primary.kill();
            let _ = primary.wait();
        }
    }
}

/// Child process ids of `pid` (Linux `/proc/<pid>/task/<pid>/children`).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The gateway config of every scenario: WebSocket listener `ws` (shared: `reuse_port`), the
/// TCP listener on a port of the kernel's choosing (unused), admin port `admin`, room for
/// `per_process` sessions (plus 1,000), `limits` (lines of `[limits]`, may be empty), long
/// timeouts, the auth script's secret.
fn gateway_config(ws: u16, admin: u16, per_process: usize, limits: &str) -> String {
    format!(
        r#"
[listen]
ws = "127.0.0.1:{ws}"
tcp = "127.0.0.1:0"
admin = "127.0.0.1:{admin}"
reuse_port = true
[limits]
max_conn_num = {per_process}
{limits}[timeouts]
heartbeat_ms = 3600000
login_ms = 600000
[scripts.auth]
config = {{ secret = "{SECRET}" }}
"#,
        per_process = per_process + 1000,
    )
}

async fn start_server(
    target: Target,
    ws: u16,
    gateways: usize,
    binary: Option<PathBuf>,
) -> anyhow::Result<Server> {
    match target {
        Target::Wasmgate => {
            let mut processes = Vec::new();
            for _ in 0..gateways {
                let admin = free_port()?;
                let config = gateway_config(ws, admin, 19_000, "");
                let ready = SocketAddr::from(([127, 0, 0, 1], admin));
                processes.push(GatewayProcess::start(binary.as_deref(), &config, ready).await?);
            }
            Ok(Server::Wasmgate(processes))
        }
        Target::InProcess => {
            let mut running = Vec::new();
            for _ in 0..gateways {
                let admin = free_port()?;
                let config: wasmgate::Config = toml::from_str(&gateway_config(ws, admin, 19_000, ""))?;
                running.push(wasmgate::RunningGateway::start(config).await?);
            }
            Ok(Server::InProcess(running))
        }
        Target::NodeWs => {
            let child = peers::node_ws(ws, gateways, "echo").await?;
            let server = Server::NodeWs(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            // Every cluster worker up, not just the first to listen.
            while children_count(&server) < gateways {
                if Instant::now() > deadline {
                    bail!("node ws did not start its {gateways} workers within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(server)
        }
    }
}

fn children_count(server: &Server) -> usize {
    server.pids().len().saturating_sub(1)
}

async fn idle(
    sessions: usize,
    gateways: usize,
    per_worker: usize,
    concurrency: usize,
    target: Target,
    binary: Option<PathBuf>,
) -> anyhow::Result<IdleFigures> {
    let ws = free_port()?;
    let server = start_server(target, ws, gateways, binary).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();

    let workers = sessions.div_ceil(per_worker);
    if workers > 250 {
        bail!("at most 250 workers (source addresses 127.0.0.2-.251)");
    }
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let first = w * per_worker;
        let count = per_worker.min(sessions - first);
        let child = Command::new(&exe)
            .args(["worker", "--url", &format!("ws://127.0.0.1:{ws}/ws")])
            .args(["--source", &format!("127.0.0.{}", w + 2)])
            .args(["--first", &first.to_string(), "--sessions", &count.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker")?;
        children.push(child);
    }
    // Each worker prints `ready <opened> <failed>` once its sessions are up.
    let mut opened = 0;
    let mut failed = 0;
    for child in &mut children {
        let stdout = child.stdout.take().context("worker stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["ready", ok, bad] => {
                opened += ok.parse::<usize>()?;
                failed += bad.parse::<usize>()?;
            }
            _ => bail!("a worker failed: {line:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let per_session = (after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64;
    let rate = opened as f64 / elapsed;
    println!(
        "idle {target:?}: {opened} sessions ({failed} failed) on {gateways} process(es) | RSS {:.1} -> {:.1} MiB = {:.2} KiB per session | connect+login {:.0}/s",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_session / 1024.0,
        rate,
    );
    let result = serde_json::json!({
        "scenario": "idle", "target": format!("{target:?}"), "sessions": opened, "failed": failed,
        "processes": gateways, "rss_before_kib": before, "rss_after_kib": after,
        "bytes_per_session": per_session.round(), "connect_login_per_s": rate.round(),
        "server_sessions": server.sessions(),
    });
    println!("{result}");
    for mut child in children {
        drop(child.stdin.take()); // the worker exits on EOF
        let _ = child.wait();
    }
    drop(server);
    Ok(IdleFigures { bytes_per_session: per_session, connect_login_per_s: rate })
}

/// What `idle` measured on one target.
#[derive(Debug, Clone, Copy)]
struct IdleFigures {
    bytes_per_session: f64,
    connect_login_per_s: f64,
}

/// Prints wasmgate's ratios to Node `ws` when both ran.
fn idle_ratio(results: &[(Target, IdleFigures)]) {
    let find = |t| results.iter().find(|(target, _)| *target == t).map(|(_, f)| *f);
    if let (Some(ours), Some(node)) = (find(Target::Wasmgate), find(Target::NodeWs)) {
        let memory = ours.bytes_per_session / node.bytes_per_session;
        let rate = ours.connect_login_per_s / node.connect_login_per_s;
        println!(
            "idle ratio: wasmgate / node-ws = {memory:.2}x memory per session (target: <= 4 KiB, {:.2} KiB here), {rate:.2}x connect + login rate",
            ours.bytes_per_session / 1024.0
        );
        println!(
            "{}",
            serde_json::json!({ "scenario": "idle", "ratio_vs_node_ws": { "memory": memory, "connect_login_rate": rate } })
        );
    }
}

/// Opens `sessions` WebSocket sessions to `url` from `source`, logs each in (users
/// `idle-<first + i>`), prints `ready <opened> <failed>`, and holds them until stdin closes.
async fn worker(
    url: &str,
    source: Ipv4Addr,
    first: usize,
    sessions: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let authority = url.trim_start_matches("ws://").split('/').next().context("url")?.to_string();
    let server: SocketAddr = authority.parse().context("the url's address")?;
    let opens = stream::iter(first..first + sessions)
        .map(|n| open(url, server, source, n))
        .buffer_unordered(concurrency);
    let results: Vec<_> = opens.collect().await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("worker {source}: {failed} sessions failed, first: {e:#}");
    }
    let held: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    println!("ready {} {failed}", held.len());
    std::io::stdout().flush()?;
    // Hold until the parent closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}

type Session = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(url: &str, server: SocketAddr, source: Ipv4Addr, n: usize) -> anyhow::Result<Session> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    let token = mint_token(SECRET, &format!("idle-{n}"), None, 3600)?;
    let mut frame = BytesMut::new();
    encode_binary(LOGIN, 1, token.as_bytes(), &mut frame);
    ws.send(Message::Binary(frame.freeze())).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Binary(_)))) => Ok(ws),
        Ok(other) => bail!("login answered with {other:?}"),
        Err(_) => bail!("no login answer within 30 s"),
    }
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
