//! Claiming a user's location for a login under a duplicate-login policy (connectsrv's
//! `userId -> {serverId, sessionId}` in Redis).
//!
//! The key is `<prefix>:user:<user id>` = `<node id>:<session id>:<incarnation>` (see
//! [`super::bus`] for how it is refreshed and removed). The incarnation tells a session of a
//! node's current process from one of a crashed process whose id was claimed again. A claim is one Redis command, so two logins of the same user
//! racing on two nodes are ordered by Redis:
//! - [`Policy::Replace`] (`kick-older`): `SET .. PX .. GET` takes the key and returns the
//!   session it named, which the caller kicks. Of two racing logins the later one stays.
//! - [`Policy::IfFree`] (`refuse-new`): `SET .. NX PX .. GET` takes the key only if it is free.
//!   A key naming a session that is gone (its node left discovery, or it is this node's and
//!   not in the registry: a crash within the TTL) is taken over with a compare-and-set, so a
//!   crashed node does not lock its users out until the TTL ends.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// How long a login waits for Redis before deciding with what this node knows.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// The fencing token every location write carries: the node id key's value. A write from a
/// process that no longer holds its node id (another claimed it) is refused by Redis itself,
/// so no stale incarnation writes a location, even with a write in flight when it lost the id.
#[derive(Clone)]
pub(super) struct FencingToken {
    /// `<prefix>:node:<id>`.
    pub node_key: std::sync::Arc<str>,
    /// The value this process set there.
    pub token: std::sync::Arc<str>,
}

/// Takes the key if it still holds ARGV[2], and the node id is still ours. KEYS[1] user key,
/// KEYS[2] node id key; ARGV[1] fencing token, ARGV[2] old value, ARGV[3] new value, ARGV[4]
/// TTL in ms. 1: taken; 0: not (changed meanwhile, or the id is not ours).
pub(super) const TAKE_OVER: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0";

/// `SET <user key> <value> [NX] PX <ttl> GET` if the node id is still ours (else an error
/// `fenced`). KEYS[1] user key, KEYS[2] node id key; ARGV[1] fencing token, ARGV[2] value,
/// ARGV[3] TTL in ms, ARGV[4] `nx` or `any`. Returns the previous value or nil.
const CLAIM: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('fenced: this process no longer holds its node id')
end
local old = redis.call('GET', KEYS[1])
if old and ARGV[4] == 'nx' then return old end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return old";

/// Where a user's session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub node: u32,
    pub session: u64,
    /// The incarnation of the node's process that holds the session (its registration says
    /// which incarnation is live); 0 when unknown (a value written without one).
    pub incarnation: u64,
}

impl Location {
    /// The key's value, `<node>:<session>:<incarnation>`.
    pub fn value(self) -> String {
        format!("{}:{}:{}", self.node, self.session, self.incarnation)
    }

    /// Parses a key's value, `<node>:<session>:<incarnation>` or `<node>:<session>`
    /// (incarnation 0); `None` otherwise.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(':');
        let node = parts.next()?.parse().ok()?;
        let session = parts.next()?.parse().ok()?;
        let incarnation = match parts.next() {
            Some(text) => text.parse().ok()?,
            None => 0,
        };
        parts.next().is_none().then_some(Self { node, session, incarnation })
    }
}

/// How a login claims the location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Take it whatever it names.
    Replace,
    /// Take it only if it is free or names a session that is gone.
    IfFree,
}

/// What a claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key now names the new session; `previous` is the session it named before, if any.
    Taken { previous: Option<Location> },
    /// The key names another live session; nothing changed.
    Refused,
}

/// Claims `key` for `ours` (`ttl` in ms). `live` says whether a session the key names still
/// exists. Errors: Redis unreachable or failing (the caller decides locally).
pub(super) async fn claim(
    conn: &mut ConnectionManager,
    (key, fencing): (&str, &FencingToken),
    ours: Location,
    ttl_ms: u64,
    policy: Policy,
    live: impl Fn(Location) -> bool,
) -> redis::RedisResult<Claim> {
    let old: Option<String> = redis::cmd("EVAL")
        .arg(CLAIM)
        .arg(2)
        .arg(key)
        .arg(&*fencing.node_key)
        .arg(&*fencing.token)
        .arg(ours.value())
        .arg(ttl_ms)
        .arg(if policy == Policy::IfFree { "nx" } else { "any" })
        .query_async(conn)
        .await?;
    let Some(old) = old else {
        return Ok(Claim::Taken { previous: None });
    };
    let previous = Location::parse(&old);
    if policy == Policy::Replace {
        return Ok(Claim::Taken { previous });
    }
    match previous {
        Some(location) if location == ours => Ok(Claim::Taken { previous: None }),
        Some(location) if live(location) => Ok(Claim::Refused),
        _ => {
            let taken: i64 = redis::cmd("EVAL")
                .arg(TAKE_OVER)
                .arg(2)
                .arg(key)
                .arg(&*fencing.node_key)
                .arg(&*fencing.token)
                .arg(&old)
                .arg(ours.value())
                .arg(ttl_ms)
                .query_async(conn)
                .await?;
            Ok(match taken {
                1 => Claim::Taken { previous },
                // Another login took it between the two commands: it is live.
                _ => Claim::Refused,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_values_round_trip_and_junk_is_refused() {
        let l = Location { node: 7, session: 123_456_789_012, incarnation: 99 };
        assert_eq!(l.value(), "7:123456789012:99");
        assert_eq!(Location::parse(&l.value()), Some(l));
        assert_eq!(Location::parse("7:5"), Some(Location { node: 7, session: 5, incarnation: 0 }));
        for junk in ["", "7", "x:1", "7:", "7:y", "-1:3", "7:5:", "7:5:x", "7:5:1:2"] {
            assert_eq!(Location::parse(junk), None, "{junk:?}");
        }
    }
}
