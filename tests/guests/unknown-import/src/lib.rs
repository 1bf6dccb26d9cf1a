//! Test guest: a router that also imports `acme:secrets/vault`, an interface no wasmgate host
//! provides. The deploy pipeline refuses it naming that import, or, with
//! `scripts.trap_unknown_imports`, links it as a trap: then `init` works and a route call that
//! reaches the vault (message 666) traps.

use wasmgate_guest::router::{Decision, Guest, MessageRoute, Packet, RouteError, Session};

wit_bindgen::generate!({
    inline: "
        package acme:secrets;
        interface vault { get: func(key: string) -> string; }
        world extra { import vault; }
    ",
    world: "extra",
});

struct UnknownImport;

impl Guest for UnknownImport {
    fn init(_config: String, _map: Vec<MessageRoute>) -> Result<(), String> {
        Ok(())
    }

    fn route(_session: Session, packet: Packet) -> Decision {
        if packet.msg_id == 666 {
            let _ = acme::secrets::vault::get("token");
        }
        Decision::Reject(RouteError::UnknownMessage)
    }
}

wasmgate_guest::router::export!(UnknownImport);
