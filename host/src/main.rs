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
    /// Deploy a component as script NAME (auth, router, rooms) into the running gateway
    /// (admin API; address and token from the config unless given).
    Deploy {
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// The script's JSON config; default: keep the running version's.
        #[arg(long)]
        script_config: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put back the previous version of script NAME.
    Rollback {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the running scripts: name, version, deployed at, calls, traps.
    Scripts {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin listener address; default: `listen.admin` of the config.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Bearer token; default: `admin.token` of the config.
    #[arg(long, env = "WASMGATE_ADMIN_TOKEN")]
    token: Option<String>,
}

/// Sends one admin request as the CLI commands do; prints the answer; fails on a non-2xx.
async fn admin_call(
    config: &Config,
    args: AdminArgs,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let addr = args.admin.or(config.listen.admin).context("no admin address: give --admin")?;
    let token = args.token.or_else(|| config.admin.token.clone());
    let (status, text) = wasmgate::admin::client::request(addr, token.as_deref(), method, path, body).await?;
    println!("{text}");
    anyhow::ensure!((200..300).contains(&status), "the gateway answered {status}");
    Ok(())
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
        Command::Deploy { name, file, script_config, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut path = format!("/scripts/{name}");
            if let Some(json) = script_config {
                path.push_str("?config=");
                path.extend(form_urlencoded::byte_serialize(json.as_bytes()));
            }
            admin_call(&load_config(&cli.config)?, admin, "POST", &path, bytes).await
        }
        Command::Rollback { name, admin } => {
            admin_call(
                &load_config(&cli.config)?,
                admin,
                "POST",
                &format!("/scripts/{name}/rollback"),
                vec![],
            )
            .await
        }
        Command::Scripts { admin } => {
            admin_call(&load_config(&cli.config)?, admin, "GET", "/scripts", vec![]).await
        }
        Command::Run => {
            let config = match &cli.config {
                Some(path) => wasmgate::config_centre::load(path).await?,
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

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
