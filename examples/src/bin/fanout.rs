//! `fanout`: the room fan-out benchmark (docs/benchmarks.md).
//!
//! Starts a real gateway process (`wasmgate run`, the release binary next to this one), opens
//! `--members` client sessions (WebSocket binary frames or TCP) that all join one room, then a
//! publisher (also a member) sends `--messages` room messages through the rooms script, at
//! `--rate` messages/s or as fast as it can (`--rate 0`). Every member counts what it
//! receives; one member in `--sample` also parses each message's send timestamp for the
//! delivery latency. Prints a one-line summary and a JSON line per room size.
//!
//! The clients run on the same 2 cores as the gateway, so the raw deliveries/s understate the
//! gateway; the gateway's own CPU time (from /proc) is reported as ns per delivery too.
//!
//! Build both binaries first: `cargo build --release -p wasmgate -p wasmgate-examples`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use wasmgate::config::TcpFramingConfig;
use wasmgate_examples::bench::{
    GatewayProcess, NO_RATE_LIMITS, cpu_seconds, free_port, percentile_ms, rss_kib, unix_ns,
};
use wasmgate_examples::client::{Client, mint_token};

const SECRET: &str = "fanout-bench-secret";
const JOIN: u32 = 5;
const ROOM_MESSAGE: u32 = 7;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Transport {
    Ws,
    Tcp,
}

/// Room fan-out benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Room sizes to measure, comma-separated (a fresh gateway per size).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    members: Vec<usize>,
    /// Room messages the publisher sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Messages per second; 0 sends as fast as possible (saturation).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// One member in this many records delivery latency.
    #[arg(long, default_value_t = 50)]
    sample: usize,
    /// Body padding of each message, in bytes.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// The gateway binary (default: `wasmgate` next to this binary).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Fan-out buckets of the gateway (`rooms.buckets`).
    #[arg(long, default_value_t = 8)]
    buckets: usize,
}

async fn start_gateway(args: &Args, members: usize) -> anyhow::Result<Gateway> {
    let (ws, tcp) = (free_port()?, free_port()?);
    let config = format!(
        r#"[listen]
ws = "127.0.0.1:{ws}"
tcp = "127.0.0.1:{tcp}"
[limits]
max_conn_num = {conns}
pending_write_num = {queue}
{NO_RATE_LIMITS}[timeouts]
login_ms = 60000
heartbeat_ms = 600000
[rooms]
buckets = {buckets}
[scripts.auth]
config = {{ secret = "{SECRET}" }}
[scripts.rooms]
config = {{ max_members = {conns} }}
"#,
        conns = members + 16,
        // A burst of every message must fit in a member's queue: the benchmark measures
        // throughput, not the slow-consumer policy.
        queue = (args.messages + 16).max(256),
        buckets = args.buckets,
    );
    let ws = SocketAddr::from(([127, 0, 0, 1], ws));
    let process = GatewayProcess::start(args.gateway.as_deref(), &config, ws).await?;
    Ok(Gateway { process, ws, tcp: SocketAddr::from(([127, 0, 0, 1], tcp)) })
}

struct Gateway {
    process: GatewayProcess,
    ws: SocketAddr,
    tcp: SocketAddr,
}

async fn member(gateway: &Gateway, transport: Transport, n: usize) -> anyhow::Result<Client> {
    let mut client = match transport {
        Transport::Ws => Client::ws(&format!("ws://{}/ws", gateway.ws), false).await?,
        Transport::Tcp => Client::tcp(gateway.tcp, &TcpFramingConfig::default()).await?,
    };
    client.login(1, &mint_token(SECRET, &format!("m{n}"), None, 3600)?).await?;
    let seq = client.send(JOIN, b"bench").await?;
    client.recv_reply(JOIN, seq, Duration::from_secs(30)).await?;
    Ok(client)
}

/// What one member saw: messages received, when the last arrived, sampled latencies (ns).
struct Seen {
    count: usize,
    last: Option<Instant>,
    latencies: Vec<u64>,
}

async fn receive(mut client: Client, expect: usize, sample: bool, limit: Duration) -> Seen {
    let mut seen = Seen { count: 0, last: None, latencies: Vec::new() };
    // One timer for the whole wait, not one per packet: a timer set and cancelled per
    // delivery was a tenth of a member's CPU.
    let _ = tokio::time::timeout(limit, async {
        while seen.count < expect {
            let Ok(received) = client.recv().await.and_then(|r| r.packet()) else { break };
            if received.msg_id != ROOM_MESSAGE {
                continue;
            }
            seen.count += 1;
            seen.last = Some(Instant::now());
            if sample {
                let now = unix_ns();
                let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap_or_default();
                if let Some(sent) = body["data"]["t"].as_u64() {
                    seen.latencies.push(now.saturating_sub(sent));
                }
            }
        }
    })
    .await;
    seen
}

async fn run(args: &Args, members: usize) -> anyhow::Result<serde_json::Value> {
    let gateway = start_gateway(args, members).await?;
    let pid = gateway.process.pid();
    let opened = Instant::now();
    let joined = Arc::new(AtomicU64::new(0));
    let clients: Vec<Client> = futures_util::stream::iter(0..members)
        .map(|n| {
            let (gateway, joined) = (&gateway, joined.clone());
            async move {
                let client = member(gateway, args.transport, n).await;
                joined.fetch_add(1, Ordering::Relaxed);
                client
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let join_s = opened.elapsed().as_secs_f64();
    let mut clients = clients.into_iter();
    let mut publisher = clients.next().context("no members")?;
    let limit = Duration::from_secs(120);
    let readers: Vec<_> = clients
        .enumerate()
        .map(|(i, c)| tokio::spawn(receive(c, args.messages, i % args.sample == 0, limit)))
        .collect();
    let pad = "x".repeat(args.payload);
    let rss_joined = rss_kib(pid);
    let (cpu_before, bench_cpu_before) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let start = Instant::now();
    let publisher_task = tokio::spawn({
        let (messages, rate) = (args.messages, args.rate);
        async move {
            for i in 0..messages {
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = serde_json::json!({"room": "bench", "data": {"t": unix_ns(), "i": i, "p": pad}});
                publisher.send(ROOM_MESSAGE, body.to_string().as_bytes()).await?;
            }
            // The publisher is a member too: it receives its own messages.
            Ok::<_, anyhow::Error>(receive(publisher, messages, false, limit).await)
        }
    });
    let mut seen = vec![publisher_task.await??];
    for reader in readers {
        seen.push(reader.await?);
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    let rss_after = rss_kib(pid);
    let bench_cpu = cpu_seconds(std::process::id()) - bench_cpu_before;
    let delivered: usize = seen.iter().map(|s| s.count).sum();
    let end = seen.iter().filter_map(|s| s.last).max().unwrap_or(start);
    let elapsed = end.duration_since(start).as_secs_f64();
    let mut latencies: Vec<u64> = seen.iter().flat_map(|s| s.latencies.iter().copied()).collect();
    latencies.sort_unstable();
    let expected = members * args.messages;
    let rate = delivered as f64 / elapsed.max(1e-9);
    let result = serde_json::json!({
        "members": members,
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "messages": args.messages,
        "offered_rate": args.rate,
        "delivered": delivered,
        "lost": expected - delivered,
        "seconds": elapsed,
        "deliveries_per_s": rate,
        "latency_ms_p50": percentile_ms(&latencies, 0.50),
        "latency_ms_p99": percentile_ms(&latencies, 0.99),
        "latency_samples": latencies.len(),
        "gateway_cpu_s": cpu,
        "gateway_cpu_ns_per_delivery": cpu * 1e9 / delivered.max(1) as f64,
        "clients_cpu_s": bench_cpu,
        "gateway_rss_kib_joined": rss_joined,
        "gateway_rss_kib_after": rss_after,
        "join_s": join_s,
    });
    println!(
        "fanout members={members} transport={:?} messages={} rate={}: {:.0} deliveries/s, latency p50 {:.2} ms p99 {:.2} ms, lost {}, gateway cpu {:.2} s ({:.0} ns/delivery), clients cpu {:.2} s, gateway rss {} -> {} MiB",
        args.transport,
        args.messages,
        if args.rate > 0.0 { format!("{}/s", args.rate) } else { "max".into() },
        rate,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        expected - delivered,
        cpu,
        cpu * 1e9 / delivered.max(1) as f64,
        bench_cpu,
        rss_joined / 1024,
        rss_after / 1024,
    );
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for &members in &args.members {
        let result = run(&args, members).await?;
        println!("{result}");
    }
    Ok(())
}
