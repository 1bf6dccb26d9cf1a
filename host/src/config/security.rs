//! The sections that decide what a listener exposes and to whom (docs/security.md): the admin
//! API's tokens and limits, TLS certificates, abuse limits, and browser-facing checks.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError, DEV_JWT_SECRET};

/// The admin port's API (docs/api.md).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token with every scope (`Authorization: Bearer <token>`). With neither `token`
    /// nor `tokens` the authenticated API answers 403 `api_disabled`.
    pub token: Option<String>,
    /// Tokens limited to some scopes: a push service gets `push` and cannot deploy code.
    pub tokens: Vec<AdminToken>,
    /// Serve `GET /metrics` without a token (`/healthz` and `/readyz` are always open). When
    /// `false`, `/metrics` needs the `read` scope.
    pub open_metrics: bool,
    /// Serve the profiling endpoints (`/debug/pprof/profile`, `/debug/pprof/flamegraph`,
    /// `/debug/heap`; docs/api.md), with the `read` scope. Off by default.
    pub profiling: bool,
    /// Most admin connections open at once; a connection beyond is closed at once, so slow
    /// or idle clients cannot take the process's descriptors from game clients.
    pub max_connections: usize,
    /// Most admin connections open at once from one source IP (0: no cap besides
    /// `max_connections`), so one address cannot take every place.
    pub max_connections_per_ip: u32,
    /// Time a connection may take to send a request's headers, counted from the moment the
    /// server waits for them (so it is also the keep-alive idle limit), and then its body, in
    /// milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            tokens: Vec::new(),
            open_metrics: true,
            profiling: false,
            max_connections: 64,
            max_connections_per_ip: 16,
            request_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tokens", &self.tokens)
            .field("open_metrics", &self.open_metrics)
            .field("profiling", &self.profiling)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

/// A bearer token of the admin API and what it may do.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub token: String,
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken").field("token", &"***").field("scopes", &self.scopes).finish()
    }
}

/// What an admin token may do (docs/api.md lists each endpoint's scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /push/...`.
    Push,
    /// `POST /scripts/{name}` and `/scripts/{name}/rollback`.
    Deploy,
    /// Every `GET` behind a token: rooms, sessions, scripts, cluster nodes, profiles, and
    /// `/metrics` when `open_metrics = false`.
    Read,
}

impl Scope {
    /// The name in config files and in `WWW-Authenticate` (RFC 6750 section 3).
    pub fn name(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Deploy => "deploy",
            Self::Read => "read",
        }
    }
}

/// The certificate of the TLS listeners (`listen.wss`, `listen.tcp_tls`, `listen.admin_tls`):
/// PEM files, re-read on SIGHUP and when they change on disk.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert: Option<PathBuf>,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Abuse limits, checked before any script runs. `0` turns a limit off. Refusals are counted
/// in `wasmgate_limited_total{limit}` (docs/security.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Client connections open at once from one source IP (all client listeners). Mobile
    /// carriers put many players behind one address (CGNAT), hence the high default.
    pub conn_per_ip: u32,
    /// New client connections per source IP per second, after a burst of
    /// `connect_burst_per_ip` (a token bucket).
    pub connect_per_ip_per_s: u32,
    pub connect_burst_per_ip: u32,
    /// Login attempts per source IP per minute (each may burst at once).
    pub login_per_ip_per_min: u32,
    /// Logins the auth script accepted for one user per minute (login storms, kick loops).
    pub login_per_user_per_min: u32,
    /// Client messages per session per second, after a burst of `msg_burst`. Excess messages
    /// are answered `rate_limited`; sending at over twice this rate for longer than a burst
    /// closes the session with 4007.
    pub msg_per_s: u32,
    pub msg_burst: u32,
    /// Client bytes (packet bodies and headers) per session per second, after a burst of
    /// `bytes_burst`, with the same answers as `msg_per_s`.
    pub bytes_per_s: u32,
    pub bytes_burst: u32,
    /// Room lists (the client route and nothing else: the admin API is trusted) per source IP
    /// per second, after a burst of twice as many. Excess requests are answered
    /// `rate_limited`.
    pub room_list_per_ip_per_s: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            conn_per_ip: 1000,
            connect_per_ip_per_s: 20,
            connect_burst_per_ip: 200,
            login_per_ip_per_min: 600,
            login_per_user_per_min: 30,
            msg_per_s: 200,
            msg_burst: 400,
            bytes_per_s: 1 << 20,
            bytes_burst: 2 << 20,
            room_list_per_ip_per_s: 10,
        }
    }
}

impl RateLimitsConfig {
    /// Every limit off (benchmarks that open thousands of sessions from one address).
    pub fn off() -> Self {
        Self {
            conn_per_ip: 0,
            connect_per_ip_per_s: 0,
            connect_burst_per_ip: 0,
            login_per_ip_per_min: 0,
            login_per_user_per_min: 0,
            msg_per_s: 0,
            msg_burst: 0,
            bytes_per_s: 0,
            bytes_burst: 0,
            room_list_per_ip_per_s: 0,
        }
    }
}

/// Browser-facing checks of the WebSocket listeners.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `Origin` values a WebSocket upgrade may carry (e.g. `"https://game.example"`), against
    /// cross-site WebSocket hijacking; empty (default): any. Requests without `Origin` (not
    /// from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// Accept a login token in the WebSocket URL (`?token=`). URLs end up in proxy and access
    /// logs; turn this off when no client needs it.
    pub token_in_query: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self { allowed_origins: Vec::new(), token_in_query: true }
    }
}

/// The admin token of the example config: refused off loopback like the development secret.
pub const EXAMPLE_ADMIN_TOKEN: &str = "change-me-admin-token";

impl Config {
    /// Client and admin listeners bound to an address other than loopback.
    pub fn public_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let listen = &self.listen;
        [
            ("listen.ws", listen.ws),
            ("listen.wss", listen.wss),
            ("listen.tcp", listen.tcp),
            ("listen.tcp_tls", listen.tcp_tls),
            ("listen.admin", listen.admin),
        ]
        .into_iter()
        .filter_map(|(name, addr)| addr.filter(|a| !a.ip().is_loopback()).map(|a| (name, a)))
        .collect()
    }

    /// The keys holding a publicly known secret: the development JWT secret or the example
    /// admin token.
    pub fn known_secrets(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        let secret = self.scripts.auth.config.get("secret").and_then(|v| v.as_str());
        if secret == Some(DEV_JWT_SECRET) {
            found.push("scripts.auth.config.secret");
        }
        if self.admin.token.as_deref() == Some(EXAMPLE_ADMIN_TOKEN) {
            found.push("admin.token");
        }
        if self.admin.tokens.iter().any(|t| t.token == EXAMPLE_ADMIN_TOKEN) {
            found.push("admin.tokens");
        }
        found
    }

    /// The security part of [`Config::validate`]: TLS listeners need a certificate, tokens
    /// a length, limits sane bursts, and no listener off loopback may run with a known secret.
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid { field, problem: problem.into() }
        }
        let tls_wanted = self.listen.wss.is_some() || self.listen.tcp_tls.is_some() || self.listen.admin_tls;
        if tls_wanted && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            return Err(invalid(
                "tls",
                "`cert` and `key` are needed by `listen.wss`, `tcp_tls` or `admin_tls`",
            ));
        }
        if self.admin.token.as_deref().is_some_and(|t| t.len() < 8) {
            return Err(invalid("admin.token", "must be at least 8 characters"));
        }
        if self.admin.tokens.iter().any(|t| t.token.len() < 8 || t.scopes.is_empty()) {
            return Err(invalid("admin.tokens", "each needs a token of at least 8 characters and a scope"));
        }
        if self.admin.max_connections == 0 || self.admin.request_timeout_ms == 0 {
            return Err(invalid(
                "admin",
                "`max_connections` and `request_timeout_ms` must be greater than 0",
            ));
        }
        let limits = &self.rate_limits;
        if limits.connect_per_ip_per_s > 0 && limits.connect_burst_per_ip == 0 {
            return Err(invalid(
                "rate_limits.connect_burst_per_ip",
                "must be > 0 when connect_per_ip_per_s is",
            ));
        }
        if limits.msg_per_s > 0 && limits.msg_burst == 0 {
            return Err(invalid("rate_limits.msg_burst", "must be > 0 when msg_per_s is"));
        }
        let largest_packet = self.limits.max_msg_len + crate::protocol::client::HEADER_LEN;
        if limits.bytes_per_s > 0 && (limits.bytes_burst as usize) < largest_packet {
            return Err(invalid(
                "rate_limits.bytes_burst",
                format!("must be >= limits.max_msg_len + 8 ({largest_packet}) when bytes_per_s is set"),
            ));
        }
        let public = self.public_listeners();
        if let (Some((listener, addr)), Some(key)) = (public.first(), self.known_secrets().first()) {
            return Err(invalid(
                key,
                format!(
                    "holds the publicly known example value while `{listener}` binds {addr}, off loopback: set your own secret (docs/security.md)"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_secret_refuses_a_public_listener_and_names_the_key() {
        let mut config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.known_secrets(), ["scripts.auth.config.secret"]);
        config.listen.tcp = Some("0.0.0.0:7101".parse().unwrap());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("scripts.auth.config.secret") && err.contains("listen.tcp"), "{err}");
        config.scripts.auth.config.insert("secret".into(), "a-real-secret-of-ours".into());
        config.validate().unwrap();
        config.admin.token = Some(EXAMPLE_ADMIN_TOKEN.into());
        assert!(config.validate().unwrap_err().to_string().contains("admin.token"));
    }

    #[test]
    fn tls_listeners_need_a_certificate_and_bursts_must_hold_a_packet() {
        let mut config = Config::default();
        config.listen.wss = Some("127.0.0.1:0".parse().unwrap());
        assert!(config.validate().unwrap_err().to_string().contains("tls"));
        let mut config = Config::default();
        config.rate_limits.bytes_burst = 1000;
        assert!(config.validate().unwrap_err().to_string().contains("rate_limits.bytes_burst"));
        let parsed: Config =
            toml::from_str("[admin]\ntokens = [{ token = \"push-only-token\", scopes = [\"push\"] }]\n")
                .unwrap();
        assert_eq!(parsed.admin.tokens[0].scopes, [Scope::Push]);
        assert!(!format!("{parsed:?}").contains("push-only-token"));
    }
}
