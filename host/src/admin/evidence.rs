//! Shadow deploys and recordings over the admin API (docs/evidence.md):
//! `POST|GET|DELETE /scripts/{name}/shadow`, `POST /scripts/{name}/promote`,
//! `POST /scripts/{name}/record`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use super::scripts::{answer, known, refused, unknown};
use super::{AdminCtx, HttpResponse, error, json, response};
use crate::script::evidence::record::{Bounds, Recording};
use crate::script::evidence::shadow::Settings;

/// Longest recording, in seconds.
pub(super) const MAX_RECORD_SECONDS: u64 = 3600;
/// Default and largest event count of a recording.
const RECORD_EVENTS: u64 = 100_000;
const MAX_RECORD_EVENTS: u64 = 1_000_000;
/// Default and largest size of a recording, bytes.
const RECORD_BYTES: usize = 64 << 20;
const MAX_RECORD_BYTES: usize = 256 << 20;

/// With `scripts.native_router` the router script is never called: nothing to compare or
/// record.
fn native_router(ctx: &AdminCtx, name: &str) -> Option<HttpResponse> {
    (name == "router" && ctx.config.scripts.native_router).then(|| {
        let why = "scripts.native_router is on: the router script is not called, so there is nothing to shadow or record";
        error(StatusCode::CONFLICT, "native_router", why)
    })
}

/// `key=value` pairs of a query string.
fn query(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The number `key` gives, if any. Errors: the reason to answer `bad_request` with.
fn number<T: std::str::FromStr>(pairs: &[(String, String)], key: &str) -> Result<Option<T>, String> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| format!("`{key}` must be a number, not `{v}`")),
    }
}

fn bad_request(reason: String) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// The shadow settings a query gives (`fraction`, `queue`, `keep`, `redact`).
fn settings(pairs: &[(String, String)]) -> Result<Settings, String> {
    let mut settings = Settings::default();
    if let Some(f) = number::<f64>(pairs, "fraction")? {
        if !(f > 0.0 && f <= 1.0) {
            return Err("`fraction` must be in (0, 1]".into());
        }
        settings.fraction = f;
    }
    if let Some(queue) = number::<usize>(pairs, "queue")? {
        settings.queue = queue.clamp(1, 1 << 20);
    }
    if let Some(keep) = number::<usize>(pairs, "keep")? {
        settings.keep = keep.min(1000);
    }
    settings.redact = pairs.iter().any(|(k, v)| k == "redact" && matches!(v.as_str(), "" | "1" | "true"));
    Ok(settings)
}

/// `POST /scripts/{name}/shadow`: starts a shadow of `component` (query: `config`,
/// `fraction`, `queue`, `keep`, `redact`).
pub(super) async fn start_shadow(
    ctx: &AdminCtx,
    name: &str,
    q: Option<&str>,
    component: Bytes,
) -> HttpResponse {
    if !known(ctx, name) {
        return unknown(name);
    }
    let pairs = query(q);
    let settings = match settings(&pairs) {
        Ok(settings) => settings,
        Err(reason) => return bad_request(reason),
    };
    let config = pairs.iter().find(|(k, _)| k == "config").map(|(_, v)| v.clone());
    if let Some(config) = &config
        && let Err(e) = serde_json::from_str::<serde_json::Value>(config)
    {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("config is not JSON: {e}"));
    }
    match ctx.control.scripts.start_shadow(name, &component, config, settings).await {
        Ok(report) => json(StatusCode::OK, report),
        Err(e) => refused(e),
    }
}

/// `GET /scripts/{name}/shadow`.
pub(super) fn shadow_report(ctx: &AdminCtx, name: &str) -> HttpResponse {
    match ctx.control.scripts.shadow_report(name) {
        Ok(report) => json(StatusCode::OK, report),
        Err(e) => refused(e),
    }
}

/// `DELETE /scripts/{name}/shadow`: stops it; answers its last report.
pub(super) fn stop_shadow(ctx: &AdminCtx, name: &str) -> HttpResponse {
    match ctx.control.scripts.stop_shadow(name) {
        Ok(report) => json(StatusCode::OK, report),
        Err(e) => refused(e),
    }
}

/// `POST /scripts/{name}/promote`: deploys the shadow candidate live.
pub(super) async fn promote(ctx: &AdminCtx, name: &str) -> HttpResponse {
    let started = Instant::now();
    answer(ctx.control.promote_script(name).await, started)
}

/// `POST /scripts/{name}/record` (query: `seconds`, `max_events`, `max_bytes`): records the
/// live script until `seconds` pass or a bound is reached; answers the recording.
pub(super) async fn record(ctx: &AdminCtx, name: &str, q: Option<&str>) -> HttpResponse {
    if !known(ctx, name) {
        return unknown(name);
    }
    if let Some(refused) = native_router(ctx, name) {
        return refused;
    }
    let pairs = query(q);
    let read = || -> Result<(u64, Bounds), String> {
        let seconds = number::<u64>(&pairs, "seconds")?.unwrap_or(10).clamp(1, MAX_RECORD_SECONDS);
        let max_events =
            number::<u64>(&pairs, "max_events")?.unwrap_or(RECORD_EVENTS).clamp(1, MAX_RECORD_EVENTS);
        let max_bytes =
            number::<usize>(&pairs, "max_bytes")?.unwrap_or(RECORD_BYTES).clamp(1, MAX_RECORD_BYTES);
        Ok((seconds, Bounds { max_events, max_bytes }))
    };
    let (seconds, bounds) = match read() {
        Ok(read) => read,
        Err(reason) => return bad_request(reason),
    };
    let scripts = &ctx.control.scripts;
    let recording = match scripts.start_recording(name, bounds).await {
        Ok(recording) => recording,
        Err(e) => return refused(e),
    };
    // Unregistered however this ends, a client that goes away included (hyper then drops
    // this future): a forgotten recording would keep serialising events and refuse the next.
    let registered = Registered { ctx, name, recording: &recording };
    let ended_by = tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => "seconds",
        _ = recording.filled.notified() => "bound",
    };
    drop(registered);
    response(StatusCode::OK, "application/x-ndjson", recording.finish(ended_by))
}

/// A recording shown the script's events until dropped.
struct Registered<'a> {
    ctx: &'a AdminCtx,
    name: &'a str,
    recording: &'a Recording,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ctx.control.scripts.stop_recording(self.name, self.recording);
    }
}
