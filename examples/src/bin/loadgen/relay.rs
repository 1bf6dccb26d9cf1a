//! Scenario `relay`: client -> server -> echo -> client round trips.
//!
//! - `wasmgate`: the release gateway (default scripts: message 100 goes through the router
//!   script to dest 101) with `echo-backend` as dest 101, each its own process; clients over
//!   WebSocket.
//! - `wasmgate-native`: the same with `scripts.native_router` (the router's map lookup in
//!   Rust, no script call): the cost of scripting, measured.
//! - `wasmgate-tcp`: the same as `wasmgate` with the clients on the gateway's length-prefixed
//!   TCP listener: the cost of WebSocket framing, measured.
//! - `wasmgate-wss`: the same as `wasmgate` with the clients on the gateway's `wss` listener
//!   (TLS 1.3, a certificate made for the run): the cost of TLS on live sessions, measured.
//! - `wasmgate-thrift`: the same as `wasmgate` with dest 101 a Thrift dest (seed 001's
//!   `ProtoRequest`/`ProtoReply`, framed binary) served by `thrift-echo-backend`, the same echo:
//!   the cost of Thrift upstreams against backend protocol v1, measured.
//! - `nginx-node`: nginx as a WebSocket reverse proxy (2 workers) in front of Node's `ws` echo
//!   server (2 cluster workers): the setup a Node shop would put in wasmgate's place.
//!
//! The client frames are wasmgate's binary packets; Node echoes the bytes unchanged, so one
//! client measures both. Each run first finds saturation (every connection keeps `window`
//! packets in flight), then offers half of that rate open-loop (each connection sends on a
//! fixed schedule, whatever the answers do; a late send catches up at once). Latencies are
//! from the actual write to receipt, on one clock; the clients share the 2 cores with the
//! servers.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use wasmgate::protocol::client::{decode_binary, encode_binary};
use wasmgate_examples::bench::{GatewayProcess, free_port, percentile_ms};

use super::conn::{Conn, PacketSink, PacketStream, Transport};
use super::peers::{Servers, nginx_node, sibling, wait_listening};
use super::tls::Certificates;

/// Message id relayed to dest 101 by the default maps.
const ECHO: u32 = 100;
/// Packet body size, bytes (the first 8 carry the send time).
const BODY: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayTarget {
    Wasmgate,
    /// wasmgate with `scripts.native_router`: the router's logic in Rust, no script call.
    WasmgateNative,
    /// wasmgate with the clients over its TCP listener instead of WebSocket.
    WasmgateTcp,
    /// wasmgate with the clients over its `wss` listener (the gateway terminating TLS).
    WasmgateWss,
    /// wasmgate with dest 101 a Thrift dest (`thrift-echo-backend`).
    WasmgateThrift,
    /// wasmgate with a shadow of the router (the same component) given 100 % of the events
    /// (docs/evidence.md).
    WasmgateShadow,
    NginxNode,
}

impl RelayTarget {
    fn transport(self) -> Transport {
        match self {
            RelayTarget::WasmgateTcp => Transport::Tcp,
            _ => Transport::Ws,
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub round_trips_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub lost: u64,
}

/// Starts `target`'s servers; returns them and, for wasmgate, its admin port. `certs`: the
/// `wss` listener's certificate (`wasmgate-wss`).
async fn start(
    target: RelayTarget,
    gateway: Option<&Path>,
    router: Option<&Path>,
    certs: Option<&Certificates>,
) -> anyhow::Result<(Servers, Option<u16>)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    match target {
        RelayTarget::Wasmgate
        | RelayTarget::WasmgateNative
        | RelayTarget::WasmgateTcp
        | RelayTarget::WasmgateWss
        | RelayTarget::WasmgateThrift
        | RelayTarget::WasmgateShadow => {
            let backend_port = free_port()?;
            let thrift = target == RelayTarget::WasmgateThrift;
            let program = if thrift { "thrift-echo-backend" } else { "echo-backend" };
            let mut backend = Command::new(sibling(program)?)
                .args(["--listen", &format!("127.0.0.1:{backend_port}")])
                .env("RUST_LOG", "warn")
                .spawn()
                .with_context(|| format!("starting {program}"))?;
            let dest_map = dir.path().join("dest_map.json");
            let message_map = dir.path().join("message_map.json");
            let protocol = if thrift { r#", "protocol": "thrift""# } else { "" };
            let dests = format!(
                r#"{{"101": {{"poolNums": 2, "srvAddr": "127.0.0.1:{backend_port}", "srvName": "echo"{protocol}}}}}"#
            );
            std::fs::write(&dest_map, dests)?;
            std::fs::write(&message_map, format!(r#"{{"{ECHO}": 101}}"#))?;
            let (admin, tcp) = (free_port()?, free_port()?);
            let native = target == RelayTarget::WasmgateNative;
            let mut config = format!(
                "{}[maps]\ndest_map = {:?}\nmessage_map = {:?}\n[scripts]\nnative_router = {native}\n",
                super::gateway_config(port, tcp, admin, 19_000, ""),
                dest_map.display().to_string(),
                message_map.display().to_string(),
            );
            let wss = free_port()?;
            if let Some(certs) = certs {
                config = certs.with_wss(&config, wss);
            }
            if let Some(router) = router {
                let path = std::fs::canonicalize(router).with_context(|| format!("{}", router.display()))?;
                config.push_str(&format!("[scripts.router]\npath = {:?}\n", path.display().to_string()));
            }
            let shadow = target == RelayTarget::WasmgateShadow;
            if shadow {
                config.push_str(&format!("[admin]\ntoken = {SHADOW_TOKEN:?}\n"));
            }
            let ready = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let started = async {
                wait_listening(backend_port, program).await?;
                GatewayProcess::start(gateway, &config, ready).await
            };
            // A failed start must not leave the backend running: it holds the stdout this
            // process's caller may be reading to its end.
            let gateway = match started.await {
                Ok(gateway) => gateway,
                Err(e) => {
                    let _ = backend.kill();
                    let _ = backend.wait();
                    return Err(e);
                }
            };
            if shadow {
                let component = match router {
                    Some(router) => std::fs::read(router)?,
                    None => wasmgate::embedded::DEFAULT_ROUTER.to_vec(),
                };
                start_shadow(admin, component).await?;
            }
            // The pool connects in the background: give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let port = match target {
                RelayTarget::WasmgateTcp => tcp,
                RelayTarget::WasmgateWss => wss,
                _ => port,
            };
            Ok((Servers { children: vec![backend], gateway: Some(gateway), _dir: dir, port }, Some(admin)))
        }
        RelayTarget::NginxNode => {
            let servers = nginx_node(port, dir, None).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok((servers, None))
        }
    }
}

/// The admin token of the shadow target's gateway.
const SHADOW_TOKEN: &str = "loadgen-shadow";

/// Shadows the router with `component` at 100 %.
async fn start_shadow(admin: u16, component: Vec<u8>) -> anyhow::Result<()> {
    let to = wasmgate::http_client::Endpoint::plain(std::net::SocketAddr::from(([127, 0, 0, 1], admin)));
    let path = "/scripts/router/shadow?queue=65536";
    let (status, text) =
        wasmgate::http_client::request(&to, Some(SHADOW_TOKEN), "POST", path, component).await?;
    anyhow::ensure!(status == 200, "starting the shadow: {status} {text}");
    Ok(())
}

/// Prints the shadow's counts at the end of a run.
async fn print_shadow(admin: u16) {
    let to = wasmgate::http_client::Endpoint::plain(std::net::SocketAddr::from(([127, 0, 0, 1], admin)));
    if let Ok((_, text)) =
        wasmgate::http_client::request(&to, Some(SHADOW_TOKEN), "GET", "/scripts/router/shadow", vec![]).await
        && let Ok(report) = serde_json::from_str::<serde_json::Value>(&text)
    {
        println!(
            "relay WasmgateShadow shadow events: {} differences: {}",
            report["events"], report["differences"]
        );
    }
}

/// A connection's two halves, kept across phases.
type Halves = (PacketSink, PacketStream);

/// Connection `n` to `port`: over `wss` when `certs` is given, else over `transport`.
async fn connect(
    port: u16,
    transport: Transport,
    certs: Option<&Certificates>,
    n: usize,
    login: bool,
) -> anyhow::Result<Halves> {
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = match certs {
        Some(certs) => {
            let stream = tokio::net::TcpStream::connect(server).await?;
            Conn::open_wss(stream, server, &certs.client).await?
        }
        None => Conn::connect(transport, server).await?,
    };
    if login {
        conn.login(&format!("relay-{n}"), Duration::from_secs(10)).await?;
    }
    conn.split()
}

fn packet(seq: u32, stamp: Instant, epoch: Instant) -> Bytes {
    let mut body = [0u8; BODY];
    body[..8].copy_from_slice(&(stamp.duration_since(epoch).as_nanos() as u64).to_le_bytes());
    let mut frame = BytesMut::with_capacity(BODY + 16);
    encode_binary(ECHO, seq, &body, &mut frame);
    frame.freeze()
}

/// Runs one phase on every connection for `seconds`: `rate` packets/s in total open-loop, or
/// closed-loop with `window` in flight per connection when `rate` is `None`; then waits (5 s
/// at most) for what is still in flight. Gives the connections back for the next phase.
async fn phase(conns: Vec<Halves>, seconds: f64, window: usize, rate: Option<f64>) -> (Phase, Vec<Halves>) {
    let epoch = Instant::now();
    let end = epoch + Duration::from_secs_f64(seconds);
    let n = conns.len();
    let interval = rate.map(|r| Duration::from_secs_f64(n as f64 / r));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(run_connection(conn, epoch, end, window, interval.map(|d| (d, i, n)))))
        .collect();
    let (mut sent, mut received, mut all, mut conns) = (0, 0, Vec::new(), Vec::new());
    for task in tasks {
        if let Ok((s, r, latencies, conn)) = task.await {
            sent += s;
            received += r;
            all.extend(latencies);
            conns.extend(conn);
        }
    }
    all.sort_unstable();
    let phase = Phase {
        round_trips_per_s: received as f64 / seconds,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        p999_ms: percentile_ms(&all, 0.999),
        lost: sent.saturating_sub(received),
    };
    (phase, conns)
}

/// One connection's phase: (sent, received, latencies in ns, the connection if still usable).
/// `schedule`: (interval, this connection's index, connections) for open loop; the starts are
/// spread over one interval.
async fn run_connection(
    (mut tx, mut rx): Halves,
    epoch: Instant,
    end: Instant,
    window: usize,
    schedule: Option<(Duration, usize, usize)>,
) -> (u64, u64, Vec<u64>, Option<Halves>) {
    let permits = Arc::new(Semaphore::new(window));
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (permits, sent, done) = (permits.clone(), sent.clone(), done.clone());
        tokio::spawn(async move {
            let mut next =
                epoch + schedule.map_or(Duration::ZERO, |(d, i, n)| d.mul_f64(i as f64 / n as f64));
            while Instant::now() < end {
                match schedule {
                    Some((interval, _, _)) => {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    None => match permits.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    },
                }
                // The actual send time: tokio's timer wakes the sender up to ~1 ms after the
                // scheduled time, which is the client's lag, not the server's.
                let stamp = Instant::now();
                let seq = sent.fetch_add(1, Ordering::Relaxed) as u32 + 1;
                if tx.send(packet(seq, stamp, epoch)).await.is_err() {
                    break;
                }
            }
            done.store(true, Ordering::Release);
            tx
        })
    };
    let mut latencies = Vec::new();
    let drain_until = end + Duration::from_secs(5);
    loop {
        if done.load(Ordering::Acquire) && latencies.len() as u64 >= sent.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() > drain_until {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), rx.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(frame))) => {
                let Ok(p) = decode_binary(frame) else { continue };
                if p.msg_id != ECHO || p.body.len() < 8 {
                    continue;
                }
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&p.body[..8]);
                let now_ns = epoch.elapsed().as_nanos() as u64;
                latencies.push(now_ns.saturating_sub(u64::from_le_bytes(stamp)));
                permits.add_permits(1);
            }
            Ok(_) => break,
        }
    }
    permits.close();
    let tx = sender.await.ok();
    let received = latencies.len() as u64;
    (sent.load(Ordering::Relaxed), received, latencies, tx.map(|tx| (tx, rx)))
}

/// The phases of one target.
pub struct Run {
    pub saturation: Phase,
    /// Half of the saturation rate, open-loop.
    pub half: Phase,
    /// (offered packets/s, figures) of each `--rates` entry.
    pub fixed: Vec<(f64, Phase)>,
}

/// Runs the scenario on `target`: saturation, half of it open-loop, then each of `rates`
/// (packets/s, open-loop). Prints a line per phase.
pub async fn run(
    target: RelayTarget,
    connections: usize,
    seconds: f64,
    window: usize,
    rates: &[f64],
    gateway: Option<&Path>,
    router: Option<&Path>,
) -> anyhow::Result<Run> {
    let certs = (target == RelayTarget::WasmgateWss).then(Certificates::new).transpose()?;
    let (servers, admin) = start(target, gateway, router, certs.as_ref()).await?;
    let login = target != RelayTarget::NginxNode;
    let mut conns = Vec::with_capacity(connections);
    for n in 0..connections {
        conns.push(connect(servers.port, target.transport(), certs.as_ref(), n, login).await?);
    }
    // Warm-up: one second closed-loop, not reported.
    let (_, conns) = phase(conns, 1.0, window, None).await;
    let (saturation, conns) = phase(conns, seconds, window, None).await;
    print_phase(target, "saturation", connections, &saturation);
    if conns.len() < connections {
        bail!("{} connections broke during the saturation phase", connections - conns.len());
    }
    let half_rate = saturation.round_trips_per_s / 2.0;
    let (half, mut conns) = phase(conns, seconds, window, Some(half_rate)).await;
    print_phase(target, &format!("{half_rate:.0}/s offered (half)"), connections, &half);
    let mut fixed = Vec::new();
    for &rate in rates {
        let (p, next) = phase(conns, seconds, window, Some(rate)).await;
        print_phase(target, &format!("{rate:.0}/s offered"), connections, &p);
        fixed.push((rate, p));
        conns = next;
    }
    if let Some(admin) = admin.filter(|_| target != RelayTarget::WasmgateNative) {
        print_router_calls(target, admin).await;
    }
    if let Some(admin) = admin.filter(|_| target == RelayTarget::WasmgateShadow) {
        print_shadow(admin).await;
    }
    drop(servers);
    Ok(Run { saturation, half, fixed })
}

/// The router's calls as the gateway's own histogram saw them (mean of
/// `wasmgate_script_call_duration_seconds{script="router"}` over the run).
async fn print_router_calls(target: RelayTarget, admin: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let Ok((_, text)) = wasmgate::http_client::request(
        &wasmgate::http_client::Endpoint::plain(addr),
        None,
        "GET",
        "/metrics",
        Vec::new(),
    )
    .await
    else {
        return;
    };
    let sum_of = |suffix: &str| -> f64 {
        let name = format!("wasmgate_script_call_duration_seconds_{suffix}{{script=\"router\"");
        text.lines()
            .filter(|l| l.starts_with(&name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (sum, count) = (sum_of("sum"), sum_of("count"));
    if count > 0.0 {
        println!(
            "relay {target:?} router calls: {count:.0}, mean {:.2} µs (the gateway's histogram)",
            sum / count * 1e6
        );
    }
}

fn print_phase(target: RelayTarget, what: &str, connections: usize, p: &Phase) {
    println!(
        "relay {target:?} {what}: {:.0} round trips/s over {connections} connections | p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms | lost {}",
        p.round_trips_per_s, p.p50_ms, p.p99_ms, p.p999_ms, p.lost
    );
}

/// The JSON of one phase.
pub fn json(p: &Phase) -> serde_json::Value {
    serde_json::json!({
        "round_trips_per_s": p.round_trips_per_s.round(), "p50_ms": p.p50_ms, "p99_ms": p.p99_ms,
        "p999_ms": p.p999_ms, "lost": p.lost,
    })
}
