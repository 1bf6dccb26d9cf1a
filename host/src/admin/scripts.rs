//! Script deployment over the admin API (docs/api.md "Scripts"): `GET /scripts`,
//! `POST /scripts/{name}` (body: the component), `POST /scripts/{name}/rollback`.

use std::time::Instant;

use bytes::Bytes;
use hyper::StatusCode;

use super::{HttpResponse, error, json};
use crate::gateway::Core;
use crate::script::{ScriptError, ScriptInfo, ScriptSource};

/// Largest component accepted, in bytes.
pub(super) const MAX_COMPONENT: usize = 64 << 20;

/// The scripts a gateway runs, by name.
pub(super) const NAMES: [&str; 3] = ["auth", "router", "rooms"];

/// `GET /scripts`.
pub(super) fn list(core: &Core) -> HttpResponse {
    let scripts = [core.auth.info(), core.router.info(), core.rooms_script.info()];
    json(StatusCode::OK, serde_json::json!({ "scripts": scripts }))
}

fn refused(e: ScriptError) -> HttpResponse {
    match e {
        ScriptError::NoPrevious { .. } => error(StatusCode::CONFLICT, "no_previous", e),
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
    let started = Instant::now();
    let source = |live: ScriptSource| ScriptSource {
        name: name.to_string(),
        bytes: component.to_vec().into(),
        config_json: config.clone().unwrap_or(live.config_json),
    };
    let result = match name {
        "auth" => core.auth.deploy(source(core.auth.source())).await,
        "router" => core.router.deploy(source(core.router.source())).await,
        "rooms" => core.rooms_script.deploy(source(core.rooms_script.source())).await,
        _ => return unknown(name),
    };
    if let Err(e) = &result {
        tracing::warn!(script = name, "deploy refused: {e}");
    }
    answer(result, started)
}

/// `POST /scripts/{name}/rollback`.
pub(super) async fn rollback(core: &Core, name: &str) -> HttpResponse {
    let started = Instant::now();
    let result = match name {
        "auth" => core.auth.rollback().await,
        "router" => core.router.rollback().await,
        "rooms" => core.rooms_script.rollback().await,
        _ => return unknown(name),
    };
    answer(result, started)
}

fn unknown(name: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no script `{name}`: the scripts are {}", NAMES.join(", ")),
    )
}
