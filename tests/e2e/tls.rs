//! TLS end to end (docs/security.md#tls), with certificates of a CA made in each test: the
//! gateway's TLS listeners and certificate rotation, and its own TLS connections to a
//! backend, Redis, etcd and the user centre.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmgate_tests::servers::{EtcdServer, RedisServer};
use wasmgate_tests::tls::{TestCa, tls_terminator};
use wasmgate_tests::{Backend, Client, Harness, PROMPT, echoes, error_of, token, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_tls_tcp_and_https_admin_serve_and_a_new_certificate_keeps_sessions() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let first_ca = TestCa::new("first CA");
    first_ca.issue(&cert, &key);
    let (cert_path, key_path) = (cert.clone(), key.clone());
    let h = Harness::start_with(move |c| {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        c.listen.wss = Some(any);
        c.listen.tcp_tls = Some(any);
        c.tls.cert = Some(cert_path);
        c.tls.key = Some(key_path);
        c.listen.admin_tls = true;
    })
    .await;
    let addrs = h.gateway.addrs();
    let mut https =
        first_ca.connect(addrs.admin.expect("admin"), &[b"http/1.1"]).await.expect("TLS to admin");
    https.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    let _ = https.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let (wss, tcp_tls) = (addrs.wss.expect("wss"), addrs.tcp_tls.expect("tcp_tls"));

    let tls = first_ca.connect(wss, &[b"http/1.1"]).await.expect("TLS to the wss listener");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    let mut over_wss =
        Client::ws_over(tls, &format!("wss://localhost:{}/ws", wss.port()), false).await.unwrap();
    over_wss.login(1, &token("wss-user")).await.expect("login over wss");
    echoes(&mut over_wss, "over wss").await;
    // TLS 1.2 as well as 1.3.
    let tls =
        first_ca.connect_with(tcp_tls, &[], &[&rustls::version::TLS12]).await.expect("TLS 1.2 to tcp_tls");
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let mut over_tls_tcp = Client::tcp_over(tls, &h.config.tcp);
    over_tls_tcp.login(1, &token("tls-tcp-user")).await.expect("login over TLS TCP");
    echoes(&mut over_tls_tcp, "over TLS TCP").await;

    // A client that trusts another CA, and a plain client on the TLS port, get nowhere.
    let other_ca = TestCa::new("second CA");
    assert!(other_ca.connect(wss, &[]).await.is_err(), "a certificate of an untrusted CA was accepted");
    let mut plain = tokio::net::TcpStream::connect(tcp_tls).await.unwrap();
    plain.write_all(b"\0\0\0\x0cnot a TLS client hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PROMPT, plain.read_to_end(&mut rest)).await.expect("closed");
    wait_until("failed handshakes are counted", || async {
        h.metric("wasmgate_tls_handshakes_total{outcome=\"failed\"}") >= 2.0
    })
    .await;

    // Rotation: a certificate of the second CA replaces the first at the next handshake; the
    // sessions opened before keep working.
    other_ca.issue(&cert, &key);
    wait_until("the new certificate is served", || async { other_ca.connect(wss, &[]).await.is_ok() }).await;
    assert!(first_ca.connect(wss, &[]).await.is_err(), "the old certificate is still served");
    echoes(&mut over_wss, "still over wss").await;
    echoes(&mut over_tls_tcp, "still over TLS TCP").await;

    // A broken certificate file keeps the one in use (the failed reload is counted).
    let failed_before = h.metric("wasmgate_tls_reloads_total{outcome=\"failed\"}");
    wasmgate_tests::write_atomic(cert.clone(), "-----BEGIN CERTIFICATE-----\nnot base64\n");
    wait_until("the failed reload is counted", || async {
        h.metric("wasmgate_tls_reloads_total{outcome=\"failed\"}") > failed_before
    })
    .await;
    let tls = other_ca.connect(tcp_tls, &[]).await.expect("the previous certificate is still served");
    let mut late = Client::tcp_over(tls, &h.config.tcp);
    late.login(1, &token("late-user")).await.expect("login after a failed reload");
    echoes(&mut over_wss, "after a failed reload").await;
}

/// A backend behind TLS (dest_map `"tls"`), `rediss://` Redis, `https://` etcd and an
/// `https://` user centre, each checked against the test CA; a dest whose certificate is not
/// trusted stays down and its messages are answered `upstream_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_redis_etcd_and_the_user_centre_are_reached_over_tls() {
    let files = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| files.path().join(name);
    let ca = TestCa::new("services CA");
    ca.issue(&path("cert.pem"), &path("key.pem"));
    ca.write_pem(&path("ca.pem"));
    let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let backend_tls = tls_terminator(&path("cert.pem"), &path("key.pem"), backend.addr).await;
    let redis = RedisServer::start_tls(&path("cert.pem"), &path("key.pem"), &path("ca.pem")).await;
    let etcd = EtcdServer::start_tls(&path("cert.pem"), &path("key.pem"), &path("ca.pem")).await;
    let (centre, mut notices) = crate::user_centre::user_centre(0).await;
    let centre_port = centre.trim_start_matches("http://").split(['/', ':']).nth(1).unwrap().parse().unwrap();
    let centre_tls =
        tls_terminator(&path("cert.pem"), &path("key.pem"), SocketAddr::from(([127, 0, 0, 1], centre_port)))
            .await;

    let ca_file = path("ca.pem");
    let dest_map = json!({
        "101": { "poolNums": 2, "srvAddr": backend_tls.to_string(), "tls": { "ca": ca_file, "serverName": "localhost" } },
        // The system's roots do not include the test CA: never up.
        "102": { "poolNums": 1, "srvAddr": backend_tls.to_string(), "tls": {} },
    });
    wasmgate_tests::write_atomic(path("dest_map.json"), &dest_map.to_string());
    wasmgate_tests::write_atomic(path("message_map.json"), &json!({ "100": 101, "103": 102 }).to_string());
    let (redis_url, etcd_endpoint) = (redis.url(), etcd.endpoint());
    let dir = files.path().to_path_buf();
    let h = Harness::start_with(move |c| {
        c.maps.dest_map = Some(dir.join("dest_map.json"));
        c.maps.message_map = Some(dir.join("message_map.json"));
        c.cluster.redis_url = Some(redis_url);
        c.cluster.redis_ca = Some(dir.join("ca.pem"));
        c.cluster.etcd_endpoints = vec![etcd_endpoint];
        c.cluster.etcd_ca = Some(dir.join("ca.pem"));
        c.user_centre.url = Some(format!("https://localhost:{}/notify", centre_tls.port()));
        c.user_centre.ca = Some(dir.join("ca.pem"));
    })
    .await;

    // The backend over TLS: dest 101 is up (the harness waited for it) and echoes.
    let mut client = h.logged_in_ws("over-tls").await;
    echoes(&mut client, "through a TLS upstream").await;
    // The user centre over https got the login.
    let (status, notice) =
        tokio::time::timeout(PROMPT, notices.recv()).await.expect("a notice").expect("a notice");
    assert_eq!(
        (status, notice["event"].as_str(), notice["user_id"].as_str()),
        (200, Some("login"), Some("over-tls"))
    );
    // Redis over TLS: the node id was claimed there; etcd over TLS: the node registered.
    let claimed: Option<String> =
        redis.query(redis::cmd("GET").arg(format!("wasmgate:node:{}", h.gateway.node_id()))).await;
    assert!(claimed.is_some(), "the node id key is in the TLS Redis");
    wait_until("the node registers in the TLS etcd", || async { !h.gateway.nodes().is_empty() }).await;
    let (status, ready) = h.admin("GET", "/readyz", "", false, None).await;
    assert_eq!(status, 503, "dest 102 is down: {ready}");
    assert!(ready["not_ready"].get("redis").is_none() && ready["not_ready"].get("etcd").is_none(), "{ready}");

    // Dest 102 does not trust the test CA: never up, its messages refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.gateway.upstream_connections_up(102), 0);
    let seq = client.send(103, b"to an untrusted backend").await.unwrap();
    let (error, _) = client.recv_reply(4, seq, PROMPT).await.expect("an error frame");
    assert_eq!(error_of(&error.body).0, "upstream_unavailable");
    assert!(h.metric("wasmgate_upstream_connections_up{dest=\"101\"}") >= 1.0);
}
