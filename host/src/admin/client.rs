//! A small HTTP/1.1 client over hyper: the admin API client of the `wasmgate deploy`,
//! `rollback` and `scripts` commands, and the user-centre notifications' POSTs.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// Sends `method path` with `body` to the admin listener at `addr`, with the bearer `token`.
/// Returns the status code and the body as text.
///
/// Errors: the connection fails, or the answer is not HTTP.
pub async fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    send(addr, &addr.to_string(), method, path, "application/wasm", bearer.as_deref(), body)
        .await
        .with_context(|| format!("admin API at {addr}"))
}

/// Sends one request to `addr` with the `Host` header `host`; returns the status code and the
/// body as text. Errors: the connection fails, or the answer is not HTTP.
pub async fn send(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    content_type: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let stream =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut builder =
        Request::builder().method(method).uri(path).header(HOST, host).header(CONTENT_TYPE, content_type);
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization);
    }
    let response = sender.send_request(builder.body(Full::new(Bytes::from(body)))?).await?;
    let status = response.status().as_u16();
    let text = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}
