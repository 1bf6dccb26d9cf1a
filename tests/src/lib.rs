//! Test harness: a real gateway in-process on port 0, real example backends on real sockets,
//! real clients, and map files in a temporary directory.

pub mod servers;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmgate::{Config, RunningGateway};
use wasmgate_examples::backend::{self, BackendOptions};
pub use wasmgate_examples::client::Client;
use wasmgate_examples::client::mint_token;

pub use wasmgate_examples::client::Received;

/// Secret the test gateways' auth script is configured with.
pub const SECRET: &str = "e2e-test-secret";
/// Issuer the test gateways require.
pub const ISSUER: &str = "wasmgate-tests";
/// The hostile router component (built by build.rs).
pub const HOSTILE_ROUTER: &str = env!("HOSTILE_ROUTER_WASM");
/// A router component whose `init` opens a TCP connection (`wasi:sockets`, linked but denied).
pub const FORBIDDEN_IMPORT: &str = env!("FORBIDDEN_IMPORT_WASM");
/// A router component that imports `acme:secrets/vault`, unknown to the host (built by build.rs).
pub const UNKNOWN_IMPORT: &str = env!("UNKNOWN_IMPORT_WASM");
/// The Rust router template of `examples/scripts/rust/router` (built by build.rs).
pub const RUST_TEMPLATE_ROUTER: &str = env!("RUST_TEMPLATE_ROUTER_WASM");
/// The Rust handler template of `examples/scripts/rust/handler` (built by build.rs).
pub const RUST_TEMPLATE_HANDLER: &str = env!("RUST_TEMPLATE_HANDLER_WASM");
/// A stateful handler script component (built by build.rs).
pub const COUNTER_HANDLER: &str = env!("COUNTER_HANDLER_WASM");
/// Bearer token of the admin API in gateways started with [`with_admin_token`].
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// How long tests wait for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(10);

/// Logs for a failing test: `RUST_LOG=wasmgate=debug cargo test ...`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    mint_token(SECRET, user, Some(ISSUER), 3600).expect("minting a token")
}

/// An example backend on a real socket.
pub struct Backend {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Backend {
    /// Starts a backend on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, BackendOptions::default()).await
    }

    /// Starts a backend on `addr`. Binding an earlier backend's port is retried for up to 2 s:
    /// once that backend stopped, any short-lived connection on the machine (the test's own
    /// HTTP requests, the gateway's reconnects) may take the port as its ephemeral source port
    /// for a moment, and the bind fails with `AddrInUse` until it closes.
    pub async fn start_with(addr: SocketAddr, options: BackendOptions) -> Self {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding the backend on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("backend address");
        let stop = CancellationToken::new();
        tokio::spawn(backend::run(listener, options, stop.clone()));
        Self { addr, stop }
    }

    /// Closes the listener and every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gateway wired to one example backend (dest 101), with its maps in a temp dir.
pub struct Harness {
    pub gateway: RunningGateway,
    pub backend: Backend,
    pub dir: TempDir,
    pub config: Config,
}

/// The config of a test gateway: loopback port 0 everywhere, maps in `dir`.
pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::default();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.ws = Some(any);
    config.listen.tcp = Some(any);
    config.listen.admin = Some(any);
    config.maps.dest_map = Some(dir.path().join("dest_map.json"));
    config.maps.message_map = Some(dir.path().join("message_map.json"));
    config.scripts.auth.config = toml::Table::from_iter([
        ("secret".to_string(), toml::Value::String(SECRET.into())),
        ("issuer".to_string(), toml::Value::String(ISSUER.into())),
    ]);
    config.upstream.backoff_initial_ms = 20;
    config.upstream.backoff_max_ms = 200;
    config
}

/// Writes `dest_map.json` with dest 101 -> `backend` (2 connections) plus `extra` entries.
pub fn write_dest_map(dir: &TempDir, dests: &[(u32, SocketAddr)]) {
    let map: serde_json::Map<String, serde_json::Value> = dests
        .iter()
        .map(|(id, addr)| {
            (id.to_string(), serde_json::json!({ "poolNums": 2, "srvAddr": addr.to_string(), "srvName": format!("backend-{id}") }))
        })
        .collect();
    write_atomic(dir.path().join("dest_map.json"), &serde_json::Value::Object(map).to_string());
}

/// Writes `message_map.json`.
pub fn write_message_map(dir: &TempDir, routes: &[(u32, u32)]) {
    let map: serde_json::Map<String, serde_json::Value> =
        routes.iter().map(|(m, d)| (m.to_string(), serde_json::json!(d))).collect();
    write_atomic(dir.path().join("message_map.json"), &serde_json::Value::Object(map).to_string());
}

/// Writes a file by rename, as deploy tools do.
pub fn write_atomic(path: PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing a map");
    std::fs::rename(&tmp, &path).expect("renaming a map");
}

impl Harness {
    /// Gateway + backend with the example routes (100-106 -> 101).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Same, with `tweak` applied to the config before start.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        write_dest_map(&dir, &[(101, backend.addr)]);
        write_message_map(&dir, &(100..=106).map(|id| (id, 101)).collect::<Vec<_>>());
        let mut config = test_config(&dir);
        tweak(&mut config);
        let gateway = RunningGateway::start(config.clone()).await.expect("starting the gateway");
        let harness = Self { gateway, backend, dir, config };
        harness.wait_upstream(101, 1).await;
        harness
    }

    /// Waits until `dest` has at least `n` pool connections up.
    pub async fn wait_upstream(&self, dest: u32, n: usize) {
        let deadline = tokio::time::Instant::now() + PROMPT;
        while self.gateway.upstream_connections_up(dest) < n {
            assert!(tokio::time::Instant::now() < deadline, "dest {dest} never got {n} connections up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of `name{labels}` in the gateway's metrics now, 0 if absent.
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        metric(&self.gateway.metrics().render(), name_and_labels)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway.ws_addr().expect("ws listener"))
    }

    /// A WebSocket client (binary frames unless `text`).
    pub async fn ws(&self, text: bool) -> Client {
        Client::ws(&self.ws_url(), text).await.expect("ws connect")
    }

    /// A TCP client with the gateway's framing.
    pub async fn tcp(&self) -> Client {
        Client::tcp(self.gateway.tcp_addr().expect("tcp listener"), &self.config.tcp)
            .await
            .expect("tcp connect")
    }

    /// A logged-in WebSocket client for `user`.
    pub async fn logged_in_ws(&self, user: &str) -> Client {
        let mut client = self.ws(false).await;
        client.login(self.config.routes.login, &token(user)).await.expect("login");
        client
    }

    /// `method path` on the admin port with `body` (JSON unless `form`) and the bearer `token`
    /// if any; returns (status code, body as JSON, `null` if it is not JSON).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &str,
        form: bool,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![(
            "Content-Type",
            if form { "application/x-www-form-urlencoded" } else { "application/json" },
        )];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let addr = self.gateway.admin_addr().expect("admin listener");
        let (status, text) = http(addr, method, path, &headers, body.as_bytes()).await;
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// `POST /scripts/{name}[?config=..]` with `wasm` (the admin API's deploy); returns
    /// (status code, body as JSON).
    pub async fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        config: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut path = format!("/scripts/{name}");
        if let Some(config) = config {
            path.push_str("?config=");
            path.extend(form_urlencoded::byte_serialize(config.to_string().as_bytes()));
        }
        let addr = self.admin_addr();
        let to = wasmgate::http_client::Endpoint::plain(addr);
        let (status, text) =
            wasmgate::http_client::request(&to, Some(ADMIN_TOKEN), "POST", &path, wasm.to_vec())
                .await
                .expect("deploy request");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    fn admin_addr(&self) -> SocketAddr {
        self.gateway.admin_addr().expect("admin listener")
    }

    /// GET `path` on the admin port; returns (status line, body).
    pub async fn admin_get(&self, path: &str) -> (String, String) {
        http_get(self.gateway.admin_addr().expect("admin listener"), path).await
    }
}

/// A minimal HTTP/1.0 GET over a real socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let (status, body) = http(addr, "GET", path, &[], b"").await;
    (status_line(status), body)
}

fn status_line(status: u16) -> String {
    format!("HTTP/1.0 {status}")
}

/// A minimal HTTP/1.0 request over a real socket: returns (status code, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("http connect");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("http write");
    stream.write_all(body).await.expect("http write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("http read");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Sends message 100 (routed to the echo backend by [`Harness`]'s maps) and expects its echo.
pub async fn echoes(client: &mut Client, body: &str) {
    let seq = client.send(100, body.as_bytes()).await.expect("send");
    let (reply, _) = client.recv_reply(100, seq, PROMPT).await.expect("the echo");
    assert_eq!(reply.body, body.as_bytes());
}

/// Config tweak: enables the admin API with [`ADMIN_TOKEN`].
pub fn with_admin_token(config: &mut Config) {
    config.admin.token = Some(ADMIN_TOKEN.into());
}

/// A gateway with the admin API, no abuse limits (load tests) and the hostile test router
/// tagged `v0` ([`HOSTILE_ROUTER`]: message 905 answers `v0:<body>`).
pub async fn tagged_router_gateway() -> Harness {
    Harness::start_with(|c| {
        with_admin_token(c);
        c.rate_limits = wasmgate::config::RateLimitsConfig::off();
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.router.config = toml::toml! { tag = "v0" };
    })
    .await
}

/// The value of `name{labels}` in Prometheus text (first match), 0 if absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The sum of `name` over every label set that includes all of `labels` (`key="value"`
/// strings), e.g. script calls of any version.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}'))
        .filter(|(set, _)| labels.iter().all(|label| set.split(',').any(|part| part == *label)))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Parses an error frame body: (code, message).
pub fn error_of(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("error frame is JSON");
    (
        v["code"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Reads the next item and asserts it is the close, with `code` on WebSocket (`None` for TCP,
/// whose close has no code).
pub async fn expect_closed(client: &mut Client, code: Option<u16>) {
    match client.recv_within(PROMPT).await.expect("a close") {
        Received::Closed { code: got, reason } => {
            if code.is_some() {
                assert_eq!(got, code, "close reason: {reason}");
            }
        }
        other => panic!("expected a close with {code:?}, got {other:?}"),
    }
}

/// Reads an error frame with `error_code`, then the close with `code` (see [`expect_closed`]).
pub async fn expect_error_then_close(client: &mut Client, error_code: &str, code: Option<u16>) {
    let error = client.recv_within(PROMPT).await.expect("an error frame").packet().expect("an error frame");
    assert_eq!(error.msg_id, 4, "an error frame, got {error:?}");
    assert_eq!(error_of(&error.body).0, error_code);
    expect_closed(client, code).await;
}

/// Polls `check` every 10 ms until it holds; fails the test after [`PROMPT`].
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fenced code block that follows the marker line `<!-- doc-test: NAME -->` in a
/// document (so a test runs the docs' examples as written). Panics when there is none.
pub fn doc_block<'a>(doc: &'a str, name: &str) -> &'a str {
    let marker = format!("<!-- doc-test: {name} -->");
    let after = doc.split_once(&marker).unwrap_or_else(|| panic!("no `{marker}` in the document")).1;
    let fence_start = after.find("```").expect("a fenced block after the marker");
    let body_start = fence_start + after[fence_start..].find('\n').expect("fence line") + 1;
    let body_len = after[body_start..].find("\n```").expect("closing fence") + 1;
    &after[body_start..body_start + body_len]
}
