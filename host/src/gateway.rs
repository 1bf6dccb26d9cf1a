//! Starting and stopping a gateway: what `wasmgate` runs and what tests start in-process.
//!
//! Start-up order (seed 000's, minus Redis/etcd which later issues add): validate config ->
//! load and initialise scripts -> read maps -> bind every listener (fails early, nothing
//! served yet) -> connect upstream pools -> serve -> watch map files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Advertised, Cluster, Relay};
use crate::config::{Config, ScriptConfig};
use crate::delivery::{Delivery, Remote};
use crate::maps::{self, DestMap, MessageMap};
use crate::metrics::Metrics;
use crate::metrics::ReasonLabel;
use crate::rooms::Rooms;
use crate::script::bindings::MessageRoute;
use crate::script::deploy::version_id;
use crate::script::engine::EngineSettings;
use crate::script::manifest::{MANIFEST_FILE, Manifest};
use crate::script::services::{ClusterAccess, Services};
use crate::script::{
    Auth, Handlers, Limits, Rooms as RoomsScript, Router, ScriptError, ScriptInfo, ScriptName, ScriptSource,
    Scripts,
};
use crate::session::{CloseReason, Registry, SessionIdGen};
use crate::upstream::{NodeIdentity, Upstreams};
use crate::user_centre::UserCentre;
use crate::{admin, config_centre, embedded, transport, watch};

/// Everything a session or listener needs, shared by all of them.
pub(crate) struct Core {
    pub config: Config,
    pub ids: SessionIdGen,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub scripts: Arc<Scripts>,
    /// Built-in scripts taken from the scripts directory's manifest: name -> version id of the
    /// entry (file + config) last deployed from it.
    pub manifest_applied: parking_lot::Mutex<HashMap<ScriptName, String>>,
    /// What the file watcher last applied from each watched file (identical content is not
    /// applied again).
    pub applied: watch::Applied,
    pub rooms: Arc<Rooms>,
    /// Every push, reply, kick and broadcast: this node, or others over the bus.
    pub delivery: Arc<Delivery>,
    /// Membership of a cluster (Redis, etcd); `None` standalone.
    pub cluster: Option<Arc<Cluster>>,
    /// Login/logout notices to the user centre; `None` without `user_centre.url`.
    pub user_centre: Option<UserCentre>,
    pub upstreams: Upstreams,
    pub conn_limit: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Core {
    /// The cross-node bus, when the gateway runs in a cluster with Redis.
    pub(crate) fn relay(&self) -> Option<&Relay> {
        self.cluster.as_ref().and_then(|c| c.relay.as_ref())
    }

    /// Deploys `bytes` live as script `name` (a [`ScriptName`] or a loaded handler script) with `config` (JSON text; `None` keeps the live version's). Counted in
    /// `wasmgate_script_deploys_total{reason="ok"|"unchanged"|"rejected"}` (`unchanged`: the
    /// live version was deployed again, a no-op).
    ///
    /// Errors: any step of the pipeline ([`crate::script::deploy`]); an unknown name is
    /// [`ScriptError::Unknown`].
    pub(crate) async fn deploy_script(
        &self,
        name: &str,
        bytes: &[u8],
        config: Option<String>,
    ) -> Result<ScriptInfo, ScriptError> {
        let result = match self.scripts.source(name) {
            Ok(live) => {
                let config_json = config.unwrap_or(live.config_json);
                self.scripts
                    .deploy(ScriptSource { name: name.to_string(), bytes: bytes.into(), config_json })
                    .await
            }
            Err(e) => Err(e),
        };
        let reason = match &result {
            Ok(info) if info.unchanged => "unchanged",
            Ok(_) => "ok",
            Err(_) => "rejected",
        };
        self.metrics.script_deploys.get_or_create(&ReasonLabel { reason }).inc();
        if let Err(e) = &result {
            tracing::warn!(script = name, "deploy refused, the live version stays: {e}");
        }
        result
    }

    /// Deploys each built-in script the scripts directory's manifest describes whose file or
    /// config changed since it was last applied; returns the names deployed.
    ///
    /// Errors: the manifest or a file cannot be read; a deploy is refused (the entries before
    /// it stay deployed).
    pub(crate) async fn apply_manifest_builtins(&self) -> Result<Vec<ScriptName>, ScriptError> {
        let Some(dir) = &self.config.scripts.dir else { return Ok(Vec::new()) };
        let manifest = Manifest::read(dir)?;
        let mut deployed = Vec::new();
        for entry in manifest.builtins() {
            let Some(name) = entry.world.builtin() else { continue };
            let source = entry.source(dir)?;
            let id = version_id(&source.bytes, &source.config_json);
            if self.manifest_applied.lock().get(&name) == Some(&id) {
                continue;
            }
            self.deploy_script(name.name(), &source.bytes, Some(source.config_json)).await?;
            self.manifest_applied.lock().insert(name, id);
            deployed.push(name);
        }
        Ok(deployed)
    }

    /// Puts the previous version of script `name` back.
    pub(crate) async fn rollback_script(&self, name: &str) -> Result<ScriptInfo, ScriptError> {
        self.scripts.rollback(name).await
    }
}

/// A running gateway. Dropping it does not stop it: call [`RunningGateway::shutdown`].
pub struct RunningGateway {
    core: Arc<Core>,
    ws_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    _watcher: Option<watch::MapWatcher>,
}

/// Where a built-in script comes from: its manifest entry in `scripts.dir` if there is one,
/// else `[scripts.<name>]` (its `path`, or the default built into the binary). Returns the
/// source and, for a manifest entry, its version id.
fn script_source(
    name: ScriptName,
    manifest: &Manifest,
    config: &Config,
    default: &[u8],
) -> anyhow::Result<(ScriptSource, Option<String>)> {
    if let (Some(dir), Some(entry)) = (&config.scripts.dir, manifest.get(name.name())) {
        let source = entry.source(dir)?;
        let id = version_id(&source.bytes, &source.config_json);
        return Ok((source, Some(id)));
    }
    let script: &ScriptConfig = match name {
        ScriptName::Auth => &config.scripts.auth,
        ScriptName::Router => &config.scripts.router,
        ScriptName::Rooms => &config.scripts.rooms,
    };
    let bytes: Arc<[u8]> = match &script.path {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading script `{name}` from {}", path.display()))?
            .into(),
        None => default.into(),
    };
    Ok((ScriptSource { name: name.name().into(), bytes, config_json: script.config_json() }, None))
}

/// `message_map` as the router's `init` receives it.
pub(crate) fn message_routes(map: &MessageMap) -> Vec<MessageRoute> {
    maps::dest_routes(map).map(|(msg_id, dest_id)| MessageRoute { msg_id, dest_id }).collect()
}

/// The maps at start: from the config centre's keys when they exist, else the files, else the
/// embedded example maps. Each map read from a file is recorded in `applied`.
fn initial_maps(
    config: &Config,
    centre: Option<&config_centre::Maps>,
    applied: &watch::Applied,
) -> anyhow::Result<(DestMap, MessageMap)> {
    let dest_text = match (centre.and_then(|c| c.dest_map.clone()), &config.maps.dest_map) {
        (Some(text), _) => text,
        (None, Some(path)) => maps::read(path)?,
        (None, None) => maps::embedded::DEST_MAP.to_string(),
    };
    let message_text = match (centre.and_then(|c| c.message_map.clone()), &config.maps.message_map) {
        (Some(text), _) => text,
        (None, Some(path)) => maps::read(path)?,
        (None, None) => maps::embedded::MESSAGE_MAP.to_string(),
    };
    let maps = (maps::parse_dest_map(&dest_text)?, maps::parse_message_map(&message_text)?);
    let from_files = [(&config.maps.dest_map, &dest_text), (&config.maps.message_map, &message_text)];
    for (path, text) in from_files {
        if let Some(path) = path {
            applied.set(path, watch::text_hash(text));
        }
    }
    Ok(maps)
}

/// Binds `addr` (none: no listener), with `SO_REUSEPORT` when `reuse_port`.
async fn bind(addr: Option<SocketAddr>, what: &str, reuse_port: bool) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = if reuse_port {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            s.listen(1024)
        })
    } else {
        TcpListener::bind(addr).await
    };
    Ok(Some(listener.with_context(|| format!("binding the {what} listener on {addr}"))?))
}

impl RunningGateway {
    /// Starts a gateway. Returns once every listener is bound and serving.
    ///
    /// Errors: invalid config, a script that cannot be loaded or refuses its config, an
    /// invalid map file, or a listener address that cannot be bound.
    pub async fn start(mut config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Metrics::new();
        for reason in CloseReason::ALL {
            let _ = metrics.sessions_closed.get_or_create(&ReasonLabel { reason: reason.name() });
        }
        let centre_maps = config_centre::read_maps(&config).await?;
        if let Some(centre) = &centre_maps {
            // Maps held in etcd replace the files, which are then not read nor watched.
            if centre.dest_map.is_some() {
                config.maps.dest_map = None;
            }
            if centre.message_map.is_some() {
                config.maps.message_map = None;
            }
        }
        let applied_files = watch::Applied::default();
        let (dest_map, message_map) = initial_maps(&config, centre_maps.as_ref(), &applied_files)?;

        let services = Arc::new(Services::default());
        let limits = Limits {
            deadline: Duration::from_millis(config.scripts.deadline_ms),
            memory_bytes: config.scripts.memory_bytes,
            instances: config.scripts.instances,
            cache_dir: config.scripts.cache_dir.as_deref().map(Into::into),
            engine: EngineSettings::of(&config.scripts.pooling),
            services: services.clone(),
            trap_unknown_imports: config.scripts.trap_unknown_imports,
        };
        let manifest = match &config.scripts.dir {
            Some(dir) => {
                // Read before the manifest: a change in between is then applied by the watcher.
                applied_files.set(&dir.join(MANIFEST_FILE), watch::manifest_fingerprint(dir));
                Manifest::read(dir)?
            }
            None => Manifest::default(),
        };
        let mut manifest_applied = HashMap::new();
        let mut source_of = |name: ScriptName, default: &[u8]| -> anyhow::Result<ScriptSource> {
            let (source, id) = script_source(name, &manifest, &config, default)?;
            if let Some(id) = id {
                manifest_applied.insert(name, id);
            }
            Ok(source)
        };
        let auth_source = source_of(ScriptName::Auth, embedded::DEFAULT_AUTH)?;
        let router_source = source_of(ScriptName::Router, embedded::DEFAULT_ROUTER)?;
        let rooms_source = source_of(ScriptName::Rooms, embedded::DEFAULT_ROOMS)?;
        let routes = message_routes(&message_map);
        let auth = Auth::load(&auth_source, limits.clone(), &metrics).await?;
        let router = Router::load(&router_source, limits.clone(), &metrics, routes).await?;
        let rooms_script = RoomsScript::load(&rooms_source, limits.clone(), &metrics).await?;
        let handlers = Handlers::new(config.scripts.dir.clone(), limits, &metrics);
        let applied = handlers.apply(Some(maps::script_routes(&message_map))).await?;
        if !applied.loaded.is_empty() {
            tracing::info!(scripts = ?applied.loaded, "handler scripts loaded");
        }

        // Claims the node id (Redis) before anything uses it.
        let cluster = Cluster::join(&config, &metrics).await?.map(Arc::new);
        if let Some(cluster) = &cluster {
            config.node.id = cluster.node_id;
        }
        let bound = async {
            let ws = bind(config.listen.ws, "WebSocket", config.listen.reuse_port).await?;
            let tcp = bind(config.listen.tcp, "TCP", config.listen.reuse_port).await?;
            let admin = bind(config.listen.admin, "admin", false).await?;
            anyhow::Ok((ws, tcp, admin))
        };
        let (ws, tcp, admin_listener) = match bound.await {
            Ok(listeners) => listeners,
            Err(e) => {
                if let Some(cluster) = &cluster {
                    cluster.leave(Duration::from_secs(2)).await;
                }
                return Err(e);
            }
        };

        let registry = Arc::new(Registry::default());
        let tasks = TaskTracker::new();
        let node = NodeIdentity { id: config.node.id, name: config.node.name.clone() };
        let shutdown = CancellationToken::new();
        let rooms = Arc::new(Rooms::new(&config.rooms, registry.clone(), &metrics, &tasks, shutdown.clone()));
        let remote = cluster.as_ref().and_then(|c| c.relay.clone()).map(|r| Arc::new(r) as Arc<dyn Remote>);
        let delivery = Arc::new(Delivery::new(registry.clone(), rooms.clone(), remote));
        let upstreams = Upstreams::new(
            registry.clone(),
            rooms.clone(),
            metrics.clone(),
            config.upstream.clone(),
            node,
            tasks.clone(),
            delivery.clone(),
        );
        delivery.connect_dests(upstreams.local_dests());
        let user_centre = UserCentre::start(&config.user_centre, config.node.id, &metrics)?;
        let core = Arc::new(Core {
            ids: SessionIdGen::new(config.node.id),
            conn_limit: Arc::new(Semaphore::new(config.limits.max_conn_num)),
            config,
            registry,
            metrics,
            scripts: Arc::new(Scripts { auth, router, rooms: rooms_script, handlers }),
            manifest_applied: parking_lot::Mutex::new(manifest_applied),
            applied: applied_files,
            rooms,
            delivery,
            cluster,
            user_centre,
            upstreams,
            shutdown,
            tasks,
        });
        core.upstreams.apply(&dest_map);

        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (ws_addr, tcp_addr, admin_addr) = (addr(&ws), addr(&tcp), addr(&admin_listener));
        if let Some(listener) = ws {
            core.tasks.spawn(transport::accept_loop(
                core.clone(),
                listener,
                "websocket",
                transport::ws::serve,
            ));
        }
        if let Some(listener) = tcp {
            core.tasks.spawn(transport::accept_loop(core.clone(), listener, "tcp", transport::tcp::serve));
        }
        if let Some(listener) = admin_listener {
            core.tasks.spawn(admin::serve(core.clone(), listener));
        }
        if let Some(cluster) = &core.cluster {
            let advertised = Advertised {
                name: core.config.node.name.clone(),
                ws_addr: ws_addr.map(|a| a.to_string()),
                tcp_addr: tcp_addr.map(|a| a.to_string()),
                admin_addr: admin_addr.map(|a| a.to_string()),
            };
            let upstreams = core.upstreams.clone();
            cluster.start(
                core.registry.clone(),
                core.delivery.clone(),
                move || upstreams.dests(),
                advertised,
            );
        }
        services.connect(ClusterAccess {
            node_id: core.config.node.id,
            nodes: core.cluster.as_ref().map(|c| c.nodes.clone()),
            relay: core.relay().cloned(),
            upstreams: core.upstreams.clone(),
        });
        if let Some(centre) = centre_maps {
            core.tasks.spawn(centre.watch(core.clone()));
        }
        let watcher = watch::MapWatcher::start(core.clone())?;
        tracing::info!(node = core.config.node.id, ?ws_addr, ?tcp_addr, ?admin_addr, "wasmgate serving");
        Ok(Self { core, ws_addr, tcp_addr, admin_addr, _watcher: watcher })
    }

    /// Bound WebSocket address (with the real port when configured with port 0).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// Bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Number of open sessions.
    pub fn sessions(&self) -> usize {
        self.core.registry.len()
    }

    /// The node id in use (claimed in Redis in a cluster, else `node.id`).
    pub fn node_id(&self) -> u32 {
        self.core.config.node.id
    }

    /// The discovery table (empty unless `cluster.etcd_endpoints` is set).
    pub fn nodes(&self) -> Vec<crate::cluster::NodeInfo> {
        self.core.cluster.as_ref().map(|c| c.nodes.all()).unwrap_or_default()
    }

    /// Connected pool connections of `dest`.
    pub fn upstream_connections_up(&self, dest: u32) -> usize {
        self.core.upstreams.connections_up(dest)
    }

    /// Applies a re-read configuration (SIGHUP): the map files and the scripts directory's
    /// manifest are read again and applied live, as when they change on disk (even with
    /// `maps.no_watch`). Other settings apply at the next start: returns the sections of
    /// `config` that differ from the running ones (also logged as a warning), e.g.
    /// `["limits", "listen"]` ([`Config::changed_sections`]).
    pub async fn reload(&self, config: &Config) -> Vec<&'static str> {
        watch::reload_files(&self.core).await;
        let changed = self.core.config.changed_sections(config);
        if !changed.is_empty() {
            tracing::warn!(sections = ?changed, "config sections changed; they apply at the next start");
        }
        changed
    }

    /// Completes when this node has lost its cluster node id (its claim's deadline passed or
    /// another process holds the id; docs/cluster.md, fencing); never for a standalone node.
    /// Then call [`RunningGateway::restart_fenced`] and start a new gateway, which claims a
    /// fresh id.
    pub async fn fenced(&self) {
        match &self.core.cluster {
            Some(cluster) => cluster.fenced().await,
            None => std::future::pending().await,
        }
    }

    /// After [`RunningGateway::fenced`]: closes every session with 1012 `node_restarting` (an
    /// error frame first), then shuts down as [`RunningGateway::shutdown`] does.
    pub async fn restart_fenced(self, grace: Duration) {
        for session in self.core.registry.all() {
            session.close(CloseReason::NodeRestarting, "the node lost its cluster id; reconnect");
        }
        self.shutdown(grace).await
    }

    /// Graceful shutdown: stop accepting; every session flushes its queue and gets an error
    /// frame `going_away` and close code 1001; the node leaves the cluster (etcd lease revoked,
    /// node id released); upstream pools write what they hold and read replies briefly; then
    /// waits for all tasks, at most `grace`. Sessions still open after `grace` are aborted. Logs
    /// `wasmgate stopped` with the packets received from and sent to clients and the frames
    /// written to backends.
    pub async fn shutdown(self, grace: Duration) {
        let core = self.core;
        core.shutdown.cancel();
        core.tasks.close();
        // Sessions see the token and close themselves; pools drain after them.
        let sessions_gone = async {
            while !core.registry.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(grace / 2, sessions_gone).await;
        if let Some(cluster) = &core.cluster {
            // After the sessions: their location deletes are flushed with the rest.
            cluster.leave(Duration::from_secs(2)).await;
        }
        if let Some(user_centre) = &core.user_centre {
            user_centre.finish(Duration::from_secs(2)).await;
        }
        core.upstreams.shutdown();
        if tokio::time::timeout(grace / 2, core.tasks.wait()).await.is_err() {
            for session in core.registry.all() {
                session.abort(CloseReason::GoingAway, "shutdown deadline");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), core.tasks.wait()).await;
            tracing::warn!("shutdown grace elapsed; remaining tasks aborted");
        }
        let sent = |transport| Metrics::transport_counter(&core.metrics.messages_out, transport).get();
        let in_ = |transport| Metrics::transport_counter(&core.metrics.messages_in, transport).get();
        // The totals let an operator (and the drain test) compare with what clients and
        // backends received.
        tracing::info!(
            packets_received = in_("websocket") + in_("tcp"),
            packets_sent = sent("websocket") + sent("tcp"),
            upstream_frames_sent = core.upstreams.frames_sent(),
            "wasmgate stopped"
        );
    }
}
