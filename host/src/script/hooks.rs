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
use super::evidence::{Answer, Call, Tap, Tape, Target, TargetFuture, wrong_world};
use super::pool::{InitFn, Limits, Slot, World};
use super::{ScriptError, ScriptSource};
use crate::metrics::Metrics;

/// A taped call's result and its tape.
type Taped<T> = (Result<T, ScriptError>, Option<Box<Tape>>);

/// Calls `iface().method(store, args..)` on an instance of `script`'s live version (one
/// pooled instance, under the epoch deadline; errors as [`super::pool::ScriptPool::call`]),
/// with `tape` and `es_id` set on the store for the call. Evaluates to the result and the tape
/// (`None` when the call failed).
macro_rules! call_taped {
    ($script:expr, $tape:expr, $es_id:expr, $iface:ident . $method:ident ( $($arg:expr),* )) => {{
        let live = $script.live();
        let (tape, es_id) = ($tape, $es_id);
        let result = live
            .pool
            .call(|mut slot| async move {
                let state = slot.store.data_mut();
                state.tape = tape;
                state.packet_es_id = es_id;
                let r = slot.bindings.$iface().$method(&mut slot.store, $($arg),*).await;
                let state = slot.store.data_mut();
                state.packet_es_id = None;
                let tape = state.tape.take();
                (slot, r.map(|r| (r, tape)))
            })
            .await;
        $crate::script::evidence::split(result)
    }};
}

pub(super) use call_taped;

/// A live call as [`call_taped!`], shown to `tap`'s observers if any: with a tape when it is
/// recorded, then `call` (a closure building the [`Call`], run only when someone looks) and
/// `answer` (the result's value to [`Answer`]) given to [`super::evidence::Observers::observe`].
/// Evaluates to the call's result.
macro_rules! observed {
    ($tap:expr, $script:expr, $es_id:expr, $iface:ident . $method:ident ( $($arg:expr),* ), $call:expr, $answer:expr) => {{
        let observers = $tap.observers();
        let tape = observers.as_ref().and_then(|o| o.tape());
        let (result, tape) = call_taped!($script, tape, $es_id, $iface.$method($($arg),*));
        if let Some(o) = observers {
            o.observe($call, &result, $answer, tape);
        }
        result
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
    tap: Tap,
}

impl<W: World> Configured<W> {
    async fn load(
        source: &ScriptSource,
        limits: Limits,
        metrics: &Metrics,
        make_init: fn(&str) -> InitFn<W>,
    ) -> Result<Self, ScriptError> {
        let script = Deployed::load(source, limits, metrics, make_init(&source.config_json)).await?;
        Ok(Self { script, make_init, tap: Tap::default() })
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

    /// What this script's events are shown to (shadow, recording).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn limits(&self) -> &Limits {
        self.script.limits()
    }

    pub fn metrics(&self) -> &Metrics {
        self.script.metrics()
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
        observed!(
            self.tap,
            self.script,
            None,
            wasmgate_gateway_auth.call_authenticate(session, token),
            || Call::Authenticate { session: session.clone(), token: token.into() },
            |r| Answer::Authenticate(r.clone())
        )
    }

    async fn authenticate_taped(
        &self,
        session: &Session,
        token: &str,
        tape: Option<Box<Tape>>,
    ) -> Taped<Result<Identity, Rejection>> {
        call_taped!(self.script, tape, None, wasmgate_gateway_auth.call_authenticate(session, token))
    }

    /// Tells the script a logged-in `session` ended (go-xserver's "account lost"); `reason` is
    /// the close reason's name. Errors: [`ScriptError`] (logged by the caller, nothing else).
    pub async fn account_lost(&self, session: &Session, reason: &str) -> Result<(), ScriptError> {
        observed!(
            self.tap,
            self.script,
            None,
            wasmgate_gateway_auth.call_account_lost(session, reason),
            || Call::AccountLost { session: session.clone(), reason: reason.into() },
            |_| Answer::AccountLost
        )
    }

    async fn account_lost_taped(
        &self,
        session: &Session,
        reason: &str,
        tape: Option<Box<Tape>>,
    ) -> Taped<()> {
        call_taped!(self.script, tape, None, wasmgate_gateway_auth.call_account_lost(session, reason))
    }
}

impl Target for Auth {
    fn run<'a>(&'a self, call: &'a Call, tape: Box<Tape>) -> TargetFuture<'a> {
        Box::pin(async move {
            match call {
                Call::Authenticate { session, token } => {
                    let (r, tape) = self.authenticate_taped(session, token, Some(tape)).await;
                    (Answer::of(&r, |v| Answer::Authenticate(v.clone())), tape)
                }
                Call::AccountLost { session, reason } => {
                    let (r, tape) = self.account_lost_taped(session, reason, Some(tape)).await;
                    (Answer::of(&r, |_| Answer::AccountLost), tape)
                }
                other => (wrong_world(other), None),
            }
        })
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
    tap: Tap,
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
        Ok(Self {
            script,
            map: ArcSwap::new(map),
            native,
            changes: tokio::sync::Mutex::new(()),
            tap: Tap::default(),
        })
    }

    /// Re-initialises the live router with a new `message_map` on fresh instances, then swaps
    /// them in. On error the running router and map stay.
    pub async fn reload(&self, message_map: Vec<MessageRoute>) -> Result<(), ScriptError> {
        let _changes = self.changes.lock().await;
        let map = Arc::new(message_map);
        let config = self.script.live().source.config_json.clone();
        self.script.rebuild(router_init(&config, map.clone())).await?;
        self.native.store(Arc::new(by_id(&map)));
        self.map.store(map.clone());
        self.reload_shadow(&map).await;
        Ok(())
    }

    /// Gives a shadow candidate the new map too; one that refuses it is stopped (its
    /// comparisons would mean nothing).
    async fn reload_shadow(&self, map: &[MessageRoute]) {
        let Some(shadow) = self.tap.shadow() else { return };
        let Some(candidate) = shadow.candidate.as_router() else { return };
        if let Err(e) = Box::pin(candidate.reload(map.to_vec())).await {
            tracing::warn!("the shadow router refused the new message_map, shadow stopped: {e}");
            self.tap.set_shadow(None);
        }
    }

    /// The current `message_map` (`init`'s argument).
    pub fn map(&self) -> Vec<MessageRoute> {
        self.map.load().to_vec()
    }

    /// What this script's events are shown to (shadow, recording).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn limits(&self) -> &Limits {
        self.script.limits()
    }

    pub fn metrics(&self) -> &Metrics {
        self.script.metrics()
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
        // Called here, not through `route_taped`: one nested future less on the hot path.
        observed!(
            self.tap,
            self.script,
            es_id,
            wasmgate_gateway_router.call_route(session, packet),
            || Call::Route { session: session.clone(), packet: packet.clone(), es_id },
            |d| Answer::Route(d.clone())
        )
    }

    async fn route_taped(
        &self,
        session: &Session,
        packet: &Packet,
        es_id: Option<u32>,
        tape: Option<Box<Tape>>,
    ) -> Taped<Decision> {
        call_taped!(self.script, tape, es_id, wasmgate_gateway_router.call_route(session, packet))
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

impl Target for Router {
    fn run<'a>(&'a self, call: &'a Call, tape: Box<Tape>) -> TargetFuture<'a> {
        Box::pin(async move {
            let Call::Route { session, packet, es_id } = call else { return (wrong_world(call), None) };
            let (r, tape) = self.route_taped(session, packet, *es_id, Some(tape)).await;
            (Answer::of(&r, |d| Answer::Route(d.clone())), tape)
        })
    }

    fn as_router(&self) -> Option<&Router> {
        Some(self)
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
        observed!(
            self.tap(),
            self.script,
            None,
            wasmgate_gateway_rooms.call_on_join(session, request),
            || Call::OnJoin { session: session.clone(), request: request.clone() },
            |r| Answer::OnJoin(r.clone())
        )
    }

    async fn on_join_taped(
        &self,
        session: &Session,
        request: &JoinRequest,
        tape: Option<Box<Tape>>,
    ) -> Taped<Result<JoinAccept, JoinRefusal>> {
        call_taped!(self.script, tape, None, wasmgate_gateway_rooms.call_on_join(session, request))
    }

    /// `session` has left `room`; returns the effects the script wants.
    pub async fn on_leave(
        &self,
        session: &Session,
        room: &RoomInfo,
        cause: LeaveCause,
    ) -> Result<Vec<Effect>, ScriptError> {
        observed!(
            self.tap(),
            self.script,
            None,
            wasmgate_gateway_rooms.call_on_leave(session, room, cause),
            || Call::OnLeave { session: session.clone(), room: room.clone(), cause },
            |effects| Answer::OnLeave(effects.clone())
        )
    }

    async fn on_leave_taped(
        &self,
        session: &Session,
        room: &RoomInfo,
        cause: LeaveCause,
        tape: Option<Box<Tape>>,
    ) -> Taped<Vec<Effect>> {
        call_taped!(self.script, tape, None, wasmgate_gateway_rooms.call_on_leave(session, room, cause))
    }

    /// A member's message to `room`.
    pub async fn on_message(
        &self,
        session: &Session,
        room: &RoomInfo,
        packet: &Packet,
    ) -> Result<Result<Vec<Effect>, MessageError>, ScriptError> {
        observed!(
            self.tap(),
            self.script,
            None,
            wasmgate_gateway_rooms.call_on_message(session, room, packet),
            || Call::OnMessage { session: session.clone(), room: room.clone(), packet: packet.clone() },
            |r| Answer::OnMessage(r.clone())
        )
    }

    async fn on_message_taped(
        &self,
        session: &Session,
        room: &RoomInfo,
        packet: &Packet,
        tape: Option<Box<Tape>>,
    ) -> Taped<Result<Vec<Effect>, MessageError>> {
        call_taped!(self.script, tape, None, wasmgate_gateway_rooms.call_on_message(session, room, packet))
    }
}

impl Target for Rooms {
    fn run<'a>(&'a self, call: &'a Call, tape: Box<Tape>) -> TargetFuture<'a> {
        Box::pin(async move {
            match call {
                Call::OnJoin { session, request } => {
                    let (r, tape) = self.on_join_taped(session, request, Some(tape)).await;
                    (Answer::of(&r, |v| Answer::OnJoin(v.clone())), tape)
                }
                Call::OnLeave { session, room, cause } => {
                    let (r, tape) = self.on_leave_taped(session, room, *cause, Some(tape)).await;
                    (Answer::of(&r, |v| Answer::OnLeave(v.clone())), tape)
                }
                Call::OnMessage { session, room, packet } => {
                    let (r, tape) = self.on_message_taped(session, room, packet, Some(tape)).await;
                    (Answer::of(&r, |v| Answer::OnMessage(v.clone())), tape)
                }
                other => (wrong_world(other), None),
            }
        })
    }
}

/// Deploys and rollbacks of the rooms script never touch membership: it is host state.
impl std::ops::Deref for Rooms {
    type Target = Configured<RoomsScript>;
    fn deref(&self) -> &Self::Target {
        &self.script
    }
}
