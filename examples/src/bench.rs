//! Shared pieces of the benchmark commands (`loadgen`, `fanout`, `cluster`): a gateway child process, free
//! ports, process CPU and memory from /proc, percentiles.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A free loopback TCP port (bound, then released).
/// The `[rate_limits]` section of benchmark gateways: every abuse limit off, since every
/// benchmark client comes from loopback and sends as fast as it can (docs/security.md).
pub const NO_RATE_LIMITS: &str = "[rate_limits]\nconn_per_ip = 0\nconnect_per_ip_per_s = 0\n\
    login_per_ip_per_min = 0\nlogin_per_user_per_min = 0\nmsg_per_s = 0\nbytes_per_s = 0\n\
    room_list_per_ip_per_s = 0\n";

/// The start of a gateway config for a benchmark scenario: `dest_map.json` (`dests`) and
/// `message_map.json` (`messages`) written into `dir` (created), the WebSocket listener on
/// port `ws`, admin on `admin`, TCP on a free port, the maps unwatched, no rate limits, a
/// 10-minute heartbeat and the auth script's `secret`. The scenario appends its own tables.
pub fn bench_config(
    dir: &Path,
    (ws, admin): (u16, u16),
    dests: &serde_json::Value,
    messages: &str,
    secret: &str,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let (dest, message) = (dir.join("dest_map.json"), dir.join("message_map.json"));
    std::fs::write(&dest, dests.to_string())?;
    std::fs::write(&message, messages)?;
    Ok(format!(
        "[listen]\nws = \"127.0.0.1:{ws}\"\ntcp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{admin}\"\n\
         [maps]\ndest_map = \"{}\"\nmessage_map = \"{}\"\nno_watch = true\n{NO_RATE_LIMITS}\
         [timeouts]\nheartbeat_ms = 600000\n[scripts.auth]\nconfig = {{ secret = \"{secret}\" }}\n",
        dest.display(),
        message.display(),
    ))
}

/// The common start of a scenario against one echo backend: the example backend in this
/// process on a free port (dest 101, `message_map` routing message 100 to it) and
/// [`bench_config`] for it, with the WebSocket and admin listeners on free ports. The scenario
/// appends its own tables to `config`. Dropping it stops the backend and removes the maps.
pub struct EchoBench {
    pub config: String,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    maps: PathBuf,
    stop: tokio_util::sync::CancellationToken,
}

impl EchoBench {
    /// `scenario` names the maps directory (`wasmgate-<scenario>-maps-<pid>-<ws port>`);
    /// `secret` is the auth script's.
    pub async fn start(scenario: &str, secret: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let backend = listener.local_addr()?;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::backend::run(listener, crate::backend::BackendOptions::default(), stop.clone()));
        let (ws, admin) = (free_port()?, free_port()?);
        let maps = std::env::temp_dir().join(format!("wasmgate-{scenario}-maps-{}-{ws}", std::process::id()));
        let dests =
            serde_json::json!({"101": {"poolNums": 2, "srvAddr": backend.to_string(), "srvName": "echo"}});
        let config = bench_config(&maps, (ws, admin), &dests, r#"{"100": 101}"#, secret)?;
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Self { config, ws: loopback(ws), admin: loopback(admin), maps, stop })
    }
}

impl Drop for EchoBench {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.maps);
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wall-clock nanoseconds since the Unix epoch (latency stamps shared by processes).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// CPU time (user + system) of a process so far, in seconds (clock ticks of 10 ms).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// Resident set size of a process, in KiB (VmRSS of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The `p` quantile (0..=1) of sorted nanosecond samples, in ms; NaN when empty.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

/// A `wasmgate run` child process with its own config file; killed on drop.
pub struct GatewayProcess {
    pub child: Child,
    dir: PathBuf,
}

impl GatewayProcess {
    /// Writes `config` (TOML) to a temp dir, starts `binary` (default: `wasmgate` next to the
    /// running executable) on it, and waits until `ready` accepts connections (30 s at most;
    /// an error at once if the gateway exits first).
    pub async fn start(binary: Option<&Path>, config: &str, ready: SocketAddr) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe()?.with_file_name("wasmgate"),
        };
        if !binary.exists() {
            bail!(
                "{} not found: run `cargo build --release -p wasmgate -p wasmgate-examples`",
                binary.display()
            );
        }
        let dir =
            std::env::temp_dir().join(format!("wasmgate-bench-{}-{}", std::process::id(), ready.port()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("wasmgate.toml");
        std::fs::write(&path, config)?;
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut gateway = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(ready).await.is_err() {
            // A gateway that could not start (a port taken meanwhile) has said why on stderr.
            if let Some(status) = gateway.child.try_wait()? {
                bail!("the gateway exited before listening ({status})");
            }
            if Instant::now() > deadline {
                bail!("the gateway did not start listening within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
