//! The wasmtime engine every script runs on (with its epoch ticker, [`super::ticker`]) and the
//! compiled-component cache.
//!
//! One engine per process and [`EngineSettings`] (the pooling allocator's size, the only engine
//! setting a gateway configures; deadlines and memory caps are per store): every gateway of a
//! process with the same settings (tests start many) shares the compiled code of identical
//! components, keyed by the SHA-256 of their bytes.
//!
//! The memory cache is bounded by what is deployed: a [`Compiled`] component stays cached while
//! a live or rollback version holds it, and then among the [`KEEP_RELEASED`] most recently
//! released ones (so a redeploy of a recent version costs no compile); a component that a
//! deploy refused is never kept. Each cached component holds its compiled code and a
//! `memfd:wasm-memory-image` descriptor.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::ScriptError;
use super::bindings;
use super::state::ScriptState;
use super::ticker::EpochTicker;

pub use super::ticker::EPOCH_TICK;

/// Wasm stack per call, in bytes; deeper recursion traps.
const MAX_WASM_STACK: usize = 512 << 10;

/// Engine settings from the gateway config (`scripts.pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Pooling allocator size: `Some((max component instances, max linear memories))`;
    /// `None`: on-demand allocation.
    pub pooling: Option<(u32, u32)>,
}

impl EngineSettings {
    /// The settings of a gateway config.
    pub fn of(config: &crate::config::PoolingConfig) -> Self {
        Self { pooling: config.enabled.then_some((config.max_instances, config.max_memories)) }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self::of(&crate::config::PoolingConfig::default())
    }
}

/// Core instances and tables reserved per component instance slot: a Rust component has 1 to 3
/// core instances; componentize-py and jco components up to about a dozen.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const TABLES_PER_COMPONENT: u32 = 8;

/// The shared engine plus the linker of every world.
pub struct ScriptEngine {
    pub engine: Engine,
    pub settings: EngineSettings,
    pub linker: Linker<ScriptState>,
    /// Moves the epoch while calls run ([`EpochTicker::enter`]).
    pub ticker: EpochTicker,
    compiled: Arc<Mutex<Cache>>,
}

/// Components kept compiled after no version holds them any more.
pub const KEEP_RELEASED: usize = 4;

/// The memory cache: components held by versions (weakly, so dropping the last holder
/// releases them), and the most recently released accepted ones (oldest first).
#[derive(Default)]
struct Cache {
    held: HashMap<[u8; 32], Weak<Compiled>>,
    released: VecDeque<([u8; 32], Component)>,
}

/// A compiled component, shared by every version deployed from identical bytes. Dropping the
/// last holder takes it out of the memory cache: into the released few if a deploy accepted it
/// ([`Compiled::accept`]), else gone.
pub struct Compiled {
    pub component: Component,
    hash: [u8; 32],
    accepted: AtomicBool,
    cache: Weak<Mutex<Cache>>,
}

impl Compiled {
    /// Marks the component as deployed (its pipeline passed): once released it stays cached
    /// among the [`KEEP_RELEASED`] most recent. A component never accepted is forgotten when
    /// released.
    pub fn accept(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        let Some(cache) = self.cache.upgrade() else { return };
        let mut cache = cache.lock();
        // Another holder may have compiled the same bytes again since this one was released.
        if cache.held.get(&self.hash).is_some_and(|held| held.strong_count() == 0) {
            cache.held.remove(&self.hash);
        }
        if self.accepted.load(Ordering::Relaxed) {
            cache.released.retain(|(hash, _)| *hash != self.hash);
            cache.released.push_back((self.hash, self.component.clone()));
            if cache.released.len() > KEEP_RELEASED
                && let Some((_, evicted)) = cache.released.pop_front()
            {
                let image = evicted.image_range();
                let large = image.end as usize - image.start as usize >= LARGE_COMPONENT;
                // Dropped here if nothing else holds it: a large one's metadata (~15 MiB
                // for an 18 MB Python component) goes back to the OS now; the trimmer's own
                // rule would not see it (its reference RSS dates from when it was live).
                drop(evicted);
                if large {
                    crate::memory::trim_soon();
                }
            }
        }
    }
}

/// The engines of this process, one per distinct [`EngineSettings`] (normally one).
static ENGINES: Mutex<Vec<Arc<ScriptEngine>>> = Mutex::new(Vec::new());

impl ScriptEngine {
    /// The process's engine with `settings`, created (and its epoch ticker thread started) on
    /// first use. Gateways of one process with the same settings share it, and so share
    /// compiled code; it lives as long as the process.
    ///
    /// Errors: [`ScriptError::Engine`] when the engine cannot be created (the pooling
    /// allocator's address space cannot be reserved).
    pub fn with_settings(settings: EngineSettings) -> Result<Arc<Self>, ScriptError> {
        let mut engines = ENGINES.lock();
        if let Some(engine) = engines.iter().find(|e| e.settings == settings) {
            return Ok(engine.clone());
        }
        let engine = Arc::new(Self::create(settings).map_err(|e| ScriptError::Engine(format!("{e:#}")))?);
        engines.push(engine.clone());
        Ok(engine)
    }

    /// The engine with the default settings (what a gateway with the default
    /// `scripts.pooling` uses).
    pub fn shared() -> Result<Arc<Self>, ScriptError> {
        Self::with_settings(EngineSettings::default())
    }

    /// The engine configuration for `settings`; `pooled: false` leaves out the pooling
    /// allocator (for an engine that only compiles, [`Self::compile_apart`]).
    fn config(settings: EngineSettings, pooled: bool) -> Config {
        let mut config = Config::new();
        if let Some((instances, memories)) = settings.pooling.filter(|_| pooled) {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
                .total_memories(memories)
                .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
                // One fiber stack per call in flight; calls in flight <= live instances.
                .total_stacks(instances)
                .max_memories_per_component(memories.min(16));
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        config
            .epoch_interruption(true)
            // Scripts use no component-model async (streams, futures, async exports); leaving
            // its machinery off makes a call several times cheaper.
            .concurrency_support(false)
            .max_wasm_stack(MAX_WASM_STACK)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        config
    }

    fn create(settings: EngineSettings) -> wasmtime::Result<Self> {
        let engine = Engine::new(&Self::config(settings, true))?;

        // Every world imports the same `host` interface (and WASI, denied by the store's
        // context), so one linker serves them all.
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::auth::AuthScript::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        let ticker = EpochTicker::start(engine.weak())?;
        Ok(Self { engine, settings, linker, ticker, compiled: Arc::default() })
    }

    /// Compiles `bytes` (a component) or returns the cached compilation of identical bytes:
    /// from memory, else from `cache_dir` (files `<sha256>-<engine>.cwasm`, written after a
    /// compile, loaded only into an engine with the same configuration). Compilation is
    /// CPU-heavy (tens to hundreds of ms): call it off the async workers.
    ///
    /// Errors: [`ScriptError::Load`] when the bytes are not a valid component. A cache file
    /// that cannot be read or written is logged and skipped.
    pub fn compile(
        &self,
        name: &str,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> Result<(Arc<Compiled>, CompiledFrom), ScriptError> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(compiled) = self.cached(hash) {
            return Ok((compiled, CompiledFrom::Memory));
        }
        let file = cache_dir.map(|dir| dir.join(self.cache_file_name(&hash)));
        if let Some(file) = file.as_deref().filter(|f| f.exists()) {
            // SAFETY: wasmtime requires that a deserialized artifact come from a trusted
            // `serialize` of a compatible engine. The file name carries the engine's
            // compatibility hash and the files are written only by this function; the cache
            // directory must not be writable by anyone the gateway does not trust (docs).
            // Read into memory rather than map the file: a mapped file truncated underneath a
            // live component would crash the process (SIGBUS).
            let loaded = std::fs::read(file).map_err(wasmtime::Error::from).and_then(|bytes| {
                // SAFETY: see above.
                unsafe { Component::deserialize(&self.engine, bytes) }
            });
            match loaded {
                Ok(component) => return Ok((self.hold(hash, component, false), CompiledFrom::Disk)),
                Err(e) => {
                    tracing::warn!(script = name, file = %file.display(), "unusable cache file, recompiling: {e:#}")
                }
            }
        }
        let component = if bytes.len() >= LARGE_COMPONENT {
            self.compile_apart(bytes)
        } else {
            Component::new(&self.engine, bytes)
        }
        .map_err(|e| ScriptError::Load { script: name.into(), message: load_error_message(&e) })?;
        if let Some(file) = &file
            && let Err(e) = write_cache_file(file, &component)
        {
            tracing::warn!(script = name, file = %file.display(), "cannot write the compile cache: {e:#}");
        }
        Ok((self.hold(hash, component, false), CompiledFrom::Compiled))
    }

    /// Compiles `bytes` on an engine of its own (same settings, no pooling allocator) and loads
    /// the result into this one. Cranelift keeps its per-thread compile buffers in the engine
    /// that compiled, sized by the largest function it ever compiled: an interpreter's
    /// dispatch loop (CPython's, SpiderMonkey's) left ~70 MB there for the life of the
    /// process; dropped with the compiling engine, they go back to the OS.
    fn compile_apart(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let artifact = Engine::new(&Self::config(self.settings, false))?.precompile_component(bytes)?;
        // SAFETY: wasmtime requires a deserialized artifact to come from a trusted
        // `precompile`/`serialize` of a compatible engine: it was made just above, in memory,
        // by an engine with the same settings (deserialize checks the compatibility).
        unsafe { Component::deserialize(&self.engine, &artifact) }
    }

    /// The cached compilation of the component with SHA-256 `hash`: held by a version, or
    /// among the recently released (taken back out of them).
    fn cached(&self, hash: [u8; 32]) -> Option<Arc<Compiled>> {
        let mut cache = self.compiled.lock();
        if let Some(held) = cache.held.get(&hash).and_then(Weak::upgrade) {
            return Some(held);
        }
        let at = cache.released.iter().position(|(h, _)| *h == hash)?;
        let (_, component) = cache.released.remove(at)?;
        drop(cache);
        Some(self.hold(hash, component, true))
    }

    fn hold(&self, hash: [u8; 32], component: Component, accepted: bool) -> Arc<Compiled> {
        let compiled = Arc::new(Compiled {
            component,
            hash,
            accepted: AtomicBool::new(accepted),
            cache: Arc::downgrade(&self.compiled),
        });
        self.compiled.lock().held.insert(hash, Arc::downgrade(&compiled));
        compiled
    }

    /// Whether the component with SHA-256 `hash` is in the memory cache (held by a version or
    /// recently released).
    pub fn is_cached(&self, hash: &[u8; 32]) -> bool {
        let cache = self.compiled.lock();
        cache.held.get(hash).is_some_and(|held| held.strong_count() > 0)
            || cache.released.iter().any(|(h, _)| h == hash)
    }

    /// `<sha256 of the component>-<engine compatibility hash>.cwasm`.
    fn cache_file_name(&self, hash: &[u8; 32]) -> String {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}.cwasm", engine_hash.finish())
    }

    /// The shared linker plus, for each import of `component` that the host does not know
    /// ([`super::inspect::known_import`]), functions that trap when called
    /// (`scripts.trap_unknown_imports`). Known interfaces are left as linked (wasmtime's own
    /// `define_unknown_imports_as_traps` replaced semver-matched WASI imports with traps).
    ///
    /// Errors: an unknown import that is not made only of functions (a resource, say).
    pub fn linker_with_traps(&self, component: &Component) -> wasmtime::Result<Linker<ScriptState>> {
        use wasmtime::component::types::ComponentItem;
        let mut linker = self.linker.clone();
        let ty = component.component_type();
        for (name, item) in ty.imports(&self.engine) {
            if super::inspect::known_import(name).is_some() {
                continue;
            }
            let trap = |what: String| {
                move |_: wasmtime::StoreContextMut<'_, ScriptState>, _: _, _: &[_], _: &mut [_]| {
                    Err(wasmtime::format_err!("`{what}` is not provided by wasmgate (linked as a trap)"))
                }
            };
            match item.ty {
                ComponentItem::ComponentFunc(_) => linker.root().func_new(name, trap(name.to_string()))?,
                ComponentItem::ComponentInstance(instance) => {
                    let mut defined = linker.instance(name)?;
                    for (func, export) in instance.exports(&self.engine) {
                        match export.ty {
                            ComponentItem::ComponentFunc(_) => {
                                defined.func_new(func, trap(format!("{name}#{func}")))?
                            }
                            ComponentItem::Type(_) => {}
                            _ => wasmtime::bail!(
                                "unknown import `{name}` exports `{func}`, which cannot be trapped"
                            ),
                        }
                    }
                }
                _ => wasmtime::bail!("unknown import `{name}` is not a function or an instance of functions"),
            }
        }
        Ok(linker)
    }

    /// Forgets the in-memory compile cache (the next compile of each component goes to the
    /// disk cache or the compiler). For tests and memory pressure.
    pub fn clear_memory_cache(&self) {
        let mut cache = self.compiled.lock();
        cache.held.clear();
        cache.released.clear();
    }
}

/// Components at least this large (bytes) give freed memory back to the OS after they are
/// compiled ([`give_back_memory`]): interpreter-based components (Python, JS) are 12-18 MB and
/// their compile frees hundreds of MB. A compiled image at least this large leaving the
/// compile cache wakes the trimmer ([`crate::memory::trim_soon`]): its metadata is ~15 MiB
/// for the Python router template.
pub const LARGE_COMPONENT: usize = 1 << 20;

/// A compile error as the deploy's answer gives it, with what to do about the one a toolchain
/// setting causes: scripts run without the component model's async support (it would slow
/// every synchronous call), which QuickJS components (`jco componentize --backend qjs`) use
/// unless built with `--backend-qjs-disable-async`.
fn load_error_message(error: &wasmtime::Error) -> String {
    let message = format!("{error:#}");
    if message.contains("component model async") {
        return format!(
            "{message} — wasmgate runs scripts without component-model async: rebuild the \
             component without it (QuickJS: `jco componentize --backend qjs \
             --backend-qjs-disable-async`; docs/scripting.md)"
        );
    }
    message
}

/// Where a compiled component came from (`wasmgate_script_compiles_total{from}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledFrom {
    Memory,
    Disk,
    Compiled,
}

impl CompiledFrom {
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory_cache",
            Self::Disk => "disk_cache",
            Self::Compiled => "compiler",
        }
    }
}

/// Writes the precompiled artifact next to its final name, then renames it into place.
fn write_cache_file(file: &Path, component: &Component) -> wasmtime::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}
