//! Scenario `login-storm`: a reconnect storm. `logins` fresh WebSocket sessions, `concurrency`
//! at a time, each connects, sends the login frame (an HS256 JWT the auth script checks: seed
//! 000 step 4), waits for the answer and closes. Reports logins/s over the run, the login
//! latency (frame sent -> answer) and the connect latency (TCP + RFC 6455 handshake), p50 and
//! p99, and the gateway's CPU time per login. Connections come from source addresses
//! 127.0.0.2 .. 127.0.0.9 in turn, so closed sockets waiting out TIME_WAIT do not run the
//! generator out of ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;
use wasmgate::protocol::client::{decode_binary, encode_binary};
use wasmgate_examples::bench::{GatewayProcess, cpu_seconds, free_port, percentile_ms};
use wasmgate_examples::client::mint_token;

use super::{LOGIN, SECRET, bind_address_no_port};

/// Source addresses used in turn.
const SOURCES: usize = 8;

/// One login's timings, ns: (connect, login).
type Timing = (u64, u64);

async fn login_once(url: &str, server: SocketAddr, source: Ipv4Addr, token: &str) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4()?;
    bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let connected = Instant::now();
    let mut frame = BytesMut::new();
    encode_binary(LOGIN, 1, token.as_bytes(), &mut frame);
    ws.send(Message::Binary(frame.freeze())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let answered = Instant::now();
    match answer {
        Ok(Some(Ok(Message::Binary(frame)))) => match decode_binary(frame) {
            Ok(p) if p.msg_id == LOGIN => {}
            Ok(p) => bail!("login answered with message {} {:?}", p.msg_id, String::from_utf8_lossy(&p.body)),
            Err(e) => bail!("undecodable login answer: {e}"),
        },
        other => bail!("login answered with {other:?}"),
    }
    // A clean close (RFC 6455 section 7): the session ends as a real client's would.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok((
        connected.duration_since(started).as_nanos() as u64,
        answered.duration_since(connected).as_nanos() as u64,
    ))
}

/// Runs the storm against the release gateway; prints a line and the JSON result.
pub async fn run(logins: usize, concurrency: usize, gateway: Option<&Path>) -> anyhow::Result<()> {
    let (port, admin) = (free_port()?, free_port()?);
    let config = super::gateway_config(port, 0, admin, concurrency + 1000, "");
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let process = GatewayProcess::start(gateway, &config, server).await?;
    let url = format!("ws://{server}/ws");
    // Tokens are minted before the clock starts: the generator's HMAC is not the gateway's.
    let tokens: Vec<String> = (0..logins)
        .map(|n| mint_token(SECRET, &format!("storm-{n}"), None, 3600))
        .collect::<anyhow::Result<_>>()?;
    let cpu_before = cpu_seconds(process.pid());
    let started = Instant::now();
    let results: Vec<anyhow::Result<Timing>> = stream::iter(tokens.iter().enumerate())
        .map(|(n, token)| {
            let source = Ipv4Addr::new(127, 0, 0, 2 + (n % SOURCES) as u8);
            login_once(&url, server, source, token)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(process.pid()) - cpu_before;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("login-storm: {failed} logins failed, first: {e:#}");
    }
    let (mut connects, mut answers): (Vec<u64>, Vec<u64>) =
        results.into_iter().filter_map(Result::ok).unzip();
    connects.sort_unstable();
    answers.sort_unstable();
    let ok = answers.len();
    if ok == 0 {
        bail!("no login succeeded");
    }
    let rate = ok as f64 / seconds;
    println!(
        "login-storm: {ok} logins ({failed} failed) at concurrency {concurrency} in {seconds:.2} s = {rate:.0} logins/s | login p50 {:.3} ms p99 {:.3} ms | connect p50 {:.3} ms p99 {:.3} ms | gateway cpu {:.1} µs/login",
        percentile_ms(&answers, 0.5),
        percentile_ms(&answers, 0.99),
        percentile_ms(&connects, 0.5),
        percentile_ms(&connects, 0.99),
        cpu * 1e6 / ok as f64,
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "login-storm", "logins": ok, "failed": failed, "concurrency": concurrency,
            "seconds": seconds, "logins_per_s": rate.round(),
            "login_ms_p50": percentile_ms(&answers, 0.5), "login_ms_p99": percentile_ms(&answers, 0.99),
            "connect_ms_p50": percentile_ms(&connects, 0.5), "connect_ms_p99": percentile_ms(&connects, 0.99),
            "gateway_cpu_us_per_login": cpu * 1e6 / ok as f64,
        })
    );
    drop(process);
    Ok(())
}
