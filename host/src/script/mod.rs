//! The script host: loads components, keeps live instances, calls them under a sandbox.
//!
//! - [`bindings`]: the generated WIT bindings (the only `bindgen!`).
//! - [`engine`]: the shared wasmtime engine, epoch ticker and compile cache.
//! - [`pool`]: live, reusable instances with deadline, memory cap and trap recovery.
//! - [`state`]: per-store state and the `host` interface scripts import.
//!
//! [`Auth`], [`Router`] and [`Rooms`] are what the gateway calls.

pub mod bindings;
pub mod engine;
pub mod pool;
pub mod state;

use std::sync::Arc;

use arc_swap::ArcSwap;
use wasmtime::Store;
use wasmtime::component::Component;

use self::bindings::auth::{AuthScript, AuthScriptPre};
use self::bindings::rooms::{RoomsScript, RoomsScriptPre};
use self::bindings::router::{RouterScript, RouterScriptPre};
use self::bindings::{
    Decision, Effect, Identity, JoinAccept, JoinRefusal, JoinRequest, LeaveCause, MessageError, MessageRoute,
    Packet, Rejection, RoomInfo, Session,
};
use self::engine::ScriptEngine;
pub use self::pool::Limits;
use self::pool::{InitFn, ScriptPool, Slot, SlotFuture, World};
use self::state::{ScriptMeta, ScriptState};
use crate::metrics::Metrics;

/// Script failures. Expected refusals (a bad token, an unknown message) are not errors: they
/// are WIT result values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScriptError {
    #[error("script engine: {0}")]
    Engine(String),
    #[error("script `{script}` cannot be loaded: {message}")]
    Load { script: String, message: String },
    #[error("script `{script}` does not fit its world or imports what the host denies: {message}")]
    Link { script: String, message: String },
    #[error("script `{script}` failed to initialise: {message}")]
    Init { script: String, message: String },
    #[error("script `{script}` trapped{}: {message}", if *.deadline { " (deadline exceeded)" } else { "" })]
    Trap { script: String, deadline: bool, message: String },
}

impl World for AuthScript {
    type Pre = AuthScriptPre<ScriptState>;
    fn prepare(engine: &ScriptEngine, component: &Component) -> wasmtime::Result<Self::Pre> {
        AuthScriptPre::new(engine.linker.instantiate_pre(component)?)
    }
    async fn instantiate(pre: &Self::Pre, store: &mut Store<ScriptState>) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }
}

impl World for RouterScript {
    type Pre = RouterScriptPre<ScriptState>;
    fn prepare(engine: &ScriptEngine, component: &Component) -> wasmtime::Result<Self::Pre> {
        RouterScriptPre::new(engine.linker.instantiate_pre(component)?)
    }
    async fn instantiate(pre: &Self::Pre, store: &mut Store<ScriptState>) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }
}

impl World for RoomsScript {
    type Pre = RoomsScriptPre<ScriptState>;
    fn prepare(engine: &ScriptEngine, component: &Component) -> wasmtime::Result<Self::Pre> {
        RoomsScriptPre::new(engine.linker.instantiate_pre(component)?)
    }
    async fn instantiate(pre: &Self::Pre, store: &mut Store<ScriptState>) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }
}

/// A loaded script: name, component bytes and the JSON configuration its `init` receives.
#[derive(Clone)]
pub struct ScriptSource {
    pub name: String,
    pub bytes: Arc<[u8]>,
    pub config_json: String,
}

/// Compiles a script's component (cached by content hash) on a blocking thread.
async fn compile(source: &ScriptSource) -> Result<(Arc<ScriptEngine>, Component), ScriptError> {
    let engine = ScriptEngine::shared()?;
    let (e, name, bytes) = (engine.clone(), source.name.clone(), source.bytes.clone());
    let component = tokio::task::spawn_blocking(move || e.compile(&name, &bytes))
        .await
        .map_err(|e| ScriptError::Engine(format!("compile task failed: {e}")))??;
    Ok((engine, component))
}

/// A world's `init(config)` call on one instance.
type InitCall<W> = fn(Slot<W>, Arc<str>) -> SlotFuture<W, Result<(), String>>;

/// Compiles `source` and builds its instance pool; every fresh instance gets `init(config)`
/// through `call_init` (the world's own `init` export).
async fn configured_pool<W: World>(
    source: &ScriptSource,
    limits: Limits,
    metrics: &Metrics,
    call_init: InitCall<W>,
) -> Result<ScriptPool<W>, ScriptError> {
    let (engine, component) = compile(source).await?;
    let meta = ScriptMeta::new(&source.name, metrics.clone());
    let config: Arc<str> = source.config_json.as_str().into();
    let init: InitFn<W> = Arc::new(move |slot: Slot<W>| call_init(slot, config.clone()));
    ScriptPool::new(engine, meta, &component, limits, init).await
}

/// The login script (`auth-script` world).
pub struct Auth {
    pool: ScriptPool<AuthScript>,
}

impl Auth {
    /// Compiles, instantiates and initialises the script. Errors: see [`ScriptError`].
    pub async fn load(source: &ScriptSource, limits: Limits, metrics: &Metrics) -> Result<Self, ScriptError> {
        let pool = configured_pool(source, limits, metrics, |mut slot: Slot<AuthScript>, config| {
            Box::pin(async move {
                let r = slot.bindings.wasmgate_gateway_auth().call_init(&mut slot.store, &config).await;
                (slot, r)
            })
        })
        .await?;
        Ok(Self { pool })
    }

    /// Checks `token` for `session`. The outer error is a script failure (the gateway fails
    /// closed on it); the inner one the script's rejection.
    pub async fn authenticate(
        &self,
        session: &Session,
        token: &str,
    ) -> Result<Result<Identity, Rejection>, ScriptError> {
        self.pool
            .call(|mut slot| async move {
                let r = slot
                    .bindings
                    .wasmgate_gateway_auth()
                    .call_authenticate(&mut slot.store, session, token)
                    .await;
                (slot, r)
            })
            .await
    }
}

/// The routing script (`router-script` world). Holds the current instance pool; a
/// `message_map` reload builds a new pool initialised with the new map and swaps it in
/// atomically, so calls already running finish on the pool they started with and no message
/// waits for the swap.
pub struct Router {
    config_json: Arc<str>,
    component: Component,
    engine: Arc<ScriptEngine>,
    meta: Arc<ScriptMeta>,
    limits: Limits,
    current: ArcSwap<ScriptPool<RouterScript>>,
}

impl Router {
    /// Compiles the script and initialises it with `message_map`.
    pub async fn load(
        source: &ScriptSource,
        limits: Limits,
        metrics: &Metrics,
        message_map: Vec<MessageRoute>,
    ) -> Result<Self, ScriptError> {
        let (engine, component) = compile(source).await?;
        let meta = ScriptMeta::new(&source.name, metrics.clone());
        let config_json: Arc<str> = source.config_json.as_str().into();
        let pool = Self::pool(&engine, &meta, &component, &config_json, limits, message_map).await?;
        Ok(Self { config_json, component, engine, meta, limits, current: ArcSwap::from_pointee(pool) })
    }

    async fn pool(
        engine: &Arc<ScriptEngine>,
        meta: &Arc<ScriptMeta>,
        component: &Component,
        config: &Arc<str>,
        limits: Limits,
        message_map: Vec<MessageRoute>,
    ) -> Result<ScriptPool<RouterScript>, ScriptError> {
        let (config, map) = (config.clone(), Arc::new(message_map));
        let init: InitFn<RouterScript> = Arc::new(move |mut slot: Slot<RouterScript>| {
            let (config, map) = (config.clone(), map.clone());
            Box::pin(async move {
                let r =
                    slot.bindings.wasmgate_gateway_router().call_init(&mut slot.store, &config, &map).await;
                (slot, r)
            })
        });
        ScriptPool::new(engine.clone(), meta.clone(), component, limits, init).await
    }

    /// Re-initialises the router with a new `message_map`: a fresh instance gets `init(config,
    /// map)`, then the new pool replaces the running one. On error the running router stays.
    pub async fn reload(&self, message_map: Vec<MessageRoute>) -> Result<(), ScriptError> {
        let pool = Self::pool(
            &self.engine,
            &self.meta,
            &self.component,
            &self.config_json,
            self.limits,
            message_map,
        )
        .await?;
        self.current.store(Arc::new(pool));
        Ok(())
    }

    /// Decides what happens to `packet`.
    pub async fn route(&self, session: &Session, packet: &Packet) -> Result<Decision, ScriptError> {
        let pool = self.current.load_full();
        pool.call(|mut slot| async move {
            let r =
                slot.bindings.wasmgate_gateway_router().call_route(&mut slot.store, session, packet).await;
            (slot, r)
        })
        .await
    }
}

/// The room logic script (`rooms-script` world). Calls that fail (trap, deadline) are errors:
/// the gateway then refuses the join or the message (rooms fail closed); a leave has happened
/// anyway and only its effects are lost.
pub struct Rooms {
    pool: ScriptPool<RoomsScript>,
}

impl Rooms {
    /// Compiles, instantiates and initialises the script. Errors: see [`ScriptError`].
    pub async fn load(source: &ScriptSource, limits: Limits, metrics: &Metrics) -> Result<Self, ScriptError> {
        let pool = configured_pool(source, limits, metrics, |mut slot: Slot<RoomsScript>, config| {
            Box::pin(async move {
                let r = slot.bindings.wasmgate_gateway_rooms().call_init(&mut slot.store, &config).await;
                (slot, r)
            })
        })
        .await?;
        Ok(Self { pool })
    }

    /// May `session` join `request.room`?
    pub async fn on_join(
        &self,
        session: &Session,
        request: &JoinRequest,
    ) -> Result<Result<JoinAccept, JoinRefusal>, ScriptError> {
        self.pool
            .call(|mut slot| async move {
                let r = slot
                    .bindings
                    .wasmgate_gateway_rooms()
                    .call_on_join(&mut slot.store, session, request)
                    .await;
                (slot, r)
            })
            .await
    }

    /// `session` has left `room`; returns the effects the script wants.
    pub async fn on_leave(
        &self,
        session: &Session,
        room: &RoomInfo,
        cause: LeaveCause,
    ) -> Result<Vec<Effect>, ScriptError> {
        self.pool
            .call(|mut slot| async move {
                let r = slot
                    .bindings
                    .wasmgate_gateway_rooms()
                    .call_on_leave(&mut slot.store, session, room, cause)
                    .await;
                (slot, r)
            })
            .await
    }

    /// A member's message to `room`.
    pub async fn on_message(
        &self,
        session: &Session,
        room: &RoomInfo,
        packet: &Packet,
    ) -> Result<Result<Vec<Effect>, MessageError>, ScriptError> {
        self.pool
            .call(|mut slot| async move {
                let r = slot
                    .bindings
                    .wasmgate_gateway_rooms()
                    .call_on_message(&mut slot.store, session, room, packet)
                    .await;
                (slot, r)
            })
            .await
    }
}
