//! The web face in a real browser: Debian's Chromium driven by Playwright
//! (`tests/web/browser.mjs`) through the web lobby (`examples/web-lobby`, on the TypeScript
//! SDK) and the admin dashboard (`/ui`): two users chat in a room, an admin API push reaches
//! both, the gateway restarts and both pages reconnect, the dashboard shows the sessions and
//! the room, and a deploy through its upload goes live and is rolled back. The run writes the
//! screenshots in docs/img/.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use wasmgate::RunningGateway;
use wasmgate_tests::{ADMIN_TOKEN, Harness, RUST_TEMPLATE_ROUTER, SECRET, with_admin_token};

/// Runs `npm args` in `dir`; panics with its output unless it succeeds.
fn npm(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("npm").args(args).current_dir(dir).output().expect("npm");
    assert!(out.status.success(), "npm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_and_the_dashboard_work_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (sdk, web) = (root.join("clients/js"), root.join("tests/web"));
    for dir in [&sdk, &web] {
        if !dir.join("node_modules").exists() {
            npm(dir, &["ci", "--no-audit", "--no-fund"]);
        }
    }
    npm(&sdk, &["run", "build", "--silent"]);
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: apt-get install -y chromium"
    );

    let Harness { mut gateway, backend: _backend, dir: _dir, mut config } = Harness::start_with(|c| {
        with_admin_token(c);
        // The lobby signs its dev token without an issuer.
        c.scripts.auth.config.remove("issuer");
    })
    .await;
    // A restart must come back on the same ports.
    let addrs = gateway.addrs();
    (config.listen.ws, config.listen.tcp, config.listen.admin) = (addrs.ws, addrs.tcp, addrs.admin);
    let admin = addrs.admin.expect("admin listener");
    let screenshots = root.join("docs/img");
    std::fs::create_dir_all(&screenshots).expect("docs/img");

    let mut node = tokio::process::Command::new("node")
        .arg(web.join("browser.mjs"))
        .env("WASMGATE_WS", format!("ws://{}/ws", addrs.ws.expect("ws listener")))
        .env("WASMGATE_ADMIN", format!("http://{admin}"))
        .env("WASMGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WASMGATE_SECRET", SECRET)
        .env("WASMGATE_COMPONENT", RUST_TEMPLATE_ROUTER)
        .env("WASMGATE_SCREENSHOTS", &screenshots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node tests/web/browser.mjs");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("reading the browser run") {
            if line == "RESTART" {
                gateway.shutdown(Duration::from_millis(500)).await;
                gateway = RunningGateway::start(config.clone()).await.expect("the gateway restarts");
                stdin.write_all(b"restarted\n").await.expect("telling the browser run");
            }
            seen.push(line);
        }
        node.wait().await.expect("the browser run ends")
    };
    let status =
        tokio::time::timeout(Duration::from_secs(300), run).await.expect("the browser run took too long");
    assert!(
        status.success() && seen.last().map(String::as_str) == Some("ok"),
        "the browser run failed:\n{}",
        seen.join("\n")
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("- ")).count(),
        6,
        "every step ran:\n{}",
        seen.join("\n")
    );
    for shot in ["web-lobby.png", "dashboard.png"] {
        assert!(screenshots.join(shot).metadata().is_ok_and(|m| m.len() > 10_000), "{shot} written");
    }
}
