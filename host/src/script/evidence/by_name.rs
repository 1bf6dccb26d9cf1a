//! Shadows and recordings of a gateway's scripts, addressed by script name (what the admin
//! API and the CLI reach).

use std::sync::Arc;

use super::record::{Bounds, FORMAT, Header, Recording, VERSION, unix_ms};
use super::shadow::{Settings, Shadow};
use super::{Tap, Target};
use crate::script::deploy::version_id;
use crate::script::{Auth, Handler, Rooms, Router, ScriptError, ScriptName, ScriptSource, Scripts};

impl Scripts {
    /// The tap of script `name`. Errors: [`ScriptError::Unknown`].
    pub fn tap(&self, name: &str) -> Result<Tap, ScriptError> {
        match ScriptName::parse(name) {
            Some(ScriptName::Auth) => Ok(self.auth.tap().clone()),
            Some(ScriptName::Router) => Ok(self.router.tap().clone()),
            Some(ScriptName::Rooms) => Ok(self.rooms.tap().clone()),
            None => match self.handlers.get(name) {
                Some(handler) => Ok(handler.tap().clone()),
                None => Err(ScriptError::Unknown { script: name.into() }),
            },
        }
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        self.router.metrics()
    }

    /// This node's id, once the gateway joined its cluster (0 before, and offline).
    fn node_id(&self) -> u32 {
        self.router.limits().services.cluster().map_or(0, |access| access.node_id)
    }

    /// The world of script `name`: its own name for a built-in script, else `handler`.
    pub fn world_of(name: &str) -> &'static str {
        ScriptName::parse(name).map_or("handler", ScriptName::name)
    }

    /// The live version id of script `name`.
    fn live_version(&self, name: &str) -> Result<String, ScriptError> {
        let source = self.source(name)?;
        Ok(version_id(&source.bytes, &source.config_json))
    }

    /// Builds `source` (under a `.shadow` name, for logs and metrics) through the deploy
    /// pipeline as a candidate for script `source.name`, with the live version's limits; a
    /// stateful handler's candidate starts from a `restore` of the live snapshot.
    async fn candidate(&self, source: &ScriptSource) -> Result<Arc<dyn Target>, ScriptError> {
        let shadow = ScriptSource { name: format!("{}.shadow", source.name), ..source.clone() };
        let metrics = self.metrics();
        Ok(match ScriptName::parse(&source.name) {
            Some(ScriptName::Auth) => {
                Arc::new(Auth::load(&shadow, self.auth.limits().clone(), metrics).await?)
            }
            Some(ScriptName::Router) => {
                let limits = self.router.limits().clone();
                Arc::new(Router::load(&shadow, limits, metrics, self.router.map()).await?)
            }
            Some(ScriptName::Rooms) => {
                Arc::new(Rooms::load(&shadow, self.rooms.limits().clone(), metrics).await?)
            }
            None => {
                let live = self
                    .handlers
                    .get(&source.name)
                    .ok_or_else(|| ScriptError::Unknown { script: source.name.clone() })?;
                let candidate =
                    Handler::load(live.stateful(), &shadow, live.limits().clone(), metrics).await?;
                if live.stateful() {
                    candidate.restore(live.snapshot().await?).await?;
                }
                Arc::new(candidate)
            }
        })
    }

    /// Starts a shadow of script `name`: `bytes` with `config` (default: the live version's)
    /// through the deploy pipeline, then given `settings.fraction` of the live events. Replaces
    /// a shadow already running. Returns its first report. Errors: [`ScriptError::Unknown`], or
    /// the pipeline's (the candidate is refused as a deploy would refuse it).
    pub async fn start_shadow(
        &self,
        name: &str,
        bytes: &[u8],
        config: Option<String>,
        settings: Settings,
    ) -> Result<serde_json::Value, ScriptError> {
        let tap = self.tap(name)?;
        let live = self.source(name)?;
        let config_json = config.unwrap_or(live.config_json);
        let source = ScriptSource { name: name.to_string(), bytes: bytes.into(), config_json };
        let version = version_id(&source.bytes, &source.config_json);
        let candidate = self.candidate(&source).await?;
        let shadow = Shadow::start(source, version, candidate, settings, self.metrics());
        tap.set_shadow(Some(shadow.clone()));
        tracing::info!(script = name, candidate = shadow.version, "shadow started");
        Ok(shadow.report(&self.live_version(name)?))
    }

    /// The shadow of script `name`'s report. Errors: [`ScriptError::Unknown`],
    /// [`ScriptError::NoShadow`].
    pub fn shadow_report(&self, name: &str) -> Result<serde_json::Value, ScriptError> {
        let shadow = self.tap(name)?.shadow().ok_or_else(|| ScriptError::NoShadow { script: name.into() })?;
        Ok(shadow.report(&self.live_version(name)?))
    }

    /// Stops the shadow of script `name`; returns its last report. Errors: as
    /// [`Self::shadow_report`].
    pub fn stop_shadow(&self, name: &str) -> Result<serde_json::Value, ScriptError> {
        let live = self.live_version(name)?;
        let shadow =
            self.tap(name)?.set_shadow(None).ok_or_else(|| ScriptError::NoShadow { script: name.into() })?;
        tracing::info!(script = name, candidate = shadow.version, "shadow stopped");
        Ok(shadow.report(&live))
    }

    /// The candidate of script `name`'s shadow, for a promote. Errors: as
    /// [`Self::shadow_report`].
    pub fn shadow_source(&self, name: &str) -> Result<ScriptSource, ScriptError> {
        let shadow = self.tap(name)?.shadow().ok_or_else(|| ScriptError::NoShadow { script: name.into() })?;
        Ok(shadow.source.clone())
    }

    /// Starts recording script `name` within `bounds`. Errors: [`ScriptError::Unknown`],
    /// [`ScriptError::Recording`] when a recording of it is under way; a stateful handler's
    /// refused `snapshot`.
    pub async fn start_recording(&self, name: &str, bounds: Bounds) -> Result<Arc<Recording>, ScriptError> {
        let tap = self.tap(name)?;
        if tap.recording().is_some() {
            return Err(ScriptError::Recording { script: name.into() });
        }
        let live = self.source(name)?;
        let state = match self.handlers.get(name) {
            Some(handler) if handler.stateful() => Some(handler.snapshot().await?),
            _ => None,
        };
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            script: name.into(),
            world: Self::world_of(name).into(),
            script_version: version_id(&live.bytes, &live.config_json),
            config: live.config_json,
            message_map: (ScriptName::parse(name) == Some(ScriptName::Router)).then(|| self.router.map()),
            state,
            node_id: self.node_id(),
            started_at_ms: unix_ms(),
            ended_at_ms: 0,
            events: 0,
            dropped: 0,
            ended_by: String::new(),
        };
        let recording = Arc::new(Recording::new(header, bounds));
        tap.set_recording(Some(recording.clone()));
        Ok(recording)
    }

    /// Stops showing events to `recording` (if it is still script `name`'s recording); its
    /// file is then [`Recording::finish`]ed by the caller.
    pub fn stop_recording(&self, name: &str, recording: &Recording) {
        if let Ok(tap) = self.tap(name)
            && tap.recording().is_some_and(|r| std::ptr::eq(&*r, recording))
        {
            tap.set_recording(None);
        }
    }
}
