//! Script deployment over the admin API (docs/api.md "Scripts"): `GET /scripts`,
//! `POST /scripts/{name}` (body: the component), `POST /scripts/{name}/rollback`.

use std::time::Instant;

use bytes::Bytes;
use hyper::StatusCode;

use super::{HttpResponse, error, json};
use crate::gateway::Core;
use crate::script::{ScriptError, ScriptInfo, ScriptName};

/// Largest component accepted, in bytes.
pub(super) const MAX_COMPONENT: usize = 64 << 20;

/// `GET /scripts`.
pub(super) fn list(core: &Core) -> HttpResponse {
    json(StatusCode::OK, serde_json::json!({ "scripts": core.scripts.infos() }))
}

fn refused(e: ScriptError) -> HttpResponse {
    match e {
        ScriptError::NoPrevious { .. } => error(StatusCode::CONFLICT, "no_previous", e),
        // Retired between the lookup and the deploy (a message_map reload).
        ScriptError::Unknown { .. } => error(StatusCode::NOT_FOUND, "not_found", e),
        e => error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e),
    }
}

fn answer(result: Result<ScriptInfo, ScriptError>, started: Instant) -> HttpResponse {
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
    core: &Core,
    name: &str,
    component: Bytes,
    config: Option<String>,
) -> HttpResponse {
    if let Some(config) = &config
        && let Err(e) = serde_json::from_str::<serde_json::Value>(config)
    {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("config is not JSON: {e}"));
    }
    if !known(core, name) {
        return unknown(name);
    }
    let started = Instant::now();
    answer(core.deploy_script(name, &component, config).await, started)
}

/// `POST /scripts/{name}/rollback`.
pub(super) async fn rollback(core: &Core, name: &str) -> HttpResponse {
    if !known(core, name) {
        return unknown(name);
    }
    let started = Instant::now();
    answer(core.rollback_script(name).await, started)
}

/// A built-in script or a loaded handler script.
fn known(core: &Core, name: &str) -> bool {
    core.scripts.has(name)
}

fn unknown(name: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no script `{name}`: the scripts are {} and the handler scripts message_map names",
            ScriptName::ALL.map(ScriptName::name).join(", ")
        ),
    )
}
