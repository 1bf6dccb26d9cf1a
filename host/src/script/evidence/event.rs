//! One script event as evidence sees it: the call's inputs ([`Call`], what the WIT gives the
//! script), what it answered ([`Answer`]), the host calls it made ([`HostCall`]), and how two
//! answers to the same call differ ([`Difference`]). The serde forms of these types are the
//! recording file format (docs/evidence.md).

use serde::{Deserialize, Serialize};

use crate::script::ScriptError;
use crate::script::bindings::auth::wasmgate::gateway::cluster::{NodeInfo, Pick, SendError};
use crate::script::bindings::{
    Decision, Effect, Identity, JoinAccept, JoinRefusal, JoinRequest, LeaveCause, Level, MessageError,
    Outcome, Packet, Rejection, RoomInfo, Session,
};

/// The inputs of one event call, by world function. `es_id` is what `host.packet-es-id`
/// returns during the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Authenticate { session: Session, token: String },
    AccountLost { session: Session, reason: String },
    Route { session: Session, packet: Packet, es_id: Option<u32> },
    OnJoin { session: Session, request: JoinRequest },
    OnLeave { session: Session, room: RoomInfo, cause: LeaveCause },
    OnMessage { session: Session, room: RoomInfo, packet: Packet },
    Handle { session: Session, packet: Packet, es_id: Option<u32> },
}

/// Bytes an event costs besides its variable parts (a rough fixed size).
const EVENT_BYTES: usize = 256;

impl Call {
    /// Roughly the bytes this call holds: its bodies and strings, plus a fixed part.
    pub fn weight(&self) -> usize {
        let session = |s: &Session| s.peer_addr.len() + s.user_id.as_ref().map_or(0, String::len);
        EVENT_BYTES
            + match self {
                Self::Authenticate { session: s, token } => session(s) + token.len(),
                Self::AccountLost { session: s, reason } => session(s) + reason.len(),
                Self::Route { session: s, packet, .. } | Self::Handle { session: s, packet, .. } => {
                    session(s) + packet.body.len()
                }
                Self::OnJoin { session: s, request } => {
                    session(s) + request.room.name.len() + request.body.len()
                }
                Self::OnLeave { session: s, room, .. } => session(s) + room.name.len(),
                Self::OnMessage { session: s, room, packet } => {
                    session(s) + room.name.len() + packet.body.len()
                }
            }
    }

    /// The world function's WIT name.
    pub fn function(&self) -> &'static str {
        match self {
            Self::Authenticate { .. } => "authenticate",
            Self::AccountLost { .. } => "account-lost",
            Self::Route { .. } => "route",
            Self::OnJoin { .. } => "on-join",
            Self::OnLeave { .. } => "on-leave",
            Self::OnMessage { .. } => "on-message",
            Self::Handle { .. } => "handle",
        }
    }
}

/// What a script answered to a [`Call`]: the WIT return value, or the call's failure (trap,
/// epoch deadline, no instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Authenticate(Result<Identity, Rejection>),
    AccountLost,
    Route(Decision),
    OnJoin(Result<JoinAccept, JoinRefusal>),
    OnLeave(Vec<Effect>),
    OnMessage(Result<Vec<Effect>, MessageError>),
    Handle(Outcome),
    /// The call failed; `deadline` when it overran the epoch deadline.
    Failed {
        deadline: bool,
        message: String,
    },
}

fn effects_weight(effects: &[Effect]) -> usize {
    effects
        .iter()
        .map(|e| match e {
            Effect::Broadcast(b) => b.room.len() + b.body.len(),
            Effect::Send(d) => d.body.len(),
            Effect::Reply(a) => a.body.len(),
            Effect::Kick(k) => k.reason.len(),
        })
        .sum()
}

impl Answer {
    /// Roughly the bytes this answer holds besides its fixed part.
    pub fn weight(&self) -> usize {
        match self {
            Self::Route(Decision::Reply(r)) => r.body.len(),
            Self::Handle(Outcome::Reply(a)) => a.body.len(),
            Self::OnJoin(Ok(accept)) => effects_weight(&accept.effects),
            Self::OnLeave(effects) | Self::OnMessage(Ok(effects)) => effects_weight(effects),
            Self::Failed { message, .. } => message.len(),
            _ => 0,
        }
    }

    /// The answer of a call that returned `result`, `ok` wrapping its value.
    pub fn of<T>(result: &Result<T, ScriptError>, ok: impl FnOnce(&T) -> Answer) -> Answer {
        match result {
            Ok(value) => ok(value),
            Err(ScriptError::Trap { deadline, message, .. }) => {
                Answer::Failed { deadline: *deadline, message: message.clone() }
            }
            Err(e) => Answer::Failed { deadline: false, message: e.to_string() },
        }
    }

    /// A short name of the decision, without its contents: `forward`, `reply`, `ok`,
    /// `invalid_token`, `failed`... Two answers with different names differ in kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authenticate(Ok(_)) => "ok",
            Self::Authenticate(Err(Rejection::InvalidToken(_))) => "invalid_token",
            Self::Authenticate(Err(Rejection::Expired)) => "expired",
            Self::Authenticate(Err(Rejection::Forbidden(_))) => "forbidden",
            Self::AccountLost => "done",
            Self::Route(d) => match d {
                Decision::Forward(_) => "forward",
                Decision::Reply(_) => "reply",
                Decision::Drop => "drop",
                Decision::Close(_) => "close",
                Decision::Reject(_) => "reject",
            },
            Self::OnJoin(Ok(_)) => "accept",
            Self::OnJoin(Err(_)) => "refuse",
            Self::OnLeave(_) => "effects",
            Self::OnMessage(Ok(_)) => "effects",
            Self::OnMessage(Err(_)) => "refuse",
            Self::Handle(o) => match o {
                Outcome::Forward(_) => "forward",
                Outcome::Reply(_) => "reply",
                Outcome::Drop => "drop",
                Outcome::Close(_) => "close",
                Outcome::Reject(_) => "reject",
            },
            Self::Failed { deadline: true, .. } => "deadline",
            Self::Failed { deadline: false, .. } => "trap",
        }
    }

    fn forward_dest(&self) -> Option<u32> {
        match self {
            Self::Route(Decision::Forward(d)) | Self::Handle(Outcome::Forward(d)) => Some(*d),
            _ => None,
        }
    }

    fn failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// How a candidate's answer to an event differs from the reference one (the live version's,
/// or the recorded one). The serde names are the `kind` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// Both forward, to different dests.
    Dest,
    /// Different kinds of decision (reject vs forward, refuse vs accept...).
    Kind,
    /// The same kind with different contents (reply body, rejection reason, effects,
    /// identity).
    Content,
    /// The same answer, with different effects through host calls (cluster sends, counters).
    Effects,
    /// Only the candidate trapped or overran its deadline.
    CandidateFailed,
    /// Only the reference failed.
    ReferenceFailed,
}

impl Difference {
    pub const ALL: [Self; 6] =
        [Self::Dest, Self::Kind, Self::Content, Self::Effects, Self::CandidateFailed, Self::ReferenceFailed];

    pub fn name(self) -> &'static str {
        match self {
            Self::Dest => "dest",
            Self::Kind => "kind",
            Self::Content => "content",
            Self::Effects => "effects",
            Self::CandidateFailed => "candidate_failed",
            Self::ReferenceFailed => "reference_failed",
        }
    }

    /// Compares `candidate` with `reference`; `effects` are the two sides' effectful host
    /// calls when both are known. Two failures are alike whatever their messages.
    pub fn of(
        reference: &Answer,
        candidate: &Answer,
        effects: Option<(&[HostCall], &[HostCall])>,
    ) -> Option<Self> {
        match (reference.failed(), candidate.failed()) {
            (true, true) => return None,
            (false, true) => return Some(Self::CandidateFailed),
            (true, false) => return Some(Self::ReferenceFailed),
            (false, false) => {}
        }
        if reference != candidate {
            return Some(match (reference.forward_dest(), candidate.forward_dest()) {
                (Some(_), Some(_)) => Self::Dest,
                _ if reference.kind() != candidate.kind() => Self::Kind,
                _ => Self::Content,
            });
        }
        let (a, b) = effects?;
        let effectful =
            |calls: &[HostCall]| calls.iter().filter(|c| c.call.effectful()).cloned().collect::<Vec<_>>();
        (effectful(a) != effectful(b)).then_some(Self::Effects)
    }
}

/// One host call a script made during an event, with what it returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCall {
    #[serde(flatten)]
    pub call: HostFn,
    /// What the call returned (absent for calls that return nothing).
    #[serde(default, skip_serializing_if = "HostResult::is_none")]
    pub result: HostResult,
}

/// A host function and its arguments (`fn` names the WIT function).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "kebab-case")]
pub enum HostFn {
    NowMs,
    Log {
        level: Level,
        message: String,
    },
    CounterAdd {
        name: String,
        value: u64,
    },
    SelfId,
    Nodes {
        node_type: Option<String>,
    },
    Node {
        id: u32,
    },
    PickNode {
        node_type: String,
        how: Pick,
    },
    SendToNode {
        node: u32,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
    },
    SendToType {
        node_type: String,
        how: Pick,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
    },
    BroadcastToType {
        node_type: String,
        dest_id: u32,
        session_id: u64,
        msg_id: u32,
        body: Vec<u8>,
        exclude_self: bool,
    },
}

impl HostFn {
    /// Whether the call changes something outside the script (a send or a counter); logs are
    /// left out: they change with wording, not behaviour.
    pub fn effectful(&self) -> bool {
        matches!(
            self,
            Self::CounterAdd { .. }
                | Self::SendToNode { .. }
                | Self::SendToType { .. }
                | Self::BroadcastToType { .. }
        )
    }
}

/// What a host call returned.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostResult {
    #[default]
    None,
    Number(u64),
    Nodes(Vec<NodeInfo>),
    Node(Option<NodeInfo>),
    Sent(Result<(), SendError>),
    SentTo(Result<u32, SendError>),
}

impl HostResult {
    fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }
}

/// How the host calls of one event are treated (set on a store for the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeMode {
    /// Performed as usual, each one noted with its result (recording the live version).
    Record,
    /// Lookups performed; effects (logs, counters, sends) noted and not performed (a shadow
    /// candidate).
    Shadow,
    /// Answered from a recording; effects noted and not performed (an offline replay).
    Replay,
}

/// The host calls of one event call: what a store notes while [`TapeMode`] applies.
#[derive(Debug, Clone)]
pub struct Tape {
    pub mode: TapeMode,
    /// The calls made, in order.
    pub calls: Vec<HostCall>,
    /// Replay: the recorded calls not answered yet.
    recorded: Vec<Option<HostCall>>,
    /// Replay: what `now-ms` returns once the recorded values are used up (the last one, or
    /// the event's time).
    now_ms: u64,
}

/// Most host calls noted per event; further ones are performed (or answered) but not noted.
const MAX_CALLS: usize = 256;

impl Tape {
    pub fn new(mode: TapeMode) -> Self {
        Self { mode, calls: Vec::new(), recorded: Vec::new(), now_ms: 0 }
    }

    /// A replay of an event recorded at `at_ms` that made `recorded` host calls.
    pub fn replay(recorded: Vec<HostCall>, at_ms: u64) -> Self {
        Self {
            mode: TapeMode::Replay,
            calls: Vec::new(),
            recorded: recorded.into_iter().map(Some).collect(),
            now_ms: at_ms,
        }
    }

    /// Notes `call` returning `result`; returns `result`.
    pub fn note(&mut self, call: HostFn, result: HostResult) -> HostResult {
        if self.calls.len() < MAX_CALLS {
            self.calls.push(HostCall { call, result: result.clone() });
        }
        result
    }

    /// Replay: the result the recording has for the first not yet answered call equal to
    /// `call`, taken; `None` when it has none.
    pub fn recorded(&mut self, call: &HostFn) -> Option<HostResult> {
        let slot = self.recorded.iter_mut().find(|c| c.as_ref().is_some_and(|c| c.call == *call))?;
        let result = slot.take()?.result;
        if let (HostFn::NowMs, HostResult::Number(now)) = (call, &result) {
            self.now_ms = *now;
        }
        Some(result)
    }

    /// Replay: `now-ms` when the recording has no value left.
    pub fn fallback_now_ms(&self) -> u64 {
        self.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::bindings::{Reply, RouteError};

    #[test]
    fn differences_are_classified() {
        let fwd = |d| Answer::Route(Decision::Forward(d));
        let reply = |b: &[u8]| Answer::Route(Decision::Reply(Reply { msg_id: 1, body: b.to_vec() }));
        let failed = Answer::Failed { deadline: false, message: "x".into() };
        assert_eq!(Difference::of(&fwd(1), &fwd(1), None), None);
        assert_eq!(Difference::of(&fwd(1), &fwd(2), None), Some(Difference::Dest));
        let reject = Answer::Route(Decision::Reject(RouteError::UnknownMessage));
        assert_eq!(Difference::of(&fwd(1), &reject, None), Some(Difference::Kind));
        assert_eq!(Difference::of(&reply(b"a"), &reply(b"b"), None), Some(Difference::Content));
        assert_eq!(Difference::of(&fwd(1), &failed, None), Some(Difference::CandidateFailed));
        assert_eq!(Difference::of(&failed, &fwd(1), None), Some(Difference::ReferenceFailed));
        assert_eq!(
            Difference::of(&failed, &Answer::Failed { deadline: true, message: "y".into() }, None),
            None
        );
        let send = HostCall {
            call: HostFn::SendToNode { node: 1, dest_id: 2, session_id: 3, msg_id: 4, body: vec![5] },
            result: HostResult::Sent(Ok(())),
        };
        let log = HostCall {
            call: HostFn::Log { level: Level::Info, message: "hi".into() },
            result: HostResult::None,
        };
        let (a, b) = (vec![send.clone(), log], vec![send]);
        assert_eq!(Difference::of(&fwd(1), &fwd(1), Some((&a, &b))), None, "logs are not effects");
        assert_eq!(Difference::of(&fwd(1), &fwd(1), Some((&a, &[]))), Some(Difference::Effects));
    }

    #[test]
    fn replay_answers_calls_in_recorded_order() {
        let now = |n| HostCall { call: HostFn::NowMs, result: HostResult::Number(n) };
        let mut tape = Tape::replay(vec![now(10), now(20)], 5);
        assert_eq!(tape.fallback_now_ms(), 5);
        assert_eq!(tape.recorded(&HostFn::NowMs), Some(HostResult::Number(10)));
        assert_eq!(tape.recorded(&HostFn::NowMs), Some(HostResult::Number(20)));
        assert_eq!(tape.recorded(&HostFn::NowMs), None);
        assert_eq!(tape.fallback_now_ms(), 20);
        assert_eq!(tape.recorded(&HostFn::SelfId), None);
    }

    #[test]
    fn host_calls_serialise_flat() {
        let call = HostCall { call: HostFn::NowMs, result: HostResult::Number(7) };
        let text = serde_json::to_string(&call).unwrap_or_default();
        assert_eq!(text, r#"{"fn":"now-ms","result":{"number":7}}"#);
        assert_eq!(serde_json::from_str::<HostCall>(&text).ok(), Some(call));
    }
}
