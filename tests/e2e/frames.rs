//! Malformed and oversized frames get the documented close; other sessions are unaffected.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use wasmgate::config::TcpFramingConfig;
use wasmgate_examples::client::Client;
use wasmgate_tests::{Harness, PROMPT, Received, error_of, expect_error_then_close, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ws_frames_close_with_documented_codes() {
    let h = Harness::start_with(|c| c.limits.max_msg_len = 1024).await;
    let mut bystander = h.logged_in_ws("bystander").await;

    let mut short = h.ws(false).await;
    short.send_ws_raw(Message::Binary(Bytes::from_static(&[0, 0, 1]))).await.unwrap();
    expect_error_then_close(&mut short, "malformed_frame", Some(1002)).await;

    let mut bad_json = h.ws(true).await;
    bad_json.send_ws_raw(Message::text("{not json")).await.unwrap();
    expect_error_then_close(&mut bad_json, "malformed_json", Some(1007)).await;

    // RFC 6455 section 8.1: a text frame that is not UTF-8 fails the connection with 1007.
    let mut not_utf8 = h.ws(true).await;
    let frame = Frame::message(Bytes::from_static(b"{\"id\": 1, \xff}"), OpCode::Data(Data::Text), true);
    not_utf8.send_ws_raw(Message::Frame(frame)).await.unwrap();
    expect_error_then_close(&mut not_utf8, "invalid_utf8", Some(1007)).await;

    let mut big = h.ws(false).await;
    big.login(1, &token("big")).await.unwrap();
    big.send(100, &vec![7u8; 4096]).await.unwrap();
    match big.recv_within(PROMPT).await.unwrap() {
        // The reader refuses at the frame's header; the error frame may not come first.
        Received::Packet(p) => {
            assert_eq!(error_of(&p.body).0, "message_too_big");
            assert!(matches!(
                big.recv_within(PROMPT).await.unwrap(),
                Received::Closed { code: Some(1009), .. }
            ));
        }
        Received::Closed { code, .. } => assert_eq!(code, Some(1009)),
    }

    let seq = bystander.send(100, b"unaffected").await.unwrap();
    bystander.recv_reply(100, seq, PROMPT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_tcp_frames_close_after_an_error_frame() {
    let h = Harness::start_with(|c| c.limits.max_msg_len = 1024).await;
    let mut short = h.tcp().await;
    short.send_tcp_raw(Bytes::from_static(&[1, 2, 3])).await.unwrap();
    expect_error_then_close(&mut short, "malformed_frame", None).await;

    let mut big = h.tcp().await;
    let mut frame = BytesMut::new();
    frame.put_u32(100);
    frame.put_u32(1);
    frame.put_slice(&[0u8; 2000]);
    big.send_tcp_raw(frame.freeze()).await.unwrap();
    expect_error_then_close(&mut big, "message_too_big", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_byte_little_endian_length_prefix() {
    let h = Harness::start_with(|c| {
        c.tcp = TcpFramingConfig { len_msg_len: 2, little_endian: true, ..Default::default() };
        c.limits.max_msg_len = 4096;
    })
    .await;
    let mut c = Client::tcp(h.gateway.tcp_addr().unwrap(), &h.config.tcp).await.unwrap();
    c.login(1, &token("le")).await.unwrap();
    let seq = c.send(100, b"little endian").await.unwrap();
    let (reply, _) = c.recv_reply(100, seq, PROMPT).await.unwrap();
    assert_eq!(&reply.body[..], b"little endian");
    // A big-endian client speaks garbage to this gateway and is closed, not served.
    let mut wrong = Client::tcp(
        h.gateway.tcp_addr().unwrap(),
        &TcpFramingConfig { len_msg_len: 2, little_endian: false, ..Default::default() },
    )
    .await
    .unwrap();
    wrong.send(1, token("x").as_bytes()).await.unwrap();
    let mut closed = false;
    for _ in 0..3 {
        if let Ok(Received::Closed { .. }) | Err(_) = wrong.recv_within(PROMPT).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a mis-framed client must be closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_many_times_the_read_buffer_arrives_whole() {
    // Both transports read through a 1 KiB buffer; a 60 KiB frame is read in many reads and
    // echoed intact (over TCP the write buffer also starts empty and grows for the echo).
    let h = Harness::start().await;
    let mut tcp = h.tcp().await;
    tcp.login(1, &token("large-tcp")).await.unwrap();
    for mut client in [h.logged_in_ws("large").await, tcp] {
        let body: Vec<u8> = (0..60 * 1024).map(|i| (i % 251) as u8).collect();
        let seq = client.send(100, &body).await.unwrap();
        let (echo, _) = client.recv_reply(100, seq, PROMPT).await.unwrap();
        assert_eq!(echo.body, body);
    }
}

/// RFC 6455 section 4.2.1: an upgrade whose `Sec-WebSocket-Key` is not 16 base64-encoded
/// bytes is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_bad_key_is_refused() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = Harness::start().await;
    let ws = h.gateway.ws_addr().unwrap();
    for (key, status) in [("dGhlIHNhbXBsZSBub25jZQ==", "101"), ("c2hvcnQ=", "400"), ("not base64!", "400")] {
        let mut stream = tokio::net::TcpStream::connect(ws).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 128];
        let n = tokio::time::timeout(PROMPT, stream.read(&mut head)).await.unwrap().unwrap();
        let line = String::from_utf8_lossy(&head[..n]).to_string();
        assert_eq!(line.split_whitespace().nth(1), Some(status), "key {key}: {line}");
    }
}

/// RFC 6455 section 5.5.2: a ping with nothing after it is answered at once (the pong must not
/// wait in the session's write buffer for the next packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_ping_is_answered_at_once() {
    use futures_util::{SinkExt as _, StreamExt as _};
    let h = Harness::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url()).await.expect("connect");
    ws.send(Message::Ping(Bytes::from_static(b"alone"))).await.unwrap();
    // Well before the login timer (`login_ms`, 5 s), the next thing that would wake the session.
    let soon = std::time::Duration::from_secs(2);
    match tokio::time::timeout(soon, ws.next()).await.expect("a pong before anything else happens") {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"alone"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

/// RFC 6455 sections 5.5.2-5.5.3 and 5.5.1 on a session: a ping is answered with a pong carrying
/// its payload, in order with the packets around it (the pong before the answer to a packet
/// sent after the ping), and a client's close is answered with a close echoing its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_closes_are_answered_in_order_with_packets() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let h = Harness::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url()).await.expect("connect");
    let mut heartbeat = BytesMut::new();
    heartbeat.put_u32(h.config.routes.heartbeat);
    heartbeat.put_u32(5);
    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    ws.send(Message::Binary(heartbeat.freeze())).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(PROMPT, ws.next()).await.expect("an answer") {
            Some(Ok(Message::Pong(payload))) => {
                seen.push(format!("pong {}", String::from_utf8_lossy(&payload)))
            }
            Some(Ok(Message::Binary(packet))) => seen.push(format!("packet seq {:?}", packet.get(4..8))),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["pong are you there", "packet seq Some([0, 0, 0, 5])"]);

    let bye = CloseFrame { code: CloseCode::Away, reason: "bye".into() };
    ws.send(Message::Close(Some(bye))).await.unwrap();
    match tokio::time::timeout(PROMPT, ws.next()).await.expect("a close reply") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A client still sending when the gateway closes it gets the close frame and no reset: the
/// gateway shuts its side down after the close frame and reads on until the client ends its
/// side (or `CLOSE_LINGER`, 1 s), so the client's later writes do not meet a closed socket
/// (whose reset would make client libraries drop the connection before reading the close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_at_its_close_reads_the_close_frame() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.ws_addr().unwrap()).await.unwrap();
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 256];
    let n = tokio::time::timeout(PROMPT, stream.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head[..n]));
    // An unmasked frame (RFC 6455 section 5.1): the gateway closes with 1002.
    stream.write_all(&[0x82, 2, 1, 2]).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stream.write_all(b"still sending").await.expect("a write after the close meets no reset");
    }
    let mut got = Vec::new();
    tokio::time::timeout(PROMPT, stream.read_to_end(&mut got)).await.unwrap().expect("no reset");
    let close = got.iter().position(|b| *b == 0x88).expect("a close frame");
    assert_eq!(got[close + 2..close + 4], 1002u16.to_be_bytes());
}
