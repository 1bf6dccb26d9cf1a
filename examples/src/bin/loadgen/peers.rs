//! The server processes a scenario runs against: wasmgate's own binaries and the peers
//! (Node `ws`, nginx, mosquitto) installed by `examples/peers/setup.sh`, each started here on a
//! free loopback port with its own config and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasmgate_examples::bench::GatewayProcess;

/// Servers of one target; killed on drop.
pub struct Servers {
    pub children: Vec<Child>,
    pub gateway: Option<GatewayProcess>,
    /// Config files and logs; removed on drop.
    pub _dir: tempfile::TempDir,
    /// The port clients connect to.
    pub port: u16,
}

impl Servers {
    /// Every process id of the servers, workers included (for CPU and RSS from `/proc`).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.gateway.iter().map(GatewayProcess::pid).collect();
        for child in &self.children {
            pids.push(child.id());
            pids.extend(children(child.id()));
        }
        pids
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM lets nginx's master and Node's cluster primary stop their workers; the
            // workers left after 2 s, and the process itself, are killed.
            let workers = children(child.id());
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            for pid in workers {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A binary built next to this one (`echo-backend`, `wasmgate`).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!("{} not found: cargo build --release -p wasmgate -p wasmgate-examples", path.display());
    }
    Ok(path)
}

/// Waits (20 s at most) until something accepts TCP connections on loopback `port`.
pub async fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Node's `ws` server of `examples/peers/node-ws` on `port`: `mode` `echo` (each message back
/// to its sender) or `broadcast` (each message to every connection of the process), in
/// `workers` cluster processes. Returns once it listens.
pub async fn node_ws(port: u16, workers: usize, mode: &str) -> anyhow::Result<Child> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/node-ws");
    if !dir.join("node_modules/ws").exists() {
        bail!("Node ws is not installed: run examples/peers/setup.sh");
    }
    let child = Command::new("node")
        .arg(dir.join("server.js"))
        .env("PORT", port.to_string())
        .env("WORKERS", workers.to_string())
        .env("MODE", mode)
        .stdout(Stdio::null())
        .spawn()
        .context("starting node (Node 20)")?;
    wait_listening(port, "node ws").await?;
    Ok(child)
}

/// mosquitto (Debian 2.0) with a WebSocket listener on `port` (MQTT 3.1.1 over RFC 6455),
/// anonymous, no persistence, and no cap on the messages queued per subscriber (a burst to a
/// big room is held, not dropped: the comparison is of throughput, not of overload policy).
///
/// Two quirks of 2.0.11's libwebsockets listener (eclipse-mosquitto/mosquitto#2284, #3045):
/// it will not start without a plain MQTT listener beside it (one is opened on 127.0.0.1, on
/// a free port, unused), and it ignores a bind address, listening on every interface for the
/// life of the run; the generator only ever connects over loopback.
/// Its config goes in `dir`; it logs errors to stderr, and runs as the generator's user (run
/// as root, it would switch to `mosquitto`). Returns once it listens.
pub async fn mosquitto(port: u16, dir: &Path) -> anyhow::Result<Child> {
    let conf = dir.join("mosquitto.conf");
    let mqtt = wasmgate_examples::bench::free_port()?;
    std::fs::write(
        &conf,
        format!(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n\
             listener {mqtt} 127.0.0.1\nmax_connections -1\n\
             listener {port}\nprotocol websockets\nmax_connections -1\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .context("starting mosquitto (examples/peers/setup.sh installs it)")?;
    wait_listening(port, "mosquitto").await?;
    Ok(child)
}

/// Child process ids of `pid` (Linux `/proc/<pid>/task/<pid>/children`).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// nginx (2 workers) on `port` proxying WebSockets to Node's `ws` echo server (2 workers),
/// terminating TLS with `tls` (certificate and key files) when given; config and logs in `dir`.
pub async fn nginx_node(
    port: u16,
    dir: tempfile::TempDir,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<Servers> {
    let node_port = wasmgate_examples::bench::free_port()?;
    let node = node_ws(node_port, 2, "echo").await?;
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(port, node_port, dir.path(), tls))?;
    let nginx = Command::new("nginx")
        .args(["-p", &dir.path().display().to_string(), "-c", &conf.display().to_string()])
        .args(["-g", "daemon off;"])
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx (examples/peers/setup.sh installs it)")?;
    let servers = Servers { children: vec![nginx, node], gateway: None, _dir: dir, port };
    wait_listening(port, "nginx").await?;
    Ok(servers)
}

/// nginx as a WebSocket proxy (RFC 6455 section 4 upgrade passed through), loopback only;
/// terminating TLS with `tls` (certificate and key files) when given.
fn nginx_conf(port: u16, upstream: u16, prefix: &Path, tls: Option<(&Path, &Path)>) -> String {
    let ssl = match tls {
        Some((cert, key)) => format!(
            " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        r#"worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream node {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        location / {{
            proxy_pass http://node;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_buffering off;
            tcp_nodelay on;
        }}
    }}
}}
"#,
        prefix = prefix.display()
    )
}
