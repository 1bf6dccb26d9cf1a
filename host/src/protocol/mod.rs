//! Wire formats: client packets ([`client`]), seed 001's ES header ([`es`]), go-push's JSON
//! ([`gopush`]), backend protocol v1 ([`backend`]) and Thrift upstreams ([`thrift`]).

pub mod backend;
pub mod client;
pub mod es;
pub mod gopush;
pub mod thrift;
