//! Test guest: a router that opens a TCP connection in `init`. Rust's `std::net` on
//! `wasm32-wasip2` imports `wasi:sockets`, which the gateway links but denies: the connect
//! fails, so `init` refuses and so does the deploy.

use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, RouteError, Session};

struct Forbidden;

impl Guest for Forbidden {
    fn init(_config: String, _map: Vec<MessageRoute>) -> Result<(), String> {
        std::net::TcpStream::connect("127.0.0.1:1").map(drop).map_err(|e| e.to_string())
    }

    fn route(_session: Session, _packet: Packet) -> Decision {
        Decision::Reject(RouteError::UnknownMessage)
    }
}

wasmgate_guest::router::export!(Forbidden);
