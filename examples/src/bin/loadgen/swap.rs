//! Scenario `swap`: message latency while scripts are swapped live.
//!
//! Starts the example backend in this process and the release gateway (`wasmgate run`, the
//! binary next to this one) routing message 100 to it. `clients` sessions each send message
//! 100 and wait for its echo, in a loop, for `seconds` of steady state and then `seconds`
//! while the router is redeployed every `every_ms` through the admin API (the same component,
//! so the compile cache is warm: what is measured is the pipeline and the swap). With
//! `component`, the deploys alternate between that router component and the default one: the
//! first is a cold deploy (a 12-18 MB Python or JavaScript component compiles for seconds), so
//! the swapping phase shows whether sessions stall while a large component compiles. Prints
//! round-trip p50/p99/p99.9/max for both phases, messages lost, and the swap times.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmgate_examples::bench::{EchoBench, GatewayProcess, percentile_ms};
use wasmgate_examples::client::Client;

use super::{SECRET, logged_in};

const TOKEN: &str = "swap-bench-admin-token";

/// The knobs of the scenario (from the command line).
#[derive(Debug, Clone)]
pub struct Swaps {
    /// Concurrent sessions, each with one message in flight.
    pub clients: usize,
    /// Length of each phase (steady, swapping), seconds.
    pub seconds: f64,
    /// Time between two deploys in the swapping phase, ms.
    pub every_ms: u64,
    /// Run without wasmtime's pooling allocator (`scripts.pooling.enabled = false`).
    pub no_pooling: bool,
    /// A router component to alternate with the default router (it must forward message 100
    /// by `message_map`, as the templates of examples/scripts do).
    pub component: Option<PathBuf>,
}

/// Round trips of one client: (ns, sent during the swapping phase), and messages lost.
async fn client_loop(
    mut client: Client,
    swapping: Arc<AtomicBool>,
    stop: CancellationToken,
) -> (Vec<(u64, bool)>, u64) {
    let (mut samples, mut lost) = (Vec::new(), 0);
    while !stop.is_cancelled() {
        let phase = swapping.load(Ordering::Relaxed);
        let started = Instant::now();
        let Ok(seq) = client.send(100, b"ping").await else { break };
        match client.recv_reply(100, seq, Duration::from_secs(5)).await {
            Ok(_) => samples.push((started.elapsed().as_nanos() as u64, phase)),
            Err(_) => lost += 1,
        }
    }
    (samples, lost)
}

/// Runs the scenario; prints a line and the JSON result.
pub async fn run(args: Swaps, gateway: Option<&Path>) -> anyhow::Result<()> {
    let bench = EchoBench::start("swap", SECRET).await?;
    let mut config = bench.config.clone();
    config.push_str(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[scripts.pooling]\nenabled = {}\n",
        !args.no_pooling
    ));
    let (ws_addr, admin_addr) = (bench.ws, bench.admin);
    let gateway = GatewayProcess::start(gateway, &config, ws_addr).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // queue pool connects

    let mut clients = Vec::with_capacity(args.clients);
    for n in 0..args.clients {
        clients.push(logged_in(ws_addr, &format!("c{n}")).await?);
    }
    let (swapping, stop) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
    let tasks: Vec<_> =
        clients.into_iter().map(|c| tokio::spawn(client_loop(c, swapping.clone(), stop.clone()))).collect();

    let phase = Duration::from_secs_f64(args.seconds);
    tokio::time::sleep(phase).await;
    swapping.store(true, Ordering::Relaxed);
    let mut routers = vec![wasmgate::embedded::DEFAULT_ROUTER.to_vec()];
    if let Some(file) = &args.component {
        routers.insert(0, std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?);
    }
    let (mut swaps, until) = (Vec::new(), Instant::now() + phase);
    while Instant::now() < until {
        let started = Instant::now();
        let router = routers[swaps.len() % routers.len()].clone();
        let (status, text) = wasmgate::http_client::request(
            &wasmgate::http_client::Endpoint::plain(admin_addr),
            Some(TOKEN),
            "POST",
            "/scripts/router",
            router,
        )
        .await?;
        anyhow::ensure!(status == 200, "deploy answered {status}: {text}");
        swaps.push(started.elapsed().as_nanos() as u64);
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    stop.cancel();
    let (mut steady, mut during, mut lost) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (samples, l) = task.await?;
        lost += l;
        for (ns, in_swap) in samples {
            if in_swap { during.push(ns) } else { steady.push(ns) }
        }
    }
    steady.sort_unstable();
    during.sort_unstable();
    let swaps_in_order = swaps.clone();
    swaps.sort_unstable();
    let result = serde_json::json!({
        "clients": args.clients,
        "steady": {"round_trips": steady.len(), "p50_ms": percentile_ms(&steady, 0.5), "p99_ms": percentile_ms(&steady, 0.99), "p999_ms": percentile_ms(&steady, 0.999), "max_ms": percentile_ms(&steady, 1.0)},
        "swapping": {"round_trips": during.len(), "p50_ms": percentile_ms(&during, 0.5), "p99_ms": percentile_ms(&during, 0.99), "p999_ms": percentile_ms(&during, 0.999), "max_ms": percentile_ms(&during, 1.0)},
        "swaps": swaps.len(),
        "swap_ms_p50": percentile_ms(&swaps, 0.5),
        "swap_ms_max": percentile_ms(&swaps, 1.0),
        "swap_ms_first": swaps_in_order.first().map(|ns| *ns as f64 / 1e6),
        "lost": lost,
    });
    println!(
        "swap clients={}: steady p50 {:.3} ms p99 {:.3} ms max {:.1} ms ({} rt) | during {} swaps p50 {:.3} ms p99 {:.3} ms max {:.1} ms ({} rt) | swap p50 {:.1} ms max {:.1} ms | lost {}",
        args.clients,
        percentile_ms(&steady, 0.5),
        percentile_ms(&steady, 0.99),
        percentile_ms(&steady, 1.0),
        steady.len(),
        swaps.len(),
        percentile_ms(&during, 0.5),
        percentile_ms(&during, 0.99),
        percentile_ms(&during, 1.0),
        during.len(),
        percentile_ms(&swaps, 0.5),
        percentile_ms(&swaps, 1.0),
        lost,
    );
    println!("{result}");
    drop(gateway);
    drop(bench);
    Ok(())
}
