//! Wire formats: client packets ([`client`]), go-push's JSON ([`gopush`]) and backend
//! protocol v1 ([`backend`]).

pub mod backend;
pub mod client;
pub mod gopush;
pub mod thrift;
