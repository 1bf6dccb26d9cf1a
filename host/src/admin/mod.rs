//! Admin HTTP (hyper) on its own port, or HTTPS with `listen.admin_tls` (docs/api.md).
//!
//! Open: `GET /healthz` (the process answers), `GET /readyz` ([`ready`]: upstreams, Redis,
//! etcd) and, unless `admin.open_metrics = false`, `GET /metrics` (Prometheus text 0.0.4, or
//! OpenMetrics when `Accept` asks for it). Everything else needs `Authorization: Bearer
//! <token>` with a scope ([`Scope`]): `push` for the push API ([`push`]), `deploy` for script
//! deployment ([`scripts`]), `read` for queries and, with `admin.profiling`, CPU profiles and
//! heap statistics ([`profile`]). `admin.token` has every scope, `admin.tokens` some. Without
//! any token that API answers 403 `api_disabled`. Every error is JSON
//! `{"error": "<code>", "reason": "<text>"}`.

mod evidence;
mod profile;
mod push;
mod ready;
mod scripts;
mod ui;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::{Config, Scope};
use crate::control::Control;
use crate::delivery::Delivery;
use crate::downstream::abuse::OpenPerIp;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use crate::rooms::Rooms;
use crate::session::Registry;
use crate::tls;
use crate::upstream::Upstreams;

/// What the admin API reads and acts on.
pub struct AdminCtx {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    /// Open sessions (`GET /sessions`, push-to-user answers).
    pub registry: Arc<Registry>,
    pub rooms: Arc<Rooms>,
    /// Where pushes go.
    pub delivery: Arc<Delivery>,
    /// Readiness, node liveness in push answers; `None` standalone.
    pub cluster: Option<Arc<Cluster>>,
    /// Readiness and queue depths.
    pub upstreams: Upstreams,
    /// Script deploys, rollbacks and listing.
    pub control: Arc<Control>,
    pub shutdown: CancellationToken,
}

/// Largest request body of the admin API, in bytes.
const MAX_BODY: usize = 1 << 20;

type HttpResponse = Response<Full<Bytes>>;

/// Serves admin requests until shutdown, over TLS when `tls` is given. At most
/// `admin.max_connections` connections at once, `admin.max_connections_per_ip` from one
/// address: a connection beyond either is closed at once (counted as
/// `limited{limit="admin_connections"}`), so slow or idle clients cannot take the process's
/// descriptors and one address cannot take every place.
pub(crate) async fn serve(ctx: Arc<AdminCtx>, listener: TcpListener, tls: Option<tls::Acceptor>) {
    let places = Arc::new(Semaphore::new(ctx.config.admin.max_connections));
    let per_ip = OpenPerIp::new(ctx.config.admin.max_connections_per_ip);
    let timeout = Duration::from_millis(ctx.config.admin.request_timeout_ms);
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (Ok(place), Ok(ip_slot)) = (places.clone().try_acquire_owned(), per_ip.admit(peer.ip())) else {
            ctx.metrics.limited("admin_connections");
            tracing::debug!(%peer, "admin connection refused: at the connection cap");
            continue;
        };
        let (ctx, tls) = (ctx.clone(), tls.clone());
        tokio::spawn(async move {
            let shutdown = ctx.shutdown.clone();
            let served = async {
                match tls {
                    None => serve_connection(ctx, stream, timeout).await,
                    Some(tls) => {
                        if let Some(stream) = tls.accept(stream, timeout).await {
                            serve_connection(ctx, stream, timeout).await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                () = served => {}
            }
            drop((place, ip_slot));
        });
    }
}

/// HTTP/1.1 on one connection: each request's headers must arrive within `timeout` of the
/// server waiting for them (so an idle keep-alive connection is closed after `timeout` too).
async fn serve_connection<S>(ctx: Arc<AdminCtx>, stream: S, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("admin connection: {e}");
    }
}

/// The request's body, at most `limit` bytes, read within `admin.request_timeout_ms`.
#[allow(clippy::result_large_err)]
async fn read_body(ctx: &AdminCtx, body: Incoming, limit: usize) -> Result<Bytes, HttpResponse> {
    let timeout = Duration::from_millis(ctx.config.admin.request_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {limit} bytes or unreadable: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive within admin.request_timeout_ms",
        )),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer.
fn json(status: StatusCode, value: serde_json::Value) -> HttpResponse {
    response(status, "application/json", value.to_string())
}

/// A JSON error: `{"error": code, "reason": reason}`.
fn error(status: StatusCode, code: &str, reason: impl std::fmt::Display) -> HttpResponse {
    json(status, serde_json::json!({ "error": code, "reason": reason.to_string() }))
}

/// The scope an endpoint needs; `None`: open to anyone.
fn scope_of(config: &Config, method: &Method, path: &str) -> Option<Scope> {
    match (method, path) {
        (&Method::GET, "/healthz" | "/readyz") => None,
        (&Method::GET, "/metrics") if config.admin.open_metrics => None,
        (&Method::POST, p) if p.starts_with("/push/") => Some(Scope::Push),
        (&Method::POST | &Method::DELETE, p) if p.starts_with("/scripts/") => Some(Scope::Deploy),
        _ => Some(Scope::Read),
    }
}

async fn respond(ctx: &AdminCtx, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_string();
    let known = matches!(
        path.as_str(),
        "/metrics"
            | "/healthz"
            | "/readyz"
            | "/push/session"
            | "/push/user"
            | "/push/room"
            | "/push/all"
            | "/rooms"
            | "/sessions"
            | "/scripts"
            | "/cluster/nodes"
            | "/maps"
            | "/debug/pprof/profile"
            | "/debug/pprof/flamegraph"
            | "/debug/heap"
    ) || path.starts_with("/scripts/")
        || ui::is_ui(&path);
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see docs/api.md (GET /metrics, /healthz, /readyz, /rooms, /sessions; POST /push/...)",
        );
    }
    if ui::is_ui(&path) {
        // The page holds no data (its API calls carry the token), but it is off with the API.
        let admin = &ctx.config.admin;
        if admin.token.is_none() && admin.tokens.is_empty() {
            let why = "the admin API is off: set `admin.token` (or `admin.tokens`) in the config";
            return error(StatusCode::FORBIDDEN, "api_disabled", why);
        }
        return match req.method() == Method::GET {
            true => ui::serve(&path),
            false => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the dashboard is GET only"),
        };
    }
    if let Some(scope) = scope_of(&ctx.config, req.method(), &path)
        && let Err(denied) = authorize(ctx, &req, scope)
    {
        return denied;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            ctx.upstreams.sample_queue_depths();
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            match accept.contains("application/openmetrics-text") {
                true => response(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, ctx.metrics.render_openmetrics()),
                false => response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, ctx.metrics.render()),
            }
        }
        (&Method::GET, "/healthz") => {
            json(StatusCode::OK, serde_json::json!({ "status": "ok", "sessions": ctx.registry.len() }))
        }
        (&Method::GET, "/readyz") => {
            let problems = ready::not_ready(ctx).await;
            match problems.is_empty() {
                true => json(StatusCode::OK, serde_json::json!({ "ready": true })),
                false => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "ready": false, "not_ready": problems }),
                ),
            }
        }
        (&Method::GET, "/debug/pprof/profile" | "/debug/pprof/flamegraph" | "/debug/heap") => {
            if !ctx.config.admin.profiling {
                return error(
                    StatusCode::FORBIDDEN,
                    "profiling_disabled",
                    "set `admin.profiling = true` to enable",
                );
            }
            match path.as_str() {
                "/debug/heap" => profile::heap(),
                "/debug/pprof/profile" => profile::cpu(req.uri().query(), profile::Output::Pprof).await,
                _ => profile::cpu(req.uri().query(), profile::Output::FlameGraph).await,
            }
        }
        _ => api(ctx, req, &path).await,
    }
}

/// Checks the bearer token (RFC 6750; the scheme name is case-insensitive, RFC 7235 section
/// 2.1) and that it carries `scope`. Tokens are compared through SHA-256 digests, so the time
/// taken does not depend on how much of a token matched.
#[allow(clippy::result_large_err)]
fn authorize(ctx: &AdminCtx, req: &Request<Incoming>, scope: Scope) -> Result<(), HttpResponse> {
    let admin = &ctx.config.admin;
    if admin.token.is_none() && admin.tokens.is_empty() {
        return Err(error(
            StatusCode::FORBIDDEN,
            "api_disabled",
            "the admin API is off: set `admin.token` (or `admin.tokens`) in the config",
        ));
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    let given = Sha256::digest(given.as_bytes());
    let matches = |token: &str| Sha256::digest(token.as_bytes()) == given;
    let scopes: Option<&[Scope]> = match admin.token.as_deref().is_some_and(matches) {
        true => Some(&[Scope::Push, Scope::Deploy, Scope::Read]),
        false => admin.tokens.iter().find(|t| matches(&t.token)).map(|t| t.scopes.as_slice()),
    };
    match scopes {
        Some(scopes) if scopes.contains(&scope) => Ok(()),
        Some(_) => {
            let mut denied = error(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this token lacks the `{}` scope", scope.name()),
            );
            let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", scope.name());
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                denied.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
            Err(denied)
        }
        None => {
            let mut denied = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token");
            denied.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(denied)
        }
    }
}

async fn api(ctx: &AdminCtx, req: Request<Incoming>, path: &str) -> HttpResponse {
    let method = req.method().clone();
    match (method, path) {
        (Method::GET, "/rooms") => {
            let query = req.uri().query().unwrap_or_default().to_string();
            let mut prefix = String::new();
            let mut limit = ctx.config.rooms.list_limit;
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                match &*key {
                    "prefix" => prefix = value.into_owned(),
                    "limit" => match value.parse::<usize>() {
                        Ok(n) => limit = n.min(ctx.config.rooms.list_limit),
                        Err(_) => {
                            return error(StatusCode::BAD_REQUEST, "bad_request", "limit must be a number");
                        }
                    },
                    _ => {}
                }
            }
            let (rooms, total) = ctx.rooms.list(&prefix, limit);
            json(StatusCode::OK, serde_json::json!({ "rooms": rooms, "total": total }))
        }
        (Method::GET, "/sessions") => {
            json(StatusCode::OK, serde_json::json!({ "sessions": ctx.registry.len() }))
        }
        (Method::GET, "/scripts") => scripts::list(ctx),
        (Method::GET, "/maps") => json(StatusCode::OK, serde_json::json!(ctx.control.map_status())),
        (Method::GET, "/cluster/nodes") => {
            let query = req.uri().query().unwrap_or_default().to_string();
            let node_type =
                form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "type").map(|(_, v)| v);
            let nodes = match (&ctx.cluster, node_type) {
                (None, _) => Vec::new(),
                (Some(cluster), Some(t)) => cluster.nodes.of_type(&t),
                (Some(cluster), None) => cluster.nodes.all(),
            };
            json(StatusCode::OK, serde_json::json!({ "node_id": ctx.config.node.id, "nodes": nodes }))
        }
        (Method::GET, _) if path.starts_with("/scripts/") && path.ends_with("/shadow") => {
            evidence::shadow_report(ctx, &path["/scripts/".len()..path.len() - "/shadow".len()])
        }
        (Method::DELETE, _) if path.starts_with("/scripts/") && path.ends_with("/shadow") => {
            evidence::stop_shadow(ctx, &path["/scripts/".len()..path.len() - "/shadow".len()])
        }
        (Method::POST, _) if path.starts_with("/scripts/") => {
            let rest = &path["/scripts/".len()..];
            if let Some(name) = rest.strip_suffix("/rollback") {
                return scripts::rollback(ctx, name).await;
            }
            if let Some(name) = rest.strip_suffix("/promote") {
                return evidence::promote(ctx, name).await;
            }
            if let Some(name) = rest.strip_suffix("/record") {
                return evidence::record(ctx, name, req.uri().query()).await;
            }
            if let Some(name) = rest.strip_suffix("/shadow") {
                let q = req.uri().query().map(str::to_string);
                let component = match read_body(ctx, req.into_body(), scripts::MAX_COMPONENT).await {
                    Ok(body) => body,
                    Err(refused) => return refused,
                };
                return evidence::start_shadow(ctx, name, q.as_deref(), component).await;
            }
            let config = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "config").map(|(_, v)| v.into_owned())
            });
            let component = match read_body(ctx, req.into_body(), scripts::MAX_COMPONENT).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            scripts::deploy(ctx, rest, component, config).await
        }
        (Method::POST, _) if path.starts_with("/push/") => {
            let form = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            let body = match read_body(ctx, req.into_body(), MAX_BODY).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            // `curl -d '{...}'` labels JSON as a form: a body that starts like JSON is JSON.
            let form = form && !body.trim_ascii_start().starts_with(b"{");
            push::handle(ctx, &path["/push/".len()..], form, &body).await
        }
        (method, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{method} is not allowed here: pushes and deploys are POST, queries GET, stopping a shadow DELETE"
            ),
        ),
    }
}
