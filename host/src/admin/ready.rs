//! `GET /readyz`: whether this gateway should be sent clients (a load balancer's readiness
//! probe). Listeners and scripts are up once the admin port answers (the gateway binds and
//! loads them before serving); what can go away later is checked on each request:
//! - every dest of `dest_map` has at least one queue-pool connection up;
//! - Redis and etcd answer a PING / status within 500 ms, when the cluster uses them;
//! - the gateway is not shutting down.
//!
//! 200 `{"ready":true}` or 503 `{"ready":false,"not_ready":{"<check>":"<why>",...}}`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::AdminCtx;

/// Longest wait for Redis or etcd.
const PROBE: Duration = Duration::from_millis(500);

/// What is not ready, by check name (empty: ready).
pub(super) async fn not_ready(ctx: &AdminCtx) -> Map<String, Value> {
    let mut problems = Map::new();
    if ctx.shutdown.is_cancelled() {
        problems.insert("shutdown".into(), "the gateway is shutting down".into());
    }
    for dest in ctx.upstreams.dests() {
        if ctx.upstreams.connections_up(dest) == 0 {
            problems.insert(format!("upstream:{dest}"), "no queue-pool connection up".into());
        }
    }
    if let Some(cluster) = &ctx.cluster {
        for (name, why) in cluster.unreachable(PROBE).await {
            problems.insert(name.into(), why.into());
        }
    }
    problems
}
