//! The `wasmgate` binary: parses arguments, sets up logging, runs the library's gateway until
//! SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use wasmgate::{Config, RunningGateway};

/// Long-connection gateway for game and realtime backends, scripted in WebAssembly.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without one, the embedded default runs: loopback listeners on
    /// 7100 (WebSocket), 7101 (TCP), 7102 (admin), the default scripts, the example maps.
    #[arg(short, long, env = "WASMGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Seconds allowed for a graceful shutdown before sessions are aborted.
    #[arg(long, default_value_t = 10, global = true)]
    shutdown_grace_s: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a config file and exit (0 if valid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Run => {
            let config = match &cli.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let gateway = RunningGateway::start(config).await.context("starting wasmgate")?;
            wait_for_signal().await?;
            tracing::info!("shutting down (a second signal exits at once)");
            tokio::select! {
                _ = gateway.shutdown(Duration::from_secs(cli.shutdown_grace_s)) => Ok(()),
                _ = wait_for_signal() => std::process::exit(130),
            }
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
