//! User-centre notifications (connectsrv): every login and every
//! disconnect of a logged-in session is POSTed as JSON to `user_centre.url`:
//!
//! ```json
//! {"event":"login","user_id":"alice","session_id":"7340...","node_id":1,"peer_addr":"127.0.0.1:50412","at_ms":1795000000000}
//! ```
//!
//! (`"event":"logout"` on disconnect). A session never waits for it: notices go through a
//! bounded queue (`queue_len`; full: dropped and counted) to one sender, which keeps their
//! order (a user's logout never overtakes its login). A notice answered with a non-2xx status,
//! or not answered within `timeout_ms`, is retried `retries` times with back-off (100 ms
//! doubling to 5 s), then given up and logged. Counted in
//! `wasmgate_user_centre_notices_total{outcome="ok"|"failed"|"dropped"}`. An `https://` URL is
//! reached over TLS, checked against `user_centre.ca` (or the system's roots).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::UserCentreConfig;
use anyhow::Context as _;

use crate::http_client::{Endpoint, HttpTarget};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::tls;

/// One notice, as POSTed.
#[derive(Debug, Serialize)]
struct Notice {
    event: &'static str,
    user_id: String,
    /// As a string: ids above 2^53 do not survive JavaScript numbers.
    session_id: String,
    node_id: u32,
    peer_addr: String,
    at_ms: u64,
}

/// The sending side; cheap to call from sessions.
pub struct UserCentre {
    tx: mpsc::Sender<Notice>,
    node_id: u32,
    metrics: Metrics,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl UserCentre {
    /// Starts the sender when `config.url` is set. Errors: an unusable URL.
    pub fn start(config: &UserCentreConfig, node_id: u32, metrics: &Metrics) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.url else { return Ok(None) };
        let target = HttpTarget::parse(url)?;
        let tls = match target.tls {
            true => Some(tls::Connector::new(config.ca.as_deref(), &target.host).context("user_centre")?),
            false => None,
        };
        let (tx, rx) = mpsc::channel(config.queue_len.max(1));
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let settings = (Duration::from_millis(config.timeout_ms), config.retries);
        tasks.spawn(send_loop((target, tls), rx, settings, metrics.clone(), stop.clone()));
        Ok(Some(Self { tx, node_id, metrics: metrics.clone(), stop, tasks }))
    }

    /// `user` logged in on `session` from `peer`.
    pub fn login(&self, user: &str, session: u64, peer: SocketAddr) {
        self.notify("login", user, session, peer);
    }

    /// The logged-in `session` of `user` closed.
    pub fn logout(&self, user: &str, session: u64, peer: SocketAddr) {
        self.notify("logout", user, session, peer);
    }

    fn notify(&self, event: &'static str, user: &str, session: u64, peer: SocketAddr) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let notice = Notice {
            event,
            user_id: user.to_string(),
            session_id: session.to_string(),
            node_id: self.node_id,
            peer_addr: peer.to_string(),
            at_ms,
        };
        if self.tx.try_send(notice).is_err() {
            count(&self.metrics, "dropped");
        }
    }

    /// Sends what is queued (one attempt each from now on), waiting at most `grace`.
    pub async fn finish(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("user-centre notices still queued after {grace:?} are dropped");
        }
    }
}

fn count(metrics: &Metrics, outcome: &'static str) {
    metrics.user_centre_notices.get_or_create(&OutcomeLabel { outcome }).inc();
}

async fn send_loop(
    (target, tls): (HttpTarget, Option<tls::Connector>),
    mut rx: mpsc::Receiver<Notice>,
    (timeout, retries): (Duration, u32),
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            notice = rx.recv() => notice,
            _ = stop.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        let Some(notice) = notice else { return };
        let body = serde_json::to_vec(&notice).unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let sent = tokio::time::timeout(timeout, async {
                let addr = target.resolve().await?;
                let to = Endpoint {
                    addr,
                    host: format!("{}:{}", target.host, target.port),
                    tls: tls.as_ref().map(|c| (c.inner(), c.server_name())),
                };
                crate::http_client::send(&to, "POST", &target.path, "application/json", None, body.clone())
                    .await
            })
            .await;
            let error = match sent {
                Ok(Ok((status, _))) if (200..300).contains(&status) => {
                    count(&metrics, "ok");
                    break;
                }
                Ok(Ok((status, text))) => format!("answered {status}: {text}"),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            // Once stopping, one attempt each: shutdown is bounded.
            if attempt >= retries || stop.is_cancelled() {
                count(&metrics, "failed");
                tracing::warn!(
                    event = notice.event,
                    user = notice.user_id,
                    "user-centre notice given up: {error}"
                );
                break;
            }
            attempt += 1;
            tracing::debug!(attempt, "user-centre notice failed, retrying in {backoff:?}: {error}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_name_the_problem() {
        let target = HttpTarget::parse("http://users.lan:8080/notify?src=gw").unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("users.lan", 8080, "/notify?src=gw")
        );
        assert_eq!(HttpTarget::parse("http://users.lan").unwrap().port, 80);
        let secure = HttpTarget::parse("https://users.lan/").unwrap();
        assert!(secure.tls && secure.port == 443, "{secure:?}");
        assert!(HttpTarget::parse("ftp://users.lan/").unwrap_err().to_string().contains("https://"));
        assert!(HttpTarget::parse("not a url").is_err());
    }
}
