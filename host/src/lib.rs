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
//! Map of the crate: [`config`] (TOML), [`transport`] (WebSocket, TCP listeners),
//! [`session`] (ids, handles, registry, the per-connection driver), [`script`] (the wasmtime
//! host), [`upstream`] (queue pools to backends), [`protocol`] (client and backend wire
//! formats), [`maps`] and [`watch`] (`dest_map`/`message_map`), [`metrics`], [`admin`],
//! [`cluster`] (Redis identity and bus, etcd registration and discovery), [`config_centre`]
//! (config and maps from etcd).

pub mod admin;
pub mod cluster;
pub mod config;
pub mod config_centre;
pub mod config_overrides;
pub mod delivery;
pub mod embedded;
mod gateway;
pub mod maps;
pub mod metrics;
pub mod otlp_metrics;
pub mod protocol;
pub mod rooms;
pub mod script;
pub mod session;
pub mod telemetry;
pub mod transport;
pub mod upstream;
pub mod user_centre;
pub mod watch;

pub use config::Config;
pub use gateway::RunningGateway;
