//! Control: the one place that changes what a running gateway runs — scripts (deploys,
//! rollbacks, the scripts directory's manifest), `dest_map` and `message_map` — whether the
//! change comes from a file ([`watch`]), from etcd ([`config_centre`]), from the admin API or
//! from SIGHUP. Every change goes through the same pipeline, is logged and counted the same
//! way, and leaves the running version in place when it is refused.

pub mod config_centre;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::maps::{self, MessageMap};
use crate::metrics::{Metrics, ReasonLabel};
use crate::script::bindings::MessageRoute;
use crate::script::deploy::version_id;
use crate::script::manifest::Manifest;
use crate::script::{ScriptError, ScriptInfo, ScriptName, ScriptSource, Scripts};
use crate::upstream::Upstreams;

/// What changes live state, and the state it changes.
pub struct Control {
    pub config: Arc<Config>,
    pub scripts: Arc<Scripts>,
    upstreams: Upstreams,
    metrics: Metrics,
    /// Built-in scripts taken from the scripts directory's manifest: name -> version id of the
    /// entry (file + config) last deployed from it.
    manifest_applied: parking_lot::Mutex<HashMap<ScriptName, String>>,
    /// What the file watcher last applied from each watched file (identical content is not
    /// applied again).
    applied: watch::Applied,
    /// Stops the watchers.
    shutdown: CancellationToken,
    /// The last map reload that was applied and the last one refused (`GET /maps`).
    map_status: parking_lot::Mutex<MapStatus>,
}

/// One map reload as `GET /maps` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapReload {
    /// The file path or etcd key it came from.
    pub origin: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What was applied, or why it was refused.
    pub detail: String,
}

/// The last applied and the last refused map reload since start.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MapStatus {
    pub last_applied: Option<MapReload>,
    pub last_error: Option<MapReload>,
}

/// `message_map` as the router's `init` receives it.
pub fn message_routes(map: &MessageMap) -> Vec<MessageRoute> {
    maps::dest_routes(map).map(|(msg_id, dest_id)| MessageRoute { msg_id, dest_id }).collect()
}

impl Control {
    /// Control over `scripts` and the pools of `upstreams`; `manifest_applied` and `applied`
    /// say what was applied at start (from the manifest, from files).
    pub(crate) fn new(
        (config, scripts, upstreams): (Arc<Config>, Arc<Scripts>, Upstreams),
        metrics: Metrics,
        manifest_applied: HashMap<ScriptName, String>,
        applied: watch::Applied,
        shutdown: CancellationToken,
    ) -> Self {
        let manifest_applied = parking_lot::Mutex::new(manifest_applied);
        let map_status = parking_lot::Mutex::default();
        Self { config, scripts, upstreams, metrics, manifest_applied, applied, shutdown, map_status }
    }

    /// Deploys `bytes` live as script `name` (a [`ScriptName`] or a loaded handler script)
    /// with `config` (JSON text; `None` keeps the live version's). Counted in
    /// `wasmgate_script_deploys_total{reason="ok"|"unchanged"|"rejected"}` (`unchanged`: the
    /// live version was deployed again, a no-op).
    ///
    /// Errors: any step of the pipeline ([`crate::script::deploy`]); an unknown name is
    /// [`ScriptError::Unknown`].
    pub async fn deploy_script(
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

    /// Makes script `name`'s shadow candidate live through the normal deploy (a stateful
    /// handler carries the live state, as any deploy does), then stops the shadow. Errors:
    /// [`ScriptError::NoShadow`]; the deploy's (the shadow keeps running).
    pub async fn promote_script(&self, name: &str) -> Result<ScriptInfo, ScriptError> {
        let candidate = self.scripts.shadow_source(name)?;
        let info = self.deploy_script(name, &candidate.bytes, Some(candidate.config_json)).await?;
        if let Ok(tap) = self.scripts.tap(name) {
            tap.set_shadow(None);
        }
        tracing::info!(script = name, version = info.version, "shadow candidate promoted");
        Ok(info)
    }

    /// Puts the previous version of script `name` back.
    pub async fn rollback_script(&self, name: &str) -> Result<ScriptInfo, ScriptError> {
        self.scripts.rollback(name).await
    }

    /// Deploys each built-in script the scripts directory's manifest describes whose file or
    /// config changed since it was last applied; returns the names deployed.
    ///
    /// Errors: the manifest or a file cannot be read; a deploy is refused (the entries before
    /// it stay deployed).
    pub async fn apply_manifest_builtins(&self) -> Result<Vec<ScriptName>, ScriptError> {
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

    /// Applies `dest_map.json` text live (only changed pools rebuilt); returns a summary.
    /// Errors: the text is not a valid dest map (the running table stays).
    pub fn apply_dest_map(&self, text: &str) -> Result<String, maps::MapError> {
        let map = maps::parse_dest_map(text)?;
        self.upstreams.apply(&map);
        Ok(format!("{} dests", map.len()))
    }

    /// Applies `message_map.json` text live: handler scripts it names brought in, replaced or
    /// retired, then the router re-initialised with it; returns a summary. Errors: an invalid
    /// map, or a script that cannot be loaded or refuses it (the running map stays).
    pub async fn apply_message_map(&self, text: &str) -> Result<String, maps::MapError> {
        let map = maps::parse_message_map(text)?;
        let invalid =
            |e: ScriptError| maps::MapError::Invalid { what: "message_map", message: e.to_string() };
        let applied = self.scripts.handlers.apply(Some(maps::script_routes(&map))).await.map_err(invalid)?;
        self.scripts.router.reload(message_routes(&map)).await.map_err(invalid)?;
        Ok(format!("{} message ids; handler scripts: {applied}", map.len()))
    }

    /// Logs a map reload from `origin` (a path or an etcd key) and counts it in
    /// `wasmgate_map_reloads_total{reason="ok"|"invalid"}`.
    pub fn record(&self, origin: &str, result: Result<String, maps::MapError>) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut status = self.map_status.lock();
        let reason = match result {
            Ok(summary) => {
                tracing::info!(origin, "map reloaded: {summary}");
                status.last_applied = Some(MapReload { origin: origin.into(), at_ms, detail: summary });
                "ok"
            }
            Err(e) => {
                tracing::error!(origin, "map reload rejected, keeping the running map: {e}");
                status.last_error = Some(MapReload { origin: origin.into(), at_ms, detail: e.to_string() });
                "invalid"
            }
        };
        self.metrics.map_reloads.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The last applied and the last refused map reload since start (`GET /maps`).
    pub fn map_status(&self) -> MapStatus {
        self.map_status.lock().clone()
    }
}
