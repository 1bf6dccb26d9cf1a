//! Handler scripts: user-named scripts (`handler-script` world) that `message_map.json` sends
//! message ids to, described by the scripts directory's manifest ([`super::manifest`]).
//!
//! [`Handlers::apply`] reconciles the loaded scripts with a message map and the manifest:
//! a newly named script is brought in (the full deploy pipeline), one whose file or config
//! changed is replaced (a stateful one carrying its state), one no longer named is retired
//! (calls in flight finish on it). The message id -> script table is published in one atomic
//! swap once every named script is live; on any error the running table stays (a
//! replacement that succeeded before the error stays live, as if deployed alone).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::bindings::handler::HandlerScript;
use super::bindings::{Outcome, Packet, Session};
use super::deploy::{Carry, Deployed, ScriptInfo, version_id};
use super::evidence::{Answer, Call, Tap, Tape, Target, TargetFuture, wrong_world};
use super::hooks::call_taped;
use super::manifest::Manifest;
use super::pool::{InitFn, Limits, Slot};
use super::{ScriptError, ScriptSource};
use crate::metrics::Metrics;

fn handler_init(config: &str) -> InitFn<HandlerScript> {
    let config: Arc<str> = config.into();
    Arc::new(move |mut slot: Slot<HandlerScript>| {
        let config = config.clone();
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_handler().call_init(&mut slot.store, &config).await;
            (slot, r)
        })
    })
}

/// `snapshot` / `restore` of the handler world.
const CARRY: Carry<HandlerScript> = Carry {
    snapshot: |mut slot| {
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_handler().call_snapshot(&mut slot.store).await;
            (slot, r)
        })
    },
    restore: |mut slot, state| {
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_handler().call_restore(&mut slot.store, &state).await;
            (slot, r)
        })
    },
};

/// How often a call retries when the version it waited on was replaced by a stateful swap
/// (each retry goes to a newer live version; more than one retry needs swaps back to back).
const RETIRED_RETRIES: usize = 8;

/// One loaded handler script.
pub struct Handler {
    stateful: bool,
    script: Deployed<HandlerScript>,
    /// Version id of the manifest file + config last applied: a reconcile replaces the live
    /// version only when this changes, so a `wasmgate deploy` stays until the file changes.
    applied: Mutex<String>,
    tap: Tap,
}

impl Handler {
    /// Runs the deploy pipeline on `source` (with one instance when `stateful`). Errors: as
    /// [`Deployed::load`] (refused component, `init` error, trap).
    pub async fn load(
        stateful: bool,
        source: &ScriptSource,
        mut limits: Limits,
        metrics: &Metrics,
    ) -> Result<Self, ScriptError> {
        if stateful {
            // One instance holds the state; calls queue for it.
            limits.instances = 1;
        }
        let script = Deployed::load(source, limits, metrics, handler_init(&source.config_json)).await?;
        let applied = Mutex::new(version_id(&source.bytes, &source.config_json));
        Ok(Self { stateful, script, applied, tap: Tap::default() })
    }

    fn carry(&self) -> Option<&Carry<HandlerScript>> {
        self.stateful.then_some(&CARRY)
    }

    /// Handles `packet` on the live version. Errors: [`ScriptError`] (trap, deadline,
    /// unavailable).
    pub async fn handle(
        &self,
        session: &Session,
        packet: &Packet,
        es_id: Option<u32>,
    ) -> Result<Outcome, ScriptError> {
        let observers = self.tap.observers();
        let tape = observers.as_ref().and_then(|o| o.tape());
        let (result, tape) = self.handle_taped(session, packet, es_id, tape).await;
        if let Some(o) = observers {
            let call = || Call::Handle { session: session.clone(), packet: packet.clone(), es_id };
            o.observe(call, &result, |outcome| Answer::Handle(outcome.clone()), tape);
        }
        result
    }

    async fn handle_taped(
        &self,
        session: &Session,
        packet: &Packet,
        es_id: Option<u32>,
        tape: Option<Box<Tape>>,
    ) -> (Result<Outcome, ScriptError>, Option<Box<Tape>>) {
        let mut attempt = 0;
        loop {
            let result = call_taped!(
                self.script,
                tape.clone(),
                es_id,
                wasmgate_gateway_handler.call_handle(session, packet)
            );
            match result {
                (Err(ScriptError::Retired { .. }), _) if attempt < RETIRED_RETRIES => attempt += 1,
                result => return result,
            }
        }
    }

    /// Whether it runs as one instance carrying its state across versions.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// What this script's events are shown to (shadow, recording).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn limits(&self) -> &Limits {
        self.script.limits()
    }

    /// A copy of a stateful script's state: its live instance's `snapshot`, taken between two
    /// calls (calls wait meanwhile) and left live. Empty when it has no live instance.
    /// Errors: [`ScriptError::Carry`] when `snapshot` refuses; a trap.
    pub async fn snapshot(&self) -> Result<Vec<u8>, ScriptError> {
        let live = self.script.live();
        let hold = live.pool.hold().await?;
        if !live.pool.has_instance(&hold) {
            return Ok(Vec::new());
        }
        let refused =
            |message| ScriptError::Carry { script: live.source.name.clone(), step: "snapshot", message };
        live.pool.call_held(&hold, CARRY.snapshot).await?.map_err(refused)
    }

    /// Gives this (candidate) script `state` through its `restore`. Errors: as
    /// [`Self::snapshot`], with `restore`.
    pub async fn restore(&self, state: Vec<u8>) -> Result<(), ScriptError> {
        let live = self.script.live();
        let refused =
            |message| ScriptError::Carry { script: live.source.name.clone(), step: "restore", message };
        let restore = CARRY.restore;
        let state: Arc<[u8]> = state.into();
        live.pool.call(move |slot| restore(slot, state)).await?.map_err(refused)
    }

    /// Deploys a new version live (stateful: carrying its state). Errors: as
    /// [`Deployed::deploy`].
    pub async fn deploy(&self, source: ScriptSource) -> Result<ScriptInfo, ScriptError> {
        let init = handler_init(&source.config_json);
        self.script.deploy(source, init, self.carry()).await
    }

    /// Restores the previous version (stateful: carrying the current state).
    pub async fn rollback(&self) -> Result<ScriptInfo, ScriptError> {
        self.script.rollback(handler_init, self.carry()).await
    }

    pub fn info(&self) -> ScriptInfo {
        self.script.info()
    }

    /// The live version's source.
    pub fn source(&self) -> ScriptSource {
        self.script.live().source.clone()
    }
}

impl Target for Handler {
    fn run<'a>(&'a self, call: &'a Call, tape: Box<Tape>) -> TargetFuture<'a> {
        Box::pin(async move {
            let Call::Handle { session, packet, es_id } = call else { return (wrong_world(call), None) };
            let (r, tape) = self.handle_taped(session, packet, *es_id, Some(tape)).await;
            (Answer::of(&r, |o| Answer::Handle(o.clone())), tape)
        })
    }
}

#[derive(Default)]
struct Table {
    by_msg: HashMap<u32, Arc<Handler>>,
    by_name: BTreeMap<String, Arc<Handler>>,
    /// The message map's script entries this table was built from.
    routes: BTreeMap<u32, String>,
}

/// What an [`Handlers::apply`] changed, by script name.
#[derive(Debug, Default)]
pub struct Applied {
    pub loaded: Vec<String>,
    pub replaced: Vec<String>,
    pub retired: Vec<String>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "loaded {:?}, replaced {:?}, retired {:?}", self.loaded, self.replaced, self.retired)
    }
}

/// The handler scripts of a gateway and the message ids they handle.
pub struct Handlers {
    dir: Option<PathBuf>,
    limits: Limits,
    metrics: Metrics,
    table: ArcSwap<Table>,
    /// One reconcile at a time.
    changes: tokio::sync::Mutex<()>,
}

impl Handlers {
    /// No handlers yet; `dir` is the scripts directory holding the manifest (`scripts.dir`).
    pub fn new(dir: Option<PathBuf>, limits: Limits, metrics: &Metrics) -> Self {
        Self {
            dir,
            limits,
            metrics: metrics.clone(),
            table: ArcSwap::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The handler of `msg_id`, if the message map sends it to one (one atomic load and a
    /// hash lookup: the hot path of every routed message).
    pub fn for_message(&self, msg_id: u32) -> Option<Arc<Handler>> {
        let table = self.table.load();
        if table.by_msg.is_empty() {
            return None;
        }
        table.by_msg.get(&msg_id).cloned()
    }

    /// The loaded handler `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Handler>> {
        self.table.load().by_name.get(name).cloned()
    }

    /// Every loaded handler's info, by name.
    pub fn infos(&self) -> Vec<ScriptInfo> {
        self.table.load().by_name.values().map(|h| h.info()).collect()
    }

    /// Reconciles the loaded scripts with `routes` (message id -> script name, the map's
    /// script entries; `None`: the current ones, after a manifest or file change) and the
    /// manifest read now (see the module docs).
    ///
    /// Errors: [`ScriptError::Load`] when a named script is not in the manifest, its file
    /// cannot be read or no scripts directory is configured; any deploy pipeline error of a
    /// script brought in or replaced.
    pub async fn apply(&self, routes: Option<BTreeMap<u32, String>>) -> Result<Applied, ScriptError> {
        let _changes = self.changes.lock().await;
        let current = self.table.load_full();
        let routes = routes.unwrap_or_else(|| current.routes.clone());
        let names: BTreeSet<&String> = routes.values().collect();
        let mut applied = Applied::default();
        let mut by_name = BTreeMap::new();
        if let Some(first) = names.first() {
            let dir = self.dir.as_deref().ok_or_else(|| ScriptError::Load {
                script: first.to_string(),
                message: "message_map names a handler script but no scripts directory (scripts.dir) is set"
                    .into(),
            })?;
            let manifest = Manifest::read(dir)?;
            for &name in &names {
                let entry = manifest.handler(name).ok_or_else(|| ScriptError::Load {
                    script: name.clone(),
                    message: format!(
                        "message_map names it but {} does not",
                        dir.join("manifest.toml").display()
                    ),
                })?;
                let source = entry.source(dir)?;
                let id = version_id(&source.bytes, &source.config_json);
                let handler = match current.by_name.get(name) {
                    Some(handler) if handler.stateful == entry.stateful => {
                        if *handler.applied.lock() != id {
                            handler.deploy(source).await?;
                            *handler.applied.lock() = id;
                            applied.replaced.push(name.clone());
                        }
                        handler.clone()
                    }
                    _ => {
                        let handler =
                            Handler::load(entry.stateful, &source, self.limits.clone(), &self.metrics)
                                .await?;
                        applied.loaded.push(name.clone());
                        Arc::new(handler)
                    }
                };
                by_name.insert(name.clone(), handler);
            }
        }
        applied.retired =
            current.by_name.keys().filter(|name| !by_name.contains_key(*name)).cloned().collect();
        let by_msg =
            routes.iter().filter_map(|(&msg, name)| Some((msg, by_name.get(name)?.clone()))).collect();
        self.table.store(Arc::new(Table { by_msg, by_name, routes }));
        Ok(applied)
    }
}
