//! Scenario `idle`: hold N logged-in sessions; server RSS per session, connect + login rate.
//!
//! Every process here may hold at most 20,000 open files, so N sessions are opened by
//! ceil(N / `--per-worker`) worker processes (this binary, `loadgen worker`), each from its own
//! source address (127.0.0.2, .3, ...: ~28k ports per source/destination pair), and wasmgate
//! runs as `--gateways` processes sharing its listeners (`listen.reuse_port`). A worker holds
//! its sessions without a task each (they sit in a vector, unread), so the generator stays
//! small next to the server it measures.
//!
//! Sessions are WebSocket (`--transport ws`, the default) or the gateway's length-prefixed TCP
//! (`--transport tcp`; wasmgate only: Node `ws` has no TCP listener).
//!
//! Targets: `wasmgate` (the release binary next to this one, default scripts: each login runs
//! the auth script's JWT check), `node-ws` (Node's `ws` echo server from
//! `examples/peers/node-ws`, `--gateways` processes through Node's cluster module; its
//! "login" is the same frame, echoed) or `in-process` (the smoke test). RSS is the sum over the
//! server's processes (Linux `/proc`), before the sessions open and after they are all up.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt, stream};
use wasmgate_examples::bench::{GatewayProcess, free_port, rss_kib};

use super::conn::{Conn, Transport};
use super::{bind_address_no_port, gateway_config, peers};

#[derive(Clone, Copy, clap::ValueEnum, Debug, PartialEq, Eq)]
pub enum Target {
    Wasmgate,
    NodeWs,
    /// wasmgate inside this process (no binary needed; the smoke test). Its RSS includes the
    /// generator's parent process, so per-session figures are for the real targets.
    InProcess,
}

/// What to run: the `idle` command's arguments.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub sessions: usize,
    pub gateways: usize,
    pub per_worker: usize,
    pub concurrency: usize,
    pub transport: Transport,
}

/// The listening ports of a target: WebSocket (also Node's) and TCP (wasmgate's).
#[derive(Debug, Clone, Copy)]
struct Ports {
    ws: u16,
    tcp: u16,
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
                pids.extend(peers::children(primary.id()));
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
            for pid in peers::children(primary.id()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
            let _ = primary.kill();
            let _ = primary.wait();
        }
    }
}

async fn start_server(
    target: Target,
    ports: Ports,
    gateways: usize,
    binary: Option<PathBuf>,
) -> anyhow::Result<Server> {
    match target {
        Target::Wasmgate => {
            let mut processes = Vec::new();
            for _ in 0..gateways {
                let admin = free_port()?;
                let config = gateway_config(ports.ws, ports.tcp, admin, 19_000, "");
                let ready = SocketAddr::from(([127, 0, 0, 1], admin));
                processes.push(GatewayProcess::start(binary.as_deref(), &config, ready).await?);
            }
            Ok(Server::Wasmgate(processes))
        }
        Target::InProcess => {
            let mut running = Vec::new();
            for _ in 0..gateways {
                let admin = free_port()?;
                let config: wasmgate::Config =
                    toml::from_str(&gateway_config(ports.ws, ports.tcp, admin, 19_000, ""))?;
                running.push(wasmgate::RunningGateway::start(config).await?);
            }
            Ok(Server::InProcess(running))
        }
        Target::NodeWs => {
            let child = peers::node_ws(ports.ws, gateways, "echo").await?;
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

/// Runs the scenario on one target: starts it, opens and logs in `load.sessions` sessions from
/// worker processes, reads RSS before and after, prints a line and a JSON result.
/// Errors: a target that cannot serve the transport, a server or worker that fails to start,
/// more than 250 workers.
pub async fn run(load: Load, target: Target, binary: Option<PathBuf>) -> anyhow::Result<IdleFigures> {
    let Load { sessions, gateways, per_worker, concurrency, transport } = load;
    if transport == Transport::Tcp && target == Target::NodeWs {
        bail!("node-ws has no TCP listener: run it with --transport ws");
    }
    let ports = Ports { ws: free_port()?, tcp: free_port()? };
    let server = start_server(target, ports, gateways, binary).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();

    let workers = sessions.div_ceil(per_worker);
    if workers > 250 {
        bail!("at most 250 workers (source addresses 127.0.0.2-.251)");
    }
    let exe = std::env::current_exe()?;
    let port = match transport {
        Transport::Ws => ports.ws,
        Transport::Tcp => ports.tcp,
    };
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let first = w * per_worker;
        let count = per_worker.min(sessions - first);
        let child = Command::new(&exe)
            .args(["worker", "--server", &format!("127.0.0.1:{port}")])
            .args(["--transport", &format!("{transport:?}").to_lowercase()])
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
        "idle {target:?} over {transport:?}: {opened} sessions ({failed} failed) on {gateways} process(es) | RSS {:.1} -> {:.1} MiB = {:.2} KiB per session | connect+login {:.0}/s",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_session / 1024.0,
        rate,
    );
    let result = serde_json::json!({
        "scenario": "idle", "target": format!("{target:?}"), "transport": format!("{transport:?}"), "sessions": opened, "failed": failed,
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
pub struct IdleFigures {
    bytes_per_session: f64,
    connect_login_per_s: f64,
}

/// Prints wasmgate's ratios to Node `ws` when both ran.
pub fn ratio(results: &[(Target, IdleFigures)]) {
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

/// Opens `sessions` sessions over `transport` to `server` from `source`, logs each in (users
/// `idle-<first + i>`), prints `ready <opened> <failed>`, and holds them until stdin closes.
pub async fn worker(
    server: SocketAddr,
    transport: Transport,
    source: Ipv4Addr,
    first: usize,
    sessions: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let opens = stream::iter(first..first + sessions)
        .map(|n| open(server, transport, source, n))
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

async fn open(server: SocketAddr, transport: Transport, source: Ipv4Addr, n: usize) -> anyhow::Result<Conn> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    let mut conn = Conn::open(transport, stream, server).await?;
    conn.login(&format!("idle-{n}"), Duration::from_secs(30)).await?;
    Ok(conn)
}
