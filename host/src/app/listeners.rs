//! Binding and serving the client and admin listeners, plain and TLS, and keeping the TLS
//! certificate current (docs/security.md).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};

use crate::admin::{self, AdminCtx};
use crate::config::Config;
use crate::downstream::{self, Admission, SessionCtx};
use crate::tls::{self, ALPN_HTTP1, Certificates};

/// How often the certificate files are checked for changes.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The bound listeners; `None` where the config has none.
pub(super) struct Bound {
    ws: Option<TcpListener>,
    wss: Option<TcpListener>,
    tcp: Option<TcpListener>,
    tcp_tls: Option<TcpListener>,
    admin: Option<TcpListener>,
}

/// Where the listeners are bound (the real port when configured with port 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Addrs {
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tcp_tls: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Binds `addr` (none: no listener), with `SO_REUSEPORT` when `reuse_port`.
async fn bind(addr: Option<SocketAddr>, what: &str, reuse_port: bool) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = if reuse_port {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            s.listen(1024)
        })
    } else {
        TcpListener::bind(addr).await
    };
    Ok(Some(listener.with_context(|| format!("binding the {what} listener on {addr}"))?))
}

impl Bound {
    /// Binds every configured listener; the first failure is the error.
    pub(super) async fn bind(config: &Config) -> anyhow::Result<Self> {
        let (listen, shared) = (&config.listen, config.listen.reuse_port);
        Ok(Self {
            ws: bind(listen.ws, "WebSocket", shared).await?,
            wss: bind(listen.wss, "WebSocket TLS", shared).await?,
            tcp: bind(listen.tcp, "TCP", shared).await?,
            tcp_tls: bind(listen.tcp_tls, "TCP TLS", shared).await?,
            admin: bind(listen.admin, "admin", false).await?,
        })
    }

    pub(super) fn addrs(&self) -> Addrs {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        Addrs {
            ws: addr(&self.ws),
            wss: addr(&self.wss),
            tcp: addr(&self.tcp),
            tcp_tls: addr(&self.tcp_tls),
            admin: addr(&self.admin),
        }
    }

    /// Serves every listener until shutdown: client listeners with `ctx`, the admin listener
    /// with `admin`, TLS ones with `certificates` (present whenever a TLS listener is
    /// configured: validated).
    pub(super) fn serve(
        self,
        ctx: &Arc<SessionCtx>,
        admin: Arc<AdminCtx>,
        certificates: Option<&Arc<Certificates>>,
    ) {
        let handshake = Duration::from_millis(ctx.config.timeouts.handshake_ms);
        let acceptor = |alpn: &[&[u8]]| certificates.map(|c| tls::Acceptor::new(c, alpn));
        if let Some(listener) = self.ws {
            let refused = Bytes::from_static(downstream::ws::REFUSED);
            let accept =
                downstream::accept_loop(ctx.clone(), listener, "websocket", refused, downstream::ws::serve);
            ctx.tasks.spawn(accept);
        }
        if let (Some(listener), Some(acceptor)) = (self.wss, acceptor(&[ALPN_HTTP1])) {
            let serve = over_tls(acceptor, handshake, downstream::ws::serve::<tls::ServerStream>);
            let accept = downstream::accept_loop(ctx.clone(), listener, "websocket_tls", Bytes::new(), serve);
            ctx.tasks.spawn(accept);
        }
        if let Some(listener) = self.tcp {
            let refused = downstream::tcp::refused(ctx);
            let accept =
                downstream::accept_loop(ctx.clone(), listener, "tcp", refused, downstream::tcp::serve);
            ctx.tasks.spawn(accept);
        }
        if let (Some(listener), Some(acceptor)) = (self.tcp_tls, acceptor(&[])) {
            let serve = over_tls(acceptor, handshake, downstream::tcp::serve_tls::<tls::ServerStream>);
            let accept = downstream::accept_loop(ctx.clone(), listener, "tcp_tls", Bytes::new(), serve);
            ctx.tasks.spawn(accept);
        }
        if let Some(listener) = self.admin {
            let tls = if ctx.config.listen.admin_tls { acceptor(&[ALPN_HTTP1]) } else { None };
            ctx.tasks.spawn(admin::serve(admin, listener, tls));
        }
        if let Some(certificates) = certificates {
            ctx.tasks.spawn(watch_certificates(certificates.clone(), ctx.shutdown.clone()));
        }
    }
}

/// A TLS listener's connection handler: the handshake (within `handshake`), then `serve` on
/// the TLS stream; a failed handshake ends the connection (counted by the acceptor).
fn over_tls<F, Fut>(
    acceptor: tls::Acceptor,
    handshake: Duration,
    serve: F,
) -> impl Fn(Arc<SessionCtx>, TcpStream, SocketAddr, Admission) -> BoxFuture<'static, ()>
where
    F: Fn(Arc<SessionCtx>, tls::ServerStream, SocketAddr, Admission) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    move |ctx, stream, peer, admission| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            if let Some(stream) = acceptor.accept(stream, handshake).await {
                serve(ctx, stream, peer, admission).await;
            }
        })
    }
}

/// Reloads the certificate when its files change (modification time or size), until shutdown.
async fn watch_certificates(certificates: Arc<Certificates>, shutdown: tokio_util::sync::CancellationToken) {
    let stamp = |c: &Certificates| -> Vec<Option<(SystemTime, u64)>> {
        c.files()
            .iter()
            .map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    };
    let mut seen = stamp(&certificates);
    let mut every = tokio::time::interval(CERT_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = stamp(&certificates);
        if now != seen {
            seen = now;
            // A failure is logged and counted by `reload`; the old certificate stays.
            let _ = certificates.reload();
        }
    }
}
