//! The default scripts, compiled by the build script from `scripts/` and embedded in the
//! binary: used when the config names no component file.

/// `scripts/auth`: HS256 JWT login.
pub const DEFAULT_AUTH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/auth.wasm"));
/// `scripts/router`: `message_map` routing.
pub const DEFAULT_ROUTER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/router.wasm"));
/// `scripts/rooms`: room limits and chat broadcast.
pub const DEFAULT_ROOMS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rooms.wasm"));
