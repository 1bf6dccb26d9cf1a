//! Scenario `soak`: does the gateway give back what a long run's abuse takes?
//!
//! Starts the example backend in this process (dest 101, restarted in every cycle: a backend
//! flap), a junk backend (dest 102: after the handshake it sends frames of unknown kinds,
//! truncated replies and kicks of sessions that do not exist, then resets the connection),
//! and the release gateway (`wasmgate run`, the binary next to this one). `sessions` logged-in
//! sessions stay connected throughout, each sending one echo per cycle. Each cycle, for
//! `seconds` in all: a deploy of a router no earlier cycle deployed (the default router plus a
//! custom section naming the cycle), a burst of 60 KB echoes from 4 clients that never read
//! until they are closed as slow consumers, and the backend's restart. After a warm-up cycle
//! and a settle period (two looks of the gateway's heap trimmer) the gateway's RSS, open
//! descriptors and threads are taken; after the last cycle and the same settle period,
//! again. Prints both and exits non-zero when one grew by more than 20 %, or a held session
//! lost a reply.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{SECRET, logged_in};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmgate_examples::backend::{self, BackendOptions};
use wasmgate_examples::bench::{GatewayProcess, bench_config, free_port, rss_kib};

const TOKEN: &str = "soak-admin-token";
/// Growth allowed between the first and the last sample.
const TOLERANCE: f64 = 0.20;
/// The wait before each sample: closed sessions drain, and the gateway's heap trimmer looks
/// twice (the first look may come while the cycle's sessions are still closing).
const SETTLE: Duration = Duration::from_secs(2 * wasmgate::memory::TRIM_INTERVAL.as_secs() + 1);

/// What the gateway process holds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    Sample { rss_kib: rss_kib(pid), fds, threads }
}

/// The default router with a custom section `build-<n>` appended: the same code, another
/// component (another compile, another cache entry).
pub(super) fn router_build(n: u64) -> Vec<u8> {
    let mut wasm = wasmgate::embedded::DEFAULT_ROUTER.to_vec();
    let payload = format!("soak-cycle-{n}");
    let name = b"build";
    wasm.push(0); // custom section id
    wasm.push((1 + name.len() + payload.len()) as u8); // size (LEB128, < 128)
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(payload.as_bytes());
    wasm
}

/// The junk backend: each connection gets malformed frames after the gateway's hello, then a
/// reset (a linger of 0).
async fn junk_backend(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        tokio::spawn(async move {
            let frame = |payload: &[u8]| [&(payload.len() as u32).to_be_bytes()[..], payload].concat();
            let mut kick = vec![0x12];
            kick.extend_from_slice(&u64::MAX.to_be_bytes());
            kick.extend_from_slice(b"bad \xff reason");
            let junk = [frame(&[0x7f, 1, 2, 3]), frame(&[0x10, 0, 0]), frame(&kick)].concat();
            let (read, mut write) = stream.into_split();
            let mut frames = tokio_util::codec::FramedRead::new(
                read,
                wasmgate::protocol::backend::BackendCodec::default(),
            );
            let _ = frames.next().await; // the hello
            for _ in 0..50 {
                if write.write_all(&junk).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(stream) = frames.into_inner().reunite(write) {
                let _ = stream.set_zero_linger();
            }
        });
    }
}

/// `clients` clients send 60 KB echoes without reading until the gateway stops taking them (it
/// closes them as slow consumers), 5 s at most.
pub(super) async fn stalled_burst(ws: SocketAddr, cycle: u64, clients: usize) -> anyhow::Result<()> {
    let body = vec![b'x'; 60_000];
    let mut bursts = Vec::new();
    for i in 0..clients {
        let mut client = logged_in(ws, &format!("stalled-{cycle}-{i}")).await?;
        let body = body.clone();
        bursts.push(tokio::spawn(async move {
            let flood = async {
                for _ in 0..400 {
                    if client.send(100, &body).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
        }));
    }
    for burst in bursts {
        burst.await?;
    }
    Ok(())
}

/// Runs the scenario for about `seconds` with `sessions` held sessions.
pub async fn run(seconds: f64, sessions: usize, gateway: Option<&Path>) -> anyhow::Result<()> {
    let backend_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let junk = TcpListener::bind("127.0.0.1:0").await?;
    let junk_addr = junk.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(junk_backend(junk, stop.clone()));
    let start_backend = |stop: CancellationToken| async move {
        let listener = TcpListener::bind(backend_addr).await?;
        tokio::spawn(backend::run(listener, BackendOptions::default(), stop));
        anyhow::Ok(())
    };
    let mut backend_stop = stop.child_token();
    start_backend(backend_stop.clone()).await?;

    let (ws, admin) = (free_port()?, free_port()?);
    let maps = std::env::temp_dir().join(format!("wasmgate-soak-maps-{}", std::process::id()));
    let dests = serde_json::json!({
        "101": {"poolNums": 2, "srvAddr": backend_addr.to_string(), "srvName": "echo"},
        "102": {"poolNums": 1, "srvAddr": junk_addr.to_string(), "srvName": "junk"},
    });
    let mut config = bench_config(&maps, (ws, admin), &dests, r#"{"100": 101, "200": 102}"#, SECRET)?;
    config.push_str(&format!("[limits]\npending_write_num = 64\n[admin]\ntoken = \"{TOKEN}\"\n"));
    let ws_addr = SocketAddr::from(([127, 0, 0, 1], ws));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let gateway = GatewayProcess::start(gateway, &config, ws_addr).await?;
    let pid = gateway.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held = Vec::with_capacity(sessions);
    for n in 0..sessions {
        held.push(logged_in(ws_addr, &format!("held-{n}")).await?);
    }
    let started = Instant::now();
    let (mut cycles, mut lost, mut first) = (0u64, 0u64, None);
    while first.is_none() || started.elapsed().as_secs_f64() < seconds {
        let (status, text) = wasmgate::http_client::request(
            &wasmgate::http_client::Endpoint::plain(admin_addr),
            Some(TOKEN),
            "POST",
            "/scripts/router",
            router_build(cycles),
        )
        .await?;
        anyhow::ensure!(status == 200, "deploy answered {status}: {text}");
        stalled_burst(ws_addr, cycles, 4).await?;
        // The backend flaps: its connections reset, the pools reconnect.
        backend_stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        backend_stop = stop.child_token();
        start_backend(backend_stop.clone()).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await; // the pools' reconnect back-off
        for client in held.iter_mut() {
            let ok = async {
                let seq = client.send(100, b"still here").await.ok()?;
                client.recv_reply(100, seq, Duration::from_secs(5)).await.ok()
            };
            if ok.await.is_none() {
                lost += 1;
            }
        }
        cycles += 1;
        if first.is_none() {
            tokio::time::sleep(SETTLE).await;
            first = Some(sample(pid));
        }
    }
    tokio::time::sleep(SETTLE).await;
    let last = sample(pid);
    let first = first.unwrap_or(last);
    let grew = |a: f64, b: f64| if a > 0.0 { (b - a) / a } else { 0.0 };
    let growth = [
        ("rss", grew(first.rss_kib as f64, last.rss_kib as f64)),
        ("fds", grew(first.fds as f64, last.fds as f64)),
        ("threads", grew(first.threads as f64, last.threads as f64)),
    ];
    let result = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "cycles": cycles,
        "held_sessions": sessions,
        "lost_replies": lost,
        "start": {"rss_kib": first.rss_kib, "fds": first.fds, "threads": first.threads},
        "end": {"rss_kib": last.rss_kib, "fds": last.fds, "threads": last.threads},
        "growth": growth.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    println!(
        "soak {cycles} cycles in {:.0} s, {sessions} held sessions, {lost} replies lost | start rss {} KiB fds {} threads {} | end rss {} KiB fds {} threads {}",
        started.elapsed().as_secs_f64(),
        first.rss_kib,
        first.fds,
        first.threads,
        last.rss_kib,
        last.fds,
        last.threads,
    );
    println!("{result}");
    drop(gateway);
    stop.cancel();
    let _ = std::fs::remove_dir_all(&maps);
    let over: Vec<_> = growth
        .iter()
        .filter(|(_, g)| *g > TOLERANCE)
        .map(|(k, g)| format!("{k} +{:.0} %", g * 100.0))
        .collect();
    anyhow::ensure!(over.is_empty(), "grew by more than {:.0} %: {}", TOLERANCE * 100.0, over.join(", "));
    anyhow::ensure!(lost == 0, "{lost} replies to held sessions lost");
    Ok(())
}
