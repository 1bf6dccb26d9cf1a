//! Live sessions of this node, by session id and by user id.
//!
//! Sharded (64 shards, by session id or by user-id hash) so that accepts, closes and backend
//! replies on different sessions rarely touch the same lock. Locks are held only for map
//! operations, never across an `.await`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use smallvec::SmallVec;

use super::SessionHandle;

const SHARDS: usize = 64;

type SessionShard = RwLock<HashMap<u64, SessionHandle>>;
/// A user's sessions on this node: almost always one, held inline (a `Vec` would allocate 32
/// bytes for it, in every logged-in session).
type UserSessions = SmallVec<[SessionHandle; 1]>;
type UserShard = RwLock<HashMap<Arc<str>, UserSessions>>;

/// Session registry (connectsrv: "session manager").
pub struct Registry {
    sessions: Box<[SessionShard]>,
    users: Box<[UserShard]>,
    hasher: RandomState,
    count: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            sessions: (0..SHARDS).map(|_| RwLock::default()).collect(),
            users: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            count: AtomicUsize::new(0),
        }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> &SessionShard {
        // The low bits of a session id are a per-millisecond sequence: well spread.
        &self.sessions[(id as usize) % SHARDS]
    }

    fn user_shard(&self, user: &str) -> &UserShard {
        &self.users[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    /// Adds a new session.
    pub fn insert(&self, handle: SessionHandle) {
        if self.shard(handle.id()).write().insert(handle.id(), handle).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Indexes a logged-in session under its user id.
    pub fn bind_user(&self, handle: &SessionHandle, user: &Arc<str>) {
        self.user_shard(user).write().entry(user.clone()).or_default().push(handle.clone());
    }

    /// Indexes `handle` under `user` and takes the user's other sessions of this node out of
    /// the index, in one step; returns them (the caller closes them: duplicate login
    /// `kick-older`).
    pub fn bind_user_replacing(&self, handle: &SessionHandle, user: &Arc<str>) -> Vec<SessionHandle> {
        let mut shard = self.user_shard(user).write();
        let list = shard.entry(user.clone()).or_default();
        let older = std::mem::take(list);
        list.push(handle.clone());
        older.into_vec()
    }

    /// Indexes `handle` under `user` only if the user has no session on this node, in one
    /// step (duplicate login `refuse-new`); returns whether it did.
    pub fn bind_user_if_alone(&self, handle: &SessionHandle, user: &Arc<str>) -> bool {
        let mut shard = self.user_shard(user).write();
        let list = shard.entry(user.clone()).or_default();
        if !list.is_empty() {
            return false;
        }
        list.push(handle.clone());
        true
    }

    /// Removes a session (and its user index entry).
    pub fn remove(&self, handle: &SessionHandle) {
        if self.shard(handle.id()).write().remove(&handle.id()).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(user) = handle.user_id() {
            let mut shard = self.user_shard(user).write();
            if let Some(list) = shard.get_mut(user) {
                list.retain(|h| h.id() != handle.id());
                if list.is_empty() {
                    shard.remove(user);
                }
            }
        }
    }

    /// The session with this id, if it lives on this node.
    pub fn get(&self, id: u64) -> Option<SessionHandle> {
        self.shard(id).read().get(&id).cloned()
    }

    /// Every session of a user on this node.
    pub fn of_user(&self, user: &str) -> Vec<SessionHandle> {
        self.user_shard(user).read().get(user).map(|list| list.to_vec()).unwrap_or_default()
    }

    /// Every session (for shutdown).
    pub fn all(&self) -> Vec<SessionHandle> {
        self.sessions.iter().flat_map(|s| s.read().values().cloned().collect::<Vec<_>>()).collect()
    }

    /// Calls `f` for every session whose id falls in fan-out bucket `index` of `count`
    /// (`id % count == index`; `count` divides the 64 shards), holding one shard's read lock at
    /// a time. `f` must not block.
    pub fn for_each_in_bucket(&self, index: usize, count: usize, mut f: impl FnMut(&SessionHandle)) {
        debug_assert!(SHARDS.is_multiple_of(count));
        for shard in self.sessions.iter().skip(index).step_by(count) {
            for handle in shard.read().values() {
                f(handle);
            }
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TransportKind;

    fn handle(id: u64) -> SessionHandle {
        SessionHandle::new(id, TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), 4, (4, usize::MAX)).0
    }

    #[test]
    fn sessions_and_users_are_indexed_and_removed() {
        let r = Registry::default();
        let (a, b, c) = (handle(1), handle(2), handle(3));
        for h in [&a, &b, &c] {
            r.insert(h.clone());
        }
        let alice: Arc<str> = "alice".into();
        for h in [&a, &b] {
            h.set_user(alice.clone());
            r.bind_user(h, &alice);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.of_user("alice").len(), 2);
        r.remove(&a);
        assert!(r.get(1).is_none());
        assert_eq!(r.of_user("alice").iter().map(|h| h.id()).collect::<Vec<_>>(), vec![2]);
        r.remove(&b);
        assert!(r.of_user("alice").is_empty());
        assert_eq!(r.len(), 1);
        assert_eq!(r.all().len(), 1);
    }

    #[test]
    fn exclusive_binds_replace_or_refuse_in_one_step() {
        let r = Registry::default();
        let (a, b, c) = (handle(1), handle(2), handle(3));
        let bob: Arc<str> = "bob".into();
        assert!(r.bind_user_if_alone(&a, &bob));
        assert!(!r.bind_user_if_alone(&b, &bob), "a second session is refused");
        assert_eq!(r.of_user("bob").iter().map(|h| h.id()).collect::<Vec<_>>(), vec![1]);
        r.bind_user(&b, &bob);
        let older = r.bind_user_replacing(&c, &bob);
        assert_eq!(older.iter().map(|h| h.id()).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(r.of_user("bob").iter().map(|h| h.id()).collect::<Vec<_>>(), vec![3]);
    }
}
