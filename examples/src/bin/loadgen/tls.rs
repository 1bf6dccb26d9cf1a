//! Scenario `tls`: what TLS costs (docs/benchmarks.md, TLS). On three targets in one run —
//! `wasmgate-ws` (plain WebSocket, the baseline), `wasmgate-wss` (the gateway terminating TLS
//! itself) and `nginx-node-wss` (nginx terminating TLS in front of Node's `ws`, 2 workers
//! each) — it measures:
//! - idle memory: server RSS per logged-in session with `--sessions` open (a fresh server;
//!   nginx + Node summed over their processes) and, for wasmgate, the heap in use per session
//!   (`GET /debug/heap`): RSS growth undercounts what sessions take when they fit in memory
//!   the allocator kept resident after the start-up compile of the scripts;
//! - new sessions per second: `--concurrency` clients each connecting, running the TLS
//!   handshake (full: no resumption) and the WebSocket upgrade, then closing, for
//!   `--seconds`.
//!
//! The certificate is an ECDSA P-256 leaf of a CA made for the run (rcgen), the same file for
//! both servers. Sessions come from this process (at most ~19k), from 127.0.0.2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use wasmgate_examples::bench::{GatewayProcess, free_port, rss_kib};

use super::conn::{Conn, Transport};
use super::memory::heap_in_use;
use super::peers::{Servers, nginx_node};
use super::{bind_address_no_port, gateway_config};

#[derive(Clone, Copy, clap::ValueEnum, Debug, PartialEq, Eq)]
pub enum TlsTarget {
    WasmgateWs,
    WasmgateWss,
    NginxNodeWss,
}

/// The `tls` command's arguments.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub sessions: usize,
    pub seconds: f64,
    pub concurrency: usize,
}

/// A CA and a server certificate for `localhost`, as PEM files in a temporary directory.
pub(super) struct Certificates {
    dir: tempfile::TempDir,
    /// A client trusting the CA, without session resumption (every handshake is full).
    pub(super) client: tokio_rustls::TlsConnector,
}

impl Certificates {
    pub(super) fn new() -> anyhow::Result<Self> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&leaf_key, &issuer)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cert.pem"), leaf.pem())?;
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self { dir, client: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// `config` (a gateway config from [`gateway_config`]) with a `wss` listener on `port`
    /// presenting this certificate.
    pub(super) fn with_wss(&self, config: &str, port: u16) -> String {
        let tls = format!("[tls]\ncert = {:?}\nkey = {:?}\n", self.cert(), self.key());
        let mut config = config.replacen("[listen]\n", &format!("[listen]\nwss = \"127.0.0.1:{port}\"\n"), 1);
        config.push_str(&tls);
        config
    }
}

/// Token of the gateway's admin API (`GET /debug/heap`).
const TOKEN: &str = "tls-admin-token";

/// Starts `target`; returns its servers (and, for wasmgate, its admin address), the port
/// clients connect to in them.
async fn start(
    target: TlsTarget,
    certs: &Certificates,
    binary: Option<&Path>,
) -> anyhow::Result<(Servers, Option<SocketAddr>)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    match target {
        TlsTarget::WasmgateWs | TlsTarget::WasmgateWss => {
            let (ws, admin) = (free_port()?, free_port()?);
            let mut config = gateway_config(ws, 0, admin, 19_000, "");
            config.push_str(&format!("[admin]\ntoken = \"{TOKEN}\"\nprofiling = true\n"));
            if target == TlsTarget::WasmgateWss {
                config = certs.with_wss(&config, port);
            }
            let ready = SocketAddr::from(([127, 0, 0, 1], admin));
            let gateway = GatewayProcess::start(binary, &config, ready).await?;
            let port = if target == TlsTarget::WasmgateWs { ws } else { port };
            Ok((Servers { children: Vec::new(), gateway: Some(gateway), _dir: dir, port }, Some(ready)))
        }
        TlsTarget::NginxNodeWss => {
            let (cert, key) = (certs.cert(), certs.key());
            Ok((nginx_node(port, dir, Some((&cert, &key))).await?, None))
        }
    }
}

/// The target's handshakes on a connected `stream`: TLS (unless the target is plain), then
/// the WebSocket upgrade.
async fn handshake(
    target: TlsTarget,
    stream: tokio::net::TcpStream,
    server: SocketAddr,
    client: &tokio_rustls::TlsConnector,
) -> anyhow::Result<Conn> {
    match target {
        TlsTarget::WasmgateWs => Conn::open(Transport::Ws, stream, server).await,
        _ => Conn::open_wss(stream, server, client).await,
    }
}

/// Opens one session to `port` from 127.0.0.2 and logs in.
async fn open(target: TlsTarget, port: u16, certs: &Certificates, n: usize) -> anyhow::Result<Conn> {
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = tokio::net::TcpSocket::new_v4()?;
    bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))?;
    let stream = socket.connect(server).await?;
    let mut conn = handshake(target, stream, server, &certs.client).await?;
    conn.login(&format!("tls-{n}"), Duration::from_secs(30)).await?;
    Ok(conn)
}

/// What one target measured.
struct Figures {
    bytes_per_session: f64,
    /// wasmgate only: heap in use per session, bytes.
    heap_per_session: Option<f64>,
    sessions_per_s: f64,
}

async fn measure(
    target: TlsTarget,
    load: Load,
    certs: &Certificates,
    binary: Option<&Path>,
) -> anyhow::Result<Figures> {
    use futures_util::{StreamExt as _, stream};
    let (servers, admin) = start(target, certs, binary).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |servers: &Servers| servers.pids().into_iter().map(rss_kib).sum::<u64>();
    let heap = || async {
        match admin {
            Some(admin) => heap_in_use(&wasmgate::http_client::Endpoint::plain(admin), TOKEN).await,
            None => None,
        }
    };
    let (before, heap_before) = (rss(&servers), heap().await);
    let opened: Vec<_> = stream::iter(0..load.sessions)
        .map(|n| open(target, servers.port, certs, n))
        .buffer_unordered(64)
        .collect()
        .await;
    let held: Vec<Conn> = opened.into_iter().collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, heap_after) = (rss(&servers), heap().await);
    let bytes_per_session = after.saturating_sub(before) as f64 * 1024.0 / held.len().max(1) as f64;
    let heap_per_session = heap_before
        .zip(heap_after)
        .map(|(before, after)| after.saturating_sub(before) as f64 / held.len().max(1) as f64);
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Churn: connect, handshake(s), close, as fast as `concurrency` clients can.
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(load.seconds);
    let clients: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let done = done.clone();
            let client = certs.client.clone();
            let port = servers.port;
            tokio::spawn(async move {
                let server = SocketAddr::from(([127, 0, 0, 1], port));
                while Instant::now() < until {
                    let stream = tokio::net::TcpStream::connect(server).await?;
                    drop(handshake(target, stream, server, &client).await?);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let sessions_per_s = done.load(Ordering::Relaxed) as f64 / load.seconds;
    let heap_note = heap_per_session.map_or(String::new(), |b| format!(", heap in use {b:.0} B per session"));
    println!(
        "tls {target:?}: {} idle sessions, RSS {:.1} -> {:.1} MiB = {:.2} KiB per session{heap_note} | {:.0} new sessions/s (connect, {}WebSocket upgrade, close; {} clients)",
        load.sessions,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        bytes_per_session / 1024.0,
        sessions_per_s,
        if target == TlsTarget::WasmgateWs { "" } else { "full TLS handshake, " },
        load.concurrency,
    );
    println!(
        "{}",
        serde_json::json!({ "scenario": "tls", "target": format!("{target:?}"), "sessions": load.sessions,
            "rss_before_kib": before, "rss_after_kib": after, "bytes_per_session": bytes_per_session.round(),
            "heap_in_use_bytes_per_session": heap_per_session.map(f64::round),
            "new_sessions_per_s": sessions_per_s.round(), "concurrency": load.concurrency })
    );
    Ok(Figures { bytes_per_session, heap_per_session, sessions_per_s })
}

/// Runs every target in order; prints wasmgate-wss's ratios to the plain baseline and to
/// nginx when they ran.
pub async fn run(targets: &[TlsTarget], load: Load, binary: Option<&Path>) -> anyhow::Result<()> {
    let certs = Certificates::new()?;
    let mut results = Vec::new();
    for &target in targets {
        results.push((target, measure(target, load, &certs, binary).await?));
    }
    let find = |t| results.iter().find(|(target, _)| *target == t).map(|(_, f)| f);
    if let (Some(wss), Some(ws)) = (find(TlsTarget::WasmgateWss), find(TlsTarget::WasmgateWs)) {
        println!(
            "tls ratio: wasmgate wss / ws = {:.2}x RSS per idle session (target <= 2x){}",
            wss.bytes_per_session / ws.bytes_per_session,
            wss.heap_per_session
                .zip(ws.heap_per_session)
                .map_or(String::new(), |(wss, ws)| format!(", {:.2}x heap in use", wss / ws))
        );
    }
    if let (Some(wss), Some(nginx)) = (find(TlsTarget::WasmgateWss), find(TlsTarget::NginxNodeWss)) {
        println!(
            "tls ratio: wasmgate wss / nginx -> node ws = {:.2}x new TLS sessions/s (target >= 1x), {:.2}x memory per idle session",
            wss.sessions_per_s / nginx.sessions_per_s,
            wss.bytes_per_session / nginx.bytes_per_session
        );
    }
    Ok(())
}
