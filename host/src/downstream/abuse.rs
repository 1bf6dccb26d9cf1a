//! Abuse limits (`[rate_limits]`, docs/security.md), all checked before any script runs:
//! per source IP, connections open and new connections per second (at accept), login attempts
//! per minute (before the auth script); per user, accepted logins per minute (after the auth
//! script named the user, before the login takes effect); per session, messages and bytes per
//! second (before routing).
//!
//! Rates are GCRA token buckets (the `governor` crate): a bucket holds `burst` tokens and
//! refills at the rate. Per-IP and per-user buckets live in concurrent maps swept once a
//! minute of keys whose bucket is full again, so the maps hold only recently active peers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::RateLimitsConfig;
use crate::metrics::Metrics;

/// How often idle per-IP and per-user buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn quota(per: Duration, count: u32, burst: u32) -> Option<Quota> {
    let count = NonZeroU32::new(count)?;
    let burst = NonZeroU32::new(burst).unwrap_or(count);
    Quota::with_period(per / count.get()).map(|q| q.allow_burst(burst))
}

/// Open connections per source IP, capped.
pub(crate) struct OpenPerIp {
    /// The cap; 0: none (nothing is counted).
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// A connection's place in its IP's count; given back when dropped.
pub(crate) struct IpSlot {
    counts: Arc<OpenPerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl OpenPerIp {
    /// At most `max` connections per IP at once (0: no cap).
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self { max, open: Mutex::default() })
    }

    /// A place for one more connection from `ip`: `Err` when `ip` has `max` already, `Ok(None)`
    /// when there is no cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock();
        let count = open.entry(ip).or_default();
        if *count >= self.max {
            return Err(());
        }
        *count += 1;
        Ok(Some(IpSlot { counts: self.clone(), ip }))
    }
}

/// The gateway-wide limits: per source IP and per user.
pub(crate) struct PeerLimits {
    /// Open client connections per source IP (`conn_per_ip`).
    open: Arc<OpenPerIp>,
    connects: Option<DefaultKeyedRateLimiter<IpAddr>>,
    logins_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    logins_per_user: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    room_lists: Option<DefaultKeyedRateLimiter<IpAddr>>,
    session: RateLimitsConfig,
    metrics: Metrics,
}

impl PeerLimits {
    pub(crate) fn new(config: &RateLimitsConfig, metrics: &Metrics) -> Arc<Self> {
        let minute = Duration::from_secs(60);
        Arc::new(Self {
            open: OpenPerIp::new(config.conn_per_ip),
            connects: quota(Duration::from_secs(1), config.connect_per_ip_per_s, config.connect_burst_per_ip)
                .map(RateLimiter::dashmap),
            logins_per_ip: quota(minute, config.login_per_ip_per_min, config.login_per_ip_per_min)
                .map(RateLimiter::dashmap),
            logins_per_user: quota(minute, config.login_per_user_per_min, config.login_per_user_per_min)
                .map(RateLimiter::dashmap),
            room_lists: quota(
                Duration::from_secs(1),
                config.room_list_per_ip_per_s,
                config.room_list_per_ip_per_s.saturating_mul(2),
            )
            .map(RateLimiter::dashmap),
            session: config.clone(),
            metrics: metrics.clone(),
        })
    }

    /// Admits a new connection from `ip`, or names the limit that refuses it (counted).
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Option<IpSlot>, &'static str> {
        if let Some(connects) = &self.connects
            && connects.check_key(&ip).is_err()
        {
            self.metrics.limited("connect_rate");
            return Err("connect_rate");
        }
        self.open.admit(ip).map_err(|()| {
            self.metrics.limited("conn_per_ip");
            "conn_per_ip"
        })
    }

    /// Whether `ip` may make one more login attempt (counted when not).
    pub(crate) fn login_from(&self, ip: IpAddr) -> bool {
        let allowed = self.logins_per_ip.as_ref().is_none_or(|l| l.check_key(&ip).is_ok());
        if !allowed {
            self.metrics.limited("login_per_ip");
        }
        allowed
    }

    /// Whether `user` may log in once more (counted when not).
    pub(crate) fn login_of(&self, user: &Arc<str>) -> bool {
        let allowed = self.logins_per_user.as_ref().is_none_or(|l| l.check_key(user).is_ok());
        if !allowed {
            self.metrics.limited("login_per_user");
        }
        allowed
    }

    /// Whether a room list from `ip` is allowed (`rate_limits.room_list_per_ip_per_s`).
    pub(crate) fn room_list_from(&self, ip: IpAddr) -> bool {
        let allowed = self.room_lists.as_ref().is_none_or(|l| l.check_key(&ip).is_ok());
        if !allowed {
            self.metrics.limited("room_list");
        }
        allowed
    }

    /// A new session's buckets; `None` when both session limits are off.
    pub(crate) fn session_limits(&self) -> Option<Box<SessionLimits>> {
        let c = &self.session;
        let second = Duration::from_secs(1);
        let direct = |q: Quota| RateLimiter::direct_with_clock(q, MonotonicClock);
        let messages = quota(second, c.msg_per_s, c.msg_burst).map(|q| [direct(q), direct(q)]);
        let bytes = quota(second, c.bytes_per_s, c.bytes_burst).map(|q| [direct(q), direct(q)]);
        (messages.is_some() || bytes.is_some()).then(|| Box::new(SessionLimits { messages, bytes }))
    }

    /// Drops the buckets of peers idle long enough for them to be full again, every
    /// [`SWEEP_EVERY`] until shutdown.
    pub(crate) async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Some(l) = &self.connects {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &self.logins_per_ip {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &self.logins_per_user {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &self.room_lists {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// One session's message and byte buckets, each with a twin counting refusals: when the twin
/// is empty too (the client sent at over twice the rate for longer than a burst) the session
/// is closed.
pub(crate) struct SessionLimits {
    messages: Option<[Bucket; 2]>,
    bytes: Option<[Bucket; 2]>,
}

/// What a session does with a packet its limits saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Answer `rate_limited`, naming the limit.
    Refuse(&'static str),
    /// Close with 4007.
    Close(&'static str),
}

impl SessionLimits {
    /// Takes one message and `size` bytes from the buckets.
    pub(crate) fn check(&self, size: usize) -> Verdict {
        if let Some([bucket, excess]) = &self.messages
            && bucket.check().is_err()
        {
            return refusal(excess.check().is_ok(), "messages");
        }
        if let Some([bucket, excess]) = &self.bytes {
            // A packet never exceeds the burst (validated: bytes_burst >= max_msg_len + 8).
            let n = NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            if !matches!(bucket.check_n(n), Ok(Ok(()))) {
                return refusal(matches!(excess.check_n(n), Ok(Ok(()))), "bytes");
            }
        }
        Verdict::Pass
    }
}

fn refusal(excess_left: bool, limit: &'static str) -> Verdict {
    if excess_left { Verdict::Refuse(limit) } else { Verdict::Close(limit) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_past_its_burst_is_refused_then_closed() {
        let config =
            RateLimitsConfig { msg_per_s: 1, msg_burst: 3, bytes_per_s: 0, ..RateLimitsConfig::off() };
        let limits = PeerLimits::new(&config, &Metrics::new()).session_limits().expect("on");
        let verdicts: Vec<Verdict> = (0..7).map(|_| limits.check(10)).collect();
        assert_eq!(verdicts[..3], [Verdict::Pass, Verdict::Pass, Verdict::Pass]);
        assert_eq!(
            verdicts[3..6],
            [Verdict::Refuse("messages"), Verdict::Refuse("messages"), Verdict::Refuse("messages")]
        );
        assert_eq!(verdicts[6], Verdict::Close("messages"));
        assert!(PeerLimits::new(&RateLimitsConfig::off(), &Metrics::new()).session_limits().is_none());
        // docs/security.md states what the buckets cost a session.
        assert!(std::mem::size_of::<SessionLimits>() <= 176, "{}", std::mem::size_of::<SessionLimits>());
    }

    #[test]
    fn connections_per_ip_are_given_back() {
        let config = RateLimitsConfig { conn_per_ip: 2, ..RateLimitsConfig::off() };
        let limits = PeerLimits::new(&config, &Metrics::new());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).err(), Some("conn_per_ip"));
        assert!(limits.admit("127.0.0.3".parse().unwrap()).is_ok(), "another IP has its own count");
        drop(a);
        assert!(limits.admit(ip).is_ok());
    }
}
