//! Smoke runs of the load generator (seconds): the `idle` scenario with its worker processes
//! on two source addresses against wasmgate in-process, and the `relay` scenario. The full benchmark runs outside the
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

#[test]
fn idle_scenario_opens_every_session_through_two_worker_processes() {
    let result = loadgen(&["idle", "--sessions", "300", "--per-worker", "150", "--target", "in-process"]);
    assert_eq!(result["sessions"], 300, "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["server_sessions"], 300, "the gateway holds them all: {result}");
    assert!(result["connect_login_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
}

/// Smoke run of `relay` against the wasmgate binary and `echo-backend` (the debug builds next
/// to `loadgen`, which a workspace `cargo test` builds): every phase gets its round trips back,
/// none lost. The nginx-node comparison needs the peers installed; it runs outside the suite.
#[test]
fn relay_scenario_gets_every_round_trip_back() {
    let gateway = std::path::Path::new(env!("CARGO_BIN_EXE_loadgen")).with_file_name("wasmgate");
    assert!(gateway.exists(), "{} missing: run the workspace's `cargo test`", gateway.display());
    let result = loadgen(&[
        "relay",
        "--targets",
        "wasmgate",
        "--connections",
        "4",
        "--seconds",
        "1",
        "--rates",
        "200",
    ]);
    let run = &result["runs"][0];
    assert!(run["saturation"]["round_trips_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
    for phase in [&run["saturation"], &run["half"], &run["fixed"][0]["figures"]] {
        assert_eq!(phase["lost"], 0, "{result}");
    }
    let fixed = run["fixed"][0]["figures"]["round_trips_per_s"].as_f64().unwrap_or(0.0);
    assert!((150.0..=250.0).contains(&fixed), "200/s offered, {fixed}/s came back: {result}");
}
