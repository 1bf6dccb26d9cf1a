//! TLS on the client and admin listeners (rustls with the `ring` provider; docs/security.md).
//!
//! One [`Certificates`] holds the certificate chain and key of `[tls]` and serves it to every
//! TLS listener through rustls' certificate resolver, so a reload (SIGHUP, or the files
//! changing on disk) takes effect at the next handshake without touching open sessions. A
//! reload that fails (unreadable file, no certificate, a key that does not match the
//! certificate) keeps the certificate in use and says why.
//!
//! TLS 1.2 and 1.3, rustls' default cipher suites; no client certificates. The WebSocket and
//! admin listeners offer ALPN `http/1.1`; the TCP listener none.
//!
//! The listeners' connections are [`ServerStream`]s (rustls's unbuffered API, no buffer held
//! while idle); the gateway's own connections out ([`Connector`]) use tokio-rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;

use crate::config::TlsConfig;
use crate::metrics::{Metrics, OutcomeLabel};

mod stream;

pub use stream::ServerStream;

/// ALPN protocol of the HTTP listeners (WebSocket upgrade, admin API).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The certificate the TLS listeners present, replaceable at run time.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
    metrics: Metrics,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// Loads `[tls]`'s certificate chain and key. Errors name the file and what is wrong with
    /// it; `None` when `[tls]` names no files.
    pub fn load(config: &TlsConfig, metrics: &Metrics) -> anyhow::Result<Option<Arc<Self>>> {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_certified_key(cert, key, &provider)?;
        Ok(Some(Arc::new(Self {
            cert: cert.clone(),
            key: key.clone(),
            current: ArcSwap::from_pointee(current),
            provider,
            metrics: metrics.clone(),
        })))
    }

    /// Reads the files again and, if they hold a valid certificate and matching key, serves
    /// them from the next handshake on; otherwise keeps the certificate in use. Counted in
    /// `wasmgate_tls_reloads_total{outcome}` and logged either way.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = read_certified_key(&self.cert, &self.key, &self.provider);
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics.tls_reloads.get_or_create(&OutcomeLabel { outcome }).inc();
        match result {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS certificate not reloaded, the previous one stays in use: {e:#}");
                Err(e)
            }
        }
    }

    /// The certificate and key files (watched for changes).
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// A listener's TLS settings: this certificate, TLS 1.2 and 1.3, the given ALPN protocols.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn read_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate chain {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider)
        .with_context(|| format!("{} and {} do not make a usable certificate", cert.display(), key.display()))
}

/// A listener's TLS handshake, bounded in time.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    metrics: Metrics,
}

impl Acceptor {
    pub fn new(certificates: &Arc<Certificates>, alpn: &[&[u8]]) -> Self {
        Self { config: certificates.server_config(alpn), metrics: certificates.metrics.clone() }
    }

    /// Runs the server side of the handshake on `stream`; `None` (counted as failed, logged at
    /// debug) when the peer is not a TLS client, the handshake fails or it takes longer than
    /// `limit`.
    pub async fn accept(&self, stream: TcpStream, limit: Duration) -> Option<ServerStream> {
        let result = tokio::time::timeout(limit, stream::accept(stream, self.config.clone())).await;
        let outcome = if matches!(result, Ok(Ok(_))) { "ok" } else { "failed" };
        self.metrics.tls_handshakes.get_or_create(&OutcomeLabel { outcome }).inc();
        match result {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake not completed in time");
                None
            }
        }
    }
}

/// Client TLS settings for the gateway's own connections (backends, the user centre, the
/// admin CLI): TLS 1.2/1.3, trusting the PEM certificates in `ca`, or the system's roots when
/// `None`. Errors: `ca` unreadable or holding no certificate, no system roots.
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            anyhow::ensure!(added > 0, "{} holds no usable PEM certificate", path.display());
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            anyhow::ensure!(added > 0, "no trusted roots found on this system: name a CA file");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS connector with a fixed server name (checked against the server's certificate).
#[derive(Clone)]
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl Connector {
    /// Trusting `ca` (or the system's roots), expecting a certificate for `server_name` (a DNS
    /// name or an IP address). Errors: see [`client_config`]; an invalid server name.
    pub fn new(ca: Option<&Path>, server_name: &str) -> anyhow::Result<Self> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .with_context(|| format!("`{server_name}` is not a DNS name or IP address"))?;
        let connector = tokio_rustls::TlsConnector::from(client_config(ca)?);
        Ok(Self { connector, name })
    }

    /// The client side of the handshake over `stream`.
    pub async fn connect(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), stream).await
    }

    /// The underlying connector (for HTTP clients that name the server per request).
    pub fn inner(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    /// The server name checked.
    pub fn server_name(&self) -> &rustls::pki_types::ServerName<'static> {
        &self.name
    }
}

/// A client that accepts exactly the leaf certificate of the PEM chain in `cert_file` (the
/// gateway's own `[tls] cert`), whatever name it carries: how the admin CLI reaches an HTTPS
/// admin listener on the same host. Errors: the file unreadable or holding no certificate.
pub fn pinned_connector(cert_file: &Path) -> anyhow::Result<Connector> {
    let leaf = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .next()
        .with_context(|| format!("{} holds no PEM certificate", cert_file.display()))?
        .with_context(|| format!("reading {}", cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned { leaf, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("wasmgate-admin").expect("a valid DNS name");
    Ok(Connector { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), name })
}

/// Accepts one certificate (byte for byte), with signatures checked as usual.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.leaf.as_ref() {
            true => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            false => Err(rustls::Error::General("not the certificate of [tls] cert".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
