//! Scenario `memory`: does the gateway's RSS come back after the probes that inflate a heap?
//!
//! Starts the example backend in this process and the release gateway (`admin.profiling` on),
//! holds `sessions` logged-in sessions (WebSocket, or TCP with `--transport tcp`) that read
//! everything pushed to them, and takes the gateway's RSS. Then, each followed by a settle period and another RSS sample:
//! - `burst`: 16 clients send 60 KB echoes without reading until they are closed as slow
//!   consumers, while the admin API pushes 20 x 64 KiB to every held session;
//! - `profile`: a 3 s CPU profile rendered as a flame graph (symbolization of the binary);
//! - `compile` (with `--component`): that component deployed as the router, then six small
//!   routers after it, so nothing holds the large one any more (the rollback target and the
//!   compile cache's last four released components are small ones).
//!
//! Prints the samples and each one's growth over the start; exits non-zero when one grew by
//! more than 20 % or a held session missed a push. Run it on each allocator build to compare
//! (docs/benchmarks.md, "Allocators").

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use wasmgate::config::TcpFramingConfig;
use wasmgate_examples::bench::{EchoBench, GatewayProcess, free_port, rss_kib};
use wasmgate_examples::client::{Client, Received, mint_token};

use super::conn::Transport;
use super::logged_in;
use super::soak::{router_build, stalled_burst};

const TOKEN: &str = "memory-admin-token";
/// Growth over the start allowed after each probe (issue 20).
const TOLERANCE: f64 = 0.20;
/// Pushes of the burst probe, and the size of each.
const PUSHES: u64 = 20;
const PUSH_BYTES: usize = 64 << 10;
/// Time for queues to drain and freed memory to be given back before a sample.
const SETTLE: Duration = Duration::from_secs(4);

/// The bytes the gateway's allocator has handed out (`GET /debug/heap`, `admin.profiling` on);
/// `None` if the API does not answer with them.
pub async fn heap_in_use(api: &wasmgate::http_client::Endpoint<'_>, token: &str) -> Option<u64> {
    let (_, text) =
        wasmgate::http_client::request(api, Some(token), "GET", "/debug/heap", Vec::new()).await.ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?.get("in_use_bytes")?.as_u64()
}

/// The gateway's RSS and its heap in use, KiB.
async fn sample(pid: u32, api: &wasmgate::http_client::Endpoint<'_>) -> (u64, Option<u64>) {
    (rss_kib(pid), heap_in_use(api, TOKEN).await.map(|b| b / 1024))
}

/// Runs the probes against `sessions` held sessions; `component` is the large component of
/// the compile probe (skipped without one).
pub async fn run(
    sessions: usize,
    transport: Transport,
    component: Option<&Path>,
    gateway: Option<&Path>,
) -> anyhow::Result<()> {
    let large = component.map(std::fs::read).transpose()?;
    let bench = EchoBench::start("memory", super::SECRET).await?;
    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut config = bench.config.replace("tcp = \"127.0.0.1:0\"", &format!("tcp = \"{tcp_addr}\""));
    config.push_str(&format!(
        "[limits]\npending_write_num = 64\n[admin]\ntoken = \"{TOKEN}\"\nprofiling = true\n"
    ));
    let ws_addr = bench.ws;
    let api = wasmgate::http_client::Endpoint::plain(bench.admin);
    let gateway = GatewayProcess::start(gateway, &config, ws_addr).await?;
    let pid = gateway.pid();

    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(sessions);
    for n in 0..sessions {
        let user = format!("held-{n}");
        let mut client = match transport {
            Transport::Ws => logged_in(ws_addr, &user).await?,
            Transport::Tcp => {
                let mut client = Client::tcp(tcp_addr, &TcpFramingConfig::default()).await?;
                client.login(1, &mint_token(super::SECRET, &user, None, 3600)?).await?;
                client
            }
        };
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Received::Packet(packet)) = client.recv().await {
                if packet.body.len() == PUSH_BYTES {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(SETTLE).await;
    let mut samples = vec![("start", sample(pid, &api).await)];

    // burst
    let body = base64::engine::general_purpose::STANDARD.encode(vec![7u8; PUSH_BYTES]);
    let push = serde_json::json!({"msg_id": 600, "data_b64": body}).to_string().into_bytes();
    let stalled = tokio::spawn(stalled_burst(ws_addr, 0, 16));
    for _ in 0..PUSHES {
        let (status, text) =
            wasmgate::http_client::request(&api, Some(TOKEN), "POST", "/push/all", push.clone()).await?;
        anyhow::ensure!(status == 200, "push answered {status}: {text}");
    }
    stalled.await??;
    tokio::time::sleep(SETTLE).await;
    samples.push(("burst", sample(pid, &api).await));

    // profile
    let (status, text) = wasmgate::http_client::request(
        &api,
        Some(TOKEN),
        "GET",
        "/debug/pprof/flamegraph?seconds=3",
        Vec::new(),
    )
    .await?;
    anyhow::ensure!(status == 200, "flame graph answered {status}: {text:.200}");
    tokio::time::sleep(SETTLE).await;
    samples.push(("profile", sample(pid, &api).await));

    // compile
    if let Some(large) = large {
        let deploy = |wasm: Vec<u8>| {
            wasmgate::http_client::request(&api, Some(TOKEN), "POST", "/scripts/router", wasm)
        };
        let (status, text) = deploy(large).await?;
        anyhow::ensure!(status == 200, "deploying the large component answered {status}: {text}");
        tokio::time::sleep(SETTLE).await;
        samples.push(("compile (live)", sample(pid, &api).await));
        for n in 0..6 {
            let (status, text) = deploy(router_build(1000 + n)).await?;
            anyhow::ensure!(status == 200, "deploy answered {status}: {text}");
        }
        tokio::time::sleep(SETTLE).await;
        samples.push(("compile (released)", sample(pid, &api).await));
    }

    let delivered = received.load(Ordering::Relaxed);
    let expected = PUSHES * sessions as u64;
    let start = samples[0].1.0 as f64;
    let growth = |kib: u64| if start > 0.0 { (kib as f64 - start) / start } else { 0.0 };
    let line: Vec<String> = samples
        .iter()
        .map(|(probe, (kib, heap))| {
            let heap = heap.map(|h| format!(", heap {:.1} MiB", h as f64 / 1024.0)).unwrap_or_default();
            format!("{probe} {:.1} MiB ({:+.1} %{heap})", *kib as f64 / 1024.0, growth(*kib) * 100.0)
        })
        .collect();
    println!(
        "memory, {sessions} held {transport:?} sessions, {delivered}/{expected} pushes delivered | {}",
        line.join(" | ")
    );
    let json = serde_json::json!({
        "sessions": sessions,
        "transport": format!("{transport:?}"),
        "pushes_expected": expected,
        "pushes_delivered": delivered,
        "rss_kib": samples.iter().map(|(p, (k, _))| (p.to_string(), serde_json::json!(k))).collect::<serde_json::Map<_, _>>(),
        "heap_in_use_kib": samples.iter().map(|(p, (_, h))| (p.to_string(), serde_json::json!(h))).collect::<serde_json::Map<_, _>>(),
    });
    println!("{json}");
    drop(gateway);
    drop(bench);
    for reader in readers {
        reader.abort();
    }
    // The live large component is expected to hold its code: only the other samples count.
    let over: Vec<_> = samples
        .iter()
        .filter(|(probe, (kib, _))| *probe != "compile (live)" && growth(*kib) > TOLERANCE)
        .map(|(probe, (kib, _))| format!("{probe} +{:.0} %", growth(*kib) * 100.0))
        .collect();
    anyhow::ensure!(over.is_empty(), "RSS grew by more than {:.0} %: {}", TOLERANCE * 100.0, over.join(", "));
    anyhow::ensure!(delivered == expected, "held sessions received {delivered} of {expected} pushes");
    Ok(())
}
