//! An example backend service speaking backend protocol v1 (docs/protocol.md).
//!
//! What it does with each client message (by message id), so every gateway path can be seen:
//! - 100 `echo`: replies with the same body.
//! - 101 `push`: replies, then pushes `{"push_to": <user>}` as message 500 to every session of
//!   the sender's user.
//! - 102 `relay`: relays the message to dest `relay_to` (backend -> gateway -> backend); the
//!   backend that receives the `Relayed` frame replies to the session with
//!   `relayed from <dest>: <body>`.
//! - 103 `kick`: asks the gateway to kick the sender.
//! - 104 `join`: adds the sender to the room named by the body (backend `JoinRoom`), then
//!   replies.
//! - 105 `room push`: pushes `{"room_push": <user>}` as message 501 to every member of the room
//!   named by the body (backend `PushRoom`), then replies.
//! - 106 `push all`: pushes `{"push_all": <user>}` as message 502 to every session (backend
//!   `PushAll`), then replies.
//! - anything else: replies with the same body.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use wasmgate::protocol::backend::{BackendCodec, BackendFrame};

/// Message ids the example backend understands.
pub mod ids {
    pub const ECHO: u32 = 100;
    pub const PUSH: u32 = 101;
    pub const RELAY: u32 = 102;
    pub const KICK: u32 = 103;
    pub const JOIN: u32 = 104;
    pub const ROOM_PUSH: u32 = 105;
    pub const PUSH_ALL: u32 = 106;
    /// Message id of the push sent for [`PUSH`].
    pub const PUSHED: u32 = 500;
    /// Message id of the room push sent for [`ROOM_PUSH`].
    pub const ROOM_PUSHED: u32 = 501;
    /// Message id of the push sent for [`PUSH_ALL`].
    pub const ALL_PUSHED: u32 = 502;
}

/// Backend settings.
#[derive(Debug, Clone, Copy)]
pub struct BackendOptions {
    /// Dest id that message 102 is relayed to.
    pub relay_to: u32,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self { relay_to: 101 }
    }
}

/// Serves gateway connections on `listener` until `shutdown` is cancelled; then closes the
/// listener and every connection.
pub async fn run(listener: TcpListener, options: BackendOptions, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("backend accept failed: {e}");
                    continue;
                }
            },
        };
        // Replies are small frames: without this, Nagle holds each one until the previous is
        // acknowledged, adding milliseconds per round trip.
        let _ = stream.set_nodelay(true);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = serve(stream, peer, options) => if let Err(e) = r {
                    tracing::debug!(%peer, "backend connection ended: {e}");
                },
            }
        });
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, options: BackendOptions) -> anyhow::Result<()> {
    let mut framed = Framed::new(stream, BackendCodec::default());
    while let Some(frame) = framed.next().await {
        for answer in handle(frame?, peer, options) {
            framed.feed(answer).await?;
        }
        framed.flush().await?;
    }
    Ok(())
}

/// The frames the backend answers `frame` with.
pub fn handle(frame: BackendFrame, peer: SocketAddr, options: BackendOptions) -> Vec<BackendFrame> {
    match frame {
        BackendFrame::Hello { version, node_id, node_name } => {
            tracing::info!(%peer, version, node_id, node_name, "gateway connected");
            vec![]
        }
        BackendFrame::Forward { session_id, msg_id, seq, user_id, body, .. } => {
            let reply = BackendFrame::Reply { session_id, msg_id, seq, body: body.clone() };
            match msg_id {
                ids::PUSH => {
                    let push = serde_json::json!({ "push_to": user_id }).to_string();
                    vec![
                        reply,
                        BackendFrame::PushUser { user_id, msg_id: ids::PUSHED, body: Bytes::from(push) },
                    ]
                }
                ids::RELAY => {
                    vec![BackendFrame::Relay { dest_id: options.relay_to, session_id, msg_id, seq, body }]
                }
                ids::KICK => {
                    vec![BackendFrame::Kick { session_id, reason: "kicked by the example backend".into() }]
                }
                ids::JOIN => {
                    let room = String::from_utf8_lossy(&body).into_owned();
                    vec![BackendFrame::JoinRoom { session_id, room }, reply]
                }
                ids::ROOM_PUSH => {
                    let room = String::from_utf8_lossy(&body).into_owned();
                    let push = Bytes::from(serde_json::json!({ "room_push": user_id }).to_string());
                    let frame = BackendFrame::PushRoom {
                        room,
                        exclude_session: 0,
                        msg_id: ids::ROOM_PUSHED,
                        body: push,
                    };
                    vec![frame, reply]
                }
                ids::PUSH_ALL => {
                    let push = Bytes::from(serde_json::json!({ "push_all": user_id }).to_string());
                    vec![BackendFrame::PushAll { msg_id: ids::ALL_PUSHED, body: push }, reply]
                }
                _ => vec![reply],
            }
        }
        BackendFrame::Relayed { from_dest, session_id, msg_id, seq, body } => {
            let text = format!("relayed from {from_dest}: {}", String::from_utf8_lossy(&body));
            vec![BackendFrame::Reply { session_id, msg_id, seq, body: Bytes::from(text) }]
        }
        other => {
            tracing::warn!(%peer, "unexpected frame from the gateway: {other:?}");
            vec![]
        }
    }
}
