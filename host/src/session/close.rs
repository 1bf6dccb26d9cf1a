//! Why a session ends: the documented close codes (docs/protocol.md).
//!
//! WebSocket clients get the code in the close frame (RFC 6455 section 7.4: 1000-1015 are the
//! protocol's, 4000-4999 are for applications). Before a gateway-initiated close the client
//! also gets an error frame whose `code` is [`CloseReason::name`], so TCP clients, which have
//! no close frame, learn the reason too.

/// Why the gateway closed (or saw the close of) a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed, or asked to close with the close route.
    Normal,
    /// The gateway is shutting down.
    GoingAway,
    /// The node lost its cluster node id (its claim's deadline passed, or another process
    /// holds it) and restarts under a new one: reconnect (to this node or another).
    NodeRestarting,
    /// A binary frame was not a packet (shorter than the header).
    MalformedFrame,
    /// A text frame was not a JSON packet.
    MalformedJson,
    /// A text frame (or a close frame's reason) was not UTF-8 (RFC 6455 section 8.1).
    InvalidUtf8,
    /// A frame exceeded `max_msg_len`.
    MessageTooBig,
    /// The router script decided to close the session.
    ScriptClose,
    /// No successful login within `login_ms`.
    LoginTimeout,
    /// No message within `heartbeat_ms`.
    HeartbeatTimeout,
    /// The auth script refused the token (or could not run: auth fails closed).
    AuthRejected,
    /// A backend kicked the session.
    Kicked,
    /// The same user logged in again (here or on another node) and the auth script's
    /// duplicate-login policy is `kick-older`.
    Replaced,
    /// The session's outbound queue was full or a write timed out.
    SlowConsumer,
    /// A transport error (reset, protocol violation found by the WebSocket layer).
    TransportError,
    /// The client kept sending at over twice `rate_limits.msg_per_s` (or `bytes_per_s`) for
    /// longer than a burst.
    RateLimited,
}

impl CloseReason {
    /// Every close reason (their metric series are created at start).
    pub const ALL: [Self; 16] = [
        Self::Normal,
        Self::GoingAway,
        Self::NodeRestarting,
        Self::MalformedFrame,
        Self::MalformedJson,
        Self::InvalidUtf8,
        Self::MessageTooBig,
        Self::ScriptClose,
        Self::LoginTimeout,
        Self::HeartbeatTimeout,
        Self::AuthRejected,
        Self::Kicked,
        Self::Replaced,
        Self::SlowConsumer,
        Self::TransportError,
        Self::RateLimited,
    ];

    /// WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::NodeRestarting => 1012,
            Self::MalformedFrame | Self::TransportError => 1002,
            Self::MalformedJson | Self::InvalidUtf8 => 1007,
            Self::MessageTooBig => 1009,
            Self::ScriptClose => 4000,
            Self::LoginTimeout => 4001,
            Self::HeartbeatTimeout => 4002,
            Self::AuthRejected => 4003,
            Self::Kicked => 4004,
            Self::SlowConsumer => 4005,
            Self::Replaced => 4006,
            Self::RateLimited => 4007,
        }
    }

    /// Stable snake_case name: the error frame's `code`, the close frame's reason and the
    /// `reason` label of `wasmgate_sessions_closed_total`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::GoingAway => "going_away",
            Self::NodeRestarting => "node_restarting",
            Self::MalformedFrame => "malformed_frame",
            Self::MalformedJson => "malformed_json",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MessageTooBig => "message_too_big",
            Self::ScriptClose => "script_close",
            Self::LoginTimeout => "login_timeout",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::AuthRejected => "auth_rejected",
            Self::Kicked => "kicked",
            Self::Replaced => "replaced",
            Self::SlowConsumer => "slow_consumer",
            Self::TransportError => "transport_error",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Whether the client should be sent an error frame naming the reason before the close.
    pub fn announce(self) -> bool {
        !matches!(self, Self::Normal | Self::TransportError)
    }
}
