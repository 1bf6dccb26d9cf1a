//! Admin HTTP (hyper): `GET /metrics` (Prometheus text), `GET /healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::Core;

/// Serves admin requests until shutdown.
pub(crate) async fn serve(core: Arc<Core>, listener: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    continue;
                }
            },
        };
        let core = core.clone();
        tokio::spawn(async move {
            let shutdown = core.shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                let core = core.clone();
                async move { Ok::<_, Infallible>(respond(&core, &req)) }
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

fn respond(core: &Core, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            core.metrics.render(),
        ),
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            "application/json",
            serde_json::json!({ "status": "ok", "sessions": core.registry.len() }).to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            serde_json::json!({ "error": "not_found", "reason": "try GET /metrics or /healthz" }).to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
