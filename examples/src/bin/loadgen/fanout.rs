//! Scenario `fanout`: one room of `members` WebSocket sessions; one member publishes
//! `messages` messages and every member (the publisher too) counts what reaches it.
//!
//! - `wasmgate`: the release gateway; members log in (auth script) and join room `bench`
//!   (rooms script); a message is a room message (id 7) the rooms script broadcasts.
//! - `node-ws`: Node's `ws` in broadcast mode, one process (every connection is the room).
//! - `mosquitto`: MQTT 3.1.1 over its WebSocket listener; members subscribe to topic `bench`
//!   at QoS 0 (rooms = topics), the publisher publishes to it at QoS 0.
//!
//! Deliveries/s is what all members received over the time from the first send to the last
//! receipt. One member in `sample` also reads each message's send time for the delivery
//! latency (one clock: the generator's). The clients share the 2 cores with the server, so
//! the server's own CPU time per delivery (from `/proc`) is printed too: it is the figure a
//! machine running only the server would scale with.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt, stream};
use mqttbytes::QoS;
use mqttbytes::v4::{self as mqtt, Packet as Mqtt};
use tokio_tungstenite::tungstenite::Message;
use wasmgate::protocol::client::{decode_binary, encode_binary};
use wasmgate_examples::bench::{GatewayProcess, cpu_seconds, free_port, percentile_ms};
use wasmgate_examples::client::{mint_token, ws_config};

use super::peers::{Servers, mosquitto, node_ws};
use super::{LOGIN, SECRET};

/// Join and room-message ids of the default routes.
const JOIN: u32 = 5;
const ROOM_MESSAGE: u32 = 7;
const ROOM: &str = "bench";
/// Largest MQTT packet a member accepts, bytes.
const MQTT_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutTarget {
    Wasmgate,
    NodeWs,
    Mosquitto,
}

/// What one target did with one room size.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: u64,
    /// Server CPU time (all its processes) per delivery, ns.
    pub server_ns_per_delivery: f64,
    pub join_s: f64,
}

/// The knobs of one run (from the command line).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub members: usize,
    pub messages: usize,
    /// Messages/s the publisher offers; 0: as fast as it can write.
    pub rate: f64,
    pub payload: usize,
    pub sample: usize,
    /// Members connecting at once.
    pub concurrency: usize,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn start(
    target: FanoutTarget,
    load: &Load,
    gateway: Option<&std::path::Path>,
) -> anyhow::Result<Servers> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    match target {
        FanoutTarget::Wasmgate => {
            let admin = free_port()?;
            // A member's queue holds the whole burst: this measures throughput, not the
            // slow-consumer policy (the peers queue without a bound).
            let queue = format!("pending_write_num = {}\n", (load.messages + 16).max(256));
            let config = format!(
                "{}[rooms]\nbuckets = 8\n[scripts.rooms]\nconfig = {{ max_members = {} }}\n",
                super::gateway_config(port, 0, admin, load.members + 16, &queue),
                load.members + 16,
            );
            let ready = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let gateway = GatewayProcess::start(gateway, &config, ready).await?;
            Ok(Servers { children: Vec::new(), gateway: Some(gateway), _dir: dir, port })
        }
        FanoutTarget::NodeWs => {
            let node = node_ws(port, 1, "broadcast").await?;
            Ok(Servers { children: vec![node], gateway: None, _dir: dir, port })
        }
        FanoutTarget::Mosquitto => {
            let broker = mosquitto(port, dir.path()).await?;
            Ok(Servers { children: vec![broker], gateway: None, _dir: dir, port })
        }
    }
}

/// Connects member `n` and makes it a member of the room: wasmgate login + join, MQTT
/// CONNECT + SUBSCRIBE; Node's room is every connection.
async fn join(target: FanoutTarget, port: u16, n: usize) -> anyhow::Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/ws");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(&url)?;
    if target == FanoutTarget::Mosquitto {
        // MQTT over WebSocket names its subprotocol (MQTT 3.1.1 section 6).
        request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
        .await
        .context("WebSocket handshake")?;
    match target {
        FanoutTarget::Wasmgate => {
            let token = mint_token(SECRET, &format!("fanout-{n}"), None, 3600)?;
            request_reply(&mut ws, LOGIN, token.as_bytes()).await.context("login")?;
            let body = format!(r#"{{"room":"{ROOM}"}}"#);
            request_reply(&mut ws, JOIN, body.as_bytes()).await.context("join")?;
        }
        FanoutTarget::NodeWs => {}
        FanoutTarget::Mosquitto => {
            let mut out = BytesMut::new();
            mqtt::Connect::new(format!("fanout-{n}")).write(&mut out).map_err(mqtt_error)?;
            let mut subscribe = mqtt::Subscribe::new(ROOM, QoS::AtMostOnce);
            subscribe.pkid = 1; // a SUBSCRIBE's packet id is non-zero (MQTT 3.1.1 section 2.3.1)
            subscribe.write(&mut out).map_err(mqtt_error)?;
            ws.send(Message::Binary(out.freeze())).await?;
            let mut buffer = BytesMut::new();
            let mut acked = (false, false);
            while !(acked.0 && acked.1) {
                for packet in next_mqtt(&mut ws, &mut buffer).await? {
                    match packet {
                        Mqtt::ConnAck(ack) if ack.code == mqtt::ConnectReturnCode::Success => acked.0 = true,
                        Mqtt::ConnAck(ack) => bail!("mosquitto refused the connection: {:?}", ack.code),
                        Mqtt::SubAck(_) => acked.1 = true,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(ws)
}

fn mqtt_error(e: mqttbytes::Error) -> anyhow::Error {
    anyhow::anyhow!("MQTT: {e:?}")
}

/// Sends one wasmgate request and waits (30 s at most) for its reply.
async fn request_reply(ws: &mut Ws, msg_id: u32, body: &[u8]) -> anyhow::Result<()> {
    let mut frame = BytesMut::new();
    encode_binary(msg_id, 1, body, &mut frame);
    ws.send(Message::Binary(frame.freeze())).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Binary(frame)))) => match decode_binary(frame) {
            Ok(p) if p.msg_id == msg_id => Ok(()),
            Ok(p) => bail!("answered with message {} {:?}", p.msg_id, String::from_utf8_lossy(&p.body)),
            Err(e) => bail!("undecodable answer: {e}"),
        },
        other => bail!("answered with {other:?}"),
    }
}

/// Reads WebSocket messages into `buffer` until it holds at least one whole MQTT packet;
/// returns every whole packet (mosquitto may split or join packets across messages).
async fn next_mqtt(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    buffer: &mut BytesMut,
) -> anyhow::Result<Vec<Mqtt>> {
    loop {
        let packets = parse_mqtt(buffer)?;
        if !packets.is_empty() {
            return Ok(packets);
        }
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => buffer.extend_from_slice(&data),
            Ok(Some(Ok(_))) => {}
            other => bail!("mosquitto answered with {other:?}"),
        }
    }
}

/// The whole MQTT packets at the front of `buffer` (taken out of it).
fn parse_mqtt(buffer: &mut BytesMut) -> anyhow::Result<Vec<Mqtt>> {
    let mut packets = Vec::new();
    loop {
        match mqtt::read(buffer, MQTT_MAX) {
            Ok(packet) => packets.push(packet),
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(packets),
            Err(e) => return Err(mqtt_error(e)),
        }
    }
}

/// Message `i` as the target's publish frame; its first 8 payload bytes (wasmgate: `data.t`)
/// carry the send time, ns since `epoch`.
fn publish_frame(target: FanoutTarget, i: usize, epoch: Instant, pad: &str) -> anyhow::Result<Bytes> {
    let t = epoch.elapsed().as_nanos() as u64;
    let mut out = BytesMut::new();
    match target {
        FanoutTarget::Wasmgate => {
            let body = format!(r#"{{"room":"{ROOM}","data":{{"t":{t},"i":{i},"p":"{pad}"}}}}"#);
            encode_binary(ROOM_MESSAGE, i as u32 + 1, body.as_bytes(), &mut out);
        }
        FanoutTarget::NodeWs => {
            out.put_u64_le(t);
            out.put_slice(pad.as_bytes());
        }
        FanoutTarget::Mosquitto => {
            let mut payload = t.to_le_bytes().to_vec();
            payload.extend_from_slice(pad.as_bytes());
            mqtt::Publish::new(ROOM, QoS::AtMostOnce, payload).write(&mut out).map_err(mqtt_error)?;
        }
    }
    Ok(out.freeze())
}

/// Send time (ns since the epoch) of a delivered message, when the member samples.
fn stamp(target: FanoutTarget, body: &[u8]) -> Option<u64> {
    match target {
        FanoutTarget::Wasmgate => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v["data"]["t"].as_u64()
        }
        _ => Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?)),
    }
}

/// What one member saw: deliveries, when the last arrived, sampled latencies (ns).
struct Seen {
    count: u64,
    last: Option<Instant>,
    latencies: Vec<u64>,
}

/// Counts deliveries on one member until `expect` arrived, nothing came for `idle`, or the
/// stream ended.
async fn receive(
    target: FanoutTarget,
    mut rx: impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    expect: u64,
    sample: bool,
    epoch: Instant,
    idle: Duration,
) -> Seen {
    let mut seen = Seen { count: 0, last: None, latencies: Vec::new() };
    let mut buffer = BytesMut::new();
    // One timer, pushed back as deliveries arrive (tokio moves a later deadline without
    // touching its wheel), not a timer set and cancelled per frame.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    while seen.count < expect {
        let data = tokio::select! {
            biased;
            next = rx.next() => match next {
                Some(Ok(Message::Binary(data))) => data,
                _ => break,
            },
            () = &mut idle_timer => break,
        };
        let now = Instant::now();
        idle_timer.as_mut().reset(tokio::time::Instant::from_std(now) + idle);
        let mut count = |body: &[u8]| {
            seen.count += 1;
            seen.last = Some(now);
            if sample && let Some(sent) = stamp(target, body) {
                let at = now.duration_since(epoch).as_nanos() as u64;
                seen.latencies.push(at.saturating_sub(sent));
            }
        };
        match target {
            FanoutTarget::Wasmgate => match decode_binary(data) {
                Ok(p) if p.msg_id == ROOM_MESSAGE => count(&p.body),
                _ => {}
            },
            FanoutTarget::NodeWs => count(&data),
            FanoutTarget::Mosquitto => {
                buffer.extend_from_slice(&data);
                let Ok(packets) = parse_mqtt(&mut buffer) else { break };
                for packet in packets {
                    if let Mqtt::Publish(p) = packet {
                        count(&p.payload);
                    }
                }
            }
        }
    }
    seen
}

/// Runs the scenario once on `target`; prints its line.
pub async fn run(
    target: FanoutTarget,
    load: &Load,
    gateway: Option<&std::path::Path>,
) -> anyhow::Result<Figures> {
    let servers = start(target, load, gateway).await?;
    let opened = Instant::now();
    let port = servers.port;
    let members: Vec<Ws> = stream::iter(0..load.members)
        .map(|n| join(target, port, n))
        .buffered(load.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("{target:?}: joining the room"))?;
    let join_s = opened.elapsed().as_secs_f64();
    // Settle, so every subscription is in place before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let epoch = Instant::now();
    // A member gives up after this long without a delivery (mosquitto takes seconds to start
    // delivering a burst to 10k subscribers).
    let idle = Duration::from_secs(30);
    let expect = load.messages as u64;
    let mut members = members.into_iter();
    let (mut publisher, publisher_rx) = members.next().context("no members")?.split();
    let mut readers = vec![tokio::spawn(receive(target, publisher_rx, expect, false, epoch, idle))];
    for (i, ws) in members.enumerate() {
        let sample = (i + 1) % load.sample.max(1) == 0;
        readers.push(tokio::spawn(receive(target, ws, expect, sample, epoch, idle)));
    }
    let pids = servers.pids();
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let pad = "x".repeat(load.payload);
    let start = Instant::now();
    for i in 0..load.messages {
        if load.rate > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / load.rate)).into()).await;
        }
        publisher.send(Message::Binary(publish_frame(target, i, epoch, &pad)?)).await?;
    }
    let mut seen = Vec::with_capacity(readers.len());
    for reader in readers {
        seen.push(reader.await?);
    }
    let cpu = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before;
    let delivered: u64 = seen.iter().map(|s| s.count).sum();
    let end = seen.iter().filter_map(|s| s.last).max().unwrap_or(start);
    let seconds = end.duration_since(start).as_secs_f64().max(1e-9);
    let mut latencies: Vec<u64> = seen.iter().flat_map(|s| s.latencies.iter().copied()).collect();
    latencies.sort_unstable();
    let figures = Figures {
        deliveries_per_s: delivered as f64 / seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        lost: (load.members as u64 * expect).saturating_sub(delivered),
        server_ns_per_delivery: cpu * 1e9 / delivered.max(1) as f64,
        join_s,
    };
    println!(
        "fanout {target:?} room of {} x {} messages ({}): {:.0} deliveries/s | latency p50 {:.2} ms p99 {:.2} ms | lost {} | server cpu {:.0} ns/delivery | joined in {:.1} s",
        load.members,
        load.messages,
        if load.rate > 0.0 { format!("{}/s", load.rate) } else { "max rate".into() },
        figures.deliveries_per_s,
        figures.p50_ms,
        figures.p99_ms,
        figures.lost,
        figures.server_ns_per_delivery,
        join_s,
    );
    drop(servers);
    Ok(figures)
}

/// The JSON of one run.
pub fn json(f: &Figures) -> serde_json::Value {
    serde_json::json!({
        "deliveries_per_s": f.deliveries_per_s.round(), "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
        "lost": f.lost, "server_ns_per_delivery": f.server_ns_per_delivery.round(), "join_s": f.join_s,
    })
}
