//! Scenario `hostile`: do runaway scripts slow everyone else?
//!
//! Starts the example backend in this process and the release gateway with a hostile router
//! (tests/guests/hostile-router: message 901 loops until the deadline, message 100 is routed
//! by `message_map` as usual). `clients` sessions each send message 100 and wait for its echo,
//! in a loop: `seconds` with no runaway calls, then `seconds` while `loopers` other sessions
//! keep one endless loop each in flight. Run once per `scripts.long_calls` value given
//! (0 = no lanes); prints the round-trip p50/p99 of both phases for each.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmgate_examples::bench::{EchoBench, GatewayProcess, percentile_ms};
use wasmgate_examples::client::Client;

use super::{SECRET, logged_in};

/// The knobs of the scenario (from the command line).
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub loopers: usize,
    pub seconds: f64,
    pub deadline_ms: u64,
}

/// Round trips of one client: (ns, sent while the loops ran).
async fn measure(mut client: Client, looping: Arc<AtomicBool>, stop: CancellationToken) -> Vec<(u64, bool)> {
    let mut samples = Vec::new();
    while !stop.is_cancelled() {
        let phase = looping.load(Ordering::Relaxed);
        let started = Instant::now();
        let Ok(seq) = client.send(100, b"ping").await else { break };
        if client.recv_reply(100, seq, Duration::from_secs(5)).await.is_ok() {
            samples.push((started.elapsed().as_nanos() as u64, phase));
        }
    }
    samples
}

/// One endless loop in flight at a time, until `stop`.
async fn loop_forever(mut client: Client, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(seq) = client.send(901, b"").await else { return };
        let _ = client.recv_reply(4, seq, Duration::from_secs(5)).await;
    }
}

/// Runs the scenario once per value of `lanes`; prints a line each and the JSON of all.
pub async fn run(load: Load, lanes: &[usize], router: &Path, gateway: Option<&Path>) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &long_calls in lanes {
        results.push(run_one(&load, long_calls, router, gateway).await?);
    }
    println!("{}", serde_json::Value::Array(results));
    Ok(())
}

async fn run_one(
    load: &Load,
    long_calls: usize,
    router: &Path,
    gateway: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let bench = EchoBench::start("hostile", SECRET).await?;
    let mut config = bench.config.clone();
    config.push_str(&format!(
        "[scripts]\ndeadline_ms = {}\nlong_calls = {long_calls}\n[scripts.router]\npath = \"{}\"\n",
        load.deadline_ms,
        std::fs::canonicalize(router)?.display(),
    ));
    let ws_addr = bench.ws;
    let process = GatewayProcess::start(gateway, &config, ws_addr).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (looping, stop) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
    let mut measured = Vec::new();
    for n in 0..load.clients {
        let client = logged_in(ws_addr, &format!("m{n}")).await?;
        measured.push(tokio::spawn(measure(client, looping.clone(), stop.clone())));
    }
    let mut loopers = Vec::new();
    for n in 0..load.loopers {
        loopers.push(logged_in(ws_addr, &format!("l{n}")).await?);
    }
    let phase = Duration::from_secs_f64(load.seconds);
    tokio::time::sleep(phase).await;
    looping.store(true, Ordering::Relaxed);
    let loops: Vec<_> = loopers.into_iter().map(|c| tokio::spawn(loop_forever(c, stop.clone()))).collect();
    tokio::time::sleep(phase).await;
    stop.cancel();
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for task in measured {
        for (ns, during) in task.await? {
            if during { busy.push(ns) } else { quiet.push(ns) }
        }
    }
    for task in loops {
        let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
    }
    quiet.sort_unstable();
    busy.sort_unstable();
    println!(
        "hostile long_calls={long_calls}: quiet p50 {:.3} ms p99 {:.3} ms ({} rt) | {} loopers p50 {:.3} ms p99 {:.3} ms ({} rt)",
        percentile_ms(&quiet, 0.5),
        percentile_ms(&quiet, 0.99),
        quiet.len(),
        load.loopers,
        percentile_ms(&busy, 0.5),
        percentile_ms(&busy, 0.99),
        busy.len(),
    );
    drop(process);
    drop(bench);
    Ok(serde_json::json!({
        "long_calls": long_calls,
        "clients": load.clients,
        "loopers": load.loopers,
        "quiet": {"round_trips": quiet.len(), "p50_ms": percentile_ms(&quiet, 0.5), "p99_ms": percentile_ms(&quiet, 0.99)},
        "looping": {"round_trips": busy.len(), "p50_ms": percentile_ms(&busy, 0.5), "p99_ms": percentile_ms(&busy, 0.99)},
    }))
}
