//! Long-lived instances of one script, reused across calls.
//!
//! A fresh instance per message would cost ~15 µs; a call into a live one ~1 µs
//! (docs/benchmarks.md).
//! A pool keeps up to `instances` live instances of one component, each in its own store. A
//! call checks one out (waiting asynchronously when all are busy), runs it, and puts it back.
//!
//! Sandbox, per call: an epoch deadline and, per store, a memory cap. Calls run with
//! `call_async`, so a script that computes for long yields to the tokio scheduler at every
//! epoch tick ([`EPOCH_TICK`](super::engine::EPOCH_TICK)) instead of holding a worker thread,
//! and is interrupted once its deadline has passed. When a call traps (bug, deadline, memory
//! cap, stack overflow) its instance is thrown away and a new one is built from the pre-linked
//! component, with `init` run again; the caller gets [`ScriptError::Trap`] for that one event
//! and every other call is unaffected. A call whose future is dropped midway (its session was
//! aborted) loses its instance, which the pool replaces on demand. When building an instance
//! fails (its `init` refuses or traps), further builds back off — 50 ms doubling to 5 s — and
//! calls that find no live instance meanwhile fail at once (`outcome="unavailable"`) instead of
//! paying for a doomed build each.
//!
//! A call that turns long (a runaway, or real work of a few ms and more) gives its place in the
//! pool back while it runs or waits for a long-call lane ([`Released`]): the calls that come
//! meanwhile may build instances beside it, so as many runaway calls as a script has instances
//! do not leave its short calls waiting for their deadline. At most `instances` calls of one
//! pool are released at once (so at most twice `instances` instances live), and a pool of one
//! instance (every stateful script: its state is in that instance) never releases.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tracing::Instrument as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};

use super::ScriptError;
use super::engine::ScriptEngine;
use super::state::{ScriptMeta, ScriptState};
use crate::metrics::{ScriptOutcomeLabel, ScriptVersionLabel};

/// A generated world binding that can be pre-linked and instantiated.
pub trait World: Sized + Send + Sync + 'static {
    /// The interface the world exports, without its version (`wasmgate:gateway/router`).
    const EXPORT: &'static str;
    type Pre: Send + Sync + 'static;
    fn prepare(linker: &Linker<ScriptState>, component: &Component) -> wasmtime::Result<Self::Pre>;
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<ScriptState>,
    ) -> impl Future<Output = wasmtime::Result<Self>> + Send;
}

/// One live instance: its store and its bindings.
pub struct Slot<W> {
    pub store: Store<ScriptState>,
    pub bindings: W,
}

/// What a call into a slot gives back: the slot, and the outcome (the outer error is a trap).
pub type SlotFuture<W, R> = Pin<Box<dyn Future<Output = (Slot<W>, wasmtime::Result<R>)> + Send>>;

/// Runs the world's `init` on a fresh instance: `Ok(Err(_))` is the script's own refusal.
pub type InitFn<W> = Arc<dyn Fn(Slot<W>) -> SlotFuture<W, Result<(), String>> + Send + Sync>;

/// Sandbox limits of every instance of a pool, and where compiled scripts are cached.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of one call.
    pub deadline: Duration,
    /// Linear-memory cap of one instance, in bytes.
    pub memory_bytes: usize,
    /// Most instances (and so concurrent calls) of one script.
    pub instances: usize,
    /// Directory of precompiled components (`scripts.cache_dir`); `None`: memory only.
    pub cache_dir: Option<std::sync::Arc<std::path::Path>>,
    /// Which engine compiles and runs the script (`scripts.pooling`).
    pub engine: super::engine::EngineSettings,
    /// What host calls reach (the `cluster` interface), shared by the gateway's scripts.
    pub services: std::sync::Arc<super::services::Services>,
    /// Link imports the host does not know as trapping functions (`scripts.trap_unknown_imports`)
    /// instead of refusing the component.
    pub trap_unknown_imports: bool,
    /// The long-call lanes (`scripts.long_calls`), shared by the gateway's scripts: a call
    /// that has used a tick of CPU ([`LONG_CALL_CPU`]) after its first 0-1 ms continues only
    /// holding one, so runaway scripts occupy at most that many worker threads at once;
    /// `None`: no lanes.
    pub long_calls: Option<Arc<tokio::sync::Semaphore>>,
}

struct Outcomes {
    /// Call durations of this script version, seconds.
    duration: Histogram,
    ok: Counter,
    trap: Counter,
    deadline: Counter,
    /// Calls refused at once while instance rebuilds are backing off.
    unavailable: Counter,
}

/// Epoch ticks before a call's first deadline check (0-1 ms into the call,
/// [`super::engine::EPOCH_TICK`]). With lanes on, that check only notes the thread's CPU clock.
const FIRST_TICKS: u64 = 1;

/// CPU time a call must use after its first deadline check to be "long" and need a lane: one
/// epoch tick, so a runaway is laned 1-2 ms into its call on an idle machine. A short call
/// descheduled by the OS for several ticks never gets there; a runaway sharing its core with
/// other threads gets there in a few ticks of wall time.
const LONG_CALL_CPU: Duration = super::engine::EPOCH_TICK;

/// CPU time used by the calling thread (`CLOCK_THREAD_CPUTIME_ID`); `None` if the clock cannot
/// be read (calls are then judged by wall time alone).
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    ok.then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Starts a call's clocks (or a build's): its deadline from now, its first epoch check
/// [`FIRST_TICKS`] ahead, no CPU mark yet.
fn start_call(store: &mut Store<ScriptState>) {
    store.data_mut().call_started = Instant::now();
    store.data_mut().cpu_mark = None;
    store.set_epoch_deadline(FIRST_TICKS);
}

/// First wait after a failed instance build; doubles per consecutive failure.
const REBUILD_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between instance build attempts.
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Consecutive failed instance builds and when the next attempt is allowed (Envoy's
/// FAIL_RELOAD idea: a script that cannot be rebuilt is retried with back-off, not on every
/// call).
#[derive(Default)]
struct Rebuilds {
    failures: u32,
    next_attempt: Option<Instant>,
}

/// How many of one pool's calls run released from its count ([`Released`]), and how many may.
#[derive(Default)]
struct Overflow {
    released: AtomicUsize,
    /// The pool's instance count once capped; 0 (a pool of one instance): no call is released.
    cap: AtomicUsize,
}

impl Overflow {
    fn try_release(self: &Arc<Self>) -> Option<Released> {
        let cap = self.cap.load(Ordering::Acquire);
        let counted =
            self.released.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
        counted.ok().map(|_| Released(self.clone()))
    }
}

/// A long call running outside its pool's count: it gave its place (permit) back when it
/// turned long, so its pool may build an instance for the calls that come meanwhile. Dropped
/// when the call ends (or its store is dropped midway).
pub(super) struct Released(Arc<Overflow>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.released.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Live instances of one script component.
pub struct ScriptPool<W: World> {
    meta: Arc<ScriptMeta>,
    engine: Arc<ScriptEngine>,
    pre: W::Pre,
    init: InitFn<W>,
    limits: Limits,
    free: Mutex<Vec<Slot<W>>>,
    /// One permit per place in the pool: a call holds one while it runs (unless released).
    permits: Arc<Semaphore>,
    overflow: Arc<Overflow>,
    outcomes: Outcomes,
    rebuilds: Mutex<Rebuilds>,
    /// Set once a newer version holding this one's state is live: calls still waiting here
    /// are sent to it ([`ScriptError::Retired`]) instead of running on stale state.
    retired: AtomicBool,
    /// Linear memory of the first instance after `init`, bytes.
    memory_bytes: usize,
}

/// Linear memory all instances of one script version may hold together (the instance count is
/// capped so that instances x memory after `init` stays within it; at least one instance).
pub const INSTANCE_MEMORY_BUDGET: usize = 128 << 20;

/// The instance cap of a script whose instance holds `memory` bytes after `init`:
/// `scripts.instances` (`configured`), lowered to keep within [`INSTANCE_MEMORY_BUDGET`].
pub fn instance_cap(configured: usize, memory: usize) -> usize {
    configured.min((INSTANCE_MEMORY_BUDGET / memory.max(1)).max(1))
}

/// Every instance of a pool, held: no call runs on the pool until it is dropped.
pub struct Hold<'a> {
    _permits: SemaphorePermit<'a>,
}

impl<W: World> ScriptPool<W> {
    /// Pre-links `component` and builds one instance (running `init`), so a script that does
    /// not fit its world or refuses its configuration is caught here; more instances are built
    /// as concurrent calls need them.
    ///
    /// Errors: [`ScriptError::Link`] when the component does not fit the world or imports
    /// something the host does not offer; [`ScriptError::Init`] when `init` refuses its
    /// configuration or traps.
    pub async fn new(
        engine: Arc<ScriptEngine>,
        meta: Arc<ScriptMeta>,
        component: &Component,
        limits: Limits,
        init: InitFn<W>,
    ) -> Result<Self, ScriptError> {
        let link_error = |e: wasmtime::Error| ScriptError::Link {
            script: meta.name.to_string(),
            message: format!("{e:#}"),
        };
        let pre = if limits.trap_unknown_imports {
            let linker = engine.linker_with_traps(component).map_err(link_error)?;
            W::prepare(&linker, component)
        } else {
            W::prepare(&engine.linker, component)
        }
        .map_err(link_error)?;
        let outcome = |outcome| {
            let label = ScriptOutcomeLabel {
                script: meta.name.to_string(),
                version: meta.version.to_string(),
                outcome,
            };
            meta.metrics.script_calls.get_or_create(&label).clone()
        };
        let version = ScriptVersionLabel { script: meta.name.to_string(), version: meta.version.to_string() };
        let outcomes = Outcomes {
            duration: meta.metrics.script_call_seconds.get_or_create(&version).clone(),
            ok: outcome("ok"),
            trap: outcome("trap"),
            deadline: outcome("deadline"),
            unavailable: outcome("unavailable"),
        };
        let instances = limits.instances.max(1);
        let mut pool = Self {
            meta,
            engine,
            pre,
            init,
            limits,
            free: Mutex::new(Vec::with_capacity(instances)),
            permits: Arc::new(Semaphore::new(instances)),
            overflow: Arc::default(),
            outcomes,
            rebuilds: Mutex::default(),
            retired: AtomicBool::new(false),
            memory_bytes: 0,
        };
        let first = pool.build().await?;
        let memory = first.store.data().limits.memory_bytes();
        let cap = instance_cap(instances, memory);
        if cap < instances {
            pool.permits.forget_permits(instances - cap);
            pool.limits.instances = cap;
        }
        pool.overflow.cap.store(if cap >= 2 { cap } else { 0 }, Ordering::Release);
        let label =
            ScriptVersionLabel { script: pool.meta.name.to_string(), version: pool.meta.version.to_string() };
        pool.meta.metrics.script_instance_memory.get_or_create(&label).set(memory as i64);
        pool.meta.metrics.script_instances_max.get_or_create(&label).set(cap as i64);
        pool.free.lock().push(first);
        pool.memory_bytes = memory;
        Ok(pool)
    }

    /// The script's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Most live instances (`scripts.instances`, capped by memory: [`instance_cap`]) and the
    /// linear memory of one after `init`, bytes.
    pub fn capacity(&self) -> (usize, usize) {
        (self.limits.instances, self.memory_bytes)
    }

    /// Calls so far: (ok, trapped, over the deadline).
    pub fn outcomes(&self) -> (u64, u64, u64) {
        (self.outcomes.ok.get(), self.outcomes.trap.get(), self.outcomes.deadline.get())
    }

    async fn build(&self) -> Result<Slot<W>, ScriptError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine.engine, ScriptState::new(self.meta.clone(), limits));
        store.limiter(|s| &mut s.limits);
        let deadline = self.limits.deadline;
        let lanes = self.limits.long_calls.clone();
        let overflow = self.overflow.clone();
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            if state.call_started.elapsed() >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            let held = state.lane.clone();
            let Some(lanes) = lanes.as_ref().filter(|_| !state.building && held.lock().is_none()) else {
                return Ok(UpdateDeadline::Yield(1));
            };
            // Long is judged by CPU, not wall time (a call the OS descheduled is not long):
            // the first check notes this thread's CPU clock and lets the call go on without
            // yielding, so on the same thread; a later check finds it long once it has used
            // `LONG_CALL_CPU` since.
            if let Some(now) = thread_cpu_time() {
                match state.cpu_mark {
                    Some(mark) if now.saturating_sub(mark) >= LONG_CALL_CPU => {}
                    Some(_) => return Ok(UpdateDeadline::Continue(1)),
                    None => {
                        state.cpu_mark = Some(now);
                        return Ok(UpdateDeadline::Continue(1));
                    }
                }
            }
            // A long call: it goes on once it holds a lane (its deadline keeps running while
            // it waits, so a queue of runaway calls ends at their deadlines).
            state.meta.metrics.script_long_calls.inc();
            // Its place in the pool goes back, so that other calls of the script do not wait
            // for this one to end (a pool of one instance keeps it: see `Overflow::cap`).
            if state.place.is_some()
                && let Some(released) = overflow.try_release()
            {
                state.place = None;
                state.released = Some(released);
                state.meta.metrics.script_long_calls_released.inc();
            }
            if let Ok(permit) = lanes.clone().try_acquire_owned() {
                *held.lock() = Some(permit);
                return Ok(UpdateDeadline::Yield(1));
            }
            state.meta.metrics.script_lane_waits.inc();
            let lanes = lanes.clone();
            // Deadline 0 ticks after the wait: this callback runs again at once, and a call
            // whose deadline passed while it waited ends there, without running again.
            Ok(UpdateDeadline::YieldCustom(
                0,
                Box::pin(async move {
                    if let Ok(permit) = lanes.acquire_owned().await {
                        *held.lock() = Some(permit);
                    }
                }),
            ))
        });
        store.data_mut().building = true;
        let _ticking = self.engine.ticker.enter();
        start_call(&mut store);
        let init_error = |message: String| ScriptError::Init { script: self.meta.name.to_string(), message };
        let bindings = W::instantiate(&self.pre, &mut store).await.map_err(|e| {
            let hint = if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                " (raise scripts.pooling.max_instances / max_memories)"
            } else {
                ""
            };
            init_error(format!("{e:#}{hint}"))
        })?;
        match (self.init)(Slot { store, bindings }).await {
            (mut slot, Ok(Ok(()))) => {
                slot.store.data_mut().building = false;
                Ok(slot)
            }
            (_, Ok(Err(refusal))) => Err(init_error(refusal)),
            (_, Err(trap)) => Err(init_error(format!("init trapped: {trap:?}"))),
        }
    }

    /// Builds an instance after the first (on demand, or to replace a trapped one), backing
    /// off after failures: while backing off it fails at once with
    /// [`ScriptError::Unavailable`] instead of trying again.
    async fn rebuild(&self) -> Result<Slot<W>, ScriptError> {
        let now = Instant::now();
        if let Some(at) = self.rebuilds.lock().next_attempt.filter(|at| *at > now) {
            self.outcomes.unavailable.inc();
            return Err(ScriptError::Unavailable {
                script: self.name().into(),
                retry_in_ms: at.duration_since(now).as_millis() as u64,
            });
        }
        match self.build().await {
            Ok(slot) => {
                *self.rebuilds.lock() = Rebuilds::default();
                Ok(slot)
            }
            Err(e) => {
                let mut rebuilds = self.rebuilds.lock();
                rebuilds.failures += 1;
                let wait = REBUILD_BACKOFF_FIRST
                    .saturating_mul(1 << rebuilds.failures.min(16).saturating_sub(1))
                    .min(REBUILD_BACKOFF_MAX);
                rebuilds.next_attempt = Some(Instant::now() + wait);
                tracing::error!(
                    script = self.name(),
                    version = &*self.meta.version,
                    failures = rebuilds.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot build a script instance; backing off: {e}"
                );
                Err(e)
            }
        }
    }

    /// Runs `f` on a live instance under the epoch deadline.
    ///
    /// Errors: [`ScriptError::Trap`] when the call traps or overruns its deadline (the
    /// instance is replaced); [`ScriptError::Init`] when no instance could be built;
    /// [`ScriptError::Unavailable`] while failed builds back off; [`ScriptError::Retired`]
    /// when a newer version took this pool's state while the call waited (call that one).
    pub async fn call<R, Fut>(&self, f: impl FnOnce(Slot<W>) -> Fut) -> Result<R, ScriptError>
    where
        Fut: Future<Output = (Slot<W>, wasmtime::Result<R>)>,
    {
        // A free place is the common case: taken without building the wait's future.
        let place = match self.permits.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ScriptError::Engine("script pool closed".into()))?,
        };
        if self.retired.load(Ordering::Acquire) {
            return Err(ScriptError::Retired { script: self.name().into() });
        }
        self.run(f, Some(place)).await
    }

    /// Waits until no call runs, then keeps every instance: calls wait until the hold is
    /// dropped. With it, [`Self::call_held`] runs calls (a stateful script's `snapshot`).
    pub async fn hold(&self) -> Result<Hold<'_>, ScriptError> {
        let all = u32::try_from(self.limits.instances.max(1)).unwrap_or(u32::MAX);
        let permits = self
            .permits
            .acquire_many(all)
            .await
            .map_err(|_| ScriptError::Engine("script pool closed".into()))?;
        Ok(Hold { _permits: permits })
    }

    /// Runs `f` like [`Self::call`], on a pool the caller holds.
    pub async fn call_held<R, Fut>(
        &self,
        _hold: &Hold<'_>,
        f: impl FnOnce(Slot<W>) -> Fut,
    ) -> Result<R, ScriptError>
    where
        Fut: Future<Output = (Slot<W>, wasmtime::Result<R>)>,
    {
        self.run(f, None).await
    }

    /// Whether a built instance is waiting in the pool (under a hold: none is in use). `false`
    /// after a trap whose replacement could not be built: its state is gone.
    pub fn has_instance(&self, _hold: &Hold<'_>) -> bool {
        !self.free.lock().is_empty()
    }

    /// Marks the pool retired (under a hold): calls waiting on it get
    /// [`ScriptError::Retired`] once the hold is dropped.
    pub fn retire(&self, _hold: &Hold<'_>) {
        self.retired.store(true, Ordering::Release);
    }

    /// Runs `f` on a free instance (built if none is), holding `place` (the caller's permit)
    /// unless the call turns long and gives it back.
    async fn run<R, Fut>(
        &self,
        f: impl FnOnce(Slot<W>) -> Fut,
        place: Option<OwnedSemaphorePermit>,
    ) -> Result<R, ScriptError>
    where
        Fut: Future<Output = (Slot<W>, wasmtime::Result<R>)>,
    {
        let popped = self.free.lock().pop();
        let mut slot = match popped {
            Some(slot) => slot,
            None => self.rebuild().await?,
        };
        slot.store.data_mut().place = place;
        // The epoch moves while this guard lives (the call's deadline checks).
        let _ticking = self.engine.ticker.enter();
        start_call(&mut slot.store);
        let started = slot.store.data().call_started;
        let span = tracing::debug_span!(
            "script.call",
            wasmgate.script = &*self.meta.name,
            wasmgate.script_version = &*self.meta.version,
        );
        let (mut slot, result) = f(slot).instrument(span).await;
        slot.store.data().lane.lock().take();
        // Given back after the instance is (place held to the end), or with the call's end
        // (released): a call waiting for a place then finds the instance free.
        let _place = slot.store.data_mut().place.take();
        let released = slot.store.data_mut().released.take();
        self.outcomes.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => {
                self.outcomes.ok.inc();
                // A released call's instance is one too many once instances were built beside
                // it: the pool keeps at most `instances` idle.
                let mut free = self.free.lock();
                if released.is_none() || free.len() < self.limits.instances {
                    free.push(slot);
                } else {
                    drop(free);
                    drop(slot);
                }
                Ok(r)
            }
            Err(err) => {
                let deadline = err.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
                if deadline {
                    self.outcomes.deadline.inc();
                } else {
                    self.outcomes.trap.inc();
                }
                // One line at warn (a trapping script on every event must not flood the log),
                // the wasm backtrace at debug.
                let summary = trap_summary(&err);
                tracing::warn!(
                    script = self.name(),
                    version = &*self.meta.version,
                    deadline,
                    "script call trapped: {summary}"
                );
                tracing::debug!(
                    script = self.name(),
                    version = &*self.meta.version,
                    "script trap backtrace: {err:?}"
                );
                // The instance may be in any state after a trap: replace it (a released call's
                // is not: others were built beside it, or will be on demand).
                drop(slot);
                if released.is_none()
                    && let Ok(fresh) = self.rebuild().await
                {
                    self.free.lock().push(fresh);
                }
                Err(ScriptError::Trap { script: self.name().into(), deadline, message: summary })
            }
        }
    }
}

/// A trap as one line: the error and its causes, without the wasm backtrace (multi-line), at
/// most 300 bytes.
pub(crate) fn trap_summary(err: &wasmtime::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // wasmtime's backtrace context: "error while executing at wasm backtrace:\n 0: ...".
        let Some(first) =
            text.lines().next().filter(|l| !l.trim().is_empty() && !l.contains("wasm backtrace"))
        else {
            continue;
        };
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(first.trim());
    }
    super::state::truncate(&line, 300).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::{INSTANCE_MEMORY_BUDGET, Overflow, instance_cap};

    #[test]
    fn instance_caps_keep_within_the_memory_budget() {
        assert_eq!(instance_cap(8, 1 << 20), 8, "small instances: the configured count");
        assert_eq!(instance_cap(64, 12 << 20), INSTANCE_MEMORY_BUDGET / (12 << 20));
        assert_eq!(instance_cap(8, INSTANCE_MEMORY_BUDGET * 2), 1, "always at least one");
        assert_eq!(instance_cap(8, 0), 8);
    }

    #[test]
    fn at_most_cap_calls_are_released_at_once_and_none_from_a_pool_of_one() {
        let overflow = Arc::new(Overflow::default());
        assert!(overflow.try_release().is_none(), "cap 0 (a pool of one instance)");
        overflow.cap.store(2, Ordering::Release);
        let (first, second) = (overflow.try_release(), overflow.try_release());
        assert!(first.is_some() && second.is_some());
        assert!(overflow.try_release().is_none(), "a third over the cap");
        drop(first);
        assert!(overflow.try_release().is_some(), "room again once one ended");
        drop(second);
        assert_eq!(overflow.released.load(Ordering::Acquire), 0, "every release counted back");
    }
}
