//! The three hooks the gateway calls — login ([`Auth`]), routing ([`Router`]), rooms
//! ([`Rooms`]) — each a [`Deployed`] script whose live version is loaded once per event.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::bindings::auth::AuthScript;
use super::bindings::rooms::RoomsScript;
use super::bindings::router::RouterScript;
use super::bindings::{
    Decision, Effect, Identity, JoinAccept, JoinRefusal, JoinRequest, LeaveCause, MessageError, MessageRoute,
    Packet, Rejection, RoomInfo, RouteError, Session,
};
use super::deploy::{Deployed, ScriptInfo, Version};
use super::pool::{InitFn, Limits, Slot, World};
use super::{ScriptError, ScriptSource};
use crate::metrics::Metrics;

/// Calls `iface().method(store, args..)` on an instance of `script`'s live version (one
/// pooled instance, under the epoch deadline; errors as [`super::pool::ScriptPool::call`]).
macro_rules! call_live {
    ($script:expr, $iface:ident . $method:ident ( $($arg:expr),* )) => {{
        let live = $script.live();
        live.pool
            .call(|mut slot| async move {
                let r = slot.bindings.$iface().$method(&mut slot.store, $($arg),*).await;
                (slot, r)
            })
            .await
    }};
}

fn auth_init(config: &str) -> InitFn<AuthScript> {
    let config: Arc<str> = config.into();
    Arc::new(move |mut slot: Slot<AuthScript>| {
        let config = config.clone();
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_auth().call_init(&mut slot.store, &config).await;
            (slot, r)
        })
    })
}

fn rooms_init(config: &str) -> InitFn<RoomsScript> {
    let config: Arc<str> = config.into();
    Arc::new(move |mut slot: Slot<RoomsScript>| {
        let config = config.clone();
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_rooms().call_init(&mut slot.store, &config).await;
            (slot, r)
        })
    })
}

fn router_init(config: &str, map: Arc<Vec<MessageRoute>>) -> InitFn<RouterScript> {
    let config: Arc<str> = config.into();
    Arc::new(move |mut slot: Slot<RouterScript>| {
        let (config, map) = (config.clone(), map.clone());
        Box::pin(async move {
            let r = slot.bindings.wasmgate_gateway_router().call_init(&mut slot.store, &config, &map).await;
            (slot, r)
        })
    })
}

/// A deployed script whose `init` takes only its config (auth, rooms): deploy, rollback and
/// listing, shared by both.
pub struct Configured<W: World> {
    script: Deployed<W>,
    make_init: fn(&str) -> InitFn<W>,
}

impl<W: World> Configured<W> {
    async fn load(
        source: &ScriptSource,
        limits: Limits,
        metrics: &Metrics,
        make_init: fn(&str) -> InitFn<W>,
    ) -> Result<Self, ScriptError> {
        let script = Deployed::load(source, limits, metrics, make_init(&source.config_json)).await?;
        Ok(Self { script, make_init })
    }

    fn live(&self) -> Arc<Version<W>> {
        self.script.live()
    }

    /// Deploys a new version live; the running one stays on any error.
    pub async fn deploy(&self, source: ScriptSource) -> Result<ScriptInfo, ScriptError> {
        let init = (self.make_init)(&source.config_json);
        self.script.deploy(source, init, None).await
    }

    /// Restores the previous version.
    pub async fn rollback(&self) -> Result<ScriptInfo, ScriptError> {
        self.script.rollback(self.make_init, None).await
    }

    pub fn info(&self) -> ScriptInfo {
        self.script.info()
    }

    /// The live version's source (its config, to keep on a deploy that brings none).
    pub fn source(&self) -> ScriptSource {
        self.live().source.clone()
    }
}

/// The login script (`auth-script` world).
pub struct Auth {
    script: Configured<AuthScript>,
}

impl Auth {
    /// Runs the deploy pipeline on `source` (see [`super::deploy`]). Errors: [`ScriptError`].
    pub async fn load(source: &ScriptSource, limits: Limits, metrics: &Metrics) -> Result<Self, ScriptError> {
        Ok(Self { script: Configured::load(source, limits, metrics, auth_init).await? })
    }

    /// Checks `token` for `session`. The outer error is a script failure (the gateway fails
    /// closed on it); the inner one the script's rejection.
    pub async fn authenticate(
        &self,
        session: &Session,
        token: &str,
    ) -> Result<Result<Identity, Rejection>, ScriptError> {
        call_live!(self.script, wasmgate_gateway_auth.call_authenticate(session, token))
    }

    /// Tells the script a logged-in `session` ended (go-xserver's "account lost"); `reason` is
    /// the close reason's name. Errors: [`ScriptError`] (logged by the caller, nothing else).
    pub async fn account_lost(&self, session: &Session, reason: &str) -> Result<(), ScriptError> {
        call_live!(self.script, wasmgate_gateway_auth.call_account_lost(session, reason))
    }
}

impl std::ops::Deref for Auth {
    type Target = Configured<AuthScript>;
    fn deref(&self) -> &Self::Target {
        &self.script
    }
}

/// The routing script (`router-script` world). Besides deploys, a `message_map` reload
/// rebuilds the live version's instances with `init(config, new map)` and swaps them in.
pub struct Router {
    script: Deployed<RouterScript>,
    map: ArcSwap<Vec<MessageRoute>>,
    /// The same map by message id, for [`Router::route_native`].
    native: ArcSwap<HashMap<u32, u32>>,
    /// Serialises reloads, deploys and rollbacks, so each sees the map the last one left.
    changes: tokio::sync::Mutex<()>,
}

impl Router {
    /// Runs the deploy pipeline on `source`, initialising it with `message_map`.
    pub async fn load(
        source: &ScriptSource,
        limits: Limits,
        metrics: &Metrics,
        message_map: Vec<MessageRoute>,
    ) -> Result<Self, ScriptError> {
        let map = Arc::new(message_map);
        let script =
            Deployed::load(source, limits, metrics, router_init(&source.config_json, map.clone())).await?;
        let native = ArcSwap::from_pointee(by_id(&map));
        Ok(Self { script, map: ArcSwap::new(map), native, changes: tokio::sync::Mutex::new(()) })
    }

    /// Re-initialises the live router with a new `message_map` on fresh instances, then swaps
    /// them in. On error the running router and map stay.
    pub async fn reload(&self, message_map: Vec<MessageRoute>) -> Result<(), ScriptError> {
        let _changes = self.changes.lock().await;
        let map = Arc::new(message_map);
        let config = self.script.live().source.config_json.clone();
        self.script.rebuild(router_init(&config, map.clone())).await?;
        self.native.store(Arc::new(by_id(&map)));
        self.map.store(map);
        Ok(())
    }

    /// What the default router script decides, computed in Rust (`scripts.native_router`):
    /// the `message_map` dest of `msg_id`, else `unknown_message`.
    pub fn route_native(&self, msg_id: u32) -> Decision {
        match self.native.load().get(&msg_id) {
            Some(&dest) => Decision::Forward(dest),
            None => Decision::Reject(RouteError::UnknownMessage),
        }
    }

    /// Decides what happens to `packet`, which came with ES id `es_id` (seed 001's ES header;
    /// `host.packet-es-id` returns it during the call).
    pub async fn route(
        &self,
        session: &Session,
        packet: &Packet,
        es_id: Option<u32>,
    ) -> Result<Decision, ScriptError> {
        let live = self.script.live();
        live.pool
            .call(|mut slot| async move {
                slot.store.data_mut().packet_es_id = es_id;
                let r = slot
                    .bindings
                    .wasmgate_gateway_router()
                    .call_route(&mut slot.store, session, packet)
                    .await;
                slot.store.data_mut().packet_es_id = None;
                (slot, r)
            })
            .await
    }

    /// Deploys a new version live, initialised with the current `message_map`.
    pub async fn deploy(&self, source: ScriptSource) -> Result<ScriptInfo, ScriptError> {
        let _changes = self.changes.lock().await;
        let init = router_init(&source.config_json, self.map.load_full());
        self.script.deploy(source, init, None).await
    }

    /// Restores the previous version (initialised with the current `message_map`).
    pub async fn rollback(&self) -> Result<ScriptInfo, ScriptError> {
        let _changes = self.changes.lock().await;
        let map = self.map.load_full();
        self.script.rollback(|config| router_init(config, map), None).await
    }

    pub fn info(&self) -> ScriptInfo {
        self.script.info()
    }

    pub fn source(&self) -> ScriptSource {
        self.script.live().source.clone()
    }
}

fn by_id(map: &[MessageRoute]) -> HashMap<u32, u32> {
    map.iter().map(|r| (r.msg_id, r.dest_id)).collect()
}

/// The room logic script (`rooms-script` world). Calls that fail (trap, deadline) are errors:
/// the gateway then refuses the join or the message (rooms fail closed); a leave has happened
/// anyway and only its effects are lost.
pub struct Rooms {
    script: Configured<RoomsScript>,
}

impl Rooms {
    /// Runs the deploy pipeline on `source`. Errors: [`ScriptError`].
    pub async fn load(source: &ScriptSource, limits: Limits, metrics: &Metrics) -> Result<Self, ScriptError> {
        Ok(Self { script: Configured::load(source, limits, metrics, rooms_init).await? })
    }

    /// May `session` join `request.room`?
    pub async fn on_join(
        &self,
        session: &Session,
        request: &JoinRequest,
    ) -> Result<Result<JoinAccept, JoinRefusal>, ScriptError> {
        call_live!(self.script, wasmgate_gateway_rooms.call_on_join(session, request))
    }

    /// `session` has left `room`; returns the effects the script wants.
    pub async fn on_leave(
        &self,
        session: &Session,
        room: &RoomInfo,
        cause: LeaveCause,
    ) -> Result<Vec<Effect>, ScriptError> {
        call_live!(self.script, wasmgate_gateway_rooms.call_on_leave(session, room, cause))
    }

    /// A member's message to `room`.
    pub async fn on_message(
        &self,
        session: &Session,
        room: &RoomInfo,
        packet: &Packet,
    ) -> Result<Result<Vec<Effect>, MessageError>, ScriptError> {
        call_live!(self.script, wasmgate_gateway_rooms.call_on_message(session, room, packet))
    }
}

/// Deploys and rollbacks of the rooms script never touch membership: it is host state.
impl std::ops::Deref for Rooms {
    type Target = Configured<RoomsScript>;
    fn deref(&self) -> &Self::Target {
        &self.script
    }
}
