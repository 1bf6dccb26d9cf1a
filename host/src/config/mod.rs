//! Gateway configuration: one TOML file, typed and strict (`deny_unknown_fields`), validated
//! before any port is bound. Every field has a default, so an empty file (or no file) is the
//! embedded default: loopback listeners, the default scripts, the example maps.
//!
//! Names follow the systems users know (docs/glossary.md): leaf's gate options
//! (`max_conn_num`, `pending_write_num`, `max_msg_len`, `len_msg_len`, `little_endian`) and
//! connectsrv's timers and maps.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod security;
pub use security::{AdminConfig, AdminToken, RateLimitsConfig, Scope, SecurityConfig, TlsConfig};

/// Errors from loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

/// The whole gateway configuration (`wasmgate.toml`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub limits: LimitsConfig,
    pub tcp: TcpFramingConfig,
    pub timeouts: TimeoutsConfig,
    pub routes: RoutesConfig,
    pub maps: MapsConfig,
    pub upstream: UpstreamConfig,
    pub scripts: ScriptsConfig,
    pub rooms: RoomsConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub rate_limits: RateLimitsConfig,
    pub security: SecurityConfig,
    pub cluster: ClusterConfig,
    pub user_centre: UserCentreConfig,
    pub config_centre: ConfigCentreConfig,
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry trace export over OTLP/gRPC (docs/operations.md). Off unless `otlp_endpoint`
/// or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// is set; the other `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_BSP_*`, headers, timeout) apply as the OpenTelemetry SDK defines them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Collector URL, e.g. `http://127.0.0.1:4317`; wins over the environment.
    pub otlp_endpoint: Option<String>,
    /// Fraction of traces kept (0.0-1.0; parent-based), unless `OTEL_TRACES_SAMPLER` is set.
    /// `None`: every trace.
    pub sample_ratio: Option<f64>,
}

/// Configuration and maps kept in etcd (connectsrv's config centre; docs/cluster.md).
/// Off by default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigCentreConfig {
    /// Read `wasmgate.toml` (merged over this file), `dest_map.json` and `message_map.json`
    /// from etcd keys under [`ConfigCentreConfig::key_prefix`], and watch the maps.
    pub enabled: bool,
    /// etcd endpoints; empty: `cluster.etcd_endpoints`.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix; `None`: `/<cluster.prefix>/config/<node.name>/`.
    pub prefix: Option<String>,
}

impl Config {
    /// The sections of `other` that differ from this (running) configuration and apply only
    /// at the next start, by name (`["limits", "listen"]`): every section but `maps`, which
    /// is re-read live. `node.id` is left out (the running id is the one claimed in Redis).
    pub fn changed_sections(&self, other: &Self) -> Vec<&'static str> {
        let sections = [
            ("node", self.node.name != other.node.name),
            ("listen", self.listen != other.listen),
            ("limits", self.limits != other.limits),
            ("tcp", self.tcp != other.tcp),
            ("timeouts", self.timeouts != other.timeouts),
            ("routes", self.routes != other.routes),
            ("upstream", self.upstream != other.upstream),
            ("scripts", self.scripts != other.scripts),
            ("rooms", self.rooms != other.rooms),
            ("admin", self.admin != other.admin),
            ("tls", self.tls != other.tls),
            ("rate_limits", self.rate_limits != other.rate_limits),
            ("security", self.security != other.security),
            ("cluster", self.cluster != other.cluster),
            ("user_centre", self.user_centre != other.user_centre),
            ("config_centre", self.config_centre != other.config_centre),
            ("telemetry", self.telemetry != other.telemetry),
        ];
        sections.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
    }

    /// The etcd endpoints of the config centre: its own, else the cluster's.
    pub fn config_centre_endpoints(&self) -> &[String] {
        match self.config_centre.etcd_endpoints.as_slice() {
            [] => &self.cluster.etcd_endpoints,
            own => own,
        }
    }

    /// The config centre's key prefix (ends with `/`).
    pub fn config_centre_prefix(&self) -> String {
        match &self.config_centre.prefix {
            Some(prefix) if prefix.ends_with('/') => prefix.clone(),
            Some(prefix) => format!("{prefix}/"),
            None => format!("/{}/config/{}/", self.cluster.prefix, self.node.name),
        }
    }
}

/// User-centre notifications: each login and disconnect POSTed as JSON (as connectsrv
/// does; docs/configuration.md). `url` unset (default): none.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UserCentreConfig {
    /// `http://host[:port]/path` or `https://...` receiving the notices.
    pub url: Option<String>,
    /// PEM file of the CA(s) an `https://` user centre's certificate is checked against;
    /// `None`: the system's trusted roots.
    pub ca: Option<PathBuf>,
    /// Wait for an answer per attempt, in ms.
    pub timeout_ms: u64,
    /// Retries after a failed attempt (non-2xx, no answer), with back-off 100 ms doubling.
    pub retries: u32,
    /// Notices queued before new ones are dropped (counted).
    pub queue_len: usize,
}

impl Default for UserCentreConfig {
    fn default() -> Self {
        Self { url: None, ca: None, timeout_ms: 2_000, retries: 3, queue_len: 10_000 }
    }
}

/// Running several gateways as one cluster (docs/cluster.md). With neither Redis nor etcd
/// configured (the default) the gateway runs standalone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URL (`redis://127.0.0.1:6379/0`, or `rediss://` for TLS): node id claim
    /// (connectsrv), user location and the cross-node bus (pushes, room broadcasts). `None`:
    /// none of these.
    pub redis_url: Option<String>,
    /// PEM file of the CA(s) a `rediss://` server's certificate is checked against; `None`:
    /// the system's trusted roots.
    pub redis_ca: Option<PathBuf>,
    /// etcd endpoints (`http://127.0.0.1:2379`, or `https://` for TLS): registration and
    /// discovery (connectsrv, go-xserver's node table). Empty: no registration.
    pub etcd_endpoints: Vec<String>,
    /// PEM file of the CA(s) `https://` etcd endpoints (the cluster's and the config
    /// centre's) are checked against; `None`: the system's trusted roots.
    pub etcd_ca: Option<PathBuf>,
    /// Prefix of every Redis key and channel (`<prefix>:node:<id>`) and of etcd keys
    /// (`/<prefix>/nodes/<node.name>/<id>`).
    pub prefix: String,
    /// This node's type in discovery (go-xserver's node type): `gateway`.
    pub node_type: String,
    /// TTL of the node id key in Redis and of the etcd lease, in seconds; refreshed every
    /// third of it. A crashed node's id and registration free themselves after it; a node
    /// that could not refresh for that long (stalled, cut off from Redis) has lost its id and
    /// rejoins under a new one, closing its sessions (docs/cluster.md, fencing).
    pub ttl_s: u64,
    /// TTL of a user's location key in Redis, in seconds; refreshed every third of it.
    pub location_ttl_s: u64,
    /// Bound of the queue of Redis writes (locations, bus messages); beyond it they are
    /// dropped and counted (`wasmgate_cluster_messages_total{outcome="dropped"}`).
    pub queue_len: usize,
    /// Oldest bus message a node still delivers, in milliseconds since it was published (the
    /// publisher's wall clock against the receiver's: nodes must keep their clocks in sync,
    /// e.g. NTP). Older ones (published while Redis was paused, or the receiver stalled) are
    /// dropped and counted (`wasmgate_cluster_messages_total{outcome="expired"}`): a late
    /// realtime push is worse than none. 0: deliver whatever the age.
    pub bus_max_age_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_ca: None,
            etcd_endpoints: Vec::new(),
            etcd_ca: None,
            prefix: "wasmgate".into(),
            node_type: "gateway".into(),
            ttl_s: 10,
            location_ttl_s: 60,
            queue_len: 65_536,
            bus_max_age_ms: 5_000,
        }
    }
}

/// This gateway node's identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node (server) id, 0..=1023; part of every session id (connectsrv: `serverId`).
    pub id: u32,
    /// Server name, reported to backends and used in logs (connectsrv: `serverName`).
    pub name: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { id: 1, name: "wasmgate".into() }
    }
}

/// Listener addresses. Port 0 picks a free port (tests); `None` disables a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// WebSocket listener (also answers `GET /ping`). Seed 003: `WSAddr`.
    pub ws: Option<SocketAddr>,
    /// Length-prefixed TCP listener. Seed 003: `TCPAddr`.
    pub tcp: Option<SocketAddr>,
    /// WebSocket over TLS (`wss://`; `[tls]`'s certificate, ALPN `http/1.1`).
    pub wss: Option<SocketAddr>,
    /// Length-prefixed TCP over TLS (`[tls]`'s certificate).
    pub tcp_tls: Option<SocketAddr>,
    /// Admin HTTP listener (`/metrics`, `/healthz`).
    pub admin: Option<SocketAddr>,
    /// The admin listener speaks HTTPS (`[tls]`'s certificate) instead of plain HTTP.
    pub admin_tls: bool,
    /// Bind the WebSocket and TCP listeners with `SO_REUSEPORT`, so several gateway
    /// processes can share them (the kernel spreads new connections; each process is capped
    /// by its open-file limit). The admin listener stays exclusive.
    pub reuse_port: bool,
    /// A path on the WebSocket listeners (e.g. `"/echo"`) whose upgrades echo every text and
    /// binary message back verbatim instead of starting a session: for conformance suites
    /// (Autobahn `wstest -m fuzzingclient`) only. Off (`None`) by default; never in production.
    pub ws_echo_path: Option<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            ws: Some(SocketAddr::from(([127, 0, 0, 1], 7100))),
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 7101))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 7102))),
            wss: None,
            tcp_tls: None,
            admin_tls: false,
            reuse_port: false,
            ws_echo_path: None,
        }
    }
}

/// Connection and message limits (leaf's gate options).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most client connections held at once, WS and TCP together; enforced before `accept`.
    pub max_conn_num: usize,
    /// Outbound queue length per session, in messages; a full queue triggers the
    /// slow-consumer policy (close with 4005).
    pub pending_write_num: usize,
    /// Outbound queue size per session, in bytes of packets (header and body); a packet that
    /// would take the queue past it triggers the slow-consumer policy too. A packet larger than
    /// this is still queued when the queue is empty.
    pub pending_write_bytes: usize,
    /// Kernel send buffer of each client socket, in bytes (`SO_SNDBUF`; Linux doubles it for
    /// bookkeeping); 0 leaves the kernel's autotuning (up to several MB per stalled client).
    pub send_buffer_bytes: usize,
    /// Largest client packet body, in bytes; larger frames close the connection (WS 1009).
    pub max_msg_len: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_conn_num: 10_000,
            pending_write_num: 256,
            pending_write_bytes: 1 << 20,
            send_buffer_bytes: 64 * 1024,
            max_msg_len: 64 * 1024,
        }
    }
}

/// TCP length-prefix framing (leaf's `LenMsgLen` and `LittleEndian`), or seed 001's ES packet
/// header.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpFramingConfig {
    /// Size of the length prefix in bytes: 2 or 4 (`standard` header only).
    pub len_msg_len: usize,
    /// Byte order of the length prefix (`standard`: the packet header is always big-endian),
    /// or of every field of the ES header (`es`).
    pub little_endian: bool,
    /// The packet header on the TCP listeners.
    pub header: TcpHeader,
}

/// How TCP clients frame their packets (docs/protocol.md).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TcpHeader {
    /// A `len_msg_len`-byte length prefix, then `msg_id u32`, `seq u32`, body.
    #[default]
    Standard,
    /// Seed 001's 28-byte `ESPacket`: `pack_len u16, pack_type u16, user_id u64, token u32,
    /// es_id u32, session u64`, then the body.
    Es,
}

impl Default for TcpFramingConfig {
    fn default() -> Self {
        Self { len_msg_len: 4, little_endian: false, header: TcpHeader::Standard }
    }
}

/// Per-session timers, in milliseconds (connectsrv).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// A session that has not logged in this long after connecting is closed (4001).
    pub login_ms: u64,
    /// A session silent this long is closed (4002). Any client message counts.
    pub heartbeat_ms: u64,
    /// Time allowed for the WebSocket HTTP upgrade request (leaf's `HTTPTimeout`).
    pub handshake_ms: u64,
    /// Output a client's socket has not taken this long after it first pushed back closes the
    /// session as a slow consumer (4005).
    pub write_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self { login_ms: 5_000, heartbeat_ms: 20_000, handshake_ms: 10_000, write_ms: 10_000 }
    }
}

/// Message ids of the built-in local routes (connectsrv).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Login ("connect confirm"): body is the token.
    pub login: u32,
    /// Heartbeat: answered with the server time in ms.
    pub heartbeat: u32,
    /// Close: the gateway closes the session normally.
    pub close: u32,
    /// Error frames the gateway sends (server -> client only).
    pub error: u32,
    /// Join a room: body `{"room": "..", "data": <any>}` (docs/protocol.md).
    pub join: u32,
    /// Leave a room: body `{"room": ".."}`.
    pub leave: u32,
    /// A message to a room the session is in: body `{"room": "..", "data": <any>}`; also the
    /// id of the default rooms script's broadcasts.
    pub room_message: u32,
    /// The room list (connectsrv: "request game room list").
    pub room_list: u32,
    /// Id of pushes that name none (go-push's `/push/room` and `/push/all` forms).
    pub push: u32,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            login: 1,
            heartbeat: 2,
            close: 3,
            error: 4,
            join: 5,
            leave: 6,
            room_message: 7,
            room_list: 8,
            push: 9,
        }
    }
}

impl RoutesConfig {
    /// Every built-in id with its field name.
    pub fn all(&self) -> [(&'static str, u32); 9] {
        [
            ("login", self.login),
            ("heartbeat", self.heartbeat),
            ("close", self.close),
            ("error", self.error),
            ("join", self.join),
            ("leave", self.leave),
            ("room_message", self.room_message),
            ("room_list", self.room_list),
            ("push", self.push),
        ]
    }
}

/// Rooms and fan-out (go-push).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Hard cap of rooms one session is in, whatever the rooms script allows (it bounds
    /// memory). The default rooms script's own limit (`max_rooms_per_session`, 32) is lower.
    pub max_rooms_per_session: usize,
    /// Longest room name, in bytes.
    pub max_name_len: usize,
    /// Fan-out buckets (go-push's `BucketCount`): sessions are spread over them by id, each
    /// has its own job queue and worker task. A power of two, at most 64.
    pub buckets: usize,
    /// Fan-out jobs queued per bucket; a publisher waits (asynchronously) when its bucket's
    /// queue is full.
    pub bucket_queue_len: usize,
    /// Most rooms returned by one room list (client route or `GET /rooms`).
    pub list_limit: usize,
    /// Let go-push JSON clients (`{"type":"JOIN",...}`) use rooms without logging in, as
    /// go-push does. Off: they log in like everyone else (`?token=` on the WebSocket URL).
    pub gopush_anonymous: bool,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_rooms_per_session: 256,
            max_name_len: 64,
            buckets: 8,
            bucket_queue_len: 4096,
            list_limit: 1000,
            gopush_anonymous: false,
        }
    }
}

/// Where `dest_map.json` and `message_map.json` come from (connectsrv).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MapsConfig {
    /// Path of `dest_map.json`; `None` uses the embedded example map.
    pub dest_map: Option<PathBuf>,
    /// Path of `message_map.json`; `None` uses the embedded example map.
    pub message_map: Option<PathBuf>,
    /// Disable watching the files for changes (they are watched by default).
    pub no_watch: bool,
}

/// Upstream queue-pool behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Frames queued per pool connection before senders wait.
    pub queue_len: usize,
    /// How long a session waits for room in a full upstream queue before the client gets
    /// `upstream_busy`, in ms.
    pub enqueue_timeout_ms: u64,
    /// TCP connect timeout to a backend, in ms.
    pub connect_timeout_ms: u64,
    /// First reconnect delay after a failure, in ms; doubles up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay, in ms.
    pub backoff_max_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            queue_len: 1024,
            enqueue_timeout_ms: 1_000,
            connect_timeout_ms: 2_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

/// The scripts and their sandbox.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsConfig {
    pub auth: ScriptConfig,
    pub router: ScriptConfig,
    pub rooms: ScriptConfig,
    /// Epoch deadline of every script call, in ms. Generous by default: on a loaded 2-core
    /// machine a 10 ms budget fired on well-behaved scripts.
    pub deadline_ms: u64,
    /// Linear-memory cap per script instance, in bytes.
    pub memory_bytes: usize,
    /// Most live instances per script, and so most concurrent calls into it; a call waits
    /// (asynchronously) for a free instance beyond that. Instances are built on demand.
    /// Default: 4 per CPU, so a few calls stuck until their deadline do not stall the rest.
    /// A call that turns long stops counting here (docs/scripting.md, "Sandbox"): at most
    /// this many such calls more run at once, on instances of their own.
    pub instances: usize,
    /// Directory of precompiled scripts, so a restart does not recompile (files named by the
    /// component's SHA-256 and the engine configuration). `None`: compile at every start. Keep
    /// it writable only by the gateway: its files are loaded as trusted native code.
    pub cache_dir: Option<PathBuf>,
    /// Failure policy of the router: when it traps, overruns its deadline or cannot be built,
    /// the message is forwarded to this dest id; `None` (default): the client gets a
    /// `script_error` error frame. (Auth always fails closed; rooms refuse the action.)
    pub router_fallback_dest: Option<u32>,
    /// Route with the built-in Rust equivalent of the default router script (the
    /// `message_map` lookup) instead of calling the router script: for measuring what the
    /// script costs (docs/benchmarks.md, `loadgen relay --targets wasmgate-native`). A router
    /// deployed while this is on is kept but not called. Default false.
    pub native_router: bool,
    /// Link imports the host does not know (anything outside `wasmgate:gateway` and the WASI
    /// interfaces listed in docs/scripting.md) as functions that trap when called, instead of
    /// refusing the component. For toolchains that import more than a script uses. Default
    /// false.
    pub trap_unknown_imports: bool,
    /// Long-call lanes: a script call still running after one epoch tick (1-2 ms) goes on
    /// only while holding one of these, so at most this many long calls (a runaway script, a
    /// slow `init`) run at once over the whole gateway and the other worker threads keep
    /// serving sockets and short calls; the rest wait, their deadline running. 0 = no lanes.
    /// Default 1 (of the runtime's worker threads, one per core).
    pub long_calls: usize,
    /// The scripts directory, watched: `manifest.toml` there describes the handler scripts
    /// `message_map.json` may name (docs/scripting.md), and a change to the manifest or a file
    /// it names re-applies it; writing `auth.wasm`, `router.wasm` or `rooms.wasm` there
    /// deploys that built-in script live (same pipeline as `wasmgate deploy`; the script keeps
    /// its config). The directory must exist. `None`: no handler scripts, no watching.
    /// (`watch_dir` is accepted as an older name.)
    #[serde(alias = "watch_dir")]
    pub dir: Option<PathBuf>,
    /// wasmtime's pooling allocator.
    pub pooling: PoolingConfig,
}

/// wasmtime's pooling allocator: slots for every script instance of the process are reserved
/// once at start (address space only; memory is committed as instances touch it), so
/// instantiating — at a deploy, or to replace a trapped instance — takes a free slot instead of
/// mapping fresh memory. The per-instance memory cap stays `scripts.memory_bytes`. (Gateways
/// started in one process with the same values share one pool and one compile cache.)
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolingConfig {
    /// Use the pooling allocator (default). Off: each instance's memory is mapped on demand.
    pub enabled: bool,
    /// Most script instances alive at once, over every script and version (a version being
    /// deployed runs next to the live one). Beyond it, building an instance fails: a deploy
    /// is refused (naming the limit), a call that needs a new instance gets `script_error`
    /// and further builds back off. Default 1000
    /// (3 built-in scripts x `instances` is 24 on this 2-core machine; up to twice that while
    /// long calls run released from their pools: docs/scripting.md, "Sandbox").
    pub max_instances: u32,
    /// Most linear memories alive at once (a component may have several); each reserves
    /// 4 GiB + guard of address space. Default 2 x `max_instances`.
    pub max_memories: u32,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self { enabled: true, max_instances: 1000, max_memories: 2000 }
    }
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        Self {
            auth: ScriptConfig {
                path: None,
                config: toml::Table::from_iter([(
                    "secret".to_string(),
                    toml::Value::String(DEV_JWT_SECRET.into()),
                )]),
            },
            router: ScriptConfig::default(),
            rooms: ScriptConfig::default(),
            deadline_ms: 200,
            memory_bytes: 64 << 20,
            instances: 4 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache_dir: None,
            router_fallback_dest: None,
            native_router: false,
            trap_unknown_imports: false,
            long_calls: 1,
            dir: None,
            pooling: PoolingConfig::default(),
        }
    }
}

/// The HS256 secret of the embedded default config. For local development only: any real
/// deployment sets `[scripts.auth.config] secret`.
pub const DEV_JWT_SECRET: &str = "wasmgate-dev-secret";

/// One script: which component, and the JSON configuration its `init` receives.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptConfig {
    /// Path of the component (`.wasm`); `None` uses the default script built into the binary.
    pub path: Option<PathBuf>,
    /// Handed to the script's `init` as JSON text.
    pub config: toml::Table,
}

impl fmt::Debug for ScriptConfig {
    // The config may hold secrets (the auth key): show only its keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptConfig")
            .field("path", &self.path)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ScriptConfig {
    /// The script configuration as the JSON text passed to `init`.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

impl Config {
    /// Reads and validates a TOML file. Relative paths inside it (maps, scripts) are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_table(Self::read_table(path)?, path)
    }

    /// The TOML table of the file at `path`, unchecked. Errors: [`ConfigError::Read`],
    /// [`ConfigError::Parse`].
    pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
    }

    /// The configuration a TOML `table` describes, relative paths resolved against `path`'s
    /// directory, validated. Errors: [`ConfigError::Parse`] (named after `path`),
    /// [`ConfigError::Invalid`].
    pub fn from_table(table: toml::Table, path: &Path) -> Result<Self, ConfigError> {
        let mut config = Config::deserialize(toml::Value::Table(table))
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = dir.join(&*path);
            }
        };
        fix(&mut self.maps.dest_map);
        fix(&mut self.maps.message_map);
        fix(&mut self.scripts.auth.path);
        fix(&mut self.scripts.router.path);
        fix(&mut self.scripts.rooms.path);
        fix(&mut self.scripts.cache_dir);
        fix(&mut self.scripts.dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.user_centre.ca);
        fix(&mut self.cluster.redis_ca);
        fix(&mut self.cluster.etcd_ca);
    }

    /// Checks ranges and consistency. Called by [`Config::load`] and by the gateway before it
    /// binds anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid { field, problem: problem.into() }
        }
        if self.node.id > crate::session::MAX_NODE_ID {
            return Err(invalid("node.id", format!("must be <= {}", crate::session::MAX_NODE_ID)));
        }
        if self.telemetry.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if !matches!(self.tcp.len_msg_len, 2 | 4) {
            return Err(invalid("tcp.len_msg_len", "must be 2 or 4"));
        }
        if self.config_centre.enabled && self.config_centre_endpoints().is_empty() {
            return Err(invalid(
                "config_centre.etcd_endpoints",
                "must list etcd endpoints (or set cluster.etcd_endpoints) when the config centre is enabled",
            ));
        }
        let frame_max = self.limits.max_msg_len + crate::protocol::client::HEADER_LEN;
        if self.tcp.len_msg_len == 2 && frame_max > u16::MAX as usize {
            return Err(invalid(
                "limits.max_msg_len",
                format!("must be <= {} with a 2-byte length prefix", u16::MAX as usize - 8),
            ));
        }
        let positive: [(&'static str, u64); 19] = [
            ("limits.max_conn_num", self.limits.max_conn_num as u64),
            ("limits.pending_write_num", self.limits.pending_write_num as u64),
            ("limits.pending_write_bytes", self.limits.pending_write_bytes as u64),
            ("limits.max_msg_len", self.limits.max_msg_len as u64),
            ("timeouts.login_ms", self.timeouts.login_ms),
            ("timeouts.heartbeat_ms", self.timeouts.heartbeat_ms),
            ("timeouts.write_ms", self.timeouts.write_ms),
            ("upstream.queue_len", self.upstream.queue_len as u64),
            ("scripts.deadline_ms", self.scripts.deadline_ms),
            ("scripts.instances", self.scripts.instances as u64),
            ("rooms.max_rooms_per_session", self.rooms.max_rooms_per_session as u64),
            ("rooms.max_name_len", self.rooms.max_name_len as u64),
            ("rooms.bucket_queue_len", self.rooms.bucket_queue_len as u64),
            ("rooms.list_limit", self.rooms.list_limit as u64),
            ("cluster.ttl_s", self.cluster.ttl_s),
            ("cluster.location_ttl_s", self.cluster.location_ttl_s),
            ("cluster.queue_len", self.cluster.queue_len as u64),
            ("user_centre.timeout_ms", self.user_centre.timeout_ms),
            ("user_centre.queue_len", self.user_centre.queue_len as u64),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(field, "must be greater than 0"));
        }
        let pooling = &self.scripts.pooling;
        if pooling.enabled && !(1..=100_000).contains(&pooling.max_instances) {
            return Err(invalid("scripts.pooling.max_instances", "must be 1 to 100000"));
        }
        if pooling.enabled && !(pooling.max_instances..=200_000).contains(&pooling.max_memories) {
            return Err(invalid("scripts.pooling.max_memories", "must be max_instances to 200000"));
        }
        let ids = self.routes.all();
        if ids.iter().enumerate().any(|(i, (_, a))| ids[i + 1..].iter().any(|(_, b)| a == b)) {
            return Err(invalid("routes", "every built-in route id must differ"));
        }
        if self.tcp.header == TcpHeader::Es && ids.iter().any(|(_, id)| *id > u32::from(u16::MAX)) {
            return Err(invalid(
                "routes",
                "every built-in route id must be <= 65535 with tcp.header = \"es\"",
            ));
        }
        let buckets = self.rooms.buckets;
        if !buckets.is_power_of_two() || buckets > 64 {
            return Err(invalid("rooms.buckets", "must be a power of two from 1 to 64"));
        }
        if self.rooms.max_name_len > u8::MAX as usize {
            return Err(invalid("rooms.max_name_len", "must be <= 255"));
        }
        let prefix_ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !prefix_ok(&self.cluster.prefix) {
            return Err(invalid("cluster.prefix", "must be non-empty ASCII letters, digits, `_`, `-`, `.`"));
        }
        if let Some(url) = &self.user_centre.url
            && let Err(e) = crate::http_client::HttpTarget::parse(url)
        {
            return Err(invalid("user_centre.url", format!("{e:#}")));
        }
        let listen = &self.listen;
        if [listen.ws, listen.wss, listen.tcp, listen.tcp_tls].iter().all(Option::is_none) {
            return Err(invalid("listen", "needs at least one of `ws`, `wss`, `tcp` and `tcp_tls`"));
        }
        self.validate_security()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TOML block after `<!-- doc-test: NAME -->` in `doc`, as a config.
    fn doc_config(doc: &str, name: &str) -> Config {
        let marker = format!("<!-- doc-test: {name} -->");
        let after = &doc[doc.find(&marker).expect("marker") + marker.len()..];
        let block = &after[after.find("```toml\n").expect("block") + 8..];
        let config: Config = toml::from_str(&block[..block.find("```").expect("fence")]).expect("parses");
        config.validate().expect("valid");
        config
    }

    #[test]
    fn the_es_header_and_es_dests_examples_parse_as_documented() {
        let config = doc_config(include_str!("../../../docs/migrating-from-fkserver.md"), "fkserver config");
        assert_eq!((config.tcp.header, config.tcp.little_endian), (TcpHeader::Es, false));
        let es_dests = config.scripts.router.config["es_dests"].as_table().expect("a table");
        assert_eq!(es_dests["3"].as_integer(), Some(401));
        let config = doc_config(include_str!("../../../docs/scripting.md"), "router es_dests");
        let es_dests = config.scripts.router.config["es_dests"].as_table().expect("a table");
        assert_eq!((es_dests["7"].as_integer(), es_dests["8"].as_integer()), (Some(401), Some(402)));
    }

    #[test]
    fn changed_sections_name_what_differs_except_maps_and_the_node_id() {
        let running = Config::default();
        let mut next = running.clone();
        assert!(running.changed_sections(&next).is_empty());
        next.node.id = 9;
        next.maps.dest_map = Some("elsewhere.json".into());
        assert!(running.changed_sections(&next).is_empty(), "applied live / claimed at start");
        next.limits.max_conn_num += 1;
        next.scripts.deadline_ms += 1;
        next.telemetry.sample_ratio = Some(0.5);
        assert_eq!(running.changed_sections(&next), ["limits", "scripts", "telemetry"]);
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config: Config = toml::from_str("").unwrap();
        config.validate().unwrap();
        assert_eq!(config.timeouts.login_ms, 5_000);
        assert_eq!(config.timeouts.heartbeat_ms, 20_000);
        assert_eq!(config.routes.login, 1);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = toml::from_str::<Config>("[limits]\nmax_conn = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_conn"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let mut config = Config::default();
        config.tcp.len_msg_len = 3;
        assert!(config.validate().unwrap_err().to_string().contains("tcp.len_msg_len"));
        let mut config = Config::default();
        config.routes.error = config.routes.login;
        assert!(config.validate().unwrap_err().to_string().contains("routes"));
        let mut config = Config::default();
        config.tcp.len_msg_len = 2;
        config.limits.max_msg_len = 70_000;
        assert!(config.validate().unwrap_err().to_string().contains("max_msg_len"));
        let mut config = Config::default();
        config.tcp.header = TcpHeader::Es;
        config.validate().expect("the default routes fit the ES header's u16 type");
        config.routes.push = 70_000;
        assert!(config.validate().unwrap_err().to_string().contains("65535"));
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let config = Config::default();
        let shown = format!("{config:?}");
        assert!(!shown.contains(DEV_JWT_SECRET), "{shown}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn the_example_config_loads_and_resolves_paths() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasmgate.toml");
        let config = Config::load(&path).unwrap();
        let dest_map = config.maps.dest_map.unwrap();
        assert!(dest_map.ends_with("examples/maps/dest_map.json"), "{}", dest_map.display());
        assert!(dest_map.exists());
        assert_eq!(config.limits.max_msg_len, 64 * 1024);
        assert_eq!(
            config.scripts.auth.config_json(),
            r#"{"duplicate_login":"kick-older","leeway_s":30,"secret":"wasmgate-dev-secret"}"#
        );
    }

    #[test]
    fn load_names_the_file_and_the_field() {
        let dir = std::env::temp_dir().join(format!("wasmgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[timeouts]\nlogin_ms = \"soon\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("login_ms"), "{err}");
        std::fs::write(&path, "[timeouts]\nlogin_ms = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("timeouts.login_ms"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
