//! The one place that owns the `wasmtime::component::bindgen!` output for `wit/world.wit`.
//! The `types` and `host` interfaces are generated once (under [`auth`]) and shared with
//! [`router`], [`rooms`] and [`handler`], so one `Host` implementation serves every world.

/// Bindings of the `auth-script` world.
pub mod auth {
    wasmtime::component::bindgen!({
        world: "auth-script",
        path: "../wit",
        // Exports are called with `call_async` (on a fiber) so WASI's blocking operations and
        // epoch yields work inside the tokio runtime; host imports stay synchronous.
        exports: { default: async },
        // Recordings and shadow reports serialise every event's inputs and answers.
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// Bindings of the `router-script` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router-script",
        path: "../wit",
        exports: { default: async },
        // Recordings and shadow reports serialise every event's inputs and answers.
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "wasmgate:gateway/types": super::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host": super::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster": super::auth::wasmgate::gateway::cluster,
        },
    });
}

/// Bindings of the `rooms-script` world.
pub mod rooms {
    wasmtime::component::bindgen!({
        world: "rooms-script",
        path: "../wit",
        exports: { default: async },
        // Recordings and shadow reports serialise every event's inputs and answers.
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "wasmgate:gateway/types": super::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host": super::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster": super::auth::wasmgate::gateway::cluster,
        },
    });
}

/// Bindings of the `handler-script` world.
pub mod handler {
    wasmtime::component::bindgen!({
        world: "handler-script",
        path: "../wit",
        exports: { default: async },
        // Recordings and shadow reports serialise every event's inputs and answers.
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "wasmgate:gateway/types": super::auth::wasmgate::gateway::types,
            "wasmgate:gateway/host": super::auth::wasmgate::gateway::host,
            "wasmgate:gateway/cluster": super::auth::wasmgate::gateway::cluster,
        },
    });
}

pub use auth::exports::wasmgate::gateway::auth::{DuplicateLogin, Identity, Rejection};
pub use auth::wasmgate::gateway::host::Level;
pub use auth::wasmgate::gateway::types::{Packet, Session, Transport};
pub use handler::exports::wasmgate::gateway::handler::{Answer, HandlerError, Outcome};
pub use rooms::exports::wasmgate::gateway::rooms::{
    Effect, JoinAccept, JoinRefusal, JoinRequest, LeaveCause, MessageError, RoomInfo,
};
pub use router::exports::wasmgate::gateway::router::{Decision, MessageRoute, Reply, RouteError};
