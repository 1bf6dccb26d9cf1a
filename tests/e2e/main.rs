//! End-to-end tests: real gateway, real example backends, real WS/TCP clients, real compiled
//! components. One test binary (linking wasmtime once), one module per area.

mod cluster;
mod config_centre;
mod deploy;
mod duplicate;
mod evidence;
mod frames;
mod handlers;
mod js_client;
mod languages;
mod login;
mod push;
mod reload;
mod rooms;
mod routing;
mod sandbox;
mod security;
mod service;
mod thrift;
mod tls;
mod user_centre;
mod web;
