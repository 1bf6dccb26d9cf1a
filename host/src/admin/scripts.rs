//! Script deployment over the admin API (docs/api.md "Scripts"): `GET /scripts`,
//! `POST /scripts/{name}` (body: the component), `POST /scripts/{name}/rollback`.

use std::time::Instant;

use bytes::Bytes;
use hyper::StatusCode;

use super::AdminCtx;
use super::{HttpResponse, error, json};
use crate::script::{ScriptError, ScriptInfo, ScriptName};

/// Largest component accepted, in bytes.
pub(super) const MAX_COMPONENT: usize = 64 << 20;

/// `GET /scripts`.
pub(super) fn list(ctx: &AdminCtx) -> HttpResponse {
    json(StatusCode::OK, serde_json::json!({ "scripts": ctx.control.scripts.infos() }))
}

pub(super) fn refused(e: ScriptError) -> HttpResponse {
    match e {
        ScriptError::NoPrevious { .. } => error(StatusCode::CONFLICT, "no_previous", e),
        // Retired between the lookup and the deploy (a message_map reload).
        ScriptError::Unknown { .. } => error(StatusCode::NOT_FOUND, "not_found", e),
        ScriptError::NoShadow { .. } => error(StatusCode::NOT_FOUND, "no_shadow", e),
        ScriptError::Recording { .. } => error(StatusCode::CONFLICT, "recording", e),
        e => error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e),
    }
}

pub(super) fn answer(result: Result<ScriptInfo, ScriptError>, started: Instant) -> HttpResponse {
    match result {
        Ok(info) => {
            let mut value = serde_json::to_value(info).unwrap_or_default();
            value["swap_ms"] = serde_json::json!(started.elapsed().as_secs_f64() * 1e3);
            json(StatusCode::OK, value)
        }
        Err(e) => refused(e),
    }
}

/// `POST /scripts/{name}`: deploys `component` (with `config`, JSON text, or the live
/// version's config when `None`).
pub(super) async fn deploy(
    ctx: &AdminCtx,
    name: &str,
    component: Bytes,
    config: Option<String>,
) -> HttpResponse {
    if let Some(config) = &config
        && let Err(e) = serde_json::from_str::<serde_json::Value>(config)
    {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("config is not JSON: {e}"));
    }
    if !known(ctx, name) {
        return unknown(name);
    }
    let started = Instant::now();
    answer(ctx.control.deploy_script(name, &component, config).await, started)
}

/// `POST /scripts/{name}/rollback`.
pub(super) async fn rollback(ctx: &AdminCtx, name: &str) -> HttpResponse {
    if !known(ctx, name) {
        return unknown(name);
    }
    let started = Instant::now();
    answer(ctx.control.rollback_script(name).await, started)
}

/// A built-in script or a loaded handler script.
pub(super) fn known(ctx: &AdminCtx, name: &str) -> bool {
    ctx.control.scripts.has(name)
}

pub(super) fn unknown(name: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no script `{name}`: the scripts are {} and the handler scripts message_map names",
            ScriptName::ALL.map(ScriptName::name).join(", ")
        ),
    )
}
