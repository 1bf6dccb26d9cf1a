//! The `wasmgate` binary: parses arguments, sets up logging, runs the library's gateway until
//! SIGINT/SIGTERM (graceful drain; a second signal exits at once), re-reads its config on
//! SIGHUP, and tells systemd (`Type=notify`, `NOTIFY_SOCKET`) when it is ready, reloading and
//! stopping. Config precedence: file < config centre < `WASMGATE__*` environment < `--set`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sd_notify::NotifyState;
use wasmgate::control::config_centre;
use wasmgate::http_client::Endpoint;
use wasmgate::telemetry::{self, Telemetry};
use wasmgate::{Config, RunningGateway, config_overrides};

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
    /// Overrides one config key, over the file and the `WASMGATE__SECTION__KEY` environment
    /// variables: `--set limits.max_conn_num=5000` (repeatable; docs/configuration.md).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a config file (with the environment's and `--set` overrides) and exit: 0 and
    /// `<file>: ok` if valid, else 1 and the problem, naming the field.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Deploy a component as script NAME into the running gateway: a built-in script (auth,
    /// router, rooms) or a handler script loaded from the scripts directory (admin API;
    /// address and token from the config unless given). Deploying the live version again is a
    /// no-op that keeps the rollback target.
    Deploy {
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// The script's JSON config; default: keep the running version's.
        #[arg(long)]
        script_config: Option<String>,
        /// Load it as a shadow candidate beside the live version instead (docs/evidence.md):
        /// given live events, compared, never applied. `wasmgate promote NAME` makes it live.
        #[arg(long)]
        shadow: bool,
        /// With --shadow: the share of live events the candidate is given, 0 < F <= 1.
        #[arg(long, requires = "shadow")]
        fraction: Option<f64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the shadow of script NAME: counts of same and differing decisions by kind, and the
    /// latest differing events (docs/evidence.md).
    Shadow {
        name: String,
        /// Stop the shadow (prints its last report).
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the shadow candidate of script NAME live through the normal deploy.
    Promote {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Record what the live script NAME receives and answers, with its host calls' results,
    /// into a file `wasmgate replay` reads (docs/evidence.md).
    Record {
        name: String,
        /// How long to record.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The recording file to write.
        #[arg(long)]
        out: PathBuf,
        /// Most events kept.
        #[arg(long)]
        max_events: Option<u64>,
        /// Most bytes kept.
        #[arg(long)]
        max_bytes: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replay a recording offline (no gateway, Redis or etcd) against CANDIDATE and print how
    /// its answers differ from the recorded ones; exit 1 when any differs.
    Replay {
        /// The recording (`wasmgate record --out`).
        file: PathBuf,
        /// The candidate component (`.wasm`).
        candidate: PathBuf,
        /// JSON config for `init`; default: the recorded version's.
        #[arg(long)]
        script_config: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put back the previous version of script NAME (built-in or handler script).
    Rollback {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a component offline, as a deploy would: its world, each import and what the host
    /// links for it, `init` with the config, and one call. Prints a line per import and per
    /// step, then `ok: ...` (exit 0) or `refused: <why>` (exit 1). Script limits come from the
    /// config.
    CheckScript {
        /// The world the component is for: auth, router, rooms or handler.
        world: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// JSON config for `init` (default `{}`).
        #[arg(long, default_value = "{}")]
        script_config: String,
    },
    /// List the running scripts (built-in, then handler scripts): name, version, deployed at,
    /// calls, traps, the version a rollback restores.
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
    println!("{}", admin_request(config, args, method, path, body).await?);
    Ok(())
}

/// Sends one admin request; returns the answer's body. Errors: no address, the connection,
/// a non-2xx answer (its body in the message).
async fn admin_request(
    config: &Config,
    args: AdminArgs,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let addr = args.admin.or(config.listen.admin).context("no admin address: give --admin")?;
    let token = args.token.or_else(|| config.admin.token.clone());
    // An HTTPS admin listener is trusted by its certificate, read from the same config.
    let tls = match (config.listen.admin_tls, &config.tls.cert) {
        (true, Some(cert)) => Some(wasmgate::tls::pinned_connector(cert)?),
        _ => None,
    };
    let to = Endpoint { tls: tls.as_ref().map(|c| (c.inner(), c.server_name())), ..Endpoint::plain(addr) };
    let (status, text) = wasmgate::http_client::request(&to, token.as_deref(), method, path, body).await?;
    if !(200..300).contains(&status) {
        println!("{text}");
        anyhow::bail!("the gateway answered {status}");
    }
    Ok(text)
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Errors end the process with one line on stderr (`wasmgate: <cause>: <cause>...`) and exit
/// code 1, never a backtrace (even with `RUST_BACKTRACE` set).
fn main() -> std::process::ExitCode {
    large_allocations_from_mmap();
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves allocations of 1 MiB and more from their own mappings, returned to the OS when freed.
/// glibc's default raises this threshold after each large free (up to 32 MiB), after which an
/// uploaded component's buffers land in a worker thread's arena, whose top glibc does not give
/// back (not even `malloc_trim`): each 18 MB deploy left ~40 MB resident (docs/benchmarks.md).
fn large_allocations_from_mmap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[tokio::main]
async fn run_cli() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Run => {
            wasmgate::memory::spawn_trimmer();
            // The config first: it may ask for span export.
            let overrides = overrides(&cli.sets)?;
            let config = config_centre::load(cli.config.as_deref(), &overrides).await?;
            let mut telemetry = Telemetry::init(cli.log_format.into(), &config.telemetry, true)?;
            let result = run(config, &cli.config, &overrides, cli.shutdown_grace_s, &mut telemetry).await;
            telemetry.shutdown();
            result
        }
        command => {
            let _telemetry = Telemetry::init(cli.log_format.into(), &Default::default(), false)?;
            admin_command(&cli, command).await
        }
    }
}

/// The commands other than `run`: `check-config` and the admin API clients.
async fn admin_command(cli: &Cli, command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { file } => {
            config_overrides::load(Some(&file), &overrides(&cli.sets)?)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Deploy { name, file, script_config, shadow, fraction, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(json) = script_config {
                query.append_pair("config", &json);
            }
            if let Some(fraction) = fraction {
                query.append_pair("fraction", &fraction.to_string());
            }
            let path = format!("/scripts/{name}{}?{}", if shadow { "/shadow" } else { "" }, query.finish());
            admin_call(&load_config(cli)?, admin, "POST", &path, bytes).await
        }
        Command::Shadow { name, stop, admin } => {
            let method = if stop { "DELETE" } else { "GET" };
            admin_call(&load_config(cli)?, admin, method, &format!("/scripts/{name}/shadow"), vec![]).await
        }
        Command::Promote { name, admin } => {
            admin_call(&load_config(cli)?, admin, "POST", &format!("/scripts/{name}/promote"), vec![]).await
        }
        Command::Record { name, seconds, out, max_events, max_bytes, admin } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("seconds", &seconds.to_string());
            if let Some(n) = max_events {
                query.append_pair("max_events", &n.to_string());
            }
            if let Some(n) = max_bytes {
                query.append_pair("max_bytes", &n.to_string());
            }
            let path = format!("/scripts/{name}/record?{}", query.finish());
            let file = admin_request(&load_config(cli)?, admin, "POST", &path, vec![]).await?;
            std::fs::write(&out, &file).with_context(|| format!("writing {}", out.display()))?;
            let header = file.lines().next().unwrap_or_default();
            println!("{}: {header}", out.display());
            Ok(())
        }
        Command::Replay { file, candidate, script_config, json } => {
            replay(cli, &file, &candidate, script_config, json).await
        }
        Command::Rollback { name, admin } => {
            admin_call(&load_config(cli)?, admin, "POST", &format!("/scripts/{name}/rollback"), vec![]).await
        }
        Command::Scripts { admin } => admin_call(&load_config(cli)?, admin, "GET", "/scripts", vec![]).await,
        Command::CheckScript { world, file, script_config } => {
            check_script(cli, &world, &file, script_config).await
        }
        Command::Run => anyhow::bail!("`run` is not an admin command"),
    }
}

/// `replay`: the summary on stdout; an error (exit 1) when any event differs.
async fn replay(
    cli: &Cli,
    file: &Path,
    candidate: &Path,
    config: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(config) = &config {
        serde_json::from_str::<serde_json::Value>(config).context("--script-config is not JSON")?;
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let bytes = std::fs::read(candidate).with_context(|| format!("reading {}", candidate.display()))?;
    let limits = wasmgate::script::check::offline_limits(&load_config(cli)?);
    let summary = wasmgate::script::evidence::replay::replay(&text, bytes, config, limits)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&summary)?),
        false => print!("{summary}"),
    }
    anyhow::ensure!(summary.different == 0, "{} of {} events differ", summary.different, summary.events);
    Ok(())
}

/// `check-script`: the offline check's report on stdout, the verdict last.
async fn check_script(cli: &Cli, world: &str, file: &Path, config: String) -> anyhow::Result<()> {
    use wasmgate::script::check::{check, offline_limits};
    use wasmgate::script::manifest::ScriptWorld;
    let world = ScriptWorld::parse(world)
        .with_context(|| format!("unknown world `{world}`: give auth, router, rooms or handler"))?;
    serde_json::from_str::<serde_json::Value>(&config).context("--script-config is not JSON")?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let limits = offline_limits(&load_config(cli)?);
    match check(world, bytes, config, limits).await {
        Ok(report) => {
            print!("{report}");
            println!("ok: {} would deploy", file.display());
            Ok(())
        }
        Err((report, why)) => {
            print!("{report}");
            println!("refused: {why}");
            anyhow::bail!("{} would be refused", file.display())
        }
    }
}

/// Runs the gateway until SIGINT/SIGTERM (a second one exits at once); SIGHUP re-reads the
/// config. A node that loses its cluster node id (fencing, docs/cluster.md) closes its
/// sessions and starts again under a fresh id, retrying while Redis cannot be reached.
async fn run(
    mut config: Config,
    path: &Option<PathBuf>,
    overrides: &toml::Table,
    grace_s: u64,
    telemetry: &mut Telemetry,
) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up is acted on once the gateway serves.
    let mut signals = Signals::new()?;
    let grace = Duration::from_secs(grace_s);
    let mut gateway = RunningGateway::start(config.clone()).await.context("starting wasmgate")?;
    loop {
        telemetry.export_metrics(gateway.metrics().clone())?;
        notify(&[NotifyState::Ready]);
        let fenced = loop {
            let signal = tokio::select! {
                signal = signals.next() => signal,
                _ = gateway.fenced() => break true,
            };
            let Signal::Hangup = signal else { break false };
            notify(&[NotifyState::Reloading]);
            match config_centre::load(path.as_deref(), overrides).await {
                Ok(loaded) => {
                    let restart = gateway.reload(&loaded).await;
                    tracing::info!(needs_restart = ?restart, "SIGHUP: config files re-read");
                    config = loaded;
                }
                Err(e) => tracing::error!("SIGHUP: config not reloaded: {e:#}"),
            }
            notify(&[NotifyState::Ready]);
        };
        if !fenced {
            break;
        }
        notify(&[NotifyState::Reloading]);
        gateway.restart_fenced(grace).await;
        gateway = rejoin(&config, &mut signals).await?;
    }
    notify(&[NotifyState::Stopping]);
    tracing::info!(grace_s, "shutting down (a second signal exits at once)");
    tokio::select! {
        _ = gateway.shutdown(grace) => Ok(()),
        _ = async { while let Signal::Hangup = signals.next().await {} } => {
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130)
        }
    }
}

/// Starts the gateway again after it lost its node id, retrying every few seconds (Redis may
/// be what cut it off). A stop signal meanwhile ends the process.
async fn rejoin(config: &Config, signals: &mut Signals) -> anyhow::Result<RunningGateway> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match RunningGateway::start(config.clone()).await {
            Ok(gateway) => return Ok(gateway),
            Err(e) => tracing::error!("rejoining the cluster failed, retrying in {backoff:?}: {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            signal = signals.next() => if let Signal::Stop = signal {
                anyhow::bail!("stopped while rejoining the cluster");
            },
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The environment's `WASMGATE__*` overrides, then the `--set` ones over them.
fn overrides(sets: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = config_overrides::from_env(std::env::vars())?;
    config_overrides::merge(&mut table, config_overrides::from_sets(sets)?);
    Ok(table)
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`); a failure is logged, not fatal.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("systemd notify failed: {e}");
    }
}

/// The process signals the gateway acts on.
enum Signal {
    /// SIGHUP: re-read the config.
    Hangup,
    /// SIGINT or SIGTERM: drain and stop.
    Stop,
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Stop,
            _ = self.term.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

/// The config the admin commands read `listen.admin` and `admin.token` from: the file (or the
/// defaults) with the environment's and `--set` overrides (not the config centre's).
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(config_overrides::load(cli.config.as_deref(), &overrides(&cli.sets)?)?.1)
}
