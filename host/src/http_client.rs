//! A small HTTP/1.1 client over hyper: the admin API client of the `wasmgate deploy`,
//! `rollback` and `scripts` commands, and the user-centre notifications' POSTs
//! ([`HttpTarget`]: where an `http://` URL points).

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// Where notices go: `http://host:port/path` split up.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpTarget {
    /// Splits an `http://host[:port]/path` URL. Errors: anything else.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "`{url}`: only http:// is supported");
        let host = uri.host().context("the URL has no host")?.to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self { host, port: uri.port_u16().unwrap_or(80), path })
    }

    /// The first address `host` resolves to. Errors: none, or the lookup failing.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))
    }
}

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
