//! The stream against rustls' own client (tokio-rustls), over real loopback sockets: data
//! both ways in pieces and in bulk, TLS 1.2 and 1.3, a client's key update, both ways of
//! ending, a peer that is not TLS, forged and oversized records, and what an idle connection
//! keeps.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientStream;
use wasmgate_tests::tls::TestCa;

use super::{ServerStream, accept};
use crate::config::TlsConfig;
use crate::metrics::Metrics;
use crate::tls::Certificates;

const LIMIT: Duration = Duration::from_secs(10);

/// A connected pair: the server side after its handshake, the client side after its own.
async fn pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (ServerStream, ClientStream<TcpStream>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("stream tests");
    ca.issue(&cert, &key);
    let config = TlsConfig { cert: Some(cert), key: Some(key) };
    let certificates = Certificates::load(&config, &Metrics::new()).expect("load").expect("configured");
    let server_config = certificates.server_config(&[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.expect("accept");
        accept(io, server_config).await
    });
    let client = ca.connect_with(addr, &[b"http/1.1"], versions).await.expect("client handshake");
    let server =
        tokio::time::timeout(LIMIT, server).await.expect("in time").expect("task").expect("server handshake");
    (server, client)
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_crosses_both_ways_in_pieces_and_in_bulk_over_tls_1_2_and_1_3() {
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let (mut server, mut client) = pair(versions).await;
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));

        // Small messages, read through a small buffer.
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hel");
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"lo");

        // 300 KiB up and 8 MiB down: many records, reads that end mid-record, and a server
        // whose writes outrun a client that reads only later (the socket pushes back).
        let up = bytes(300 * 1024, 1);
        let down = bytes(8 << 20, 7);
        let (up2, down2) = (up.clone(), down.clone());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let sender = tokio::spawn(async move {
            client_write.write_all(&up2).await.unwrap();
            client_write
        });
        let writer = tokio::spawn(async move {
            let mut received = vec![0u8; up.len()];
            server.read_exact(&mut received).await.unwrap();
            assert!(received == up, "the client's bytes arrived unchanged");
            server.write_all(&down2).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        let mut received = vec![0u8; down.len()];
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(LIMIT, client_read.read_exact(&mut received)).await.expect("in time").unwrap();
        assert!(received == down, "the server's bytes arrived unchanged");
        let server = writer.await.unwrap();
        let client_write = sender.await.unwrap();
        drop((server, client_read.unsplit(client_write)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_keeps_no_buffer() {
    let (mut server, mut client) = pair(rustls::DEFAULT_VERSIONS).await;
    for round in 0..3u8 {
        let message = bytes(20_000, round);
        client.write_all(&message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == message);
        server.write_all(&message).await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert!(got == message);
    }
    // A read that finds nothing, as an idle session's does.
    let mut buf = [0u8; 64];
    assert!(tokio::time::timeout(Duration::from_millis(50), server.read(&mut buf)).await.is_err());
    assert_eq!(server.incoming.capacity(), 0, "received ciphertext buffer");
    assert_eq!(server.tls.plaintext.capacity(), 0, "plaintext buffer");
    assert_eq!(server.tls.outgoing.capacity(), 0, "outgoing buffer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_update_is_followed() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().expect("key update");
        let message = bytes(1000, round);
        client.write_all(&message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == message, "round {round}: client to server after its key update");
        server.write_all(&message).await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert!(got == message, "round {round}: server to client after the key update");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_ends_reads_cleanly_and_a_bare_tcp_end_does_not() {
    // The client's close_notify: the server reads the data before it, then the end.
    let (mut server, mut client) = pair(rustls::DEFAULT_VERSIONS).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("a clean end");
    assert_eq!(got, b"last words");
    // The server's shutdown sends its close_notify: the client sees a clean end too.
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("the client sees close_notify");
    assert!(rest.is_empty());

    // The TCP stream ending (FIN) without close_notify is an unexpected end.
    let (mut server, client) = pair(rustls::DEFAULT_VERSIONS).await;
    let (mut tcp, _) = client.into_inner();
    tcp.shutdown().await.unwrap();
    let mut buf = [0u8; 16];
    let err = server.read(&mut buf).await.expect_err("no close_notify");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_tls_gets_an_alert_and_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    TestCa::new("stream tests").issue(&cert, &key);
    let config = TlsConfig { cert: Some(cert), key: Some(key) };
    let certificates = Certificates::load(&config, &Metrics::new()).expect("load").expect("configured");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server_config = certificates.server_config(&[]);
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.expect("accept");
        accept(io, server_config).await.map(drop)
    });
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let err = tokio::time::timeout(LIMIT, server).await.expect("in time").unwrap().expect_err("not TLS");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, plain.read_to_end(&mut answer)).await.expect("closed");
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert record: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_oversized_record_ends_the_connection_with_an_error() {
    // A record whose tag does not verify (bytes the client's keys did not make).
    let (mut server, mut client) = pair(rustls::DEFAULT_VERSIONS).await;
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    forged.extend_from_slice(&[0xab; 0x40]);
    client.get_mut().0.write_all(&forged).await.unwrap();
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(LIMIT, server.read(&mut buf)).await.expect("in time").expect_err("forged");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");

    // A record header announcing more than TLS allows (RFC 8446 section 5.2): refused at the
    // header, before its bytes are held.
    let (mut server, mut client) = pair(rustls::DEFAULT_VERSIONS).await;
    client.get_mut().0.write_all(&[0x17, 0x03, 0x03, 0xff, 0xff, 0, 0, 0]).await.unwrap();
    let err =
        tokio::time::timeout(LIMIT, server.read(&mut buf)).await.expect("in time").expect_err("oversized");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(server.incoming.len() < 64, "{} bytes held", server.incoming.len());
}

#[test]
fn the_stream_is_send() {
    fn send<T: Send + Unpin>() {}
    send::<ServerStream>();
}
