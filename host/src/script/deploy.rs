//! Live deployment of one named script: versions, the atomic swap, rollback.
//!
//! Pipeline of every candidate (at start, on deploy, on rollback): content-hash it; compile it
//! on a blocking thread (cached by hash); check its imports against what scripts may use;
//! pre-link it against its world (a wrong world is refused here); instantiate it and run its
//! `init`; then publish it with one atomic pointer swap. A candidate failing any step is
//! refused with the step's error and the live version stays.
//!
//! The version is resolved per event: each call loads the live version once and keeps it to
//! the end, so calls in flight during a swap finish on the version they started with, and the
//! next event of every session, however long-lived, uses the new one. No session waits for a
//! swap: the new version is fully built before it is published.
//!
//! A stateful script (one instance; see [`Carry`]) also carries its state across: once the new
//! version is built, the live one is held (calls wait), its `snapshot` is taken and handed to
//! the new version's `restore`, the new version is published and the old one retired, so
//! calls that waited run on the new version: no update is lost or applied twice. A failing
//! snapshot or restore refuses the swap and the old version resumes with its state.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::engine::Compiled;
use super::pool::{InitFn, Limits, ScriptPool, Slot, SlotFuture, World};
use super::state::ScriptMeta;
use super::{ScriptError, ScriptSource, compile, inspect};
use crate::metrics::{FromLabel, Metrics};

/// The version id of a script: the first 16 hex digits of SHA-256 over the component's bytes
/// and its JSON config (the same bytes with another config are another version).
pub fn version_id(bytes: &[u8], config_json: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.update([0]);
    hasher.update(config_json.as_bytes());
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How a stateful script's state moves from the live version to its replacement: `snapshot`
/// runs on the old instance, `restore` on the new one (the world's exports of those names).
pub struct Carry<W> {
    pub snapshot: SnapshotFn<W>,
    pub restore: RestoreFn<W>,
}

/// Calls `snapshot` on an instance: `Ok(Err(_))` is the script's refusal.
pub type SnapshotFn<W> = fn(Slot<W>) -> SlotFuture<W, Result<Vec<u8>, String>>;
/// Calls `restore(state)` on an instance: `Ok(Err(_))` is the script's refusal.
pub type RestoreFn<W> = fn(Slot<W>, Arc<[u8]>) -> SlotFuture<W, Result<(), String>>;

/// One deployed version of a script.
pub struct Version<W: World> {
    /// [`version_id`] of its bytes and config.
    pub id: String,
    /// When it was published, ms since the Unix epoch.
    pub deployed_at_ms: u64,
    pub source: ScriptSource,
    pub pool: ScriptPool<W>,
    /// Its compiled component: held, so it stays in the engine's memory cache.
    pub compiled: Arc<Compiled>,
}

/// What `GET /scripts` and `wasmgate scripts` show of a script.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptInfo {
    pub name: String,
    pub version: String,
    pub deployed_at_ms: u64,
    pub bytes: usize,
    pub calls: u64,
    pub traps: u64,
    pub deadlines: u64,
    /// The version `rollback` would restore.
    pub previous: Option<String>,
    /// Most live instances of this version: `scripts.instances`, capped so that they hold at
    /// most 128 MiB of linear memory together.
    pub max_instances: usize,
    /// Linear memory of one instance after `init`, bytes (most of an instance's resident
    /// memory).
    pub instance_memory_bytes: usize,
    /// Set (and serialised, as `true`) only in a deploy's answer when the deployed bytes and
    /// config were already the live version: nothing was rebuilt and `previous` is kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

/// The live version of one named script and the one before it.
pub struct Deployed<W: World> {
    name: String,
    limits: Limits,
    metrics: Metrics,
    live: ArcSwap<Version<W>>,
    /// What a rollback restores: the replaced version's id and source, and its compiled
    /// component (kept compiled). Its instances are freed (once calls still running on them
    /// end); a rollback rebuilds them.
    previous: Mutex<Option<Previous>>,
    /// One deploy, rollback or rebuild of this script at a time.
    busy: tokio::sync::Mutex<()>,
}

impl<W: World> Deployed<W> {
    /// Runs the pipeline on `source` and makes it the first live version.
    pub async fn load(
        source: &ScriptSource,
        limits: Limits,
        metrics: &Metrics,
        init: InitFn<W>,
    ) -> Result<Self, ScriptError> {
        let id = version_id(&source.bytes, &source.config_json);
        let version = build(&source.name, source, id, limits.clone(), metrics, init).await?;
        Ok(Self {
            name: source.name.clone(),
            limits,
            metrics: metrics.clone(),
            live: ArcSwap::from_pointee(version),
            previous: Mutex::new(None),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The live version, for one event (keep the `Arc` for the whole call).
    pub fn live(&self) -> Arc<Version<W>> {
        self.live.load_full()
    }

    /// The sandbox limits its versions run under (a shadow candidate gets the same).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs the pipeline on `source`; on success publishes it (carrying state with `carry`)
    /// and keeps the replaced version for [`Self::rollback`]. On error the live version stays.
    ///
    /// Deploying the live version again (same bytes and config, so the same [`version_id`])
    /// is a no-op: nothing is built or swapped, the rollback target is kept, and the answer has
    /// [`ScriptInfo::unchanged`] set.
    pub async fn deploy(
        &self,
        source: ScriptSource,
        init: InitFn<W>,
        carry: Option<&Carry<W>>,
    ) -> Result<ScriptInfo, ScriptError> {
        let _busy = self.busy.lock().await;
        let id = version_id(&source.bytes, &source.config_json);
        if id == self.live.load().id {
            tracing::debug!(script = self.name, "deploy of the live version: nothing to do");
            return Ok(ScriptInfo { unchanged: true, ..self.info() });
        }
        let version = build(&self.name, &source, id, self.limits.clone(), &self.metrics, init).await?;
        let replaced = self.publish(version, carry).await?;
        tracing::info!(
            script = self.name,
            version = self.live.load().id,
            replaced = replaced.id,
            "script deployed"
        );
        *self.previous.lock() = Some(Previous::of(&replaced));
        Ok(self.info())
    }

    /// Puts the previous version back, rebuilt through the pipeline with the `init` that
    /// `make_init` makes from its config (so it sees current state such as the message map);
    /// the replaced one becomes the previous.
    ///
    /// Errors: [`ScriptError::NoPrevious`] when nothing was replaced yet.
    pub async fn rollback(
        &self,
        make_init: impl FnOnce(&str) -> InitFn<W>,
        carry: Option<&Carry<W>>,
    ) -> Result<ScriptInfo, ScriptError> {
        let _busy = self.busy.lock().await;
        let Some(Previous { id: previous_id, source: previous, .. }) = self.previous.lock().clone() else {
            return Err(ScriptError::NoPrevious { script: self.name.clone() });
        };
        let init = make_init(&previous.config_json);
        let version =
            build(&self.name, &previous, previous_id.clone(), self.limits.clone(), &self.metrics, init)
                .await?;
        let replaced = self.publish(version, carry).await?;
        tracing::info!(
            script = self.name,
            version = previous_id,
            replaced = replaced.id,
            "script rolled back"
        );
        *self.previous.lock() = Some(Previous::of(&replaced));
        Ok(self.info())
    }

    /// Makes `version` live and returns the replaced one; with `carry`, moves the state over
    /// first (see the module docs). Errors: [`ScriptError::Carry`] when `snapshot` or `restore`
    /// refuses; a trap in either.
    async fn publish(
        &self,
        version: Version<W>,
        carry: Option<&Carry<W>>,
    ) -> Result<Arc<Version<W>>, ScriptError> {
        let Some(carry) = carry else {
            return Ok(self.live.swap(Arc::new(version)));
        };
        let old = self.live();
        let hold = old.pool.hold().await?;
        let carry_error = |step, message| ScriptError::Carry { script: self.name.clone(), step, message };
        // No live instance (it trapped and could not be rebuilt): its state is already lost,
        // and refusing would keep a broken version live. The new one restores nothing.
        let state: Arc<[u8]> = if old.pool.has_instance(&hold) {
            old.pool.call_held(&hold, carry.snapshot).await?.map_err(|m| carry_error("snapshot", m))?.into()
        } else {
            tracing::warn!(script = self.name, "the live version has no instance: no state to carry");
            Arc::from(Vec::new())
        };
        let bytes = state.len();
        let restore = carry.restore;
        version
            .pool
            .call(move |slot| restore(slot, state))
            .await
            .map_err(|e| carry_error("restore", e.to_string()))?
            .map_err(|m| carry_error("restore", m))?;
        let replaced = self.live.swap(Arc::new(version));
        old.pool.retire(&hold);
        drop(hold);
        tracing::info!(script = self.name, bytes, "script state carried to the new version");
        Ok(replaced)
    }

    /// Rebuilds the live version's instances with a new `init` (same component and id; the
    /// router's `message_map` reload). The previous version is kept.
    pub async fn rebuild(&self, init: InitFn<W>) -> Result<(), ScriptError> {
        let _busy = self.busy.lock().await;
        let live = self.live();
        let mut version =
            build(&self.name, &live.source, live.id.clone(), self.limits.clone(), &self.metrics, init)
                .await?;
        version.deployed_at_ms = live.deployed_at_ms;
        self.live.store(Arc::new(version));
        Ok(())
    }

    /// Name, live version, its counts, and the version a rollback would restore.
    pub fn info(&self) -> ScriptInfo {
        let live = self.live();
        let (calls, traps, deadlines) = live.pool.outcomes();
        let (max_instances, instance_memory_bytes) = live.pool.capacity();
        ScriptInfo {
            name: self.name.clone(),
            version: live.id.clone(),
            deployed_at_ms: live.deployed_at_ms,
            bytes: live.source.bytes.len(),
            calls: calls + traps + deadlines,
            traps,
            deadlines,
            previous: self.previous.lock().as_ref().map(|p| p.id.clone()),
            max_instances,
            instance_memory_bytes,
            unchanged: false,
        }
    }
}

/// The version a rollback restores.
#[derive(Clone)]
struct Previous {
    id: String,
    source: ScriptSource,
    _compiled: Arc<Compiled>,
}

impl Previous {
    fn of<W: World>(version: &Version<W>) -> Self {
        Self { id: version.id.clone(), source: version.source.clone(), _compiled: version.compiled.clone() }
    }
}

/// The pipeline: check the world and imports from the component's declarations (before any
/// compile), compile (cached, off the async workers), pre-link against the world, instantiate
/// and `init`. `id` is the source's [`version_id`] (the caller has it already).
async fn build<W: World>(
    name: &str,
    source: &ScriptSource,
    id: String,
    limits: Limits,
    metrics: &Metrics,
    init: InitFn<W>,
) -> Result<Version<W>, ScriptError> {
    let declared = inspect::declared(&source.bytes)
        .map_err(|message| ScriptError::Load { script: name.into(), message })?;
    inspect::check(&declared, W::EXPORT, limits.trap_unknown_imports)
        .map_err(|message| ScriptError::Link { script: name.into(), message })?;
    let (engine, compiled, from) = compile(source, &limits).await?;
    metrics.script_compiles.get_or_create(&FromLabel { from: from.name() }).inc();
    let meta = ScriptMeta::new(name, &id, metrics.clone(), limits.services.clone());
    let pool = ScriptPool::new(engine, meta, &compiled.component, limits, init).await?;
    compiled.accept();
    Ok(Version { id, deployed_at_ms: unix_ms(), source: source.clone(), pool, compiled })
}

#[cfg(test)]
mod tests {
    use super::version_id;

    #[test]
    fn version_ids_cover_bytes_and_config() {
        let a = version_id(b"component", "{}");
        assert_eq!(a.len(), 16);
        assert_eq!(a, version_id(b"component", "{}"));
        assert_ne!(a, version_id(b"component", r#"{"tag":1}"#));
        assert_ne!(a, version_id(b"component2", "{}"));
    }
}
