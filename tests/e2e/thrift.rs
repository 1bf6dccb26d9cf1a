//! Thrift upstreams (seed 001, docs/protocol.md#thrift-upstreams) against a real Thrift
//! server: `examples/thrift/echo_server.py`, Apache Thrift's Python library serving the code
//! its compiler generates from `thrift/protoservice.thrift`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use wasmgate_tests::{Client, Harness, PROMPT, error_of, token, wait_until, write_atomic};

/// The example Thrift backend as a child process (killed on drop).
struct ThriftServer {
    child: Child,
    addr: SocketAddr,
}

impl ThriftServer {
    /// Starts it on `addr` (port 0: a free one) and waits until it accepts connections.
    async fn start(addr: Option<SocketAddr>, transport: &str, protocol: &str) -> Self {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/thrift");
        // Once per test process: concurrent runs would trip over each other's gen-py.tmp, and
        // a rerun replaces gen-py under the servers already importing it.
        static SETUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let setup = SETUP.get_or_init(|| {
            let status = Command::new(example.join("setup.sh")).status();
            status.expect("running examples/thrift/setup.sh").success()
        });
        assert!(*setup, "examples/thrift/setup.sh failed (is Debian's thrift-compiler installed?)");
        let addr = addr.unwrap_or_else(|| {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address")
        });
        let child = Command::new("python3")
            .arg(example.join("echo_server.py"))
            .args(["--port", &addr.port().to_string(), "--transport", transport, "--protocol", protocol])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 examples/thrift/echo_server.py");
        let server = Self { child, addr };
        wait_until("the thrift server accepts connections", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ThriftServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway whose dest 400 is `framed` (binary, session sharding, 500 ms timeout) and dest
/// 401 `buffered` (compact, user sharding, the seed's count x size), with message ids
/// 900-905 -> 400 and 1900-1905 -> 401.
async fn gateway_with(framed: SocketAddr, buffered: SocketAddr) -> Harness {
    // 500 messages pipelined in one burst: above the default per-session rate limit.
    let h = Harness::start_with(|c| c.rate_limits.msg_burst = 1_000).await;
    let dests = json!({
        "101": { "poolNums": 2, "srvAddr": h.backend.addr.to_string() },
        "400": { "poolNums": 2, "srvAddr": framed.to_string(), "protocol": "thrift",
                 "thrift": { "timeoutMs": 500 } },
        "401": { "count": 1, "size": 2, "srvAddr": buffered.to_string(), "protocol": "thrift",
                 "thrift": { "transport": "buffered", "protocol": "compact", "shardingId": "user" } },
    });
    write_atomic(h.dir.path().join("dest_map.json"), &dests.to_string());
    let mut routes = serde_json::Map::new();
    for id in 900..=905 {
        routes.insert(id.to_string(), json!(400));
        routes.insert((id + 1000).to_string(), json!(401));
    }
    routes.insert("100".into(), json!(101));
    write_atomic(h.dir.path().join("message_map.json"), &serde_json::Value::Object(routes).to_string());
    h.wait_upstream(400, 2).await;
    h.wait_upstream(401, 2).await;
    // Each file reloads on its own: pools up says nothing about the message_map, and a
    // message sent before it lands is answered `unknown_message`.
    wait_until("both maps are applied", || async {
        h.metric(r#"wasmgate_map_reloads_total{reason="ok"}"#) >= 2.0
    })
    .await;
    h
}

/// Logs in as `user` and returns the session id from the login reply.
async fn login(client: &mut Client, h: &Harness, user: &str) -> u64 {
    let reply = client.login(h.config.routes.login, &token(user)).await.expect("login");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("login reply JSON");
    body["session_id"].as_str().and_then(|s| s.parse().ok()).expect("session_id")
}

/// The error frame answering `seq`: (code, its `result` member).
async fn error_answer(client: &mut Client, h: &Harness, seq: u32, within: Duration) -> (String, Option<i64>) {
    let (packet, _) = client.recv_reply(h.config.routes.error, seq, within).await.expect("an error frame");
    let body: serde_json::Value = serde_json::from_slice(&packet.body).expect("error JSON");
    (error_of(&packet.body).0, body["result"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thrift_dests_answer_in_order_with_results_exceptions_and_timeouts() {
    let framed = ThriftServer::start(None, "framed", "binary").await;
    let buffered = ThriftServer::start(None, "buffered", "compact").await;
    let h = gateway_with(framed.addr, buffered.addr).await;

    // A WebSocket client over the framed binary dest: 500 messages pipelined, answered in
    // order with their seqs.
    let mut ws = h.ws(false).await;
    let session = login(&mut ws, &h, "4242").await;
    let mut sent = Vec::new();
    for i in 0..500u32 {
        let seq = ws.send(905, format!("m{i}").as_bytes()).await.expect("send");
        sent.push((seq, format!("m{i}")));
    }
    for (seq, body) in &sent {
        let packet = ws.recv_within(PROMPT).await.expect("a reply").packet().expect("a packet");
        assert_eq!((packet.msg_id, packet.seq, &packet.body[..]), (905, *seq, body.as_bytes()), "in order");
    }
    // sharding_id is the session id on dest 400, the user id on dest 401.
    let seq = ws.send(903, b"").await.unwrap();
    let (reply, _) = ws.recv_reply(903, seq, PROMPT).await.expect("903");
    assert_eq!(String::from_utf8_lossy(&reply.body), session.to_string());
    let seq = ws.send(1903, b"").await.unwrap();
    let (reply, _) = ws.recv_reply(1903, seq, PROMPT).await.expect("1903");
    assert_eq!(&reply.body[..], b"4242");

    // A TCP client (standard framing) over the buffered compact dest.
    let mut tcp = h.tcp().await;
    login(&mut tcp, &h, "tcp-user").await;
    for i in 0..50u32 {
        let body = format!("t{i}");
        let seq = tcp.send(1905, body.as_bytes()).await.unwrap();
        let (reply, _) = tcp.recv_reply(1905, seq, PROMPT).await.expect("echo over buffered compact");
        assert_eq!(reply.body, body.as_bytes());
    }
    // A user id that is not a number: sharding_id falls back to the session id.
    let seq = tcp.send(1903, b"").await.unwrap();
    let (reply, _) = tcp.recv_reply(1903, seq, PROMPT).await.expect("1903");
    assert!(String::from_utf8_lossy(&reply.body).parse::<u64>().is_ok_and(|id| id != 0));

    // result != 0 -> upstream_error carrying it; an exception -> upstream_error without one.
    for (client, offset) in [(&mut ws, 0), (&mut tcp, 1000)] {
        let seq = client.send(901 + offset, b"").await.unwrap();
        assert_eq!(error_answer(client, &h, seq, PROMPT).await, ("upstream_error".into(), Some(-3)));
        let seq = client.send(904 + offset, b"").await.unwrap();
        assert_eq!(error_answer(client, &h, seq, PROMPT).await, ("upstream_error".into(), None));
    }

    // Slower than the dest's 500 ms: upstream_timeout; its late reply is dropped and counted,
    // and the session is served on.
    let seq = ws.send(902, b"").await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(error_answer(&mut ws, &h, seq, Duration::from_secs(3)).await.0, "upstream_timeout");
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    wait_until("the late reply is counted", || async {
        h.metric(r#"wasmgate_upstream_bad_frames_total{dest="400",error="thrift_reply_to_no_call"}"#) >= 1.0
    })
    .await;
    let seq = ws.send(905, b"after").await.unwrap();
    let (reply, others) = ws.recv_reply(905, seq, PROMPT).await.expect("served after a timeout");
    assert_eq!((&reply.body[..], others.len()), (&b"after"[..], 0), "the late reply reached no one");
    assert_eq!(h.metric(r#"wasmgate_client_errors_total{code="upstream_timeout",blame="upstream"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_thrift_backend_answers_its_waiting_calls_and_recovers() {
    let mut framed = ThriftServer::start(None, "framed", "binary").await;
    let buffered = ThriftServer::start(None, "buffered", "compact").await;
    let h = gateway_with(framed.addr, buffered.addr).await;
    let mut ws = h.ws(false).await;
    login(&mut ws, &h, "7").await;

    // A call in flight when the backend dies is answered, not forgotten.
    let slow = ws.send(902, b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    framed.kill();
    assert_eq!(error_answer(&mut ws, &h, slow, PROMPT).await.0, "upstream_unavailable");
    wait_until("dest 400 is down", || async { h.gateway.upstream_connections_up(400) == 0 }).await;
    let seq = ws.send(905, b"x").await.unwrap();
    assert_eq!(error_answer(&mut ws, &h, seq, PROMPT).await.0, "upstream_unavailable");
    // The other dest is served meanwhile.
    let seq = ws.send(1905, b"y").await.unwrap();
    ws.recv_reply(1905, seq, PROMPT).await.expect("dest 401 still answers");

    // Back on the same port: the pool reconnects and the session is served again.
    let _restarted = ThriftServer::start(Some(framed.addr), "framed", "binary").await;
    h.wait_upstream(400, 2).await;
    let seq = ws.send(905, b"again").await.unwrap();
    let (reply, _) = ws.recv_reply(905, seq, PROMPT).await.expect("served after the restart");
    assert_eq!(&reply.body[..], b"again");
}

/// A client speaking seed 001's ES header (docs/protocol.md#es-packet-header), big-endian,
/// written from the documented layout.
struct EsClient {
    stream: tokio::net::TcpStream,
    es_id: u32,
}

/// One ES packet as received: (pack_type, user_id, token, es_id, session, body).
type EsPacket = (u16, u64, u32, u32, u64, Vec<u8>);

impl EsClient {
    async fn connect(addr: SocketAddr, es_id: u32) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self { stream, es_id }
    }

    async fn send(&mut self, pack_type: u16, token: u32, body: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        let mut packet = Vec::with_capacity(28 + body.len());
        packet.extend_from_slice(&((28 + body.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&pack_type.to_be_bytes());
        packet.extend_from_slice(&0u64.to_be_bytes()); // user_id: the gateway knows it
        packet.extend_from_slice(&token.to_be_bytes());
        packet.extend_from_slice(&self.es_id.to_be_bytes());
        packet.extend_from_slice(&0u64.to_be_bytes()); // session: likewise
        packet.extend_from_slice(body);
        self.stream.write_all(&packet).await.expect("write");
    }

    async fn recv(&mut self) -> EsPacket {
        use tokio::io::AsyncReadExt as _;
        let mut header = [0u8; 28];
        tokio::time::timeout(PROMPT, self.stream.read_exact(&mut header))
            .await
            .expect("in time")
            .expect("header");
        let u16_at = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap());
        let mut body = vec![0u8; usize::from(u16_at(0)) - 28];
        self.stream.read_exact(&mut body).await.expect("body");
        (u16_at(2), u64_at(4), u32_at(12), u32_at(16), u64_at(20), body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_header_clients_reach_a_thrift_dest_in_order_and_route_by_es_id() {
    let framed = ThriftServer::start(None, "framed", "binary").await;
    let h = Harness::start_with(|c| {
        c.tcp.header = wasmgate::config::TcpHeader::Es;
        c.rate_limits.msg_burst = 1_000;
        let es_dests = toml::Table::from_iter([("7".to_string(), toml::Value::Integer(400))]);
        c.scripts.router.config.insert("es_dests".into(), toml::Value::Table(es_dests));
    })
    .await;
    let dests = json!({
        "101": { "poolNums": 2, "srvAddr": h.backend.addr.to_string() },
        "400": { "poolNums": 2, "srvAddr": framed.addr.to_string(), "protocol": "thrift" },
    });
    write_atomic(h.dir.path().join("dest_map.json"), &dests.to_string());
    h.wait_upstream(400, 2).await;
    let addr = h.gateway.tcp_addr().expect("tcp listener");

    // ES 7: login, then every message goes to the Thrift dest (es_dests), answered in order
    // with the gateway's header fields filled in.
    let mut es7 = EsClient::connect(addr, 7).await;
    es7.send(1, 1, token("31337").as_bytes()).await;
    let (pack_type, _, token_back, _, _, body) = es7.recv().await;
    assert_eq!((pack_type, token_back), (1, 1), "{}", String::from_utf8_lossy(&body));
    let login: serde_json::Value = serde_json::from_slice(&body).expect("login reply JSON");
    let session: u64 = login["session_id"].as_str().and_then(|s| s.parse().ok()).expect("session id");
    let routed_400 = h.metric(r#"wasmgate_routed_total{dest="400",outcome="ok"}"#);
    for i in 0..500u32 {
        es7.send(100, 1000 + i, format!("m{i}").as_bytes()).await;
    }
    for i in 0..500u32 {
        let packet = es7.recv().await;
        assert_eq!(
            packet,
            (100, 31337, 1000 + i, 7, session, format!("m{i}").into_bytes()),
            "in order, header filled in"
        );
    }
    assert_eq!(
        h.metric(r#"wasmgate_routed_total{dest="400",outcome="ok"}"#) - routed_400,
        500.0,
        "routed by ES id"
    );

    // ES 8 has no es_dests entry: message_map sends 100 to the v1 echo backend (dest 101).
    let mut es8 = EsClient::connect(addr, 8).await;
    es8.send(1, 1, token("alice").as_bytes()).await;
    es8.recv().await;
    let routed_101 = h.metric(r#"wasmgate_routed_total{dest="101",outcome="ok"}"#);
    es8.send(100, 5, b"to v1").await;
    let (pack_type, user_id, token_back, es_id, _, body) = es8.recv().await;
    assert_eq!(
        (pack_type, user_id, token_back, es_id, &body[..]),
        (100, 0, 5, 8, &b"to v1"[..]),
        "a non-numeric user id is 0"
    );
    assert_eq!(h.metric(r#"wasmgate_routed_total{dest="101",outcome="ok"}"#) - routed_101, 1.0);

    // Errors are error packets (message 4) with the token of the packet they answer.
    es7.send(901, 77, b"").await;
    let (pack_type, _, token_back, _, _, body) = es7.recv().await;
    assert_eq!((pack_type, token_back), (4, 77));
    assert_eq!(error_of(&body).0, "upstream_error");
    // A pack_len shorter than the header closes the connection.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    es8.stream.write_all(&[0, 5]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PROMPT, es8.stream.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(rest.len() >= 28 && rest[2..4] == [0, 4], "an error packet before the close: {rest:?}");
    assert!(
        String::from_utf8_lossy(&rest[28..]).contains("malformed_frame"),
        "{}",
        String::from_utf8_lossy(&rest[28..])
    );
}
