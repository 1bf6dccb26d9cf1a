//! `echo-backend`: the example backend (see `wasmgate_examples::backend`).

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmgate_examples::backend::{self, BackendOptions};

/// Example backend service for wasmgate (backend protocol v1).
#[derive(Parser)]
struct Args {
    /// Address to listen on; the example dest_map points dest 101 here.
    #[arg(long, default_value = "127.0.0.1:7201")]
    listen: String,
    /// Dest id that message 102 is relayed to.
    #[arg(long, default_value_t = 101)]
    relay_to: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    tracing::info!("echo-backend listening on {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    backend::run(listener, BackendOptions { relay_to: args.relay_to }, shutdown).await;
    Ok(())
}
