//! `client`: mint a dev token, or log in and send one message over WebSocket or TCP.

use std::time::Duration;

use clap::{Parser, Subcommand};
use wasmgate::config::{DEV_JWT_SECRET, RoutesConfig, TcpFramingConfig};
use wasmgate_examples::client::{Client, Received, mint_token};

/// Example wasmgate client.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token the default auth script accepts.
    Token {
        #[arg(long)]
        user: String,
        /// Defaults to the embedded config's development secret.
        #[arg(long, default_value = DEV_JWT_SECRET)]
        secret: String,
        #[arg(long)]
        issuer: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Log in, send one message, print what comes back for a while.
    Send {
        /// WebSocket URL, e.g. ws://127.0.0.1:7100/ws
        #[arg(long, conflicts_with = "tcp")]
        ws: Option<String>,
        /// TCP address, e.g. 127.0.0.1:7101 (4-byte big-endian length prefix)
        #[arg(long)]
        tcp: Option<std::net::SocketAddr>,
        /// Use JSON text frames (WebSocket only).
        #[arg(long)]
        text: bool,
        #[arg(long)]
        token: String,
        /// Message id to send (see message_map.json).
        #[arg(long, default_value_t = 100)]
        msg_id: u32,
        /// Body (UTF-8; JSON in text mode is passed as-is).
        #[arg(long, default_value = "hello")]
        data: String,
        /// How long to print incoming packets, in ms.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
        /// Join this room (route 5) after login, before sending; repeatable.
        #[arg(long)]
        join: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Token { user, secret, issuer, ttl } => {
            println!("{}", mint_token(&secret, &user, issuer.as_deref(), ttl)?);
        }
        Command::Send { ws, tcp, text, token, msg_id, data, wait_ms, join } => {
            let mut client = match (ws, tcp) {
                (Some(url), _) => Client::ws(&url, text).await?,
                (None, Some(addr)) => Client::tcp(addr, &TcpFramingConfig::default()).await?,
                (None, None) => anyhow::bail!("give --ws URL or --tcp ADDR"),
            };
            let routes = RoutesConfig::default();
            let login = match client.login(routes.login, &token).await {
                Ok(login) => login,
                Err(e) => {
                    println!("login refused: {e}");
                    if let Ok(Received::Closed { code, reason }) =
                        client.recv_within(Duration::from_secs(1)).await
                    {
                        println!("closed: code={code:?} reason={reason}");
                    }
                    std::process::exit(1);
                }
            };
            println!("login: {}", String::from_utf8_lossy(&login.body));
            for room in join {
                let seq = client.send(routes.join, room.as_bytes()).await?;
                // The answer (or an error frame) carries the join's seq.
                let answer = loop {
                    let packet = client.recv_within(Duration::from_secs(10)).await?.packet()?;
                    if packet.seq == seq {
                        break packet;
                    }
                };
                println!("join {room}: msg_id={} {}", answer.msg_id, String::from_utf8_lossy(&answer.body));
            }
            let seq = client.send(msg_id, data.as_bytes()).await?;
            println!("sent: msg_id={msg_id} seq={seq} body={data}");
            let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match client.recv_within(left).await {
                    Ok(Received::Packet(p)) => {
                        println!(
                            "recv: msg_id={} seq={} body={}",
                            p.msg_id,
                            p.seq,
                            String::from_utf8_lossy(&p.body)
                        );
                    }
                    Ok(Received::Closed { code, reason }) => {
                        println!("closed: code={code:?} reason={reason}");
                        break;
                    }
                    Err(_) => {
                        client.close().await?;
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}
