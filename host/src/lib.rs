//! # wasmgate
//!
//! A long-connection gateway for game and realtime backends. The host (this crate) owns
//! sockets, sessions, timers and upstream queue pools; login and routing decisions run in
//! WebAssembly components behind the WIT interface in `wit/world.wit`.
//!
//! Start one in-process (what the binary and the tests do):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let gateway = wasmgate::RunningGateway::start(wasmgate::Config::default()).await?;
//! println!("WebSocket on {:?}", gateway.ws_addr());
//! gateway.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! Map of the crate, top layer first (each imports only from layers below it;
//! docs/architecture.md draws it): `app` (the composition root: [`RunningGateway`]);
//! [`admin`] (the HTTP admin API); [`control`] (live changes: scripts, maps, from files, etcd
//! or the API); [`downstream`] (client listeners and the per-connection driver); [`script`]
//! (the wasmtime host); [`cluster`] (Redis identity and bus, etcd registration and
//! discovery) and [`upstream`] (queue pools to backends); [`delivery`] (every push, reply,
//! kick and broadcast, here or over the bus); [`rooms`] and [`session`] (handles, registry,
//! ids, close reasons, error codes); then [`protocol`] (client and backend wire formats),
//! [`maps`], [`memory`], [`config`], [`metrics`], [`telemetry`], [`user_centre`], [`http_client`].

pub mod admin;
mod app;
pub mod cluster;
pub mod config;
pub mod config_overrides;
pub mod control;
pub mod delivery;
pub mod downstream;
pub mod embedded;
pub mod http_client;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod otlp_metrics;
pub mod protocol;
pub mod rooms;
pub mod script;
pub mod session;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod user_centre;

pub use app::RunningGateway;
pub use config::Config;
