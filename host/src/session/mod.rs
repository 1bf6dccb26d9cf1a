//! Sessions: one per client connection, whatever its transport. What a session is and
//! what reaches it live here; its life (the read and write loops, login, room routes) is in
//! [`crate::downstream`].
//!
//! - [`id`]: session ids (node id + time + sequence).
//! - [`handle`]: the shareable handle with the bounded outbound queue ([`queue`]).
//! - [`registry`]: live sessions by id and by user.
//! - [`deadlines`]: the login and heartbeat deadlines of them all, on one timer wheel.
//! - [`close`]: the documented close reasons and codes; `error`: the error frame codes, with
//!   who is to blame and whether a retry helps.

mod close;
pub mod deadlines;
mod error;
mod handle;
pub mod id;
mod queue;
mod registry;

pub use close::CloseReason;
pub use deadlines::Deadlines;
pub use error::{Blame, ErrorCode};
pub use handle::{DuplicateRule, Outbound, OutboundReceiver, SessionHandle, TransportKind, error_body};
pub use id::{MAX_NODE_ID, SessionIdGen, node_of};
pub use registry::Registry;
