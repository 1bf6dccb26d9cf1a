//! A gateway in a process of its own, for tests that stop it (SIGSTOP) or kill it with
//! SIGKILL (a real crash: no clean-up of any kind). Usage: `cluster-node <config.toml>`.
//! Prints one line once started, `node <id> ws <addr>`, and again each time it rejoins the
//! cluster after losing its node id (as `wasmgate run` does); runs until killed.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use wasmgate::{Config, RunningGateway};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os().nth(1).context("usage: cluster-node <config.toml>")?.into();
    let config = Config::load(&path)?;
    loop {
        let gateway = RunningGateway::start(config.clone()).await?;
        let ws = gateway.ws_addr().context("the config has no WebSocket listener")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "node {} ws {ws}", gateway.node_id())?;
        out.flush()?;
        drop(out);
        gateway.fenced().await;
        gateway.restart_fenced(Duration::from_secs(2)).await;
    }
}
