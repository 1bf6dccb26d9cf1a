//! The `wasmgate` binary as operators run it: a child process with a config file, signals
//! (SIGTERM drain, second signal, SIGHUP reload), systemd readiness (`NOTIFY_SOCKET`), config
//! precedence (file < environment < `--set`) and `check-config`.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use wasmgate::protocol::backend::{BackendCodec, BackendFrame};
use wasmgate_examples::client::{Client, Received};
use wasmgate_tests::{ISSUER, PROMPT, SECRET, token, write_dest_map, write_message_map};

/// How long a gateway may take to start (a debug build compiling its default scripts, beside
/// other tests' gateways on two cores).
const STARTUP: Duration = Duration::from_secs(30);

/// A gateway child process; its JSON log lines are collected; killed on drop.
struct Gateway {
    child: Child,
    ws: SocketAddr,
    log: Arc<parking_lot::Mutex<Vec<serde_json::Value>>>,
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], wasmgate_examples::bench::free_port().expect("a free port")))
}

/// `wasmgate.toml` for a gateway with maps in `dir`, the test auth secret and `extra` lines.
fn write_config(dir: &TempDir, ws: SocketAddr, admin: SocketAddr, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "[listen]\nws = \"{ws}\"\ntcp = \"127.0.0.1:0\"\nadmin = \"{admin}\"\n\n[maps]\ndest_map = \"dest_map.json\"\n\
         message_map = \"message_map.json\"\n{extra}\n\n[scripts.auth.config]\nsecret = \"{SECRET}\"\n\
         issuer = \"{ISSUER}\"\n"
    );
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

impl Gateway {
    /// Starts `wasmgate run` and waits until its WebSocket listener accepts.
    async fn start(config: &Path, ws: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
        command
            .args(["--log-format", "json", "--config"])
            .arg(config)
            .args(args)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("starting wasmgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(value) => lines.lock().push(value),
                    Err(_) => eprintln!("wasmgate: {line}"),
                }
            }
        });
        let gateway = Self { child, ws, log };
        let deadline = Instant::now() + STARTUP;
        while tokio::net::TcpStream::connect(ws).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "wasmgate did not listen within {STARTUP:?}: {:?}",
                gateway.log.lock()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(status.expect("kill").success());
    }

    /// Waits for the process to exit (at most `bound`): its exit code and how long it took.
    async fn exited(&mut self, bound: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), started.elapsed());
            }
            assert!(started.elapsed() < bound, "still running after {bound:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fields of the first log line whose message is `message`.
    fn logged(&self, message: &str) -> Option<serde_json::Value> {
        let log = self.log.lock();
        log.iter().find(|l| l["fields"]["message"] == message).map(|l| l["fields"].clone())
    }

    async fn wait_logged(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + PROMPT;
        loop {
            if let Some(fields) = self.logged(message) {
                return fields;
            }
            assert!(Instant::now() < deadline, "no `{message}` in the log: {:?}", self.log.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client(&self, user: &str) -> Client {
        let mut client = Client::ws(&format!("ws://{}/", self.ws), false).await.expect("connecting");
        client.login(1, &token(user)).await.expect("login");
        client
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway's files: maps (message 100 -> dest 101 at `backend`) and `wasmgate.toml` in a
/// temp dir, with free WebSocket and admin addresses.
struct Setup {
    dir: TempDir,
    config: std::path::PathBuf,
    ws: SocketAddr,
    admin: SocketAddr,
}

fn setup(backend: SocketAddr, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    write_dest_map(&dir, &[(101, backend)]);
    write_message_map(&dir, &[(100, 101)]);
    let (ws, admin) = (free_addr(), free_addr());
    let config = write_config(&dir, ws, admin, extra);
    Setup { dir, config, ws, admin }
}

/// A backend that counts the `Forward` frames it receives and answers each with a `Reply`.
async fn counting_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("backend bind");
    let addr = listener.local_addr().expect("backend addr");
    let forwarded = Arc::new(AtomicU64::new(0));
    let count = forwarded.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, BackendCodec::default());
                while let Some(Ok(frame)) = framed.next().await {
                    if let BackendFrame::Forward { session_id, msg_id, seq, body, .. } = frame {
                        count.fetch_add(1, Ordering::Relaxed);
                        let reply = BackendFrame::Reply { session_id, msg_id, seq, body };
                        if framed.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, forwarded)
}

/// What one client saw until the gateway closed it.
struct Seen {
    /// Sequence numbers of the replies to message 100, in arrival order.
    replies: Vec<u32>,
    /// Packets received after login, the error frame included.
    packets: u64,
    going_away: bool,
    close_code: Option<u16>,
}

/// Sends message 100 in windows of 50 and reads the replies, until the gateway closes.
async fn traffic(mut client: Client) -> Seen {
    let mut seen = Seen { replies: Vec::new(), packets: 0, going_away: false, close_code: None };
    loop {
        for _ in 0..50 {
            if client.send(100, b"drain me").await.is_err() {
                break;
            }
        }
        let mut outstanding = 50;
        while outstanding > 0 {
            match tokio::time::timeout(PROMPT, client.recv()).await {
                Ok(Ok(Received::Packet(p))) => {
                    seen.packets += 1;
                    match p.msg_id {
                        100 => {
                            seen.replies.push(p.seq);
                            outstanding -= 1;
                        }
                        4 => seen.going_away |= String::from_utf8_lossy(&p.body).contains("going_away"),
                        other => panic!("unexpected packet {other}"),
                    }
                }
                Ok(Ok(Received::Closed { code, .. })) => {
                    seen.close_code = code;
                    return seen;
                }
                Ok(Err(_)) => return seen,
                Err(_) => panic!("no packet and no close within {PROMPT:?}"),
            }
        }
    }
}

/// SIGTERM in the middle of traffic: every client gets the `going_away` error frame and close
/// 1001; every client packet the gateway read reached the backend; every packet the gateway
/// wrote reached its client, replies in order without a gap; the process exits 0 within its
/// bound. A second signal during a drain exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_within_the_bound() {
    let (backend, forwarded) = counting_backend().await;
    let at = setup(backend, "");
    // Clients send as fast as replies come: no message rate limit.
    let args = ["--shutdown-grace-s", "4", "--set", "rate_limits.msg_per_s=0"];
    let mut gateway = Gateway::start(&at.config, at.ws, &args, &[]).await;
    let mut running = Vec::new();
    for i in 0..8 {
        running.push(tokio::spawn(traffic(gateway.client(&format!("drain{i}")).await)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    gateway.signal("TERM");
    let (code, took) = gateway.exited(Duration::from_secs(6)).await;
    assert_eq!(code, Some(0), "exit status");
    let mut written_to_clients = 0;
    for task in running {
        let seen = task.await.expect("client task");
        assert!(seen.going_away, "no going_away error frame");
        assert_eq!(seen.close_code, Some(1001));
        assert!(seen.replies.len() > 10, "too little traffic before the signal: {}", seen.replies.len());
        let first = seen.replies[0];
        let expected: Vec<u32> = (first..first + seen.replies.len() as u32).collect();
        assert_eq!(seen.replies, expected, "replies out of order or with a gap");
        written_to_clients += seen.packets + 1; // + the login reply
    }
    let stopped = gateway.wait_logged("wasmgate stopped").await;
    let number = |name: &str| stopped[name].as_u64().unwrap_or_else(|| panic!("{name} in {stopped}"));
    assert_eq!(number("packets_sent"), written_to_clients, "packets written vs received by clients");
    assert_eq!(
        number("packets_received") - 8,
        forwarded.load(Ordering::Relaxed),
        "read vs reached the backend"
    );
    assert_eq!(number("upstream_frames_sent"), forwarded.load(Ordering::Relaxed));
    assert!(took < Duration::from_secs(5), "drain took {took:?}");

    // A second signal: the drain is cut short (a client that never reads its socket keeps it
    // busy until the grace ends; the second signal must not wait for that).
    let at = setup(backend, "");
    let mut gateway = Gateway::start(&at.config, at.ws, &["--shutdown-grace-s", "60"], &[]).await;
    let _idle = gateway.client("second").await;
    gateway.signal("TERM");
    gateway.wait_logged("shutting down (a second signal exits at once)").await;
    gateway.signal("INT");
    let (code, took) = gateway.exited(Duration::from_secs(5)).await;
    assert!(code == Some(130) || code == Some(0), "exit status {code:?}");
    assert!(took < Duration::from_secs(5));
}

/// `NOTIFY_SOCKET` gets `READY=1` once the gateway serves, `RELOADING=1` + `READY=1` around a
/// SIGHUP, `STOPPING=1` at shutdown. SIGHUP re-reads the map files even with `no_watch`: a
/// message id added to `message_map.json` routes after the signal and not before, and a
/// changed setting that needs a restart is named in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_and_sighup_reload() {
    let (backend, _) = counting_backend().await;
    let Setup { dir, config, ws, .. } = setup(backend, "no_watch = true");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(PROMPT)).expect("timeout");
    let notify_env = socket_path.to_str().expect("utf-8 path");
    let mut gateway = Gateway::start(&config, ws, &[], &[("NOTIFY_SOCKET", notify_env)]).await;
    let mut buf = [0u8; 256];
    let mut next_notice = || {
        let n = socket.recv(&mut buf).expect("a notify datagram");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    assert_eq!(next_notice(), "READY=1");

    let mut client = gateway.client("hup").await;
    client.send(103, b"before").await.expect("send");
    let error = client.recv_within(PROMPT).await.expect("answer").packet().expect("packet");
    assert_eq!((error.msg_id, wasmgate_tests::error_of(&error.body).0.as_str()), (4, "unknown_message"));

    write_message_map(&dir, &[(100, 101), (103, 101)]);
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[listen]", "[limits]\nmax_conn_num = 7\n\n[listen]");
    std::fs::write(&config, text).expect("config");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq = client.send(103, b"still unknown: no_watch").await.expect("send");
    let error = client.recv_within(PROMPT).await.expect("answer").packet().expect("packet");
    assert_eq!(error.msg_id, 4, "routed before SIGHUP although maps.no_watch: {error:?} (seq {seq})");

    gateway.signal("HUP");
    assert_eq!(next_notice(), "RELOADING=1");
    assert_eq!(next_notice(), "READY=1");
    let reloaded = gateway.wait_logged("SIGHUP: config files re-read").await;
    assert!(reloaded["needs_restart"].as_str().is_some_and(|s| s.contains("limits")), "{reloaded}");
    let seq = client.send(103, b"after").await.expect("send");
    let reply = client.recv_reply(103, seq, PROMPT).await.expect("routed after SIGHUP");
    assert_eq!(&reply.0.body[..], b"after");

    gateway.signal("TERM");
    assert_eq!(next_notice(), "STOPPING=1");
    assert_eq!(gateway.exited(Duration::from_secs(12)).await.0, Some(0));
}

/// Precedence file < `WASMGATE__*` environment < `--set`, seen on a running gateway (the
/// listener moves) and through `check-config`, whose errors name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_precedence_and_check_config() {
    let (backend, _) = counting_backend().await;
    let Setup { dir: _dir, config, ws: file_ws, .. } = setup(backend, "");
    let (env_ws, flag_ws) = (free_addr(), free_addr());
    let env_value = env_ws.to_string();
    let flag = format!("listen.ws={flag_ws}");

    // The environment beats the file.
    let env = [("WASMGATE__LISTEN__WS", env_value.as_str())];
    let gateway = Gateway::start(&config, env_ws, &[], &env).await;
    assert!(tokio::net::TcpStream::connect(file_ws).await.is_err(), "the file's address is in use");
    drop(gateway);
    // A flag beats the environment.
    let gateway = Gateway::start(&config, flag_ws, &["--set", &flag], &env).await;
    assert!(tokio::net::TcpStream::connect(env_ws).await.is_err(), "the environment's address is in use");
    gateway.client("precedence").await;
    drop(gateway);

    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
        command.args(args).arg("check-config").arg(&config);
        for (name, value) in env {
            command.env(name, value);
        }
        let out = command.output().expect("check-config");
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), said)
    };
    let (code, said) = check(&[], &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(": ok"), "{said}");
    let (code, said) = check(&[], &[("WASMGATE__LIMITS__MAX_CONN_NUM", "many")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("max_conn_num"), "the error names the field: {said}");
    let (code, said) = check(&["--set", "tcp.len_msg_len=3"], &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("tcp.len_msg_len"), "{said}");
    let (code, said) = check(&["--set", "limits.no_such_key=1"], &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no_such_key"), "{said}");
    std::fs::write(&config, "[listen\nws = 1").expect("config");
    let (code, said) = check(&[], &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("wasmgate.toml"), "names the file: {said}");
}

/// The example systemd unit (`examples/service/wasmgate.service`) passes `systemd-analyze
/// verify` without a warning (an unknown or misspelt directive is one), with its binary path
/// pointed at the one under test.
#[test]
fn systemd_unit_verifies() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/service/wasmgate.service");
    let text = std::fs::read_to_string(unit).expect("the unit");
    assert!(text.contains("\nType=notify\n") && text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wasmgate.service");
    std::fs::write(&path, text.replace("/usr/local/bin/wasmgate", env!("CARGO_BIN_EXE_wasmgate")))
        .expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian systemd; .ci/run installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

mod otlp {
    //! A minimal OTLP/gRPC trace receiver: keeps every span it is sent.
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
        MetricsService, MetricsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// One received span: name, attributes (as text), span id, parent span id, service name.
    #[derive(Debug, Clone)]
    pub struct Span {
        pub name: String,
        pub attributes: HashMap<String, String>,
        pub id: Vec<u8>,
        pub parent: Vec<u8>,
        pub service: String,
    }

    #[derive(Clone, Default)]
    pub struct Receiver {
        pub spans: Arc<parking_lot::Mutex<Vec<Span>>>,
    }

    fn text(value: Option<&Value>) -> String {
        match value {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock();
            for resource in request.into_inner().resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect();
                    spans.push(Span {
                        name: span.name,
                        attributes,
                        id: span.span_id,
                        parent: span.parent_span_id,
                        service: service.clone(),
                    });
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// The latest value of every metric data point received: (metric name, attributes as
    /// `k=v` sorted and joined by `,`) -> (value, monotonic sum?).
    #[derive(Clone, Default)]
    pub struct Metrics {
        pub points: Arc<parking_lot::Mutex<HashMap<(String, String), Point>>>,
    }

    /// A data point's value and whether its metric is a monotonic sum.
    pub type Point = (f64, bool);

    #[tonic::async_trait]
    impl MetricsService for Metrics {
        async fn export(
            &self,
            request: tonic::Request<ExportMetricsServiceRequest>,
        ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
            let mut points = self.points.lock();
            let metrics = request.into_inner().resource_metrics.into_iter().flat_map(|r| r.scope_metrics);
            for metric in metrics.flat_map(|s| s.metrics) {
                let (data_points, monotonic) = match metric.data {
                    Some(Data::Sum(sum)) => (sum.data_points, sum.is_monotonic),
                    Some(Data::Gauge(gauge)) => (gauge.data_points, false),
                    _ => continue,
                };
                for point in data_points {
                    let mut attributes: Vec<String> = point
                        .attributes
                        .iter()
                        .map(|kv| {
                            format!("{}={}", kv.key, text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                        })
                        .collect();
                    attributes.sort();
                    let value = match point.value {
                        Some(number_data_point::Value::AsDouble(v)) => v,
                        Some(number_data_point::Value::AsInt(v)) => v as f64,
                        None => continue,
                    };
                    points.insert((metric.name.clone(), attributes.join(",")), (value, monotonic));
                }
            }
            Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
        }
    }

    /// Serves a trace and metrics receiver on a free loopback port.
    pub async fn start() -> (std::net::SocketAddr, Receiver, Metrics) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("otlp bind");
        let addr = listener.local_addr().expect("otlp addr");
        let receiver = Receiver::default();
        let metrics = Metrics::default();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        (addr, receiver, metrics)
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a login and a routed message reach an OTLP
/// receiver as spans: `session` (with `session.id`, `client.address`, `network.protocol.name`
/// and, after the close, `wasmgate.close_reason`), `login` (`enduser.id`, outcome),
/// `message` -> `script.call` (script name and version) and `upstream.send` (dest), and the
/// backend's `reply`; service name `wasmgate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp() {
    let (collector, receiver, metrics) = otlp::start().await;
    let (backend, _) = counting_backend().await;
    let Setup { dir: _dir, config, ws, .. } = setup(backend, "");
    let endpoint = format!("http://{collector}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    let mut gateway = Gateway::start(&config, ws, &[], &env).await;
    let mut client = gateway.client("traced").await;
    let seq = client.send(100, b"trace me").await.expect("send");
    client.recv_reply(100, seq, PROMPT).await.expect("reply");
    client.send(3, b"").await.expect("close request");
    let _ = client.recv_within(PROMPT).await;

    let deadline = Instant::now() + PROMPT;
    let find = |name: &str| receiver.spans.lock().iter().find(|s| s.name == name).cloned();
    while ["session", "login", "message", "script.call", "upstream.send", "reply"]
        .iter()
        .any(|n| find(n).is_none())
    {
        let names: Vec<String> = receiver.spans.lock().iter().map(|s| s.name.clone()).collect();
        assert!(Instant::now() < deadline, "spans received: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = find("session").expect("session span");
    assert_eq!(session.service, "wasmgate");
    assert_eq!(session.attributes["client.address"], "127.0.0.1");
    assert_eq!(session.attributes["network.protocol.name"], "websocket");
    assert_eq!(session.attributes["wasmgate.close_reason"], "normal");
    let login = find("login").expect("login span");
    assert_eq!(login.attributes["enduser.id"], "traced");
    assert_eq!(login.attributes["wasmgate.outcome"], "ok");
    let spans = receiver.spans.lock().clone();
    let message = spans
        .iter()
        .find(|s| s.name == "message" && s.attributes["wasmgate.msg_id"] == "100")
        .expect("message 100");
    assert_eq!(message.parent, session.id, "a message is a child of its session");
    let router_call = spans
        .iter()
        .find(|s| {
            s.name == "script.call" && s.attributes["wasmgate.script"] == "router" && s.parent == message.id
        })
        .expect("the router call under the message span");
    assert!(!router_call.attributes["wasmgate.script_version"].is_empty());
    let send =
        spans.iter().find(|s| s.name == "upstream.send" && s.parent == message.id).expect("upstream.send");
    assert_eq!(
        (send.attributes["wasmgate.dest_id"].as_str(), send.attributes["wasmgate.outcome"].as_str()),
        ("101", "ok")
    );
    assert!(spans.iter().any(|s| s.name == "reply" && s.attributes["wasmgate.msg_id"] == "100"));

    // The /metrics instruments reach the same collector: counters as monotonic sums named
    // without `_total`, gauges as gauges, histograms as `_count` / `_sum`.
    let point = |name: &str, attributes: &str| {
        metrics.points.lock().get(&(name.to_string(), attributes.to_string())).copied()
    };
    let deadline = Instant::now() + PROMPT;
    while point("wasmgate_routed", "dest=101,outcome=ok") != Some((1.0, true))
        || point("wasmgate_sessions_closed", "reason=normal") != Some((1.0, true))
    {
        let names: Vec<(String, String)> = metrics.points.lock().keys().cloned().collect();
        assert!(Instant::now() < deadline, "metrics received: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(point("wasmgate_sessions", "transport=websocket"), Some((0.0, false)));
    let router_calls = metrics.points.lock().iter().any(|((name, attributes), (value, monotonic))| {
        name == "wasmgate_script_call_duration_seconds_count"
            && attributes.starts_with("script=router,")
            && *value >= 1.0
            && *monotonic
    });
    assert!(router_calls, "router call count");
    gateway.signal("TERM");
    assert_eq!(gateway.exited(Duration::from_secs(12)).await.0, Some(0));
}

/// A raw HTTP/1.0 GET with a bearer token: status and body bytes.
async fn get_bytes(addr: SocketAddr, path: &str, token: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin connect");
    let head = format!("GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("admin write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("admin read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw[split + 4..].to_vec())
}

/// With `admin.profiling`, a CPU profile recorded during traffic decodes as a pprof `Profile`
/// with samples and symbol names, the flame graph is an SVG, and `/debug/heap` reports the
/// allocator's figures; without the setting or the token the endpoints refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiling_endpoints() {
    use pprof::protos::Message as _;
    let (backend, _) = counting_backend().await;
    let Setup { dir, config, ws, admin } = setup(backend, "");
    let sets = [
        "--set",
        "admin.token=\"secret-token\"",
        "--set",
        "admin.profiling=true",
        "--set",
        "rate_limits.msg_per_s=0",
    ];
    let gateway = Gateway::start(&config, ws, &sets, &[]).await;
    let mut client = gateway.client("profiled").await;
    let (flowing, is_flowing) = tokio::sync::oneshot::channel();
    let busy = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(4500);
        let mut flowing = Some(flowing);
        while Instant::now() < until {
            let seq = client.send(100, b"burn some cpu").await.expect("send");
            client.recv_reply(100, seq, PROMPT).await.expect("reply");
            flowing.take().map(|f| f.send(()));
        }
    });
    is_flowing.await.expect("traffic flows");
    let in_use = |heap: &[u8]| {
        let heap: serde_json::Value = serde_json::from_slice(heap).expect("JSON");
        heap["in_use_bytes"].as_u64().unwrap_or(0) + heap["mmap_bytes"].as_u64().unwrap_or(0)
    };
    let before = in_use(&get_bytes(admin, "/debug/heap", "secret-token").await.1);
    let (status, body) = get_bytes(admin, "/debug/pprof/profile?seconds=2", "secret-token").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let profile = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "no samples");
    let names: Vec<&str> = profile.string_table.iter().map(String::as_str).collect();
    assert!(names.iter().any(|n| n.contains("wasmgate")), "no wasmgate symbol among {} strings", names.len());
    let (status, svg) = get_bytes(admin, "/debug/pprof/flamegraph?seconds=2", "secret-token").await;
    assert_eq!(status, 200);
    let svg = String::from_utf8_lossy(&svg);
    assert!(svg.contains("<svg") && svg.contains("wasmgate"), "not a flame graph of wasmgate: {svg}");
    busy.await.expect("traffic");
    let (status, heap) = get_bytes(admin, "/debug/heap", "secret-token").await;
    assert_eq!(status, 200);
    // Nothing of the profiles stays: not the symboliser's parse of the binary's debug info,
    // nor pprof's sample table (~69 MB, kept for the life of the process before it was patched
    // to free it at the end of each profile: third_party/pprof/PATCHED.md).
    let grown = in_use(&heap).saturating_sub(before);
    assert!(grown < 16 << 20, "profiles left {} MiB more in use", grown >> 20);
    let heap: serde_json::Value = serde_json::from_slice(&heap).expect("JSON");
    assert!(heap["in_use_bytes"].as_u64().is_some_and(|b| b > 0), "{heap}");
    assert!(heap["rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{heap}");
    assert_eq!(get_bytes(admin, "/debug/pprof/profile?seconds=0", "secret-token").await.0, 400);
    assert_eq!(get_bytes(admin, "/debug/heap", "wrong").await.0, 401);
    drop(gateway);

    // Off by default.
    let (ws, admin) = (free_addr(), free_addr());
    let config = write_config(&dir, ws, admin, "");
    let _gateway = Gateway::start(&config, ws, &["--set", "admin.token=\"secret-token\""], &[]).await;
    let (status, body) = get_bytes(admin, "/debug/pprof/profile?seconds=1", "secret-token").await;
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("profiling_disabled"));
}

/// A WebSocket session that was sent large packets keeps no buffer for them once they are
/// written: 20 sessions x two 512 KiB pushes (one after the other) leave the heap in use where
/// it was (tungstenite's writer kept the largest message's capacity per session, ~10 MiB here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_keep_no_write_buffer_after_large_pushes() {
    use base64::Engine as _;
    const SESSIONS: usize = 20;
    const PUSH: usize = 512 * 1024;
    let (backend, _) = counting_backend().await;
    let Setup { dir: _dir, config, ws, admin } = setup(backend, "");
    let sets = ["--set", "admin.token=\"secret-token\"", "--set", "admin.profiling=true"];
    let gateway =
        Gateway::start(&config, ws, &[&sets[..], &["--set", "limits.max_msg_len=1048576"]].concat(), &[])
            .await;
    let in_use = |heap: &[u8]| {
        let heap: serde_json::Value = serde_json::from_slice(heap).expect("JSON");
        heap["in_use_bytes"].as_u64().unwrap_or(0) + heap["mmap_bytes"].as_u64().unwrap_or(0)
    };
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for n in 0..SESSIONS {
        let mut client = gateway.client(&format!("big-{n}")).await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Received::Packet(packet)) = client.recv().await {
                if packet.body.len() == PUSH {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let before = in_use(&get_bytes(admin, "/debug/heap", "secret-token").await.1);
    let data = base64::engine::general_purpose::STANDARD.encode(vec![7u8; PUSH]);
    let push = serde_json::json!({ "msg_id": 600, "data_b64": data }).to_string().into_bytes();
    // One push at a time: two queued at once would be over `pending_write_bytes` (1 MiB).
    for round in 1..=2 {
        let api = wasmgate::http_client::Endpoint::plain(admin);
        let sent =
            wasmgate::http_client::request(&api, Some("secret-token"), "POST", "/push/all", push.clone());
        let (status, body) = sent.await.expect("push");
        assert_eq!(status, 200, "{body}");
        let until = Instant::now() + PROMPT;
        while received.load(Ordering::Relaxed) < round * SESSIONS as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(received.load(Ordering::Relaxed), round * SESSIONS as u64, "push {round} reached all");
    }
    let after = in_use(&get_bytes(admin, "/debug/heap", "secret-token").await.1);
    let grown = after.saturating_sub(before);
    assert!(grown < 4 << 20, "{SESSIONS} sessions kept {} KiB more after the pushes", grown >> 10);
    drop(gateway);
    for reader in readers {
        let _ = reader.await;
    }
}

/// A large component pushed out of the compile cache gives its memory back at once: after a
/// profile (as in `loadgen memory`), the Python router
/// template is deployed, then small routers until it leaves the cache; RSS ends within 8 MiB
/// of where it was before the deploy (it stayed ~15 MiB over: the component's freed metadata,
/// which the trimmer's own rule never saw as growth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_component_leaving_the_cache_gives_its_memory_back() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts/python/build/router.wasm");
    let large = std::fs::read(&python)
        .unwrap_or_else(|e| panic!("{}: {e} (run examples/scripts/build.sh first)", python.display()));
    let (backend, _) = counting_backend().await;
    let Setup { dir: _dir, config, ws, admin } = setup(backend, "");
    let sets = ["--set", "admin.token=\"secret-token\"", "--set", "admin.profiling=true"];
    let _gateway = Gateway::start(&config, ws, &sets, &[]).await;
    let api = wasmgate::http_client::Endpoint::plain(admin);
    let rss = || async {
        let heap: serde_json::Value =
            serde_json::from_slice(&get_bytes(admin, "/debug/heap", "secret-token").await.1).expect("JSON");
        heap["rss_bytes"].as_u64().expect("rss_bytes")
    };
    let deploy = |wasm: Vec<u8>| async {
        let (status, body) =
            wasmgate::http_client::request(&api, Some("secret-token"), "POST", "/scripts/router", wasm)
                .await
                .expect("deploy");
        assert_eq!(status, 200, "{body}");
    };
    assert_eq!(get_bytes(admin, "/debug/pprof/profile?seconds=1", "secret-token").await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss().await;
    deploy(large).await;
    // The trimmer looks while the large router is live (RSS high, much free): without the
    // trim on eviction, its reference RSS is then too high for it ever to trim what the
    // eviction frees.
    tokio::time::sleep(wasmgate::memory::TRIM_INTERVAL + Duration::from_secs(1)).await;
    // Distinct small routers (a custom section apiece) until the large one is evicted: the
    // first keeps it as the rollback version, the next releases it, and the cache keeps
    // `KEEP_RELEASED` released ones.
    for n in 0..wasmgate::script::engine::KEEP_RELEASED + 2 {
        let mut small = wasmgate::embedded::DEFAULT_ROUTER.to_vec();
        let section = format!("\x05evict{n}");
        small.extend_from_slice(&[0, section.len() as u8]);
        small.extend_from_slice(section.as_bytes());
        deploy(small).await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    let mut after = rss().await;
    while after > before + (8 << 20) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss().await;
    }
    assert!(
        after <= before + (8 << 20),
        "RSS {} MiB before the deploy, {} MiB after the component left the cache",
        before >> 20,
        after >> 20
    );
}

/// docs/api.md's CLI example, as written: `wasmgate deploy router FILE --script-config
/// '{"default_dest":101}'` makes message ids missing from `message_map` go to dest 101; the
/// same deploy again answers `"unchanged":true`. A failing CLI command prints one line and
/// exits 1, never a backtrace (even with `RUST_BACKTRACE=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_example_and_one_line_errors() {
    let (backend, _) = counting_backend().await;
    let s = setup(backend, "[admin]\ntoken = \"process-admin-token\"");
    let gateway = Gateway::start(&s.config, s.ws, &[], &[]).await;
    let router = s.dir.path().join("my_router.wasm");
    std::fs::write(&router, wasmgate::embedded::DEFAULT_ROUTER).expect("router file");
    let mut client = gateway.client("cli").await;
    let seq = client.send(777, b"unmapped").await.expect("send");
    let error = client.recv_within(PROMPT).await.expect("answer").packet().expect("error frame");
    assert_eq!((error.msg_id, error.seq), (4, seq), "unknown_message before the deploy");

    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .arg("--config")
            .arg(&s.config)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("wasmgate CLI");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let deploy =
        ["deploy", "router", router.to_str().expect("path"), "--script-config", r#"{"default_dest":101}"#];
    let (code, stdout, stderr) = cli(&deploy);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON answer");
    assert!(answer["version"].is_string() && answer.get("unchanged").is_none(), "{answer}");
    let seq = client.send(777, b"unmapped").await.expect("send");
    let (echo, _) = client.recv_reply(777, seq, PROMPT).await.expect("forwarded to default_dest");
    assert_eq!(&echo.body[..], b"unmapped");
    let (code, stdout, _) = cli(&deploy);
    assert_eq!(code, Some(0));
    let again: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON answer");
    assert_eq!((&again["unchanged"], &again["version"]), (&serde_json::json!(true), &answer["version"]));

    // Failures: a refused config, a missing file, no such script.
    let failures: [&[&str]; 3] = [
        &["deploy", "router", router.to_str().expect("path"), "--script-config", r#"{"tag":"v2"}"#],
        &["deploy", "router", "/nonexistent/router.wasm"],
        &["rollback", "no-such-script"],
    ];
    for args in failures {
        let (code, _, stderr) = cli(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("wasmgate: "),
            "{args:?}: one line, no backtrace: {stderr}"
        );
    }
    drop(gateway);
}

/// `wasmgate check-script`: a component that would deploy gets a line per import, `init: ok`,
/// its smoke call and `ok:` (exit 0); one importing an interface the host does not know gets
/// `refused:` naming it (exit 1); a router checked as a handler is refused for its world.
#[test]
fn check_script_reports_and_exits_by_verdict() {
    let check = |world: &str, file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["check-script", world, file])
            .output()
            .expect("wasmgate check-script");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, report) = check("router", wasmgate_tests::RUST_TEMPLATE_ROUTER);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("import wasmgate:gateway/types@0.1.0: granted"), "{report}");
    assert!(report.contains("init: ok") && report.contains("-> Decision::Forward(101)"), "{report}");
    assert!(report.lines().last().is_some_and(|l| l.starts_with("ok: ")), "{report}");
    let (code, report) = check("router", wasmgate_tests::UNKNOWN_IMPORT);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("import acme:secrets/vault: unknown: refused"), "{report}");
    assert!(
        report.lines().last().is_some_and(|l| l.starts_with("refused: ") && l.contains("acme:secrets/vault"))
    );
    let (code, report) = check("handler", wasmgate_tests::RUST_TEMPLATE_ROUTER);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("does not export `wasmgate:gateway/handler`"), "{report}");
}

/// Fencing in the binary: `wasmgate run` stopped (SIGSTOP) until its node id key expires while
/// another process claims the id; on SIGCONT it closes its sessions with 1012 and serves again
/// under a fresh id, on the same listener addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_that_lost_its_node_id_rejoins_under_a_new_one() {
    use wasmgate_tests::servers::{EtcdServer, RedisServer};
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let (backend, _) = counting_backend().await;
    let cluster = format!(
        "[cluster]\nredis_url = \"{}\"\netcd_endpoints = [\"{}\"]\nttl_s = 2\n",
        redis.url(),
        etcd.endpoint()
    );
    let s = setup(backend, &cluster);
    let gateway = Gateway::start(&s.config, s.ws, &[], &[]).await;
    let claimed = |gateway: &Gateway| -> Vec<u64> {
        let log = gateway.log.lock();
        let lines = log.iter().filter(|l| l["fields"]["message"] == "node id claimed in Redis");
        lines.filter_map(|l| l["fields"]["node"].as_u64()).collect()
    };
    gateway.wait_logged("node id claimed in Redis").await;
    let id = claimed(&gateway)[0];
    let mut client = gateway.client("ivy").await;

    gateway.signal("STOP");
    let expired = Instant::now() + PROMPT;
    loop {
        let held: Option<String> = redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{id}"))).await;
        if held.is_none() {
            break;
        }
        assert!(Instant::now() < expired, "the stopped gateway's id key never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (redis_url, etcd_endpoint) = (redis.url(), etcd.endpoint());
    let usurper = wasmgate_tests::Harness::start_with(move |c| {
        c.node.id = id as u32;
        c.cluster.redis_url = Some(redis_url);
        c.cluster.etcd_endpoints = vec![etcd_endpoint];
        c.cluster.ttl_s = 2;
    })
    .await;
    assert_eq!(u64::from(usurper.gateway.node_id()), id, "another process claims the id");
    gateway.signal("CONT");

    wasmgate_tests::expect_error_then_close(&mut client, "node_restarting", Some(1012)).await;
    gateway.wait_logged("wasmgate stopped").await;
    let rejoined = Instant::now() + PROMPT;
    let again = loop {
        if let Ok(mut client) = Client::ws(&format!("ws://{}/", s.ws), false).await
            && client.login(1, &token("ivy")).await.is_ok()
        {
            break client;
        }
        assert!(Instant::now() < rejoined, "the gateway did not serve again: {:?}", gateway.log.lock());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(again);
    let ids = claimed(&gateway);
    assert_eq!(ids.len(), 2, "claimed twice: {ids:?}");
    assert_ne!(ids[1], id, "rejoined under a fresh id");
}

/// Safe defaults (docs/security.md): a listener bound off loopback with the development JWT
/// secret (or the example admin token) refuses to start and names the key; on loopback the
/// same config starts, with a warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_with_a_known_secret_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = wasmgate_examples::bench::free_port().expect("a free port");
    let refused = |sets: Vec<String>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
        command.current_dir(dir.path()).arg("--log-format").arg("json");
        for set in &sets {
            command.args(["--set", set]);
        }
        let mut child = command.arg("run").stderr(Stdio::piped()).spawn().expect("running wasmgate");
        let deadline = Instant::now() + PROMPT;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the gateway started with a known secret on a public listener");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("its output");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let public = format!("listen.tcp=\"0.0.0.0:{port}\"");
    let (code, said) = refused(vec![
        public.clone(),
        "listen.admin=\"127.0.0.1:0\"".into(),
        "listen.ws=\"127.0.0.1:0\"".into(),
    ]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("scripts.auth.config.secret") && said.contains("listen.tcp"), "{said}");
    let (code, said) = refused(vec![
        public,
        "listen.admin=\"127.0.0.1:0\"".into(),
        "listen.ws=\"127.0.0.1:0\"".into(),
        "scripts.auth.config.secret=\"our-own-secret\"".into(),
        "admin.token=\"change-me-admin-token\"".into(),
    ]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("admin.token"), "{said}");

    // On loopback: starts, and warns.
    let (ws, admin) = (free_addr(), free_addr());
    let config = dir.path().join("loopback.toml");
    std::fs::write(&config, format!("[listen]\nws = \"{ws}\"\ntcp = \"127.0.0.1:0\"\nadmin = \"{admin}\"\n"))
        .expect("config");
    let mut gateway = Gateway::start(&config, ws, &[], &[]).await;
    let warned = gateway
        .wait_logged("holds a publicly known example value: accepted on loopback only (docs/security.md)")
        .await;
    assert_eq!(warned["key"], "scripts.auth.config.secret");
    gateway.signal("TERM");
    assert_eq!(gateway.exited(Duration::from_secs(10)).await.0, Some(0));
}

/// With `listen.admin_tls`, the admin commands of the CLI reach the HTTPS admin listener,
/// trusting the certificate the config names (`[tls] cert`) and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_reach_an_https_admin_listener() {
    let (backend, _) = counting_backend().await;
    let ca = wasmgate_tests::tls::TestCa::new("admin CA");
    let probe = tempfile::tempdir().expect("temp dir");
    ca.issue(&probe.path().join("cert.pem"), &probe.path().join("key.pem"));
    let extra = "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[admin]\ntoken = \"cli-admin-token\"";
    let at = setup(backend, extra);
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(probe.path().join(file), at.dir.path().join(file)).expect("copy");
    }
    let mut gateway = Gateway::start(&at.config, at.ws, &["--set", "listen.admin_tls=true"], &[]).await;
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .arg("--config")
            .arg(&at.config)
            .args(args)
            .output()
            .expect("the CLI");
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), said)
    };
    let (code, said) = cli(&["--set", "listen.admin_tls=true", "scripts"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("router"), "{said}");
    // Another certificate in the config than the one served: refused.
    ca.issue(&probe.path().join("other.pem"), &probe.path().join("other-key.pem"));
    let other = format!("tls.cert=\"{}\"", probe.path().join("other.pem").display());
    let (code, said) = cli(&["--set", "listen.admin_tls=true", "--set", &other, "scripts"]);
    assert_eq!(code, Some(1), "{said}");
    gateway.signal("TERM");
    assert_eq!(gateway.exited(Duration::from_secs(10)).await.0, Some(0));
}

/// Text logs to something that is not a terminal carry no ANSI colour codes (journald, files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_have_no_colour_codes() {
    use std::io::BufRead as _;
    let (backend, _) = counting_backend().await;
    let at = setup(backend, "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["--log-format", "text", "--config"])
        .arg(&at.config)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wasmgate");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let done = line.contains("wasmgate serving");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + STARTUP;
    while !lines.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().expect("reader");
    assert!(lines.iter().any(|l| l.contains("wasmgate serving")), "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "colour codes in {lines:?}");
}

/// A script trapping on every message costs one log line per trap, with no backtrace at `warn`,
/// and at most a burst of them: repeated lines are rate-limited (docs/operations.md, Logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_script_does_not_flood_the_log() {
    let (backend, _) = counting_backend().await;
    let router = format!("[scripts.router]\npath = \"{}\"", wasmgate_tests::HOSTILE_ROUTER);
    let at = setup(backend, &router);
    let args = ["--set", "rate_limits.msg_per_s=0"];
    let gateway = Gateway::start(&at.config, at.ws, &args, &[]).await;
    let mut client = gateway.client("trapper").await;
    for _ in 0..120 {
        let seq = client.send(900, b"").await.expect("send"); // the hostile router panics
        let (error, _) = client.recv_reply(4, seq, PROMPT).await.expect("an error frame per trap");
        assert_eq!(wasmgate_tests::error_of(&error.body).0, "script_error");
    }
    let log = gateway.log.lock().clone();
    let traps: Vec<&str> = log
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .filter(|m| m.starts_with("script call trapped"))
        .collect();
    assert!(!traps.is_empty(), "no trap logged");
    assert!(traps.len() <= 55, "{} trap lines for 120 traps: not rate-limited", traps.len());
    for line in &traps {
        assert!(!line.contains('\n') && !line.contains("wasm backtrace"), "one line, no backtrace: {line}");
        assert!(line.contains("panic") || line.contains("unreachable"), "names the trap: {line}");
    }
}

/// Context switches of the process's thread named `name` so far (`/proc/<pid>/task/*`).
fn thread_switches(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        let count = |key: &str| -> u64 {
            status.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0)
        };
        return Some(count("voluntary_ctxt_switches:") + count("nonvoluntary_ctxt_switches:"));
    }
    None
}

/// An idle gateway's epoch ticker sleeps (a ticking one switches ~1,000 times a second), and
/// the first call after that wakes it: an endless loop still ends at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_ticker_sleeps_while_no_script_runs() {
    let (backend, _) = counting_backend().await;
    let router = format!("[scripts.router]\npath = \"{}\"", wasmgate_tests::HOSTILE_ROUTER);
    let at = setup(backend, &router);
    let gateway = Gateway::start(&at.config, at.ws, &["--set", "scripts.deadline_ms=100"], &[]).await;
    let mut client = gateway.client("sleeper").await;
    let pid = gateway.child.id();
    let switches = || thread_switches(pid, "wasmgate-epoch").expect("the epoch thread");

    // Quiet: fewer than 20 switches in a second, within 30 s (login ran scripts just now).
    let deadline = Instant::now() + STARTUP;
    loop {
        let before = switches();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during = switches() - before;
        if during < 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the epoch thread still switches {during} times a second");
    }

    let before = switches();
    let started = Instant::now();
    let seq = client.send(901, b"").await.expect("send"); // the hostile router loops
    let (error, _) = client.recv_reply(4, seq, PROMPT).await.expect("an error frame at the deadline");
    assert_eq!(wasmgate_tests::error_of(&error.body).0, "script_error");
    assert!(started.elapsed() < Duration::from_secs(5), "the loop ran {:?}", started.elapsed());
    assert!(switches() > before, "the loop did not wake the ticker");
}

/// `wasmgate replay` on the recording example of docs/evidence.md: no difference against the
/// default router (exit 0); a recording whose answer the router would not give is reported
/// with its kind (exit 1); a file that is not a recording is a one-line error naming the line.
#[test]
fn replay_runs_the_documented_recording_and_exits_by_verdict() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/evidence.md")).expect("doc");
    let example =
        doc.split("```jsonl\n").nth(1).and_then(|rest| rest.split("```").next()).expect("jsonl example");
    let dir = tempfile::tempdir().expect("dir");
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, wasmgate::embedded::DEFAULT_ROUTER).expect("router");
    let replay = |name: &str, text: &str, extra: &[&str]| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("recording");
        let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .arg("replay")
            .arg(&file)
            .arg(&router)
            .args(extra)
            .output()
            .expect("wasmgate replay");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = replay("same.rec", example, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 2 events of `router`") && stdout.contains("same: 2"), "{stdout}");

    let changed =
        example.replace(r#""answer":{"route":{"Forward":101}}"#, r#""answer":{"route":{"Forward":102}}"#);
    assert_ne!(changed, example);
    let (code, stdout, stderr) = replay("changed.rec", &changed, &["--json"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(
        (&summary["different"], &summary["differences"]["dest"]),
        (&serde_json::json!(1), &serde_json::json!(1))
    );
    assert_eq!(summary["listed"][0]["seq"], 0);
    assert_eq!(stderr.trim(), "wasmgate: 1 of 2 events differ");

    let broken = format!("{}\n{{\"seq\":\n", example.lines().next().unwrap_or_default());
    let (code, _, stderr) = replay("broken.rec", &broken, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.lines().count() == 1 && stderr.contains("line 2"), "{stderr}");
}

/// Sends unmapped message 777; returns the answer's message id (4: an error frame).
async fn unmapped(client: &mut Client) -> u32 {
    client.send(777, b"unmapped").await.expect("send");
    client.recv_within(PROMPT).await.expect("answer").packet().expect("a packet").msg_id
}

/// `wasmgate deploy --shadow`, `shadow`, `record`, `replay` and `promote` against a running
/// gateway: the candidate (the default router with `default_dest`) differs from the live one
/// on an unmapped message only; the live answers stay until the promote.
#[tokio::test]
async fn cli_shadow_record_replay_and_promote() {
    let (backend, _) = counting_backend().await;
    let s = setup(backend, "[admin]\ntoken = \"process-admin-token\"");
    let gateway = Gateway::start(&s.config, s.ws, &[], &[]).await;
    let router = s.dir.path().join("router.wasm");
    std::fs::write(&router, wasmgate::embedded::DEFAULT_ROUTER).expect("router file");
    let router = router.to_str().expect("path").to_string();
    let config = s.config.clone();
    let cli = move |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("wasmgate CLI");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let candidate_config = r#"{"default_dest":101}"#;
    let (code, stdout, stderr) =
        cli(&["deploy", "--shadow", "router", &router, "--script-config", candidate_config]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let started: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert!(started["candidate_version"].is_string(), "{started}");

    let mut client = gateway.client("shadowed").await;
    assert_eq!(unmapped(&mut client).await, 4, "the live router rejects 777 (an error frame)");
    let report = loop {
        let (code, stdout, _) = cli(&["shadow", "router"]);
        assert_eq!(code, Some(0), "{stdout}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
        if report["events"]["compared"] == 1 {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["differences"]["kind"], 1, "reject vs forward: {report}");

    let out = s.dir.path().join("router.rec");
    let record_args = ["record", "router", "--seconds", "2", "--out", out.to_str().expect("path")];
    let recorder = {
        let cli = cli.clone();
        let args: Vec<String> = record_args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unmapped(&mut client).await, 4);
    let (code, stdout, stderr) = recorder.join().expect("record thread");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("\"events\":1"), "{stdout}");
    let (code, stdout, _) = cli(&["replay", out.to_str().expect("path"), &router]);
    assert_eq!(code, Some(0), "the live router replays the same: {stdout}");
    let (code, stdout, stderr) =
        cli(&["replay", out.to_str().expect("path"), &router, "--script-config", candidate_config]);
    assert_eq!((code, stderr.trim()), (Some(1), "wasmgate: 1 of 1 events differ"), "{stdout}");

    let (code, stdout, stderr) = cli(&["promote", "router"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let seq = client.send(777, b"unmapped").await.expect("send");
    let (echo, _) = client.recv_reply(777, seq, PROMPT).await.expect("forwarded to default_dest");
    assert_eq!(&echo.body[..], b"unmapped");
    let (code, _, stderr) = cli(&["shadow", "router"]);
    assert_eq!(code, Some(1), "no shadow after the promote: {stderr}");
}
