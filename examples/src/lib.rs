//! Examples for wasmgate: a backend service speaking backend protocol v1 ([`backend`]) and a
//! client over WebSocket or TCP ([`client`]). The binaries `echo-backend` and `client` wrap
//! them; the end-to-end tests use them as the real peers.

pub mod backend;
pub mod bench;
pub mod client;
