//! Per-instance store state: the WASI contexts (everything denied: no files, no sockets,
//! every outgoing HTTP request refused) and the `host` interface every script imports (log,
//! time, counters). The `cluster` interface is in [`super::services`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::Level;
use super::bindings::auth::wasmgate::gateway::{host, types};
use super::evidence::{HostFn, HostResult, Tape, TapeMode};
use super::services::{ClusterAccess, Services};
use super::stdio::ScriptOutput;
use crate::metrics::{Metrics, ScriptCounterLabel};

/// Longest log line a script may write, in bytes.
const MAX_LOG_BYTES: usize = 4096;
/// Longest counter name, in bytes.
const MAX_COUNTER_NAME: usize = 64;
/// Distinct counter names one script may create (bounds the metric's label cardinality).
const MAX_COUNTERS: usize = 64;

/// What every instance of one script version shares: name, version and counters.
pub struct ScriptMeta {
    pub name: Arc<str>,
    /// Version id ([`super::deploy::version_id`]).
    pub version: Arc<str>,
    pub metrics: Metrics,
    /// What the `cluster` interface reaches.
    pub services: Arc<Services>,
    counter_names: Mutex<HashSet<String>>,
}

impl ScriptMeta {
    pub fn new(name: &str, version: &str, metrics: Metrics, services: Arc<Services>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            version: version.into(),
            metrics,
            services,
            counter_names: Mutex::default(),
        })
    }
}

/// The `T` of every script `Store<T>`.
pub struct ScriptState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    deny_http: DenyHttp,
    table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    /// When the current call started (the epoch callback compares it with the deadline).
    pub(super) call_started: Instant,
    /// The long-call lane the current call holds, if it was judged long
    /// ([`super::pool::Limits::long_calls`]); released when the call ends.
    pub(super) lane: Arc<parking_lot::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// The thread's CPU clock at the current call's first epoch check, to judge whether it is
    /// long by the CPU it used since ([`super::pool`]); `None` before that check.
    pub(super) cpu_mark: Option<std::time::Duration>,
    /// The current call's place in its pool (one of [`super::pool::ScriptPool`]'s permits),
    /// given back early when the call turns long ([`Self::released`]); `None` between calls
    /// and for calls made under a hold.
    pub(super) place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Set while the current call runs outside its pool's count, having given its place back.
    pub(super) released: Option<super::pool::Released>,
    /// Set while the instance is built (instantiation and `init`): a build runs under the
    /// deadline but needs no lane, so it never queues behind runaway calls.
    pub(super) building: bool,
    /// The ES id of the packet the current `route` or `handle` call is about
    /// (`host.packet-es-id`); `None` between calls.
    pub(super) packet_es_id: Option<u32>,
    /// Set for the current call when evidence is taken of it (a recording, a shadow
    /// candidate, a replay): how host calls are performed and noted ([`TapeMode`]).
    pub(super) tape: Option<Box<Tape>>,
    pub(super) meta: Arc<ScriptMeta>,
}

impl ScriptState {
    pub fn new(meta: Arc<ScriptMeta>, limits: StoreLimits) -> Self {
        let limits = MemoryLimiter { limits, memory_bytes: 0 };
        // Deny by default: no preopened directories, no environment, no arguments, no network;
        // stdin is empty and stdout/stderr go to a counted sink (scripts log through
        // `host.log`; see `stdio`).
        // Filesystem, sockets and HTTP are linked (toolchains import them whether used or not)
        // but grant nothing: no preopens, TCP/UDP off and every address check denied, no name
        // lookups, outgoing HTTP refused ([`DenyHttp`]).
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(ScriptOutput::new(&meta, "stdout"))
            .stderr(ScriptOutput::new(&meta, "stderr"))
            .build();
        let http = WasiHttpCtx::new();
        Self {
            wasi,
            http,
            deny_http: DenyHttp,
            table: ResourceTable::new(),
            limits,
            call_started: Instant::now(),
            lane: Arc::default(),
            cpu_mark: None,
            place: None,
            released: None,
            building: false,
            packet_es_id: None,
            tape: None,
            meta,
        }
    }
}

/// The store's limits (`scripts.memory_bytes`), counting the linear memory the instance holds.
pub(super) struct MemoryLimiter {
    limits: StoreLimits,
    memory_bytes: usize,
}

impl MemoryLimiter {
    /// Bytes of linear memory of the store's instance (every memory together).
    pub(super) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }
}

impl ScriptState {
    /// The gateway's cluster view, once connected.
    pub(super) fn access(&self) -> Option<&ClusterAccess> {
        self.meta.services.cluster()
    }

    /// Runs host call `call` as the current tape says: without one, `perform(self, false)`;
    /// recording, the same, noted; in a shadow candidate, `perform(self, effectful)` (a dry
    /// run of an effect: checked, not done), noted; replaying, the recorded result, or a dry
    /// run when the recording has none, noted.
    pub(super) fn taped(
        &mut self,
        call: impl FnOnce() -> HostFn,
        perform: impl FnOnce(&mut Self, bool) -> HostResult,
    ) -> HostResult {
        let Some(mut tape) = self.tape.take() else { return perform(self, false) };
        let call = call();
        let result = match tape.mode {
            TapeMode::Record => perform(self, false),
            TapeMode::Shadow => perform(self, call.effectful() || matches!(call, HostFn::Log { .. })),
            TapeMode::Replay => match tape.recorded(&call) {
                Some(result) => result,
                None if matches!(call, HostFn::NowMs) => HostResult::Number(tape.fallback_now_ms()),
                None => perform(self, true),
            },
        };
        let result = tape.note(call, result);
        self.tape = Some(tape);
        result
    }
}

impl WasiView for ScriptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for ScriptState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.deny_http }
    }
}

/// `wasi:http/outgoing-handler` for scripts: every request fails with `HTTP-request-denied`
/// before anything is sent (scripts reach backends through the gateway, not on their own).
struct DenyHttp;

type HttpFuture<T> = Box<dyn std::future::Future<Output = T> + Send>;

impl WasiHttpHooks for DenyHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: HttpFuture<Result<(), wasmtime_wasi_http::Error>>,
    ) -> HttpFuture<
        wasmtime_wasi_http::Result<(
            http::Response<wasmtime_wasi_http::WasiBody>,
            HttpFuture<Result<(), wasmtime_wasi_http::Error>>,
        )>,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl types::Host for ScriptState {}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl host::Host for ScriptState {
    fn log(&mut self, level: Level, message: String) {
        if self.tape.is_some() {
            let message = truncate(&message, MAX_LOG_BYTES).to_string();
            let call = || HostFn::Log { level, message: message.clone() };
            self.taped(call, |me, dry| {
                if !dry {
                    me.log_line(level, &message);
                }
                HostResult::None
            });
            return;
        }
        self.log_line(level, &message);
    }

    fn now_ms(&mut self) -> u64 {
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        if self.tape.is_none() {
            return now();
        }
        match self.taped(|| HostFn::NowMs, |_, _| HostResult::Number(now())) {
            HostResult::Number(n) => n,
            _ => now(),
        }
    }

    fn packet_es_id(&mut self) -> Option<u32> {
        self.packet_es_id
    }

    fn counter_add(&mut self, name: String, value: u64) {
        if self.tape.is_some() {
            let call = || HostFn::CounterAdd { name: name.clone(), value };
            self.taped(call, |me, dry| {
                if !dry {
                    me.count(&name, value);
                }
                HostResult::None
            });
            return;
        }
        self.count(&name, value);
    }
}

impl ScriptState {
    fn log_line(&self, level: Level, message: &str) {
        let script = &*self.meta.name;
        let message = truncate(message, MAX_LOG_BYTES);
        match level {
            Level::Trace => tracing::trace!(script, "{message}"),
            Level::Debug => tracing::debug!(script, "{message}"),
            Level::Info => tracing::info!(script, "{message}"),
            Level::Warn => tracing::warn!(script, "{message}"),
            Level::Error => tracing::error!(script, "{message}"),
        }
    }

    fn count(&self, name: &str, value: u64) {
        let name = truncate(name, MAX_COUNTER_NAME).to_string();
        {
            let mut names = self.meta.counter_names.lock();
            if !names.contains(&name) {
                if names.len() >= MAX_COUNTERS {
                    if names.len() == MAX_COUNTERS {
                        tracing::warn!(
                            script = &*self.meta.name,
                            "script uses more than {MAX_COUNTERS} counter names; ignoring `{name}` and any further new name"
                        );
                        // A sentinel so the warning is logged once.
                        names.insert(String::new());
                    }
                    return;
                }
                names.insert(name.clone());
            }
        }
        let label = ScriptCounterLabel { script: self.meta.name.to_string(), name };
        self.meta.metrics.script_counters.get_or_create(&label).inc_by(value);
    }
}
