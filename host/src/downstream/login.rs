//! Login (connectsrv, as connsvr's token login) and the duplicate-login policy.
//!
//! The auth script turns the token into an identity whose `on-duplicate` says what a second
//! login of the same user does ([`DuplicateLogin`]):
//! - `allow`: both sessions live; the user's location (cluster) names the newer one.
//! - `kick-older`: this node's older sessions of the user leave the user index and close with
//!   4006 `replaced` in the same step as the new one is indexed; in a cluster the location is
//!   taken (`SET .. GET`) and the session it named, if on another node, is closed there over
//!   the bus.
//! - `refuse-new`: in a cluster the location is claimed only if free (`SET NX`), or if it names
//!   a session that is gone; then the new session is indexed only if the user has no other
//!   session here. Either refusal closes the new session with `duplicate_login`, 4003.
//!
//! In a cluster, one login of a user at a time per node runs the claim and the local binding
//! (a striped lock), so both happen in the same order and racing `kick-older` logins leave
//! exactly one session: the one Redis saw last.
//!
//! When Redis does not answer within 1 s the login goes ahead on what this node knows (the
//! local index), with a warning: Redis being down does not stop logins.

use std::sync::Arc;

use bytes::Bytes;

use super::driver::Session;
use crate::cluster::{Claim, Cluster, Policy};
use crate::delivery::{REPLACED, Scope};
use crate::metrics::ReasonLabel;
use crate::script::bindings::{DuplicateLogin, Rejection};
use crate::session::{CloseReason, DuplicateRule, ErrorCode};

impl Session {
    /// Refuses a login by an abuse limit: a login packet is answered `rate_limited` and the
    /// session may try again later; a URL token's session, which has no other way to log in,
    /// is closed with 4007.
    fn refuse_login(&self, answer: bool, seq: u32, message: &str) {
        match answer {
            true => self.reject(seq, ErrorCode::RateLimited, message),
            false => self.reject_and_close(CloseReason::RateLimited, seq, ErrorCode::RateLimited, message),
        }
    }

    /// Logs the session in with `token` (the login packet's, or the WebSocket URL's); `seq`
    /// is the login packet's (0 for the URL). `answer`: send the login reply (not for URL
    /// tokens: their clients, go-push's among them, expect nothing; a refusal still closes the
    /// connection with 4003).
    #[tracing::instrument(
        level = "debug",
        name = "login",
        skip_all,
        fields(wasmgate.seq = seq, enduser.id = tracing::field::Empty, wasmgate.outcome = tracing::field::Empty)
    )]
    pub(super) async fn login(&mut self, seq: u32, token: &str, answer: bool) {
        let metrics = &self.ctx.metrics;
        let count = |result: &'static str| {
            tracing::Span::current().record("wasmgate.outcome", result);
            metrics.logins.get_or_create(&ReasonLabel { reason: result }).inc()
        };
        if self.logged_in() {
            count("duplicate");
            self.reject(seq, ErrorCode::AlreadyLoggedIn, "this session is logged in");
            return;
        }
        if !self.ctx.peers.login_from(self.handle.peer().ip()) {
            count("rate_limited");
            return self.refuse_login(answer, seq, "too many login attempts from this address");
        }
        match self.ctx.scripts.auth.authenticate(&self.info(), token).await {
            Ok(Ok(identity)) => {
                let user: Arc<str> = identity.user_id.as_str().into();
                if !self.ctx.peers.login_of(&user) {
                    count("rate_limited");
                    return self.refuse_login(answer, seq, "too many logins of this user");
                }
                if !self.admit(&user, identity.on_duplicate).await {
                    count("duplicate_refused");
                    return self.reject_and_close(
                        CloseReason::AuthRejected,
                        seq,
                        ErrorCode::DuplicateLogin,
                        "this user is logged in on another session",
                    );
                }
                count("ok");
                tracing::Span::current().record("enduser.id", &*user);
                if let Some(user_centre) = &self.ctx.user_centre {
                    user_centre.login(&user, self.handle.id(), self.handle.peer());
                }
                let body = serde_json::json!({
                    "user_id": &*user,
                    "session_id": self.handle.id().to_string(),
                    "node_id": self.ctx.config.node.id,
                });
                if answer {
                    self.handle.send(self.ctx.config.routes.login, seq, Bytes::from(body.to_string()));
                }
            }
            Ok(Err(rejection)) => {
                count("rejected");
                let (code, message) = match &rejection {
                    Rejection::InvalidToken(m) => (ErrorCode::InvalidToken, m.as_str()),
                    Rejection::Expired => (ErrorCode::Expired, "token expired"),
                    Rejection::Forbidden(m) => (ErrorCode::Forbidden, m.as_str()),
                };
                self.reject_and_close(CloseReason::AuthRejected, seq, code, message);
            }
            Err(e) => {
                // Auth fails closed: a broken login script logs nobody in.
                count("script_error");
                tracing::warn!("login refused, auth script failed: {e}");
                self.reject_and_close(
                    CloseReason::AuthRejected,
                    seq,
                    ErrorCode::AuthUnavailable,
                    "login is unavailable",
                );
            }
        }
    }

    /// Binds the session to `user` under the duplicate-login `policy` (module docs); `false`
    /// when the login is refused (nothing was bound or recorded).
    async fn admit(&self, user: &Arc<str>, policy: DuplicateLogin) -> bool {
        let (ctx, handle) = (&self.ctx, &self.handle);
        let bus = ctx.bus();
        match policy {
            DuplicateLogin::Allow => {
                handle.set_user(user.clone());
                ctx.registry.bind_user(handle, user);
                if let Some(bus) = bus {
                    bus.logged_in(user.clone(), handle.id());
                }
            }
            DuplicateLogin::KickOlder => {
                let cluster = ctx.cluster.as_deref().filter(|_| bus.is_some());
                let _serial = serialise(cluster, user).await;
                handle.set_user(user.clone());
                for older in ctx.registry.bind_user_replacing(handle, user) {
                    older.close(CloseReason::Replaced, REPLACED);
                }
                let Some((cluster, bus)) = cluster.zip(bus) else { return true };
                match cluster.claim_location(user, handle.id(), Policy::Replace, &ctx.registry).await {
                    Ok(Claim::Taken { previous: Some(old) }) if old.node != cluster.node_id => {
                        ctx.delivery.kick(old.session, CloseReason::Replaced, REPLACED, Scope::Cluster);
                    }
                    // A session of an earlier process under this node id: gone with it.
                    Ok(Claim::Taken { previous: Some(old) }) if !cluster.is_ours(old) => {}
                    Ok(Claim::Taken { previous: Some(old) }) => {
                        // Normally closed by the local replacement above already.
                        if let Some(other) = ctx.registry.get(old.session).filter(|o| o.id() != handle.id()) {
                            other.close(CloseReason::Replaced, REPLACED);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(user = &**user, "duplicate login check went local only: {e:#}");
                        handle.set_duplicate_rule(DuplicateRule::KickOlder);
                        bus.logged_in_unchecked(user.clone(), handle.id());
                    }
                }
            }
            DuplicateLogin::RefuseNew => {
                let cluster = ctx.cluster.as_deref().filter(|_| bus.is_some());
                let _serial = serialise(cluster, user).await;
                let mut claimed = false;
                if let Some(cluster) = cluster {
                    match cluster.claim_location(user, handle.id(), Policy::IfFree, &ctx.registry).await {
                        Ok(Claim::Taken { .. }) => claimed = true,
                        Ok(Claim::Refused) => return false,
                        Err(e) => {
                            tracing::warn!(user = &**user, "duplicate login check went local only: {e:#}")
                        }
                    }
                }
                if !ctx.registry.bind_user_if_alone(handle, user) {
                    if let (true, Some(bus)) = (claimed, bus) {
                        bus.closed(user.clone(), handle.id());
                    }
                    return false;
                }
                handle.set_user(user.clone());
                if let (false, Some(bus)) = (claimed, bus) {
                    handle.set_duplicate_rule(DuplicateRule::RefuseNew);
                    bus.logged_in_unchecked(user.clone(), handle.id());
                }
            }
        }
        true
    }
}

/// The cluster's login lock for `user` (see [`crate::cluster::Cluster::login_lock`]), if any.
async fn serialise<'a>(cluster: Option<&'a Cluster>, user: &str) -> Option<tokio::sync::MutexGuard<'a, ()>> {
    match cluster {
        Some(cluster) => Some(cluster.login_lock(user).await),
        None => None,
    }
}
