//! The error codes a client is told in error frames (docs/protocol.md, "Error frames"), each
//! with who is to blame and whether sending the same request again can succeed — so metrics
//! (`wasmgate_client_errors_total{code, blame}`) tell "client sent garbage" from "backend
//! down" from "script failed", and client libraries know what to retry. Close reasons, whose
//! names are also sent as error codes before a close, are [`super::CloseReason`].

/// Who caused an error a client is told about (pingora's `ErrorSource`, with scripts apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The request: malformed, out of order, refused by policy (including a script's
    /// rejection of it), or impossible in the session's state.
    Client,
    /// A script failed (trap, deadline, refused to load): not the client's doing.
    Script,
    /// A backend: none of its connections up, or its queue full.
    Upstream,
    /// The gateway's own configuration: a route to a dest that is not configured.
    Gateway,
}

impl Blame {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Script => "script",
            Self::Upstream => "upstream",
            Self::Gateway => "gateway",
        }
    }
}

/// An error frame's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A routed message before login.
    NotLoggedIn,
    /// A second login on a logged-in session.
    AlreadyLoggedIn,
    /// Malformed request, a script said so, or a server-to-client id sent by the client.
    BadRequest,
    /// No route for the message id.
    UnknownMessage,
    /// A script refused the message or the login.
    Forbidden,
    /// The route names a dest missing from `dest_map.json`.
    UnknownDest,
    /// None of the dest's connections is up, or the one carrying the message failed.
    UpstreamUnavailable,
    /// The dest's queue stayed full for `upstream.enqueue_timeout_ms`.
    UpstreamBusy,
    /// A Thrift dest did not answer the call within its `timeoutMs`.
    UpstreamTimeout,
    /// A Thrift dest answered with `result != 0`, or the call raised an exception there.
    UpstreamError,
    /// The router or a handler script trapped or overran its deadline on this message.
    ScriptError,
    /// Leave or room message for a room the session is not in.
    NotInRoom,
    /// The room is at its member cap.
    RoomFull,
    /// The session is in as many rooms as allowed.
    TooManyRooms,
    /// The rooms script trapped or overran its deadline.
    RoomsUnavailable,
    /// The auth script refused the token.
    InvalidToken,
    /// The auth script found the token expired.
    Expired,
    /// The auth script failed (login fails closed).
    AuthUnavailable,
    /// The user has a live session and the policy is `refuse-new`.
    DuplicateLogin,
    /// An abuse limit (messages or bytes per session, logins per IP or per user) refused
    /// the request; sending it again after a pause can succeed.
    RateLimited,
}

impl ErrorCode {
    /// Every code (their metric series are created at start).
    pub const ALL: [Self; 20] = [
        Self::NotLoggedIn,
        Self::AlreadyLoggedIn,
        Self::BadRequest,
        Self::UnknownMessage,
        Self::Forbidden,
        Self::UnknownDest,
        Self::UpstreamUnavailable,
        Self::UpstreamBusy,
        Self::UpstreamTimeout,
        Self::UpstreamError,
        Self::ScriptError,
        Self::NotInRoom,
        Self::RoomFull,
        Self::TooManyRooms,
        Self::RoomsUnavailable,
        Self::InvalidToken,
        Self::Expired,
        Self::AuthUnavailable,
        Self::DuplicateLogin,
        Self::RateLimited,
    ];

    /// The `code` of the error frame (docs/protocol.md).
    pub fn name(self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not_logged_in",
            Self::AlreadyLoggedIn => "already_logged_in",
            Self::BadRequest => "bad_request",
            Self::UnknownMessage => "unknown_message",
            Self::Forbidden => "forbidden",
            Self::UnknownDest => "unknown_dest",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamBusy => "upstream_busy",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamError => "upstream_error",
            Self::ScriptError => "script_error",
            Self::NotInRoom => "not_in_room",
            Self::RoomFull => "room_full",
            Self::TooManyRooms => "too_many_rooms",
            Self::RoomsUnavailable => "rooms_unavailable",
            Self::InvalidToken => "invalid_token",
            Self::Expired => "expired",
            Self::AuthUnavailable => "auth_unavailable",
            Self::DuplicateLogin => "duplicate_login",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Who is to blame.
    pub fn blame(self) -> Blame {
        match self {
            Self::ScriptError | Self::RoomsUnavailable | Self::AuthUnavailable => Blame::Script,
            Self::UpstreamUnavailable | Self::UpstreamBusy | Self::UpstreamTimeout | Self::UpstreamError => {
                Blame::Upstream
            }
            Self::UnknownDest => Blame::Gateway,
            Self::NotLoggedIn
            | Self::AlreadyLoggedIn
            | Self::BadRequest
            | Self::UnknownMessage
            | Self::Forbidden
            | Self::NotInRoom
            | Self::RoomFull
            | Self::TooManyRooms
            | Self::InvalidToken
            | Self::Expired
            | Self::DuplicateLogin
            | Self::RateLimited => Blame::Client,
        }
    }

    /// Whether the same request, sent again later unchanged, can succeed: a backend back up
    /// or less busy, a script call that trapped once (its instance is replaced), a room with
    /// a free place, a user whose other session ended. The rest need a different request
    /// (or a login, a new token, a configuration change) first.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::UpstreamUnavailable
                | Self::UpstreamBusy
                | Self::UpstreamTimeout
                | Self::ScriptError
                | Self::RoomsUnavailable
                | Self::AuthUnavailable
                | Self::RoomFull
                | Self::DuplicateLogin
                | Self::RateLimited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_its_documented_name_blame_and_retry() {
        let doc = include_str!("../../../docs/protocol.md");
        for code in ErrorCode::ALL {
            // The table row starts with the code (or lists it among the auth refusals).
            let row = doc
                .lines()
                .find(|l| {
                    l.starts_with('|')
                        && l.split('|').nth(1).is_some_and(|c| c.contains(&format!("`{}`", code.name())))
                })
                .unwrap_or_else(|| panic!("`{}` is not in docs/protocol.md's error table", code.name()));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(cells.contains(&code.blame().name()), "blame of `{}` in {row}", code.name());
            let retry = if code.retryable() { "yes" } else { "no" };
            assert!(cells.contains(&retry), "retry of `{}` in {row}", code.name());
        }
        let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "codes are distinct");
        assert_eq!(ErrorCode::UpstreamBusy.blame(), Blame::Upstream);
        assert_eq!(ErrorCode::ScriptError.blame(), Blame::Script);
        assert_eq!(ErrorCode::BadRequest.blame(), Blame::Client);
        assert_eq!(ErrorCode::UnknownDest.blame(), Blame::Gateway);
    }
}
