//! The session driver with a context built by hand — no listener, no running gateway — and a
//! transport made of channels: the seam `SessionCtx` gives.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SessionCtx;
use super::driver;
use super::session_io::{Inbound, Transport};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::protocol::client::{Packet, SharedPacket};
use crate::rooms::Rooms;
use crate::script::bindings::MessageRoute;
use crate::script::check::offline_limits;
use crate::script::{Auth, Handlers, Rooms as RoomsScript, Router, ScriptSource, Scripts};
use crate::session::{CloseReason, Registry, SessionIdGen, TransportKind};
use crate::upstream::{NodeIdentity, Upstreams};

const SECRET: &str = "driver-test-secret";

/// What the fake transport was asked to write: packets `(msg_id, seq, body)`, then the close.
#[derive(Debug)]
enum Written {
    Packet(u32, u32, String),
    Close(CloseReason),
}

/// A connection made of two channels: packets in, what was written out.
struct Channels {
    from_client: mpsc::UnboundedReceiver<Packet>,
    to_client: mpsc::UnboundedSender<Written>,
}

impl Transport for Channels {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        self.from_client.poll_recv(cx).map(|next| match next {
            Some(packet) => Inbound::Packet(packet),
            None => Inbound::Closed,
        })
    }
    fn put(&mut self, msg_id: u32, seq: u32, body: &[u8]) -> std::io::Result<()> {
        let _ = self.to_client.send(Written::Packet(msg_id, seq, String::from_utf8_lossy(body).into_owned()));
        Ok(())
    }
    fn put_shared(&mut self, packet: &SharedPacket) -> std::io::Result<()> {
        self.put(packet.msg_id, packet.seq, &packet.body)
    }
    fn put_close(&mut self, reason: CloseReason, _message: &str) {
        let _ = self.to_client.send(Written::Close(reason));
    }
    fn buffered(&self) -> usize {
        0
    }
    fn poll_write_out(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A session context of real parts: the embedded default scripts (auth with `SECRET`, the
/// router sending 100 to dest 101), no pools, no cluster.
async fn context() -> Arc<SessionCtx> {
    let config = Arc::new(Config::default());
    let metrics = Metrics::new();
    let limits = offline_limits(&config);
    let source = |name: &str, bytes: &[u8], config_json: &str| ScriptSource {
        name: name.into(),
        bytes: bytes.into(),
        config_json: config_json.into(),
    };
    let auth = source("auth", crate::embedded::DEFAULT_AUTH, &format!(r#"{{"secret":"{SECRET}"}}"#));
    let router = source("router", crate::embedded::DEFAULT_ROUTER, "{}");
    let rooms_script = source("rooms", crate::embedded::DEFAULT_ROOMS, "{}");
    let routes = vec![MessageRoute { msg_id: 100, dest_id: 101 }];
    let scripts = Arc::new(Scripts {
        auth: Auth::load(&auth, limits.clone(), &metrics).await.expect("auth"),
        router: Router::load(&router, limits.clone(), &metrics, routes).await.expect("router"),
        rooms: RoomsScript::load(&rooms_script, limits.clone(), &metrics).await.expect("rooms"),
        handlers: Handlers::new(None, limits, &metrics),
    });
    let (registry, tasks, shutdown) =
        (Arc::new(Registry::default()), TaskTracker::new(), CancellationToken::new());
    let rooms = Arc::new(Rooms::new(&config.rooms, registry.clone(), &metrics, &tasks, shutdown.clone()));
    let delivery = Arc::new(Delivery::new(registry.clone(), rooms.clone(), None));
    let node = NodeIdentity { id: 1, name: "test".into() };
    let upstreams = Upstreams::new(
        registry.clone(),
        rooms.clone(),
        metrics.clone(),
        config.upstream.clone(),
        node,
        tasks.clone(),
        delivery.clone(),
    );
    let deadlines = Arc::new(crate::session::Deadlines::new(
        Duration::from_millis(config.timeouts.login_ms),
        Duration::from_millis(config.timeouts.heartbeat_ms),
    ));
    tasks.spawn(deadlines.clone().run(registry.clone(), shutdown.clone()));
    Arc::new(SessionCtx {
        ids: SessionIdGen::new(1),
        conn_limit: Arc::new(Semaphore::new(config.limits.max_conn_num)),
        peers: super::abuse::PeerLimits::new(&config.rate_limits, &metrics),
        deadlines,
        config,
        registry,
        metrics,
        scripts,
        rooms,
        delivery,
        cluster: None,
        user_centre: None,
        upstreams,
        shutdown,
        tasks,
    })
}

fn token(user: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &Claims { sub: user, exp }, &key).unwrap()
}

/// The next thing written, within a second.
async fn written(rx: &mut mpsc::UnboundedReceiver<Written>) -> Written {
    tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.expect("written in time").expect("a write")
}

fn packet(msg_id: u32, seq: u32, body: &str) -> Packet {
    Packet { msg_id, seq, body: Bytes::from(body.to_string()), es_id: None }
}

#[tokio::test]
async fn a_session_logs_in_routes_gets_classified_errors_and_closes() {
    let ctx = context().await;
    let (to_session, from_client) = mpsc::unbounded_channel();
    let (to_client, mut client) = mpsc::unbounded_channel();
    let peer = "127.0.0.1:9".parse().unwrap();
    let session = tokio::spawn(driver::run(
        ctx.clone(),
        TransportKind::Tcp,
        peer,
        None,
        Channels { from_client, to_client },
    ));
    let error = |written: Written| match written {
        Written::Packet(4, seq, body) => {
            (seq, serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"].clone())
        }
        other => panic!("expected an error frame, got {other:?}"),
    };
    to_session.send(packet(100, 1, "too early")).unwrap();
    assert_eq!(error(written(&mut client).await), (1, "not_logged_in".into()));
    to_session.send(packet(1, 2, &token("ada"))).unwrap();
    match written(&mut client).await {
        Written::Packet(1, 2, body) => assert!(body.contains(r#""user_id":"ada""#), "{body}"),
        other => panic!("expected the login answer, got {other:?}"),
    }
    assert_eq!(ctx.registry.of_user("ada").len(), 1);
    // Routed to dest 101, which this context has no pool for: the gateway's configuration.
    to_session.send(packet(100, 3, "hello")).unwrap();
    assert_eq!(error(written(&mut client).await), (3, "unknown_dest".into()));
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(r#"wasmgate_client_errors_total{code="unknown_dest",blame="gateway"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"wasmgate_client_errors_total{code="not_logged_in",blame="client"} 1"#));
    to_session.send(packet(3, 4, "")).unwrap();
    assert!(matches!(written(&mut client).await, Written::Close(CloseReason::Normal)));
    tokio::time::timeout(Duration::from_secs(2), session).await.expect("the session ends").unwrap();
    assert!(ctx.registry.is_empty(), "unregistered after the close");
}

/// What every idle session holds besides its buffers is this future (docs/architecture.md,
/// "An idle session in memory"): it must not grow back with the message path's state, nor
/// hold its arguments twice, nor a timer or a wait of its own, nor a disabled span, nor what
/// scripts are told about the session (320 bytes in a debug build; 440 with that record, the
/// span and a write deadline beside its timer; 544 waiting on its close signal with a future;
/// 720 with its login and heartbeat timer; 976 while `serve` was an async fn).
#[tokio::test]
async fn a_session_s_future_stays_under_320_bytes() {
    let ctx = context().await;
    let (_to_session, from_client) = mpsc::unbounded_channel();
    let (to_client, _client) = mpsc::unbounded_channel();
    let peer = "127.0.0.1:9".parse().unwrap();
    let session = driver::run(ctx, TransportKind::Tcp, peer, None, Channels { from_client, to_client });
    let size = std::mem::size_of_val(&session);
    assert!(size <= 320, "the session's future is {size} bytes");
}

/// A TCP session's task is its session future and the connection's admission, nothing more:
/// the layers around it must not keep their arguments (the context, the stream, the address)
/// beside it, nor the session's future twice (an `async` block awaiting a captured future):
/// 480 bytes in a debug build (656 with the length codec kept, the script-facing record and a
/// disabled span; 760 with a future waiting on the close signal, 920 with the session's own
/// timer), 1,152 with two async fns around it, 1,800 with an `async` block (docs/benchmarks.md,
/// "Arguments held once, TCP" and "Idle TCP under 1.5 KiB"). In a release build tokio rounds
/// the task up to a multiple of 128 bytes with its header: keep it under 640.
#[tokio::test]
async fn a_tcp_session_s_task_stays_under_480_bytes() {
    let ctx = context().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let (_client, (stream, peer)) = (client.unwrap(), accepted.unwrap());
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let task = super::tcp::serve(ctx, stream, peer, super::Admission { _permit: permit, _peer: None });
    let size = std::mem::size_of_val(&task);
    assert!(size <= 480, "a TCP session's task is {size} bytes");
}
