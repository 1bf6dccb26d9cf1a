//! `cluster`: the cost of the cross-node bus (docs/cluster.md, docs/benchmarks.md).
//!
//! Starts a `redis-server` (Debian package) and two release gateway processes in one cluster
//! (`wasmgate run`, the binary next to this one), logs a WebSocket client in on node B, then:
//! 1. latency: `--pushes` sequential pushes to that user through node B's push API (local) and
//!    through node A's (over Redis pub/sub to B), each timed from the HTTP request to the
//!    packet at the client;
//! 2. burst: `--burst` pushes sent through node A by `--senders` concurrent HTTP callers;
//!    reports pushes/s delivered at the client and how many never arrived;
//! 3. logins: `--logins` sequential logins of distinct users on node A under the auth
//!    script's `--duplicate-login` policy (`kick-older` and `refuse-new` claim the user's
//!    location in Redis during the login), timed from the login packet to its answer;
//! 4. with `kick-older`: `--kicks` logins of one user alternating between the nodes, each
//!    timed from the new login's send until the older session (on the other node) is closed.
//!
//! Build first: `cargo build --release -p wasmgate -p wasmgate-examples`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use wasmgate_examples::bench::{GatewayProcess, NO_RATE_LIMITS, free_port, percentile_ms};
use wasmgate_examples::client::{Client, mint_token};

const SECRET: &str = "cluster-bench-secret";
const TOKEN: &str = "cluster-bench-admin-token";

/// Cross-node push latency and throughput over the Redis bus.
#[derive(Parser, Debug)]
struct Args {
    /// Sequential pushes per path (local, cross-node) for the latency figures.
    #[arg(long, default_value_t = 2000)]
    pushes: usize,
    /// Pushes in the burst through node A.
    #[arg(long, default_value_t = 20000)]
    burst: usize,
    /// Concurrent HTTP callers in the burst.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Sequential logins of distinct users (phase 3).
    #[arg(long, default_value_t = 1000)]
    logins: usize,
    /// Cross-node kicks of one user (phase 4, with `kick-older`).
    #[arg(long, default_value_t = 200)]
    kicks: usize,
    /// The auth script's duplicate-login policy: allow, kick-older, refuse-new.
    #[arg(long, default_value = "allow")]
    duplicate_login: String,
    /// The gateway binary (default: `wasmgate` next to this binary).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// Kills the Redis server on drop.
struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(node_id: u32, redis_port: u16, ws: u16, admin: u16, policy: &str) -> anyhow::Result<String> {
    let tcp = free_port()?;
    Ok(format!(
        r#"
[node]
id = {node_id}
[listen]
ws = "127.0.0.1:{ws}"
tcp = "127.0.0.1:{tcp}"
admin = "127.0.0.1:{admin}"
[admin]
token = "{TOKEN}"
{NO_RATE_LIMITS}[timeouts]
heartbeat_ms = 600000
[scripts.auth]
config = {{ secret = "{SECRET}", duplicate_login = "{policy}" }}
[cluster]
redis_url = "redis://127.0.0.1:{redis_port}/0"
"#
    ))
}

async fn push(admin: SocketAddr, n: usize) -> anyhow::Result<()> {
    let body = serde_json::json!({ "user_id": "bench", "data": n.to_string() }).to_string();
    let (status, text) = wasmgate::http_client::request(
        &wasmgate::http_client::Endpoint::plain(admin),
        Some(TOKEN),
        "POST",
        "/push/user",
        body.into_bytes(),
    )
    .await?;
    anyhow::ensure!(status == 200, "push answered {status}: {text}");
    Ok(())
}

/// Sequential pushes through `admin`; returns each round trip in ns.
async fn latency(client: &mut Client, admin: SocketAddr, pushes: usize) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(pushes);
    for n in 0..pushes {
        let started = Instant::now();
        push(admin, n).await?;
        let packet = client.recv_within(Duration::from_secs(5)).await?.packet()?;
        anyhow::ensure!(packet.body == n.to_string().as_bytes(), "push {n} arrived as {packet:?}");
        samples.push(started.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Logs distinct users in on node A (port `ws`) one after another; returns each login's
/// round trip (login packet to answer) in ns.
async fn login_latency(ws: u16, logins: usize) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(logins);
    for n in 0..logins {
        let mut client = Client::ws(&format!("ws://127.0.0.1:{ws}/ws"), false).await?;
        let token = mint_token(SECRET, &format!("login-{n}"), None, 3600)?;
        let started = Instant::now();
        client.login(1, &token).await?;
        samples.push(started.elapsed().as_nanos() as u64);
        client.close().await?;
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Logs one user in alternately on the two nodes; returns, per login, the time from sending
/// it until the older session on the other node is closed, in ns.
async fn kick_latency(ws_a: u16, ws_b: u16, kicks: usize) -> anyhow::Result<Vec<u64>> {
    let token = mint_token(SECRET, "kick-bench", None, 3600)?;
    let mut older = Client::ws(&format!("ws://127.0.0.1:{ws_a}/ws"), false).await?;
    older.login(1, &token).await?;
    let mut samples = Vec::with_capacity(kicks);
    for n in 0..kicks {
        let port = if n % 2 == 0 { ws_b } else { ws_a };
        let mut newer = Client::ws(&format!("ws://127.0.0.1:{port}/ws"), false).await?;
        let started = Instant::now();
        newer.login(1, &token).await?;
        loop {
            match older.recv_within(Duration::from_secs(5)).await? {
                wasmgate_examples::client::Received::Closed { .. } => break,
                _ => continue, // the error frame naming the reason
            }
        }
        samples.push(started.elapsed().as_nanos() as u64);
        older = newer;
    }
    samples.sort_unstable();
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis_port = free_port()?;
    let _redis = Redis(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &redis_port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting redis-server (apt-get install redis-server): {e}"))?,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ws_a, admin_a, ws_b, admin_b) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let ready = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let _a = GatewayProcess::start(
        args.gateway.as_deref(),
        &config(1, redis_port, ws_a, admin_a, &args.duplicate_login)?,
        ready(ws_a),
    )
    .await?;
    let _b = GatewayProcess::start(
        args.gateway.as_deref(),
        &config(2, redis_port, ws_b, admin_b, &args.duplicate_login)?,
        ready(ws_b),
    )
    .await?;
    let mut client = Client::ws(&format!("ws://127.0.0.1:{ws_b}/ws"), false).await?;
    client.login(1, &mint_token(SECRET, "bench", None, 3600)?).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // the location reaches Redis

    let local = latency(&mut client, ready(admin_b), args.pushes).await?;
    let remote = latency(&mut client, ready(admin_a), args.pushes).await?;

    let started = Instant::now();
    let per_sender = args.burst / args.senders.max(1);
    let senders: Vec<_> = (0..args.senders)
        .map(|s| {
            let admin = ready(admin_a);
            tokio::spawn(async move {
                for n in 0..per_sender {
                    push(admin, s * per_sender + n).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let sent = per_sender * args.senders.max(1);
    let mut received = 0;
    while received < sent {
        match client.recv_within(Duration::from_secs(2)).await {
            Ok(_) => received += 1,
            Err(_) => break, // nothing for 2 s: the rest is lost
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for sender in senders {
        sender.await??;
    }
    let logins = login_latency(ws_a, args.logins).await?;
    let kicks = match args.duplicate_login.as_str() {
        "kick-older" => kick_latency(ws_a, ws_b, args.kicks).await?,
        _ => Vec::new(),
    };
    let result = serde_json::json!({
        "local": {"p50_ms": percentile_ms(&local, 0.5), "p99_ms": percentile_ms(&local, 0.99)},
        "cross_node": {"p50_ms": percentile_ms(&remote, 0.5), "p99_ms": percentile_ms(&remote, 0.99)},
        "burst": {"sent": sent, "received": received, "per_s": received as f64 / elapsed},
        "logins": {"policy": args.duplicate_login, "p50_ms": percentile_ms(&logins, 0.5), "p99_ms": percentile_ms(&logins, 0.99)},
        "cross_node_kick": (!kicks.is_empty()).then(|| serde_json::json!({"p50_ms": percentile_ms(&kicks, 0.5), "p99_ms": percentile_ms(&kicks, 0.99)})),
    });
    println!(
        "cluster: login ({}) p50 {:.3} ms p99 {:.3} ms{}",
        args.duplicate_login,
        percentile_ms(&logins, 0.5),
        percentile_ms(&logins, 0.99),
        match kicks.is_empty() {
            true => String::new(),
            false => format!(
                " | cross-node kick p50 {:.3} ms p99 {:.3} ms",
                percentile_ms(&kicks, 0.5),
                percentile_ms(&kicks, 0.99)
            ),
        }
    );
    println!(
        "cluster: push latency local p50 {:.3} ms p99 {:.3} ms | cross-node p50 {:.3} ms p99 {:.3} ms | burst {} sent, {} received, {:.0}/s",
        percentile_ms(&local, 0.5),
        percentile_ms(&local, 0.99),
        percentile_ms(&remote, 0.5),
        percentile_ms(&remote, 0.99),
        sent,
        received,
        received as f64 / elapsed,
    );
    println!("{result}");
    Ok(())
}
