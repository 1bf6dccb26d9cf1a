//! `wasmgate check-script`: what the deploy pipeline would say of a component, offline — its
//! world, each import and what the host links for it, `init` with a config, and one call — so
//! an author finds out before deploying. No gateway, Redis or etcd is needed: `cluster` calls
//! answer `unavailable`.

use std::fmt::Write as _;
use std::sync::Arc;

use super::bindings::auth::AuthScript;
use super::bindings::handler::HandlerScript;
use super::bindings::rooms::RoomsScript;
use super::bindings::router::RouterScript;
use super::bindings::{JoinRequest, MessageRoute, Packet, RoomInfo, Session, Transport};
use super::manifest::ScriptWorld;
use super::pool::World;
use super::{Auth, Handler, Limits, Rooms, Router, ScriptError, ScriptSource, inspect};
use crate::metrics::Metrics;

/// The interface `world` exports (the world binding's [`World::EXPORT`]).
fn export_of(world: ScriptWorld) -> &'static str {
    match world {
        ScriptWorld::Auth => AuthScript::EXPORT,
        ScriptWorld::Router => RouterScript::EXPORT,
        ScriptWorld::Rooms => RoomsScript::EXPORT,
        ScriptWorld::Handler => HandlerScript::EXPORT,
    }
}

/// The report: one line per import, then the verdict. `Ok` when the component would deploy
/// and its smoke call returned; `Err` carries the report so far and the refusal.
pub async fn check(
    world: ScriptWorld,
    bytes: Vec<u8>,
    config_json: String,
    limits: Limits,
) -> Result<String, (String, ScriptError)> {
    // The check runs one instance; the report says how many the gateway would allow.
    let configured = limits.instances;
    let limits = Limits { instances: 1, ..limits };
    let name = "check";
    let mut report = String::new();
    let declared = match inspect::declared(&bytes) {
        Ok(declared) => declared,
        Err(message) => return Err((report, ScriptError::Load { script: name.into(), message })),
    };
    for import in &declared.imports {
        let what = inspect::known_import(import).unwrap_or(if limits.trap_unknown_imports {
            "unknown: linked as a trap (scripts.trap_unknown_imports)"
        } else {
            "unknown: refused"
        });
        let _ = writeln!(report, "import {import}: {what}");
    }
    if let Err(message) = inspect::check(&declared, export_of(world), limits.trap_unknown_imports) {
        return Err((report, ScriptError::Link { script: name.into(), message }));
    }
    let source = ScriptSource { name: name.into(), bytes: bytes.into(), config_json };
    let metrics = Metrics::new();
    let session = Session {
        id: 1,
        node_id: 1,
        transport: Transport::Websocket,
        peer_addr: "127.0.0.1:40000".into(),
        user_id: Some("check-script".into()),
    };
    let packet = Packet { msg_id: 100, seq: 1, body: b"check-script".to_vec() };
    let call = match world {
        ScriptWorld::Auth => {
            let auth = Auth::load(&source, limits, &metrics).await.map_err(|e| (report.clone(), e))?;
            let anonymous = Session { user_id: None, ..session };
            let outcome = auth.authenticate(&anonymous, "check-script-token").await;
            outcome.map(|r| (auth.info(), format!("authenticate(\"check-script-token\") -> {r:?}")))
        }
        ScriptWorld::Router => {
            let map = vec![MessageRoute { msg_id: 100, dest_id: 101 }];
            let router =
                Router::load(&source, limits, &metrics, map).await.map_err(|e| (report.clone(), e))?;
            let decision = router.route(&session, &packet, None).await;
            decision.map(|d| (router.info(), format!("route(msg 100; message_map 100 -> 101) -> {d:?}")))
        }
        ScriptWorld::Rooms => {
            let rooms = Rooms::load(&source, limits, &metrics).await.map_err(|e| (report.clone(), e))?;
            let request = JoinRequest {
                room: RoomInfo { name: "check-room".into(), members: 0 },
                rooms_joined: 0,
                body: Vec::new(),
            };
            let joined = rooms.on_join(&session, &request).await;
            joined.map(|r| (rooms.info(), format!("on-join(\"check-room\") -> {r:?}")))
        }
        ScriptWorld::Handler => {
            let handler =
                Handler::load(false, &source, limits, &metrics).await.map_err(|e| (report.clone(), e))?;
            let outcome = handler.handle(&session, &packet, None).await;
            outcome.map(|o| (handler.info(), format!("handle(msg 100) -> {o:?}")))
        }
    };
    match call {
        Ok((info, line)) => {
            let _ = writeln!(report, "init: ok");
            let _ = writeln!(report, "{line}");
            let _ = writeln!(
                report,
                "instance: {:.1} MiB of linear memory after init; at most {} instances with \
                 scripts.instances = {configured} ({} MiB for all instances together)",
                info.instance_memory_bytes as f64 / (1 << 20) as f64,
                super::pool::instance_cap(configured, info.instance_memory_bytes),
                super::pool::INSTANCE_MEMORY_BUDGET >> 20,
            );
            Ok(report)
        }
        Err(e) => {
            let _ = writeln!(report, "init: ok");
            Err((report, e))
        }
    }
}

/// [`Limits`] for an offline check: the gateway config's script limits.
pub fn offline_limits(config: &crate::config::Config) -> Limits {
    Limits {
        deadline: std::time::Duration::from_millis(config.scripts.deadline_ms),
        memory_bytes: config.scripts.memory_bytes,
        instances: config.scripts.instances,
        cache_dir: config.scripts.cache_dir.as_deref().map(Into::into),
        engine: super::engine::EngineSettings::of(&config.scripts.pooling),
        services: Arc::default(),
        trap_unknown_imports: config.scripts.trap_unknown_imports,
        long_calls: None,
    }
}
