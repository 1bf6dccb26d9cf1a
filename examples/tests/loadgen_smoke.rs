//! Smoke runs of the load generator (seconds): the `idle` scenario with its worker processes
//! on two source addresses against wasmgate in-process, over WebSocket and over TCP; `relay`
//! (WebSocket, TCP and `wss` clients), `fanout`, `login-storm`, `swap` and `tls` (plain and TLS
//! WebSocket) against the wasmgate binary. The full benchmark, and the peers, run outside the
//! test suite (docs/benchmarks.md).

use std::process::Command;

/// Runs `loadgen` with `args`; its JSON result line.
fn loadgen(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let json = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON result line");
    serde_json::from_str(json).expect("JSON")
}

/// `idle` over `transport`: 300 sessions from two workers, all logged in and held.
fn idle_over(transport: &str) {
    let result = loadgen(&[
        "idle",
        "--sessions",
        "300",
        "--per-worker",
        "150",
        "--target",
        "in-process",
        "--transport",
        transport,
    ]);
    assert_eq!(result["sessions"], 300, "{result}");
    assert_eq!(result["transport"].as_str().map(str::to_lowercase).as_deref(), Some(transport), "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["server_sessions"], 300, "the gateway holds them all: {result}");
    assert!(result["connect_login_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
}

#[test]
fn idle_scenario_opens_every_websocket_session_through_two_worker_processes() {
    idle_over("ws");
}

#[test]
fn idle_scenario_opens_every_tcp_session_through_two_worker_processes() {
    idle_over("tcp");
}

/// The debug `wasmgate` binary next to `loadgen` (a workspace `cargo test` builds both).
fn gateway_binary_built() {
    let gateway = std::path::Path::new(env!("CARGO_BIN_EXE_loadgen")).with_file_name("wasmgate");
    assert!(gateway.exists(), "{} missing: run the workspace's `cargo test`", gateway.display());
}

/// Smoke run of `relay` against the wasmgate binary and `echo-backend` (the debug builds next
/// to `loadgen`), clients over WebSocket, then over TCP, then over `wss`: every phase gets its
/// round trips back, none lost. The nginx-node comparison needs the peers installed; it runs
/// outside the suite.
#[test]
fn relay_scenario_gets_every_round_trip_back_over_each_transport() {
    gateway_binary_built();
    let result = loadgen(&[
        "relay",
        "--targets",
        "wasmgate,wasmgate-tcp,wasmgate-wss",
        "--connections",
        "4",
        "--seconds",
        "1",
        "--rates",
        "200",
    ]);
    for (i, target) in ["Wasmgate", "WasmgateTcp", "WasmgateWss"].into_iter().enumerate() {
        let run = &result["runs"][i];
        assert_eq!(run["target"], target, "{result}");
        assert!(run["saturation"]["round_trips_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
        for phase in [&run["saturation"], &run["half"], &run["fixed"][0]["figures"]] {
            assert_eq!(phase["lost"], 0, "{target}: {result}");
        }
        let fixed = run["fixed"][0]["figures"]["round_trips_per_s"].as_f64().unwrap_or(0.0);
        assert!((150.0..=250.0).contains(&fixed), "{target}: 200/s offered, {fixed}/s came back: {result}");
    }
    assert!(result["tcp_vs_websocket"].as_f64().is_some_and(|r| r > 0.0), "{result}");
    assert!(result["wss_vs_ws"].as_f64().is_some_and(|r| r > 0.0), "{result}");
}

/// `fanout` on wasmgate: every member of the room gets every message, latencies are sampled.
#[test]
fn fanout_scenario_delivers_every_message_to_every_member() {
    gateway_binary_built();
    let result =
        loadgen(&["fanout", "--targets", "wasmgate", "--members", "30", "--messages", "20", "--sample", "5"]);
    let figures = &result["rooms"][0]["runs"][0]["figures"];
    assert_eq!(figures["lost"], 0, "{result}");
    assert!(figures["deliveries_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
    assert!(figures["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "latencies sampled: {result}");
}

/// `login-storm`: every login over a fresh connection is answered.
#[test]
fn login_storm_scenario_answers_every_login() {
    gateway_binary_built();
    let result = loadgen(&["login-storm", "--logins", "200", "--concurrency", "16"]);
    assert_eq!(result["logins"], 200, "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert!(result["login_ms_p99"].as_f64().is_some_and(|p| p > 0.0), "{result}");
}

/// `swap`: round trips continue through live redeploys of the router, none lost.
#[test]
fn swap_scenario_loses_nothing_across_redeploys() {
    gateway_binary_built();
    let result = loadgen(&["swap", "--clients", "4", "--seconds", "1", "--every-ms", "200"]);
    assert_eq!(result["lost"], 0, "{result}");
    assert!(result["swaps"].as_u64().is_some_and(|n| n >= 2), "{result}");
    assert!(result["swapping"]["round_trips"].as_u64().is_some_and(|n| n > 0), "{result}");
}

/// Smoke run of `tls` against the wasmgate binary, plain and over TLS: every session opens,
/// and new TLS sessions keep coming (nginx needs the peers installed: outside the suite).
#[test]
fn tls_scenario_opens_sessions_over_ws_and_wss() {
    gateway_binary_built();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["tls", "--targets", "wasmgate-ws,wasmgate-wss", "--sessions", "50", "--seconds", "0.5"])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let runs: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    for (run, target) in runs.iter().zip(["WasmgateWs", "WasmgateWss"]) {
        assert_eq!(run["target"], target, "{run}");
        assert_eq!(run["sessions"], 50, "{run}");
        assert!(run["new_sessions_per_s"].as_f64().is_some_and(|r| r > 0.0), "{run}");
        // Read from the gateway's `GET /debug/heap` before and after the sessions.
        assert!(run["heap_in_use_bytes_per_session"].as_f64().is_some(), "{run}");
    }
    assert!(stdout.contains("tls ratio: wasmgate wss / ws"), "{stdout}");
}
