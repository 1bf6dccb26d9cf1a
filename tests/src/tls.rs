//! Test certificates (rcgen) and TLS clients (rustls) for the TLS listeners, and sockets bound
//! to a chosen loopback source address (127.0.0.2, ...) for the per-IP limits.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Writes a server certificate for `localhost` and `127.0.0.1`, signed by this CA, to
    /// `cert` and its key to `key` (PEM), each by rename; the key first, so a watcher never
    /// sees a new certificate with the old key.
    pub fn issue(&self, cert: &Path, key: &Path) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        let pair = KeyPair::generate().expect("server key");
        let signed = params.signed_by(&pair, &self.issuer).expect("server certificate");
        crate::write_atomic(key.to_path_buf(), &pair.serialize_pem());
        crate::write_atomic(cert.to_path_buf(), &signed.pem());
    }

    /// A TLS client trusting only this CA, offering `alpn` and the TLS `versions`.
    pub fn connector(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("CA into the root store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS 1.2 or 1.3 connection to `addr` (server name `localhost`) trusting only this CA.
    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        self.connect_with(addr, alpn, rustls::DEFAULT_VERSIONS).await
    }

    /// The same, offering only the TLS `versions`.
    pub async fn connect_with(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let stream = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("a DNS name");
        self.connector(alpn, versions).connect(name, stream).await
    }
}

/// A TCP connection to `addr` from the loopback source address `from` (e.g. 127.0.0.2).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// A TLS terminator on a free loopback port in front of the plain TCP service at `behind`,
/// presenting `cert`/`key` (PEM): each connection is decrypted and relayed both ways. Returns
/// its address; it serves until the test ends.
pub async fn tls_terminator(cert: &Path, key: &Path, behind: SocketAddr) -> SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("cert file").collect::<Result<_, _>>().expect("PEM chain");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = TcpStream::connect(behind).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

impl TestCa {
    /// Writes this CA's certificate (PEM) to `path`, for configs that name a CA file.
    pub fn write_pem(&self, path: &Path) {
        crate::write_atomic(path.to_path_buf(), &self.pem);
    }
}
