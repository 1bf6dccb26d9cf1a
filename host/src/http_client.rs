//! A small HTTP/1.1 client over hyper, plain or over TLS: the admin API client of the
//! `wasmgate deploy`, `rollback` and `scripts` commands, and the user-centre notifications'
//! POSTs ([`HttpTarget`]: where an `http://` or `https://` URL points).

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Where notices go: `http[s]://host:port/path` split up.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `https://`.
    pub tls: bool,
}

impl HttpTarget {
    /// Splits an `http://host[:port]/path` or `https://...` URL. Errors: anything else.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("`{url}`: only http:// and https:// are supported"),
        };
        let host = uri.host().context("the URL has no host")?.trim_matches(['[', ']']).to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { host, port, path, tls })
    }

    /// The first address `host` resolves to. Errors: none, or the lookup failing.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))
    }
}

/// Where one request goes.
pub struct Endpoint<'a> {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// TLS: the connector and the name the server's certificate must carry; `None`: plain.
    pub tls: Option<(&'a TlsConnector, &'a ServerName<'static>)>,
}

impl Endpoint<'static> {
    /// Plain HTTP to `addr`, named by its address.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, host: addr.to_string(), tls: None }
    }
}

/// Sends `method path` with `body` to the admin listener at `to`, with the bearer `token`.
/// Returns the status code and the body as text.
///
/// Errors: the connection fails, or the answer is not HTTP.
pub async fn request(
    to: &Endpoint<'_>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    send(to, method, path, "application/wasm", bearer.as_deref(), body)
        .await
        .with_context(|| format!("admin API at {}", to.addr))
}

/// Sends one request to `to`; returns the status code and the body as text. Errors: the
/// connection or the TLS handshake fails, or the answer is not HTTP.
pub async fn send(
    to: &Endpoint<'_>,
    method: &str,
    path: &str,
    content_type: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let addr = to.addr;
    let stream =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let mut sender = match to.tls {
        None => {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
        Some((connector, name)) => {
            let stream = connector.connect(name.clone(), stream).await.context("TLS handshake")?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    let host = to.host.as_str();
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
