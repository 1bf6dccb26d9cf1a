//! Running several gateways as one cluster (docs/cluster.md): node identity in Redis
//! ([`node_id`]), registration ([`registration`]) and discovery ([`discovery`]) in etcd, user
//! location and the cross-node bus in Redis ([`bus`]).
//!
//! Without `cluster.redis_url` and `cluster.etcd_endpoints` there is no [`Cluster`] and the
//! gateway runs standalone with its configured node id.

pub mod bus;
pub mod discovery;
pub mod etcd_watch;
pub mod location;
mod node_id;
mod registration;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::bus::Bus;
pub use self::discovery::{NodeInfo, NodeTable, Pick};
pub use self::location::{Claim, Location, Policy};
pub use self::node_id::Fence;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::session::Registry;

/// How long joining waits for Redis or etcd before the start fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis client for `url` (`cluster.redis_url`): a `rediss://` URL runs TLS (rustls),
/// trusting the PEM certificates in `ca`, or the system's roots when `None`. Errors: an
/// invalid URL, an unreadable `ca`.
pub fn redis_client(url: &str, ca: Option<&Path>) -> anyhow::Result<redis::Client> {
    let client = match (url.starts_with("rediss://"), ca) {
        (true, Some(ca)) => {
            let root_cert =
                std::fs::read(ca).with_context(|| format!("reading cluster.redis_ca {}", ca.display()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
            )
        }
        _ => redis::Client::open(url),
    };
    client.context("cluster.redis_url")
}

/// etcd connection options for `endpoints`: TLS when they are `https://`, trusting the PEM
/// certificates in `ca`, or the system's roots when `None`; `None` for plain endpoints.
/// Errors: an unreadable `ca`.
pub fn etcd_options(
    endpoints: &[String],
    ca: Option<&Path>,
) -> anyhow::Result<Option<etcd_client::ConnectOptions>> {
    if !endpoints.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let tls = match ca {
        Some(ca) => {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading cluster.etcd_ca {}", ca.display()))?;
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem))
        }
        None => etcd_client::TlsOptions::new().with_native_roots(),
    };
    Ok(Some(etcd_client::ConnectOptions::new().with_tls(tls)))
}

struct RedisPart {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    /// Value of our node id key: who holds the id.
    token: String,
    /// The node id key and our token there, carried by every location write.
    fencing: location::FencingToken,
}

/// A fresh incarnation number: random, never 0 (0 means "not given").
fn new_incarnation() -> u64 {
    fastrand::u64(1..)
}

/// This node's membership of the cluster.
pub struct Cluster {
    /// The node id claimed in Redis (or the configured one without Redis).
    pub node_id: u32,
    /// This process's incarnation: drawn at join, registered in etcd and written into user
    /// locations, so a session of a crashed process whose id another process claimed since
    /// is known to be gone ([`NodeInfo::incarnation`]).
    pub incarnation: u64,
    /// The node id claim's fence; `None` without Redis (the configured id is simply used).
    pub fence: Option<Arc<Fence>>,
    /// The cross-node bus; `None` without Redis.
    pub bus: Option<Bus>,
    /// Nodes registered in etcd (empty without etcd).
    pub nodes: Arc<NodeTable>,
    /// Whether a user location names a live session (this process, the node table).
    liveness: Liveness,
    redis: Option<RedisPart>,
    etcd: Option<etcd_client::Client>,
    config: crate::config::ClusterConfig,
    metrics: Metrics,
    /// Stops the cluster tasks ([`Cluster::leave`]).
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Serialise the logins of one user on this node (striped by user-id hash): see
    /// [`Cluster::login_lock`].
    login_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::hash::RandomState,
}

/// Stripes of [`Cluster::login_lock`].
const LOGIN_LOCKS: usize = 256;

/// Judges whether a user location names a session that still exists: the one rule the login
/// claim and the location refresh share.
#[derive(Clone)]
pub(super) struct Liveness {
    pub(super) node_id: u32,
    pub(super) incarnation: u64,
    /// The node table; `None` without etcd (other nodes cannot be judged).
    nodes: Option<Arc<NodeTable>>,
}

impl Liveness {
    /// Whether node `node` in `incarnation` (0: any) is live as far as this node can tell:
    /// this process (an earlier incarnation of this id is not), or in discovery with etcd;
    /// `None` for another node without etcd (no way to know).
    pub(super) fn node_live(&self, node: u32, incarnation: u64) -> Option<bool> {
        if node == self.node_id {
            return Some(incarnation == 0 || incarnation == self.incarnation);
        }
        self.nodes.as_ref().map(|nodes| nodes.has_incarnation(node, incarnation))
    }

    /// Whether `location` names a session of this process (this node id, this incarnation or
    /// an unknown one).
    pub(super) fn is_ours(&self, location: Location) -> bool {
        location.node == self.node_id
            && (location.incarnation == 0 || location.incarnation == self.incarnation)
    }

    /// Whether the session `location` names still holds its user's place: on this process, a
    /// session in `registry` that is not closing; elsewhere, its node live in that
    /// incarnation (assumed live when that cannot be known, without etcd).
    pub(super) fn session_live(&self, location: Location, registry: &Registry) -> bool {
        if self.is_ours(location) {
            registry.get(location.session).is_some_and(|s| s.close_reason().is_none())
        } else {
            self.node_live(location.node, location.incarnation) != Some(false)
        }
    }
}

/// What the registration tells other nodes, besides the id and load.
pub struct Advertised {
    pub name: String,
    pub ws_addr: Option<String>,
    pub tcp_addr: Option<String>,
    pub admin_addr: Option<String>,
}

impl Cluster {
    /// Connects to Redis and etcd as configured, claims the node id (from `node.id` up) and
    /// starts the bus writer. `Ok(None)` when neither is configured.
    ///
    /// Errors: Redis or etcd unreachable within 5 s, or no free node id.
    pub async fn join(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Self>> {
        let settings = &config.cluster;
        if settings.redis_url.is_none() && settings.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ttl = Duration::from_secs(settings.ttl_s);
        let mut node_id = config.node.id;
        let incarnation = new_incarnation();
        let mut bus = None;
        let mut fence = None;
        let nodes = Arc::<NodeTable>::default();
        let redis = match &settings.redis_url {
            Some(url) => {
                let client = redis_client(url, settings.redis_ca.as_deref())?;
                let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_connection_manager())
                    .await
                    .context("connecting to Redis timed out")?
                    .with_context(|| format!("connecting to Redis at {url}"))?;
                let token = format!("{}-{}", std::process::id(), fastrand::u64(..));
                let (claimed, claim_fence) =
                    node_id::claim(&mut conn, &settings.prefix, config.node.id, &token, ttl).await?;
                node_id = claimed;
                fence = Some(Arc::new(claim_fence));
                tracing::info!(node = node_id, "node id claimed in Redis");
                let keys = bus::Keys { prefix: settings.prefix.clone() };
                let location_ttl = Duration::from_secs(settings.location_ttl_s);
                let fencing = location::FencingToken {
                    node_key: node_id::key(&settings.prefix, node_id).into(),
                    token: token.as_str().into(),
                };
                let (sender, writer) = bus::bus(
                    conn.clone(),
                    keys,
                    (node_id, incarnation, fencing.clone()),
                    settings.queue_len,
                    location_ttl,
                    metrics.clone(),
                    nodes.clone(),
                    stop.clone(),
                );
                tasks.spawn(writer);
                bus = Some(sender);
                Some(RedisPart { client, conn, token, fencing })
            }
            None => None,
        };
        let etcd = match settings.etcd_endpoints.as_slice() {
            [] => None,
            endpoints => Some(
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    etcd_client::Client::connect(
                        endpoints,
                        etcd_options(endpoints, settings.etcd_ca.as_deref())?,
                    ),
                )
                .await
                .context("connecting to etcd timed out")?
                .with_context(|| format!("connecting to etcd at {endpoints:?}"))?,
            ),
        };
        let liveness = Liveness { node_id, incarnation, nodes: etcd.as_ref().map(|_| nodes.clone()) };
        Ok(Some(Self {
            node_id,
            incarnation,
            fence,
            bus,
            nodes,
            liveness,
            redis,
            etcd,
            config: settings.clone(),
            metrics: metrics.clone(),
            stop,
            tasks,
            login_locks: (0..LOGIN_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
        }))
    }

    /// Starts holding the id, refreshing the locations of `registry`'s users, receiving the
    /// bus (delivering through `delivery`), registering in etcd (with `dests()`, the dest ids
    /// this node has a pool for) and watching discovery.
    pub fn start(
        &self,
        registry: Arc<Registry>,
        delivery: Arc<Delivery>,
        dests: impl Fn() -> Vec<u32> + Send + Sync + 'static,
        advertised: Advertised,
    ) {
        let ttl = Duration::from_secs(self.config.ttl_s);
        let keys = bus::Keys { prefix: self.config.prefix.clone() };
        if let Some(redis) = &self.redis {
            // Bumped when the bus subscription comes back after a failure.
            let (reconnected, on_reconnect) = tokio::sync::watch::channel(0);
            self.tasks.spawn(node_id::hold(
                redis.conn.clone(),
                self.config.prefix.clone(),
                (self.node_id, redis.token.clone()),
                ttl,
                self.fence.clone().expect("a fence with Redis"),
                on_reconnect.clone(),
                self.stop.clone(),
            ));
            let locations = bus::Locations {
                conn: redis.conn.clone(),
                keys: keys.clone(),
                registry: registry.clone(),
                delivery: delivery.clone(),
                fencing: redis.fencing.clone(),
                liveness: self.liveness.clone(),
                ttl: Duration::from_secs(self.config.location_ttl_s),
            };
            self.tasks.spawn(locations.run(on_reconnect, self.stop.clone()));
            let local = bus::Local {
                node_id: self.node_id,
                delivery,
                metrics: self.metrics.clone(),
                max_age_ms: (self.config.bus_max_age_ms > 0).then_some(self.config.bus_max_age_ms),
                fence: self.fence.clone(),
            };
            self.tasks.spawn(bus::subscribe(
                redis.client.clone(),
                keys,
                local,
                reconnected,
                self.stop.clone(),
            ));
        }
        if let Some(etcd) = &self.etcd {
            let key = registration::key(&self.config.prefix, &advertised.name, self.node_id);
            let (id, incarnation, node_type) =
                (self.node_id, self.incarnation, self.config.node_type.clone());
            let info = move || NodeInfo {
                id,
                node_type: node_type.clone(),
                name: advertised.name.clone(),
                ws_addr: advertised.ws_addr.clone(),
                tcp_addr: advertised.tcp_addr.clone(),
                admin_addr: advertised.admin_addr.clone(),
                load: registry.len() as u64,
                version: env!("CARGO_PKG_VERSION").into(),
                dests: dests(),
                incarnation,
            };
            let fence = self.fence.clone();
            self.tasks.spawn(registration::run(etcd.clone(), key, ttl, info, fence, self.stop.clone()));
            self.tasks.spawn(discovery::watch(
                etcd.clone(),
                registration::nodes_prefix(&self.config.prefix),
                self.nodes.clone(),
                self.metrics.clone(),
                self.stop.clone(),
            ));
        }
    }

    /// Held by a login of `user` across its location claim and its local binding, so that on
    /// each node the two happen in the same order for every login of one user (with
    /// `kick-older` racing logins then leave exactly one session: the last in Redis). One of
    /// 256 stripes; held for one Redis round trip at most 1 s.
    pub async fn login_lock(&self, user: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = (self.hasher.hash_one(user) as usize) % LOGIN_LOCKS;
        self.login_locks[stripe].lock().await
    }

    /// Claims `user`'s location for this node's `session` under `policy` (see [`location`]).
    /// A session the location names counts as gone when its node is not in discovery (with
    /// etcd) or, on this node, when it is not in `registry` or is closing. Without Redis there is no
    /// location: `Taken { previous: None }`.
    ///
    /// Errors: Redis failing or slower than [`location::CLAIM_TIMEOUT`] (1 s).
    pub async fn claim_location(
        &self,
        user: &str,
        session: u64,
        policy: Policy,
        registry: &Registry,
    ) -> anyhow::Result<Claim> {
        let Some(redis) = &self.redis else {
            return Ok(Claim::Taken { previous: None });
        };
        let key = bus::Keys { prefix: self.config.prefix.clone() }.user(user);
        let ours = Location { node: self.node_id, session, incarnation: self.incarnation };
        let ttl_ms = self.config.location_ttl_s * 1000;
        let live = |l: Location| self.liveness.session_live(l, registry);
        let mut conn = redis.conn.clone();
        let claim = location::claim(&mut conn, (&key, &redis.fencing), ours, ttl_ms, policy, live);
        tokio::time::timeout(location::CLAIM_TIMEOUT, claim)
            .await
            .context("Redis did not answer within 1 s")?
            .context("claiming the user's location in Redis")
    }

    /// `user`'s location as Redis has it now: `Ok(None)` when there is none (or no Redis).
    ///
    /// Errors: Redis failing or slower than [`location::CLAIM_TIMEOUT`] (1 s).
    pub async fn locate(&self, user: &str) -> anyhow::Result<Option<Location>> {
        let Some(redis) = &self.redis else { return Ok(None) };
        let key = bus::Keys { prefix: self.config.prefix.clone() }.user(user);
        let mut conn = redis.conn.clone();
        let cmd = redis::cmd("GET").arg(key).clone();
        let value: Option<String> = tokio::time::timeout(location::CLAIM_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .context("Redis did not answer within 1 s")?
            .context("reading the user's location in Redis")?;
        Ok(value.as_deref().and_then(Location::parse))
    }

    /// Whether node `node` in `incarnation` (0: any) is live as far as this node can tell
    /// ([`Liveness::node_live`]).
    pub fn node_live(&self, node: u32, incarnation: u64) -> Option<bool> {
        self.liveness.node_live(node, incarnation)
    }

    /// Whether `location` names a session of this process ([`Liveness::is_ours`]).
    pub fn is_ours(&self, location: Location) -> bool {
        self.liveness.is_ours(location)
    }

    /// Whether this node may act under its id: not fenced (always true without Redis).
    pub fn holds_id(&self) -> bool {
        self.fence.as_ref().is_none_or(|f| f.valid())
    }

    /// Completes when the node has lost its id (never without Redis): the gateway must close
    /// its sessions and rejoin ([`crate::RunningGateway::fenced`]).
    pub async fn fenced(&self) {
        match &self.fence {
            Some(fence) => fence.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Whether Redis and etcd (those configured) answer within `limit`: `(name, problem)` for
    /// each that does not.
    pub async fn unreachable(&self, limit: Duration) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(limit, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(("redis", e.to_string())),
                Err(_) => problems.push(("redis", format!("no answer within {limit:?}"))),
            }
        }
        if let Some(etcd) = &self.etcd {
            let mut client = etcd.clone();
            match tokio::time::timeout(limit, client.status()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(("etcd", e.to_string())),
                Err(_) => problems.push(("etcd", format!("no answer within {limit:?}"))),
            }
        }
        problems
    }

    /// Leaves the cluster: flushes queued bus writes, revokes the etcd lease (the registration
    /// disappears at once) and releases the node id. Waits at most `grace`.
    pub async fn leave(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("leaving the cluster took longer than {grace:?}; the TTLs will expire the rest");
        }
    }
}
