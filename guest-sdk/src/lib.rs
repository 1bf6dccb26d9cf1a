//! # wasmgate-guest: write wasmgate scripts in Rust
//!
//! A wasmgate script is a WebAssembly component implementing one world of the interface in
//! `wit/world.wit` (package `wasmgate:gateway@0.1.0`). This crate holds the generated bindings
//! for each world plus a few helpers, so a script is a `cdylib` crate built for
//! `wasm32-wasip2`:
//!
//! ```ignore
//! use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, Session, RouteError};
//!
//! struct MyRouter;
//!
//! impl Guest for MyRouter {
//!     fn init(_config: String, _map: Vec<MessageRoute>) -> Result<(), String> { Ok(()) }
//!     fn route(_session: Session, packet: Packet) -> Decision {
//!         if packet.msg_id == 100 { Decision::Forward(101) }
//!         else { Decision::Reject(RouteError::UnknownMessage) }
//!     }
//! }
//!
//! wasmgate_guest::router::export!(MyRouter);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the gateway loads. `scripts/auth` and
//! `scripts/router` and `scripts/rooms` in the repository are complete examples.
//!
//! Host capabilities (logging, time, counters) are in [`host`]; everything else a script might
//! reach through WASI (files, sockets, environment variables) is denied by the gateway.

/// Bindings of the `auth-script` world: implement [`auth::Guest`] and call
/// [`auth::export!`].
pub mod auth {
    wit_bindgen::generate!({
        world: "auth-script",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "wasmgate_guest::auth",
    });

    pub use self::exports::wasmgate::gateway::auth::{DuplicateLogin, Guest, Identity, Rejection};
    pub use self::wasmgate::gateway::types::{Session, Transport};
}

/// Bindings of the `router-script` world: implement [`router::Guest`] and call
/// [`router::export!`].
pub mod router {
    wit_bindgen::generate!({
        world: "router-script",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "wasmgate_guest::router",
        with: {
            "wasmgate:gateway/types@0.1.0": crate::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host@0.1.0": crate::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster@0.1.0": crate::auth::wasmgate::gateway::cluster,
        },
    });

    pub use self::exports::wasmgate::gateway::router::{Decision, Guest, MessageRoute, Reply, RouteError};
    pub use crate::auth::wasmgate::gateway::types::{Packet, Session, Transport};
}

/// Bindings of the `rooms-script` world: implement [`rooms::Guest`] and call
/// [`rooms::export!`].
pub mod rooms {
    wit_bindgen::generate!({
        world: "rooms-script",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "wasmgate_guest::rooms",
        with: {
            "wasmgate:gateway/types@0.1.0": crate::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host@0.1.0": crate::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster@0.1.0": crate::auth::wasmgate::gateway::cluster,
        },
    });

    pub use self::exports::wasmgate::gateway::rooms::{
        Answer, Broadcast, Direct, Effect, Guest, JoinAccept, JoinRefusal, JoinRequest, Kick, LeaveCause,
        MessageError, RoomInfo,
    };
    pub use crate::auth::wasmgate::gateway::types::{Packet, Session, Transport};
}

/// Bindings of the `handler-script` world (user-named scripts that `message_map.json` sends
/// message ids to): implement [`handler::Guest`] and call [`handler::export!`].
pub mod handler {
    wit_bindgen::generate!({
        world: "handler-script",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "wasmgate_guest::handler",
        with: {
            "wasmgate:gateway/types@0.1.0": crate::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host@0.1.0": crate::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster@0.1.0": crate::auth::wasmgate::gateway::cluster,
        },
    });

    pub use self::exports::wasmgate::gateway::handler::{Answer, Guest, HandlerError, Outcome};
    pub use crate::auth::wasmgate::gateway::types::{Packet, Session, Transport};
}

/// The cluster as this node sees it (seed 004's `INode` API): discovery and sends to nodes'
/// backends. Every function returns at once.
pub mod cluster {
    pub use crate::auth::wasmgate::gateway::cluster::{
        NodeInfo, Pick, SendError, broadcast_to_type, node, nodes, pick_node, self_id, send_to_node,
        send_to_type,
    };
}

/// Host capabilities every script may call.
pub mod host {
    pub use crate::auth::wasmgate::gateway::host::{Level, counter_add, log, now_ms, packet_es_id};

    /// Logs `message` at info level in the gateway's log, tagged with the script name.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
