//! Wire formats: client packets ([`client`]) and backend protocol v1 ([`backend`]).

pub mod backend;
pub mod client;
