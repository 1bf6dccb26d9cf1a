//! The wasmtime engine every script runs on, its epoch ticker and the compiled-component
//! cache.
//!
//! One engine per process: its `Config` depends on nothing a gateway configures (deadlines and
//! memory caps are per store), so every gateway in the process (tests start many) shares the
//! compiled code of identical components, keyed by the SHA-256 of their bytes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::ScriptError;
use super::bindings;
use super::state::ScriptState;

/// Epoch tick period: a long-running call yields to the async runtime this often, and its
/// deadline is checked as often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Wasm stack per call, in bytes; deeper recursion traps.
const MAX_WASM_STACK: usize = 512 << 10;

/// The shared engine plus the linker of every world.
pub struct ScriptEngine {
    pub engine: Engine,
    pub linker: Linker<ScriptState>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
}

static SHARED: OnceLock<Result<Arc<ScriptEngine>, String>> = OnceLock::new();

impl ScriptEngine {
    /// The process-wide engine, created (and its epoch ticker thread started) on first use.
    pub fn shared() -> Result<Arc<Self>, ScriptError> {
        SHARED
            .get_or_init(|| Self::create().map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(ScriptError::Engine)
    }

    fn create() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Scripts use no component-model async (streams, futures, async exports); leaving
            // its machinery off makes a call several times cheaper.
            .concurrency_support(false)
            .max_wasm_stack(MAX_WASM_STACK)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        let engine = Engine::new(&config)?;

        // Every world imports the same `host` interface (and WASI, denied by the store's
        // context), so one linker serves them all.
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::auth::AuthScript::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        let weak = engine.weak();
        std::thread::Builder::new().name("wasmgate-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        Ok(Self { engine, linker, compiled: Mutex::default() })
    }

    /// Compiles `bytes` (a component) or returns the cached compilation of identical bytes.
    /// Compilation is CPU-heavy (tens to hundreds of ms): call it off the async workers.
    ///
    /// Errors: [`ScriptError::Load`] when the bytes are not a valid component.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component, ScriptError> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.compiled.lock().get(&hash) {
            return Ok(c.clone());
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| ScriptError::Load { script: name.into(), message: format!("{e:#}") })?;
        self.compiled.lock().insert(hash, component.clone());
        Ok(component)
    }
}
