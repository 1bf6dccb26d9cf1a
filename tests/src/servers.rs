//! Real Redis and etcd servers for the cluster tests, started on free loopback ports (Debian
//! `redis-server` and `etcd-server`; `.ci/run` installs them) and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::PROMPT;

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    wasmgate_examples::bench::free_port().expect("a free port")
}

fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{program}` ({e}); install it: see .ci/run"))
}

async fn wait_ready(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    while !ready().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` without persistence, plain or TLS-only.
pub struct RedisServer {
    pub port: u16,
    /// The CA file clients trust, for a TLS-only server.
    ca: Option<PathBuf>,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]
            .map(String::from);
        let child = spawn("redis-server", &args);
        let server = Self { port, ca: None, child };
        wait_ready("redis-server", async || server.ping().await).await;
        server
    }

    /// A server that speaks TLS only (`--tls-port`), with the certificate `cert`/`key`;
    /// clients trust `ca`. Its [`RedisServer::url`] is `rediss://localhost:<port>/0`.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(cert),
            "--tls-key-file",
            &path(key),
            "--tls-ca-cert-file",
            &path(ca),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from);
        let child = spawn("redis-server", &args);
        let server = Self { port, ca: Some(ca.to_path_buf()), child };
        wait_ready("redis-server (TLS)", async || server.ping().await).await;
        server
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://localhost:<port>/0` for a TLS server.
    pub fn url(&self) -> String {
        match self.ca {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(_) => format!("rediss://localhost:{}/0", self.port),
        }
    }

    fn client(&self) -> anyhow::Result<redis::Client> {
        wasmgate::cluster::redis_client(&self.url(), self.ca.as_deref())
    }

    async fn ping(&self) -> bool {
        let Ok(client) = self.client() else { return false };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }

    /// Runs one command, returns its reply.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let client = self.client().expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis connection");
        cmd.query_async(&mut conn).await.expect("redis command")
    }

    /// Kills the server and starts an empty one on the same port (what a restart without
    /// persistence looks like to clients).
    pub async fn restart(&mut self) {
        self.stop();
        *self = Self::start_on(self.port).await;
    }

    /// Kills the server (an outage); [`RedisServer::restart`] brings an empty one back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member `etcd` with a temporary data directory, serving clients over plain HTTP or
/// TLS.
pub struct EtcdServer {
    pub port: u16,
    peer_port: u16,
    /// Certificate, key and the CA clients trust, for a TLS server.
    tls: Option<[PathBuf; 3]>,
    child: Child,
    data: TempDir,
}

impl EtcdServer {
    pub async fn start() -> Self {
        let data = tempfile::tempdir().expect("etcd data dir");
        Self::start_with(free_port(), free_port(), data, None).await
    }

    /// A server whose client URL is `https://127.0.0.1:<port>`, with the certificate
    /// `cert`/`key`; clients trust `ca`.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let data = tempfile::tempdir().expect("etcd data dir");
        let tls = [cert, key, ca].map(Path::to_path_buf);
        Self::start_with(free_port(), free_port(), data, Some(tls)).await
    }

    async fn start_with(port: u16, peer_port: u16, data: TempDir, tls: Option<[PathBuf; 3]>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let dir: PathBuf = data.path().join("member");
        let args = [
            "--name",
            "test",
            "--data-dir",
            &dir.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("test={peer}"),
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "100",
        ]
        .map(String::from);
        let mut args = args.to_vec();
        if let Some([cert, key, _]) = &tls {
            args.extend(["--cert-file".into(), cert.display().to_string()]);
            args.extend(["--key-file".into(), key.display().to_string()]);
        }
        let child = spawn("etcd", &args);
        let server = Self { port, peer_port, tls, child, data };
        wait_ready("etcd", async || match server.connect().await {
            Ok(mut client) => client.status().await.is_ok(),
            Err(_) => false,
        })
        .await;
        server
    }

    /// `http://127.0.0.1:<port>`, or `https://` for a TLS server.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same ports with an EMPTY data directory:
    /// every registration is gone and nodes must register again.
    pub async fn restart_empty(self) -> Self {
        let (port, peer_port, tls) = (self.port, self.peer_port, self.tls.clone());
        drop(self);
        Self::start_with(port, peer_port, tempfile::tempdir().expect("etcd data dir"), tls).await
    }

    /// Puts `value` at `key`.
    pub async fn put(&self, key: &str, value: &str) {
        self.client().await.put(key, value, None).await.expect("etcd put");
    }

    /// Puts `value` at `key` under a new lease of `ttl_s`, as another process registering
    /// would; returns the lease id (revoke it with [`Self::revoke`]).
    pub async fn put_leased(&self, key: &str, value: &str, ttl_s: i64) -> i64 {
        let mut client = self.client().await;
        let lease = client.lease_grant(ttl_s, None).await.expect("etcd lease grant").id();
        let options = etcd_client::PutOptions::new().with_lease(lease);
        client.put(key, value, Some(options)).await.expect("etcd put");
        lease
    }

    /// Revokes `lease`, deleting its keys.
    pub async fn revoke(&self, lease: i64) {
        self.client().await.lease_revoke(lease).await.expect("etcd lease revoke");
    }

    /// The value at `key` and the lease it is attached to (0: none), if the key exists.
    pub async fn get(&self, key: &str) -> Option<(String, i64)> {
        let response = self.client().await.get(key, None).await.expect("etcd get");
        response.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
    }

    async fn client(&self) -> etcd_client::Client {
        self.connect().await.expect("etcd connect")
    }

    async fn connect(&self) -> anyhow::Result<etcd_client::Client> {
        let endpoints = [self.endpoint()];
        let ca = self.tls.as_ref().map(|[_, _, ca]| ca.as_path());
        let options = wasmgate::cluster::etcd_options(&endpoints, ca)?;
        Ok(etcd_client::Client::connect(endpoints, options).await?)
    }

    /// The keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut client = self.client().await;
        let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        let response = client.get(prefix, Some(options)).await.expect("etcd get");
        response.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.data;
    }
}
