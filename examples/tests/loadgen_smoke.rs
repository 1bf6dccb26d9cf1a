//! Smoke run of the load generator (seconds): the `idle` scenario with its worker processes
//! on two source addresses against wasmgate in-process. The full benchmark runs outside the
//! test suite (docs/benchmarks.md).

use std::process::Command;

#[test]
fn idle_scenario_opens_every_session_through_two_worker_processes() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["idle", "--sessions", "300", "--per-worker", "150", "--target", "in-process"])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let json = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON result line");
    let result: serde_json::Value = serde_json::from_str(json).expect("JSON");
    assert_eq!(result["sessions"], 300, "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["server_sessions"], 300, "the gateway holds them all: {result}");
    assert!(result["connect_login_per_s"].as_f64().is_some_and(|r| r > 0.0), "{result}");
}
