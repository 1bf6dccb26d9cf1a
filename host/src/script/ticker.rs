//! The epoch ticker: advances an engine's epoch every [`EPOCH_TICK`] while script code may
//! run, and sleeps while none does.
//!
//! Every deadline check of a call (its epoch deadline, the long-call lanes) happens when the
//! epoch moves, so the epoch must move while a call or an instance build is in flight. Nothing
//! else needs it: a ticker that ran all the time woke an idle gateway 1,000 times a second
//! (97 % of its wake-ups, ~2 % of a core). So calls say when they run ([`EpochTicker::enter`]),
//! and the thread parks once nothing has run for [`IDLE_AFTER`]; the first call after that
//! wakes it. The delay keeps a lightly loaded gateway (calls that never overlap) from paying a
//! `futex` wake-up per call: at most one per [`IDLE_AFTER`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::EngineWeak;

/// Epoch tick period: a long-running call yields to the async runtime this often, and its
/// deadline is checked as often.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long the ticker goes on after the last call ended before it parks: 1 s (1,000 ticks).
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// How often a parked ticker looks whether its engine is gone (it parks only when no call
/// runs; a call wakes it at once).
const PARKED_RECHECK: Duration = Duration::from_secs(10);

/// The ticker of one engine: its thread and the count of calls in flight.
pub struct EpochTicker {
    shared: Arc<Shared>,
    thread: Thread,
}

/// What the ticker thread and the calls share.
#[derive(Default)]
struct Shared {
    /// Calls and instance builds in flight (their [`Ticking`] guards).
    running: AtomicUsize,
    /// Epoch increments so far.
    ticks: AtomicU64,
    /// Whether the thread is parked (nothing has run for [`IDLE_AFTER`]).
    parked: AtomicBool,
}

/// A call in flight: the epoch moves while one exists. Dropped when the call ends, or when
/// its future is dropped midway.
pub struct Ticking<'a>(&'a Shared);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    /// Starts the ticker thread (`wasmgate-epoch`) of `engine`; it ends once the engine is
    /// dropped.
    ///
    /// Errors: the thread cannot be spawned.
    pub fn start(engine: EngineWeak) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let ticking = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || tick(&engine, &ticking))?;
        Ok(Self { shared, thread: handle.thread().clone() })
    }

    /// Marks a call (or an instance build) in flight until the guard is dropped, waking the
    /// ticker if it sleeps. Cost: two atomic adds per call, plus an unpark (one atomic swap;
    /// a `futex` wake-up only if the ticker was parked) when no other call was running.
    pub fn enter(&self) -> Ticking<'_> {
        if self.shared.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Ticking(&self.shared)
    }

    /// Epoch increments since the ticker started.
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }

    /// Whether the ticker is parked (no call for [`IDLE_AFTER`]).
    pub fn parked(&self) -> bool {
        self.shared.parked.load(Ordering::Relaxed)
    }
}

/// The ticker thread's loop: tick while calls run and for [`IDLE_AFTER`] after the last one,
/// then park until [`EpochTicker::enter`] wakes it.
fn tick(engine: &EngineWeak, shared: &Shared) {
    let idle_ticks = (IDLE_AFTER.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u32;
    let mut idle = 0;
    loop {
        std::thread::sleep(EPOCH_TICK);
        let Some(live) = engine.upgrade() else { return };
        live.increment_epoch();
        drop(live);
        shared.ticks.fetch_add(1, Ordering::Relaxed);
        if shared.running.load(Ordering::Acquire) > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < idle_ticks {
            continue;
        }
        // An `enter` between this load and `park` leaves the thread's token set: `park`
        // returns at once and the loop sees the call.
        shared.parked.store(true, Ordering::Relaxed);
        while shared.running.load(Ordering::Acquire) == 0 {
            std::thread::park_timeout(PARKED_RECHECK);
            if engine.upgrade().is_none() {
                return;
            }
        }
        shared.parked.store(false, Ordering::Relaxed);
        idle = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Polls `done` every 5 ms for up to 10 s (a loaded test machine can starve the ticker
    /// for a while; what is checked is that it happens, not how fast).
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn ticks_while_a_call_runs_and_parks_only_after_idle_after() {
        let engine = wasmtime::Engine::default();
        let ticker = EpochTicker::start(engine.weak()).expect("thread");
        let call = ticker.enter();
        let at = ticker.ticks();
        assert!(eventually(|| ticker.ticks() > at + 3), "ticks while a call runs");
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(200));
        assert!(!ticker.parked(), "never parks while a call runs");
        drop(call);

        let idle_since = Instant::now();
        assert!(eventually(|| ticker.parked()), "parks once idle");
        assert!(idle_since.elapsed() >= IDLE_AFTER, "not before IDLE_AFTER");
        let at = ticker.ticks();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), at, "no tick while parked");

        let _call = ticker.enter();
        assert!(eventually(|| !ticker.parked() && ticker.ticks() > at), "a call wakes it");
    }
}
