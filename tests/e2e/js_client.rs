//! The TypeScript client SDK (`clients/js`): its unit tests (node's test runner, including the
//! check of its error and close code tables against docs/protocol.md), then its integration
//! test against this real gateway: logins over binary and JSON frames and `?token=`, requests
//! by seq, typed error frames, rooms, an admin API push, a cut connection that reconnects and
//! logs in again, heartbeats, a refused token, the bounded send buffer.

use std::path::Path;
use std::process::Command;

use wasmgate_tests::{ADMIN_TOKEN, Harness, token, with_admin_token};

/// Runs `program args` in `dir`; panics with its output unless it succeeds. Returns its
/// standard output.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_sdk_passes_its_unit_tests_and_works_against_a_real_gateway() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    if !sdk.join("node_modules/typescript").exists() {
        run(&sdk, "npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    run(&sdk, "npm", &["test", "--silent"], &[]);

    let h = Harness::start_with(|c| {
        with_admin_token(c);
        // Short, so the run shows the SDK's heartbeats keep an idle session open.
        c.timeouts.heartbeat_ms = 1_500;
    })
    .await;
    let admin = h.gateway.addrs().admin.expect("admin listener");
    let env = [
        ("WASMGATE_WS", h.ws_url()),
        ("WASMGATE_ADMIN", format!("http://{admin}")),
        ("WASMGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("WASMGATE_TOKEN_A", token("sdk-alice")),
        ("WASMGATE_TOKEN_B", token("sdk-bob")),
        ("WASMGATE_TOKEN_C", token("sdk-carol")),
    ];
    // Blocking, but on its own thread: the gateway keeps running on the runtime's workers.
    let out = tokio::task::spawn_blocking(move || {
        run(&sdk, "node", &["--experimental-websocket", "test/integration.mjs"], &env)
    })
    .await
    .expect("the integration run");
    assert!(out.ends_with("ok\n"), "the integration script stopped early:\n{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("- ")).count(), 8, "every step ran:\n{out}");
}
