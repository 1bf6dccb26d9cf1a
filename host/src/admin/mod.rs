//! Admin HTTP (hyper) on its own port (docs/api.md).
//!
//! Open: `GET /metrics` (Prometheus text 0.0.4, or OpenMetrics when `Accept` asks for it), `GET /healthz` (the process answers), `GET /readyz`
//! ([`ready`]: upstreams, Redis, etcd).
//! With `Authorization: Bearer <admin.token>`: the push API ([`push`]), queries
//! (`GET /rooms`, `GET /sessions`), script deployment ([`scripts`]) and, with
//! `admin.profiling`, CPU profiles and heap statistics ([`profile`]). Without a configured token that API answers 403
//! `api_disabled`. Every error is JSON `{"error": "<code>", "reason": "<text>"}`.

mod profile;
mod push;
mod ready;
mod scripts;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::Control;
use crate::delivery::Delivery;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use crate::rooms::Rooms;
use crate::session::Registry;
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

/// Serves admin requests until shutdown.
pub(crate) async fn serve(ctx: Arc<AdminCtx>, listener: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let shutdown = ctx.shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = conn => if let Err(e) = r { tracing::debug!("admin connection: {e}") },
            }
        });
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

async fn respond(ctx: &AdminCtx, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_string();
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
        (
            _,
            "/push/session" | "/push/user" | "/push/room" | "/push/all" | "/rooms" | "/sessions" | "/scripts"
            | "/cluster/nodes",
        ) => {
            if let Err(denied) = authorize(ctx, &req) {
                return denied;
            }
            api(ctx, req, &path).await
        }
        (&Method::GET, "/debug/pprof/profile" | "/debug/pprof/flamegraph" | "/debug/heap") => {
            if let Err(denied) = authorize(ctx, &req) {
                return denied;
            }
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
        (_, p) if p.starts_with("/scripts/") => {
            if let Err(denied) = authorize(ctx, &req) {
                return denied;
            }
            api(ctx, req, &path).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see docs/api.md (GET /metrics, /healthz, /readyz, /rooms, /sessions; POST /push/...)",
        ),
    }
}

/// Checks the bearer token (compared through SHA-256 digests, so the time taken does not
/// depend on how much of the token matched).
#[allow(clippy::result_large_err)]
fn authorize(ctx: &AdminCtx, req: &Request<Incoming>) -> Result<(), HttpResponse> {
    let Some(expected) = ctx.config.admin.token.as_deref() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "api_disabled",
            "the push API is off: set `admin.token` in the config",
        ));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if Sha256::digest(given.trim().as_bytes()) == Sha256::digest(expected.as_bytes()) {
        return Ok(());
    }
    let mut denied = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token");
    denied.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(denied)
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
        (Method::POST, _) if path.starts_with("/scripts/") => {
            let rest = &path["/scripts/".len()..];
            if let Some(name) = rest.strip_suffix("/rollback") {
                return scripts::rollback(ctx, name).await;
            }
            let config = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "config").map(|(_, v)| v.into_owned())
            });
            let component = match Limited::new(req.into_body(), scripts::MAX_COMPONENT).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("component over {} bytes or unreadable: {e}", scripts::MAX_COMPONENT),
                    );
                }
            };
            scripts::deploy(ctx, rest, component, config).await
        }
        (Method::POST, _) if path.starts_with("/push/") => {
            let form = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body over {MAX_BODY} bytes or unreadable: {e}"),
                    );
                }
            };
            // `curl -d '{...}'` labels JSON as a form: a body that starts like JSON is JSON.
            let form = form && !body.trim_ascii_start().starts_with(b"{");
            push::handle(ctx, &path["/push/".len()..], form, &body).await
        }
        (method, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed here: pushes and deploys are POST, queries GET"),
        ),
    }
}
