//! The composition root: starting, reloading and stopping a gateway — what `wasmgate` runs
//! and what tests start in-process. It builds each layer's context ([`SessionCtx`] for
//! listeners and sessions, [`Control`] for live changes, [`AdminCtx`] for the admin API) and
//! is the only module that sees them all (docs/architecture.md).
//!
//! Start-up order: validate config -> read maps (config centre, files, embedded) -> load and
//! initialise scripts -> join the cluster (node id) -> bind every listener (fails early,
//! nothing served yet) -> connect upstream pools -> serve -> register, watch map files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod listeners;
pub use listeners::Addrs;
use listeners::Bound;

use crate::admin::AdminCtx;
use crate::cluster::{Advertised, Cluster};
use crate::config::{Config, ScriptConfig};
use crate::control::{Control, config_centre, message_routes, watch};
use crate::delivery::{Delivery, Remote};
use crate::downstream::SessionCtx;
use crate::downstream::abuse::PeerLimits;
use crate::embedded;
use crate::maps::{self, DestMap, MessageMap};
use crate::metrics::Metrics;
use crate::metrics::ReasonLabel;
use crate::rooms::Rooms;
use crate::script::deploy::version_id;
use crate::script::engine::EngineSettings;
use crate::script::manifest::{MANIFEST_FILE, Manifest};
use crate::script::services::{ClusterAccess, Services};
use crate::script::{
    Auth, Handlers, Limits, Rooms as RoomsScript, Router, ScriptName, ScriptSource, Scripts,
};
use crate::session::{CloseReason, Deadlines, Registry, SessionIdGen};
use crate::tls::Certificates;
use crate::upstream::{NodeIdentity, Upstreams};
use crate::user_centre::UserCentre;

/// A running gateway. Dropping it does not stop it: call [`RunningGateway::shutdown`].
pub struct RunningGateway {
    ctx: Arc<SessionCtx>,
    control: Arc<Control>,
    addrs: Addrs,
    /// The TLS listeners' certificate, reloaded by [`RunningGateway::reload`].
    certificates: Option<Arc<Certificates>>,
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

impl RunningGateway {
    /// Starts a gateway. Returns once every listener is bound and serving.
    ///
    /// Errors: invalid config, a script that cannot be loaded or refuses its config, an
    /// invalid map file, or a listener address that cannot be bound.
    pub async fn start(mut config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        for key in config.known_secrets() {
            tracing::warn!(
                key,
                "holds a publicly known example value: accepted on loopback only (docs/security.md)"
            );
        }
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
            long_calls: (config.scripts.long_calls > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(config.scripts.long_calls))),
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
            let certificates = Certificates::load(&config.tls, &metrics)?;
            anyhow::Ok((Bound::bind(&config).await?, certificates))
        };
        let (bound, certificates) = match bound.await {
            Ok(bound) => bound,
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
        let remote = cluster.as_ref().and_then(|c| c.bus.clone()).map(|r| Arc::new(r) as Arc<dyn Remote>);
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
        let config = Arc::new(config);
        let scripts = Arc::new(Scripts { auth, router, rooms: rooms_script, handlers });
        let control = Arc::new(Control::new(
            (config.clone(), scripts.clone(), upstreams.clone()),
            metrics.clone(),
            manifest_applied,
            applied_files,
            shutdown.clone(),
        ));
        let ctx = Arc::new(SessionCtx {
            ids: SessionIdGen::new(config.node.id),
            conn_limit: Arc::new(Semaphore::new(config.limits.max_conn_num)),
            peers: PeerLimits::new(&config.rate_limits, &metrics),
            deadlines: Arc::new(Deadlines::new(
                Duration::from_millis(config.timeouts.login_ms),
                Duration::from_millis(config.timeouts.heartbeat_ms),
            )),
            config: config.clone(),
            registry,
            metrics,
            scripts,
            rooms,
            delivery,
            cluster,
            user_centre,
            upstreams,
            shutdown,
            tasks,
        });
        ctx.upstreams.apply(&dest_map);

        let addrs = bound.addrs();
        let admin = Arc::new(AdminCtx {
            config,
            metrics: ctx.metrics.clone(),
            registry: ctx.registry.clone(),
            rooms: ctx.rooms.clone(),
            delivery: ctx.delivery.clone(),
            cluster: ctx.cluster.clone(),
            upstreams: ctx.upstreams.clone(),
            control: control.clone(),
            shutdown: ctx.shutdown.clone(),
        });
        bound.serve(&ctx, admin, certificates.as_ref());
        ctx.tasks.spawn(ctx.peers.clone().sweep(ctx.shutdown.clone()));
        ctx.tasks.spawn(ctx.deadlines.clone().run(ctx.registry.clone(), ctx.shutdown.clone()));
        if let Some(cluster) = &ctx.cluster {
            let advertised = Advertised {
                name: ctx.config.node.name.clone(),
                ws_addr: addrs.ws.map(|a| a.to_string()),
                tcp_addr: addrs.tcp.map(|a| a.to_string()),
                admin_addr: addrs.admin.map(|a| a.to_string()),
            };
            let upstreams = ctx.upstreams.clone();
            cluster.start(ctx.registry.clone(), ctx.delivery.clone(), move || upstreams.dests(), advertised);
        }
        services.connect(ClusterAccess {
            node_id: ctx.config.node.id,
            nodes: ctx.cluster.as_ref().map(|c| c.nodes.clone()),
            bus: ctx.bus().cloned(),
            upstreams: ctx.upstreams.clone(),
        });
        if let Some(centre) = centre_maps {
            ctx.tasks.spawn(centre.watch(control.clone()));
        }
        let watcher = watch::MapWatcher::start(control.clone())?;
        tracing::info!(
            node = ctx.config.node.id,
            ws = ?addrs.ws,
            wss = ?addrs.wss,
            tcp = ?addrs.tcp,
            tcp_tls = ?addrs.tcp_tls,
            admin = ?addrs.admin,
            "wasmgate serving"
        );
        Ok(Self { ctx, control, addrs, certificates, _watcher: watcher })
    }

    /// Bound WebSocket address (with the real port when configured with port 0).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.addrs.ws
    }

    /// Bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.tcp
    }

    /// Bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.addrs.admin
    }

    /// Every bound listener address.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// Number of open sessions.
    pub fn sessions(&self) -> usize {
        self.ctx.registry.len()
    }

    /// The node id in use (claimed in Redis in a cluster, else `node.id`).
    pub fn node_id(&self) -> u32 {
        self.ctx.config.node.id
    }

    /// The discovery table (empty unless `cluster.etcd_endpoints` is set).
    pub fn nodes(&self) -> Vec<crate::cluster::NodeInfo> {
        self.ctx.cluster.as_ref().map(|c| c.nodes.all()).unwrap_or_default()
    }

    /// Connected pool connections of `dest`.
    pub fn upstream_connections_up(&self, dest: u32) -> usize {
        self.ctx.upstreams.connections_up(dest)
    }

    /// Applies a re-read configuration (SIGHUP): the map files, the scripts directory's
    /// manifest and the TLS certificate files are read again and applied live, as when they change on disk (even with
    /// `maps.no_watch`). Other settings apply at the next start: returns the sections of
    /// `config` that differ from the running ones (also logged as a warning), e.g.
    /// `["limits", "listen"]` ([`Config::changed_sections`]).
    pub async fn reload(&self, config: &Config) -> Vec<&'static str> {
        watch::reload_files(&self.control).await;
        if let Some(certificates) = &self.certificates {
            // A failure is logged and counted; the certificate in use stays.
            let _ = certificates.reload();
        }
        let changed = self.ctx.config.changed_sections(config);
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
        match &self.ctx.cluster {
            Some(cluster) => cluster.fenced().await,
            None => std::future::pending().await,
        }
    }

    /// After [`RunningGateway::fenced`]: closes every session with 1012 `node_restarting` (an
    /// error frame first), then shuts down as [`RunningGateway::shutdown`] does.
    pub async fn restart_fenced(self, grace: Duration) {
        for session in self.ctx.registry.all() {
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
        let ctx = self.ctx;
        ctx.shutdown.cancel();
        ctx.tasks.close();
        // Closed from here rather than each waiting on the token (a waiter per idle session);
        // a session registered after this sees the token when it starts. Pools drain after.
        for session in ctx.registry.all() {
            session.close(CloseReason::GoingAway, "server shutting down");
        }
        let sessions_gone = async {
            while !ctx.registry.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(grace / 2, sessions_gone).await;
        if let Some(cluster) = &ctx.cluster {
            // After the sessions: their location deletes are flushed with the rest.
            cluster.leave(Duration::from_secs(2)).await;
        }
        if let Some(user_centre) = &ctx.user_centre {
            user_centre.finish(Duration::from_secs(2)).await;
        }
        ctx.upstreams.shutdown();
        if tokio::time::timeout(grace / 2, ctx.tasks.wait()).await.is_err() {
            for session in ctx.registry.all() {
                session.abort(CloseReason::GoingAway, "shutdown deadline");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.tasks.wait()).await;
            tracing::warn!("shutdown grace elapsed; remaining tasks aborted");
        }
        let sent = |transport| Metrics::transport_counter(&ctx.metrics.messages_out, transport).get();
        let in_ = |transport| Metrics::transport_counter(&ctx.metrics.messages_in, transport).get();
        // The totals let an operator (and the drain test) compare with what clients and
        // backends received.
        tracing::info!(
            packets_received = in_("websocket") + in_("tcp"),
            packets_sent = sent("websocket") + sent("tcp"),
            upstream_frames_sent = ctx.upstreams.frames_sent(),
            "wasmgate stopped"
        );
    }
}
