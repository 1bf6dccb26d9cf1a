//! Login and heartbeat deadlines of every session of a gateway, on one hashed timer wheel:
//! no timer per session (docs/architecture.md, "An idle session in memory").
//!
//! A session's handle keeps two tick counts ([`TICK`] each, since the wheel started): when
//! the session was registered and when its client last sent something. The wheel holds each
//! session's id in the slot of its next deadline — `login_ms` after registration until the
//! session is admitted (logged in, or an anonymous go-push session), and `heartbeat_ms` after
//! the client last sent something — and turns every [`TICK`]. A session whose slot comes up
//! but whose deadline moved (its client sent something) goes to the slot of its new
//! deadline; one whose deadline passed is judged again at the next turn and closed only if it
//! is still late then. That turn is the grace after a stall (the process paused, the host
//! overloaded): the wheel may turn before the session has read what its client sent
//! meanwhile, and the session gets a tick to read it.
//!
//! Cost: 8 bytes per session in a slot, plus the two counts in its handle; a session is
//! looked at about once per heartbeat period (at most every [`SLOTS`] ticks for longer
//! deadlines). A deadline is met within two ticks after it passes. A wheel with no session
//! on it stops turning until the next is armed, so a gateway without clients is not woken
//! [`TICK`]ly for nothing; a session leaves the wheel when its slot comes up after it ended,
//! so the wheel stops at most one heartbeat period after the last session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CloseReason, Registry, SessionHandle};

/// The wheel's resolution: deadlines are met this late at most, plus one tick of grace.
pub const TICK: Duration = Duration::from_millis(100);

/// Slots of the wheel: one revolution is 102.4 s. A later deadline waits in the slot it
/// falls in and is looked at again once per revolution until it comes.
pub const SLOTS: usize = 1024;

/// The wheel: see the module docs.
pub struct Deadlines {
    start: Instant,
    login_ticks: u32,
    heartbeat_ticks: u32,
    slots: Box<[Mutex<Vec<u64>>]>,
    /// Sessions found late at the last turn: judged again at the next.
    late: Mutex<Vec<u64>>,
    /// The last tick the wheel turned to.
    turned: AtomicU32,
    /// Sessions on the wheel (in a slot or in `late`); the wheel stops while there are none.
    on_wheel: AtomicUsize,
    /// Wakes the stopped wheel when a session is armed.
    armed: Notify,
}

impl Deadlines {
    /// A wheel for `login_ms` and `heartbeat_ms` (`[timeouts]`), starting now.
    pub fn new(login: Duration, heartbeat: Duration) -> Self {
        Self {
            start: Instant::now(),
            login_ticks: ticks(login),
            heartbeat_ticks: ticks(heartbeat),
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
            late: Mutex::default(),
            turned: AtomicU32::new(0),
            on_wheel: AtomicUsize::new(0),
            armed: Notify::new(),
        }
    }

    /// The tick `at` falls in, rounded up: a deadline counted from it is never early.
    /// Saturates after 13 years of uptime (32-bit ticks).
    pub fn tick_of(&self, at: Instant) -> u32 {
        let nanos = at.saturating_duration_since(self.start).as_nanos();
        u32::try_from(nanos.div_ceil(TICK.as_nanos())).unwrap_or(u32::MAX)
    }

    /// Starts the clocks of `handle`, registered just now, and puts it on the wheel.
    pub fn arm(&self, handle: &SessionHandle) {
        handle.start_clock(self.tick_of(Instant::now()));
        self.put(handle.id(), self.due(handle));
        if self.on_wheel.fetch_add(1, Ordering::SeqCst) == 0 {
            // A permit is kept if the wheel is not waiting yet: no wake-up is lost.
            self.armed.notify_one();
        }
    }

    /// The tick of the session's next deadline.
    fn due(&self, handle: &SessionHandle) -> u32 {
        let (born, seen) = handle.clock();
        let heartbeat = seen.saturating_add(self.heartbeat_ticks);
        match handle.is_admitted() {
            true => heartbeat,
            false => heartbeat.min(born.saturating_add(self.login_ticks)),
        }
    }

    /// Puts session `id` in the slot of tick `due`, or of the next turn if the wheel has
    /// passed it. Checked under the slot's lock, so a turn cannot take the slot between the
    /// check and the push.
    fn put(&self, id: u64, due: u32) {
        let slot = |tick: u32| &self.slots[tick as usize % SLOTS];
        let mut list = slot(due).lock();
        let turned = self.turned.load(Ordering::SeqCst);
        if due > turned {
            list.push(id);
        } else {
            drop(list);
            slot(turned.saturating_add(1)).lock().push(id);
        }
    }

    /// Turns the wheel every [`TICK`] until `shutdown`, closing the sessions of `registry`
    /// whose deadline passed (4001 `login_timeout`, 4002 `heartbeat_timeout`). While no
    /// session is on the wheel it waits for [`arm`](Self::arm) instead.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval_at(self.start + TICK, TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.on_wheel.load(Ordering::SeqCst) == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.armed.notified() => ticks.reset(),
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // The ticks wholly passed (a deadline counted from a rounded-up tick is due).
            let elapsed = Instant::now().saturating_duration_since(self.start).as_nanos() / TICK.as_nanos();
            self.turn(&registry, u32::try_from(elapsed).unwrap_or(u32::MAX));
        }
    }

    /// Turns the wheel to tick `now`: judges the sessions found late at the last turn, then
    /// looks at the slots passed since (at most one revolution).
    fn turn(&self, registry: &Registry, now: u32) {
        let last = self.turned.swap(now, Ordering::SeqCst);
        if now <= last {
            return;
        }
        let mut late = Vec::new();
        for id in std::mem::take(&mut *self.late.lock()) {
            self.judge(registry, id, now, None);
        }
        let first = (last + 1).max(now.saturating_sub(SLOTS as u32 - 1));
        for tick in first..=now {
            let ids = std::mem::take(&mut *self.slots[tick as usize % SLOTS].lock());
            for id in ids {
                self.judge(registry, id, now, Some(&mut late));
            }
        }
        *self.late.lock() = late;
    }

    /// One session at tick `now`: gone or closing, it leaves the wheel; not due, it goes to
    /// the slot of its deadline; due, it is put in `late` to be judged at the next turn, or
    /// closed when this is that judgement (`late` is `None`).
    fn judge(&self, registry: &Registry, id: u64, now: u32, late: Option<&mut Vec<u64>>) {
        let handle = registry.get(id).filter(|h| h.close_reason().is_none());
        let Some(handle) = handle else { return self.leave() };
        let due = self.due(&handle);
        if due > now {
            return self.put(id, due);
        }
        match late {
            Some(late) => late.push(id),
            None if !handle.is_admitted() && handle.clock().0.saturating_add(self.login_ticks) <= now => {
                self.leave();
                handle.close(CloseReason::LoginTimeout, "no login in time")
            }
            None => {
                self.leave();
                handle.close(CloseReason::HeartbeatTimeout, "no message in time")
            }
        }
    }

    /// A session left the wheel for good.
    fn leave(&self) {
        self.on_wheel.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whole ticks in `duration`, rounded up.
fn ticks(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TransportKind;

    fn session(registry: &Registry, id: u64) -> SessionHandle {
        let peer = "127.0.0.1:1".parse().unwrap();
        let (handle, rx) = SessionHandle::new(id, TransportKind::Tcp, peer, 4, (8, usize::MAX));
        std::mem::forget(rx); // an open queue: a close is graceful, not an abort
        registry.insert(handle.clone());
        handle
    }

    /// Waits up to 2 s for `handle` to be closed; its reason.
    async fn closed(handle: &SessionHandle) -> Option<CloseReason> {
        for _ in 0..200 {
            if let Some((reason, _)) = handle.close_reason() {
                return Some(reason);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Login 300 ms, heartbeat 600 ms: the silent session is closed at its login deadline
    /// (after a turn of grace), the admitted one at its heartbeat deadline, and a client that
    /// keeps sending keeps its session.
    #[tokio::test]
    async fn deadlines_close_late_sessions_and_only_them() {
        let registry = Arc::new(Registry::default());
        let wheel = Arc::new(Deadlines::new(Duration::from_millis(300), Duration::from_millis(600)));
        let (silent, admitted, talking) =
            (session(&registry, 1), session(&registry, 2), session(&registry, 3));
        let started = Instant::now();
        for h in [&silent, &admitted, &talking] {
            wheel.arm(h);
        }
        admitted.admit();
        talking.admit();
        let shutdown = CancellationToken::new();
        let turning = tokio::spawn(wheel.clone().run(registry.clone(), shutdown.clone()));
        let keep_talking = {
            let (talking, wheel) = (talking.clone(), wheel.clone());
            tokio::spawn(async move {
                for _ in 0..15 {
                    talking.seen(wheel.tick_of(Instant::now()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        assert_eq!(closed(&silent).await, Some(CloseReason::LoginTimeout));
        assert!(started.elapsed() >= Duration::from_millis(300), "not before its deadline");
        assert_eq!(closed(&admitted).await, Some(CloseReason::HeartbeatTimeout));
        assert!(started.elapsed() >= Duration::from_millis(600), "not before its deadline");
        keep_talking.await.unwrap();
        assert!(talking.close_reason().is_none(), "it kept sending");
        assert_eq!(closed(&talking).await, Some(CloseReason::HeartbeatTimeout), "then fell silent");
        shutdown.cancel();
        turning.await.unwrap();
    }

    /// An empty wheel does not turn; arming a session starts it, and it stops again once
    /// its last session has left (at that session's next slot).
    #[tokio::test]
    async fn the_wheel_stops_while_no_session_is_on_it() {
        let registry = Arc::new(Registry::default());
        let wheel = Arc::new(Deadlines::new(Duration::from_millis(300), Duration::from_millis(200)));
        let shutdown = CancellationToken::new();
        let turning = tokio::spawn(wheel.clone().run(registry.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(wheel.turned.load(Ordering::SeqCst), 0, "no session: no turn");

        let h = session(&registry, 1);
        wheel.arm(&h);
        h.admit();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(wheel.turned.load(Ordering::SeqCst) >= 4, "turning at the current tick");
        registry.remove(&h);
        for _ in 0..100 {
            if wheel.on_wheel.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(wheel.on_wheel.load(Ordering::SeqCst), 0, "the gone session left at its slot");
        let stopped = wheel.turned.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(wheel.turned.load(Ordering::SeqCst), stopped, "stopped with its last session");

        let late = session(&registry, 2);
        wheel.arm(&late);
        assert_eq!(closed(&late).await, Some(CloseReason::LoginTimeout), "started again");
        shutdown.cancel();
        turning.await.unwrap();
    }

    /// A session that sent something while the wheel stalled past its deadline is not
    /// closed: the turn that finds it late only marks it, and by the next one it has moved.
    #[test]
    fn a_late_session_is_judged_again_a_turn_later() {
        let registry = Registry::default();
        let wheel = Deadlines::new(Duration::from_secs(1), Duration::from_secs(1));
        let h = session(&registry, 7);
        wheel.arm(&h);
        h.admit();
        wheel.turn(&registry, 30); // a stall: 3 s later at once
        assert!(h.close_reason().is_none(), "only marked late");
        h.seen(30);
        wheel.turn(&registry, 31);
        assert!(h.close_reason().is_none(), "it sent something meanwhile");
        wheel.turn(&registry, 41);
        wheel.turn(&registry, 42);
        assert_eq!(h.close_reason().map(|r| r.0), Some(CloseReason::HeartbeatTimeout));
    }

    /// Gone sessions leave the wheel; a deadline beyond one revolution waits for its turn.
    #[test]
    fn gone_sessions_leave_and_far_deadlines_wait() {
        let registry = Registry::default();
        let wheel = Deadlines::new(Duration::from_secs(1), Duration::from_secs(3600));
        let (gone, far) = (session(&registry, 1), session(&registry, 2));
        wheel.arm(&gone);
        wheel.arm(&far);
        far.admit();
        registry.remove(&gone);
        wheel.turn(&registry, SLOTS as u32 + 5);
        let waiting: usize = wheel.slots.iter().map(|s| s.lock().len()).sum();
        assert_eq!(waiting, 1, "the gone session left, the far one waits");
        assert!(far.close_reason().is_none());
        wheel.turn(&registry, 36_001);
        wheel.turn(&registry, 36_002);
        assert_eq!(far.close_reason().map(|r| r.0), Some(CloseReason::HeartbeatTimeout));
    }
}
