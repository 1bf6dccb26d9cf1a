//! The script host: loads components, keeps live instances, calls them under a sandbox.
//!
//! - [`bindings`]: the generated WIT bindings (the only `bindgen!`).
//! - [`engine`]: the shared wasmtime engine and compile cache; [`ticker`]: its epoch ticker,
//!   which runs only while calls do.
//! - [`pool`]: live, reusable instances with deadline, memory cap and trap recovery.
//! - [`state`]: per-store state and the `host` interface scripts import.
//! - [`deploy`]: versions of a named script, the deploy pipeline, atomic swap and rollback.
//! - [`hooks`]: [`Auth`], [`Router`] and [`Rooms`], what the gateway calls.
//! - `set`: [`Scripts`], every script of a gateway by name ([`ScriptName`] for the built-in ones).
//! - [`manifest`] and [`handlers`]: user-named handler scripts that `message_map.json` sends
//!   message ids to.
//! - [`evidence`]: shadow runs of a candidate on live events, recordings and offline replays.

pub mod bindings;
pub mod check;
mod cluster_host;
pub mod deploy;
pub mod engine;
pub mod evidence;
pub mod handlers;
mod hooks;
pub mod inspect;
pub mod manifest;
pub mod pool;
pub mod services;
mod set;
pub mod state;
mod stdio;
pub mod ticker;

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use self::bindings::auth::{AuthScript, AuthScriptPre};
use self::bindings::handler::{HandlerScript, HandlerScriptPre};
use self::bindings::rooms::{RoomsScript, RoomsScriptPre};
use self::bindings::router::{RouterScript, RouterScriptPre};
pub use self::deploy::ScriptInfo;
use self::engine::ScriptEngine;
pub use self::handlers::{Handler, Handlers};
pub use self::hooks::{Auth, Rooms, Router};
pub use self::pool::Limits;
use self::pool::World;
pub use self::set::{ScriptName, Scripts};
use self::state::ScriptState;

/// Script failures. Expected refusals (a bad token, an unknown message) are not errors: they
/// are WIT result values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScriptError {
    #[error("script engine: {0}")]
    Engine(String),
    #[error("script `{script}` cannot be loaded: {message}")]
    Load { script: String, message: String },
    #[error("script `{script}` does not fit its world or imports what the host denies: {message}")]
    Link { script: String, message: String },
    #[error("script `{script}` failed to initialise: {message}")]
    Init { script: String, message: String },
    #[error("script `{script}` trapped{}: {message}", if *.deadline { " (deadline exceeded)" } else { "" })]
    Trap { script: String, deadline: bool, message: String },
    #[error("script `{script}` has no previous version to roll back to")]
    NoPrevious { script: String },
    #[error("script `{script}` cannot build instances; next attempt in {retry_in_ms} ms")]
    Unavailable { script: String, retry_in_ms: u64 },
    #[error("script `{script}`: this version was replaced while the call waited")]
    Retired { script: String },
    #[error("script `{script}`: state not carried to the new version ({step} failed: {message})")]
    Carry { script: String, step: &'static str, message: String },
    #[error("script `{script}` is not loaded")]
    Unknown { script: String },
    #[error("script `{script}` has no shadow candidate")]
    NoShadow { script: String },
    #[error("script `{script}` is being recorded already")]
    Recording { script: String },
}

/// Implements [`World`] for a generated world binding and its `*Pre`.
macro_rules! world {
    ($world:ty, $pre:ident, $export:literal) => {
        impl World for $world {
            const EXPORT: &'static str = $export;
            type Pre = $pre<ScriptState>;
            fn prepare(linker: &Linker<ScriptState>, component: &Component) -> wasmtime::Result<Self::Pre> {
                $pre::new(linker.instantiate_pre(component)?)
            }
            async fn instantiate(pre: &Self::Pre, store: &mut Store<ScriptState>) -> wasmtime::Result<Self> {
                pre.instantiate_async(store).await
            }
        }
    };
}

world!(AuthScript, AuthScriptPre, "wasmgate:gateway/auth");
world!(RouterScript, RouterScriptPre, "wasmgate:gateway/router");
world!(RoomsScript, RoomsScriptPre, "wasmgate:gateway/rooms");
world!(HandlerScript, HandlerScriptPre, "wasmgate:gateway/handler");

/// A loaded script: name, component bytes and the JSON configuration its `init` receives.
#[derive(Clone)]
pub struct ScriptSource {
    pub name: String,
    pub bytes: Arc<[u8]>,
    pub config_json: String,
}

/// Compiles a script's component on the engine `limits` name (cached by content hash, in
/// memory and in `limits.cache_dir`) on a blocking thread.
async fn compile(
    source: &ScriptSource,
    limits: &Limits,
) -> Result<(Arc<ScriptEngine>, Arc<engine::Compiled>, engine::CompiledFrom), ScriptError> {
    let engine = ScriptEngine::with_settings(limits.engine)?;
    let cache_dir = limits.cache_dir.clone();
    let (e, name, bytes) = (engine.clone(), source.name.clone(), source.bytes.clone());
    let (component, from) = tokio::task::spawn_blocking(move || {
        let compiled = e.compile(&name, &bytes, cache_dir.as_deref());
        if bytes.len() >= engine::LARGE_COMPONENT {
            // A large compile leaves hundreds of MB of freed heap that glibc would keep.
            crate::memory::give_back_memory();
        }
        compiled
    })
    .await
    .map_err(|e| ScriptError::Engine(format!("compile task failed: {e}")))??;
    Ok((engine, component, from))
}
