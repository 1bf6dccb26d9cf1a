//! A Thrift dest's connection (seed 001's RPC proxy): each queued frame becomes a call
//! `ProtoReply <method>(1: ProtoRequest request)` with its own seqid, several in flight at
//! once (at most `maxInFlight`), and each reply goes back to the session that sent the
//! message, as a packet with msg id `ProtoReply.type` and the message's seq.
//!
//! Nothing accepted is dropped silently: a call that gets no reply within `timeoutMs` is
//! answered `upstream_timeout`, every call still waiting when the connection fails is
//! answered `upstream_unavailable`, a reply with `result != 0` or an exception is answered
//! `upstream_error`. A reply to no waiting call (late, or a seqid never sent) is counted as a
//! bad frame and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{ConnTask, DRAIN_GRACE, Ended};
use crate::delivery::{Reached, Scope};
use crate::maps::{ShardingId, ThriftSettings};
use crate::metrics::DestLabel;
use crate::protocol::backend::BackendFrame;
use crate::protocol::thrift::{Incoming, ProtoRequest, ThriftCodec};
use crate::session::ErrorCode;
use crate::upstream::{Shared, dispatch};

/// A call waiting for its reply.
struct Call {
    session_id: u64,
    seq: u32,
}

/// The calls of one connection waiting for replies, by seqid, and their deadlines in the
/// order they were sent (every call has the same timeout, so the front expires first).
#[derive(Default)]
struct Pending {
    calls: HashMap<i32, Call>,
    deadlines: VecDeque<(i32, Instant)>,
}

impl Pending {
    fn take(&mut self, seqid: i32) -> Option<Call> {
        let call = self.calls.remove(&seqid);
        // Answered calls leave the front of the deadline queue as they come (replies mostly
        // arrive in order), so it holds little more than what is in flight.
        while self.deadlines.front().is_some_and(|(id, _)| !self.calls.contains_key(id)) {
            self.deadlines.pop_front();
        }
        call
    }
}

/// What the reader shares with the writer.
struct Calls {
    pending: Mutex<Pending>,
    /// One permit per call that may still be sent (`maxInFlight` in all).
    room: Semaphore,
}

impl ConnTask {
    pub(super) async fn serve_thrift<R, W>(
        &mut self,
        read: R,
        write: W,
        settings: Arc<ThriftSettings>,
    ) -> Ended
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
    {
        let codec = || ThriftCodec::new(settings.protocol, settings.transport, &settings.method);
        let mut writer = FramedWrite::new(write, codec());
        let calls =
            Arc::new(Calls { pending: Mutex::default(), room: Semaphore::new(settings.max_in_flight) });
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut reader = tokio::spawn(read_replies(
            FramedRead::new(read, codec()),
            self.dest,
            self.shared.clone(),
            calls.clone(),
            timeout,
        ));
        let mut seqid = 0i32;
        let mut batch = Vec::new();
        let ended = loop {
            tokio::select! {
                biased;
                _ = &mut reader => break Ended::Broken,
                _ = self.stop.cancelled() => {
                    // Drain: send what is queued, half-close, wait for the replies a while.
                    while let Ok(frame) = self.rx.try_recv() {
                        batch.push(frame);
                    }
                    if self.write_calls(&mut writer, &mut batch, &calls, &settings, &mut seqid).await {
                        let _ = writer.get_mut().shutdown().await;
                        let _ = tokio::time::timeout(DRAIN_GRACE, &mut reader).await;
                    }
                    break Ended::Stopped;
                }
                frame = self.rx.recv() => {
                    let Some(frame) = frame else { break Ended::Stopped };
                    // Wait for room in flight; the connection ending meanwhile fails the frame.
                    let room = tokio::select! {
                        biased;
                        _ = &mut reader => None,
                        _ = self.stop.cancelled() => None,
                        permit = calls.room.acquire() => permit.ok(),
                    };
                    let Some(room) = room else {
                        dispatch::undeliverable(&self.shared, self.dest, frame, "connection lost");
                        break if self.stop.is_cancelled() { Ended::Stopped } else { Ended::Broken };
                    };
                    room.forget();
                    batch.push(frame);
                    while batch.len() < 256 {
                        let Ok(room) = calls.room.try_acquire() else { break };
                        let Ok(frame) = self.rx.try_recv() else { break };
                        room.forget();
                        batch.push(frame);
                    }
                    if !self.write_calls(&mut writer, &mut batch, &calls, &settings, &mut seqid).await {
                        break Ended::Broken;
                    }
                }
            }
        };
        reader.abort();
        // Whatever is still waiting will get no reply on this connection.
        let waiting: Vec<Call> = calls.pending.lock().calls.drain().map(|(_, call)| call).collect();
        for call in waiting {
            answer_error(
                &self.shared,
                self.dest,
                &call,
                ErrorCode::UpstreamUnavailable,
                "connection lost before the reply",
                None,
            );
        }
        ended
    }

    /// Registers and writes `batch` as calls, then flushes. Returns whether the write
    /// succeeded; the calls of a failed write are answered when the connection ends.
    async fn write_calls<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut FramedWrite<W, ThriftCodec>,
        batch: &mut Vec<BackendFrame>,
        calls: &Calls,
        settings: &ThriftSettings,
        seqid: &mut i32,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_millis(settings.timeout_ms);
        let mut requests = Vec::with_capacity(batch.len());
        {
            // Registered before they are written: a reply cannot arrive ahead of its call.
            let mut pending = calls.pending.lock();
            for frame in batch.drain(..) {
                let Some((call, request)) = to_call(frame, settings.sharding_id) else {
                    calls.room.add_permits(1);
                    continue;
                };
                *seqid = seqid.wrapping_add(1);
                pending.calls.insert(*seqid, call);
                pending.deadlines.push_back((*seqid, deadline));
                requests.push((*seqid, request));
            }
        }
        let sent = requests.len() as u64;
        for request in requests {
            if let Err(e) = writer.feed(request).await {
                tracing::warn!(dest = self.dest, conn = self.index, "thrift call not written: {e}");
                return false;
            }
        }
        if let Err(e) = writer.flush().await {
            tracing::warn!(dest = self.dest, conn = self.index, "thrift calls not written: {e}");
            return false;
        }
        self.shared.frames_sent.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

/// The call a queued frame becomes: a client message (`Forward`) or a message relayed by a
/// backend or a script (`Relayed`, answered to its session if it names one).
fn to_call(frame: BackendFrame, sharding: ShardingId) -> Option<(Call, ProtoRequest)> {
    let (session_id, msg_id, seq, body, user_id) = match frame {
        BackendFrame::Forward { session_id, msg_id, seq, user_id, body, .. } => {
            (session_id, msg_id, seq, body, Some(user_id))
        }
        BackendFrame::Relayed { session_id, msg_id, seq, body, .. } => (session_id, msg_id, seq, body, None),
        _ => return None,
    };
    let sharding_id = match (sharding, user_id) {
        (ShardingId::User, Some(user)) => user.parse::<i64>().unwrap_or(session_id as i64),
        _ => session_id as i64,
    };
    // Message ids are u32 on the client side and i32 in ProtoRequest: the same 32 bits.
    let request = ProtoRequest { msg_type: msg_id as i32, content: body, sharding_id };
    Some((Call { session_id, seq }, request))
}

/// Reads replies and answers their sessions; expires calls past their deadline. Returns when
/// the backend closes the connection or sends what cannot be read.
async fn read_replies<R: AsyncRead + Unpin>(
    mut reader: FramedRead<R, ThriftCodec>,
    dest: u32,
    shared: Arc<Shared>,
    calls: Arc<Calls>,
    timeout: Duration,
) {
    let frames_in = shared.metrics.upstream_frames_in.get_or_create(&DestLabel { dest }).clone();
    loop {
        // Idle, the reader wakes once per timeout; a call sent meanwhile expires no earlier.
        let next_deadline = calls.pending.lock().deadlines.front().map(|&(_, at)| at);
        let wake = next_deadline.unwrap_or_else(|| Instant::now() + timeout);
        let next = tokio::select! {
            next = reader.next() => next,
            _ = tokio::time::sleep_until(wake) => {
                expire(&shared, dest, &calls);
                continue;
            }
        };
        let incoming = match next {
            Some(Ok(incoming)) => incoming,
            Some(Err(e)) => {
                tracing::warn!(dest, "thrift backend connection unreadable, closing it: {e}");
                return;
            }
            None => {
                tracing::info!(dest, "thrift backend closed the connection");
                return;
            }
        };
        frames_in.inc();
        let seqid = match &incoming {
            Incoming::Reply { seqid, .. } | Incoming::Exception { seqid, .. } => Some(*seqid),
            Incoming::Malformed { seqid, .. } => *seqid,
        };
        let call = seqid.and_then(|id| calls.pending.lock().take(id));
        if call.is_some() {
            calls.room.add_permits(1);
        }
        match (incoming, call) {
            (Incoming::Reply { reply, .. }, Some(call)) if reply.result == 0 => {
                let packet = (reply.msg_type as u32, call.seq);
                if call.session_id != 0
                    && shared.delivery.to_session(call.session_id, packet, reply.content, Scope::Cluster)
                        == Reached::Nowhere
                {
                    dispatch::not_here(&shared, dest, "thrift reply", call.session_id);
                }
            }
            (Incoming::Reply { reply, .. }, Some(call)) => {
                let message = format!("dest {dest}: the backend answered result {}", reply.result);
                answer_error(&shared, dest, &call, ErrorCode::UpstreamError, &message, Some(reply.result));
            }
            (Incoming::Exception { message, .. }, Some(call)) => {
                let message = format!("dest {dest}: the call failed in the backend: {message}");
                answer_error(&shared, dest, &call, ErrorCode::UpstreamError, &message, None);
            }
            (Incoming::Malformed { error, .. }, call) => {
                tracing::debug!(dest, error, "malformed thrift reply");
                dispatch::bad_frame(&shared, dest, "thrift_malformed_reply");
                if let Some(call) = call {
                    let message = format!("dest {dest}: unreadable reply: {error}");
                    answer_error(&shared, dest, &call, ErrorCode::UpstreamError, &message, None);
                }
            }
            (_, None) => dispatch::bad_frame(&shared, dest, "thrift_reply_to_no_call"),
        }
    }
}

/// Answers every call whose deadline has passed with `upstream_timeout`.
fn expire(shared: &Shared, dest: u32, calls: &Calls) {
    let now = Instant::now();
    let mut expired = Vec::new();
    {
        let mut pending = calls.pending.lock();
        while let Some(&(seqid, at)) = pending.deadlines.front() {
            if at > now {
                break;
            }
            pending.deadlines.pop_front();
            if let Some(call) = pending.calls.remove(&seqid) {
                expired.push(call);
            }
        }
    }
    calls.room.add_permits(expired.len());
    for call in expired {
        answer_error(
            shared,
            dest,
            &call,
            ErrorCode::UpstreamTimeout,
            &format!("dest {dest}: no reply in time"),
            None,
        );
    }
}

/// Tells a call's session (when it is on this node) that its message failed.
fn answer_error(
    shared: &Shared,
    dest: u32,
    call: &Call,
    code: ErrorCode,
    message: &str,
    result: Option<i64>,
) {
    let Some(session) = shared.registry.get(call.session_id) else {
        shared.metrics.undeliverable.inc();
        tracing::debug!(
            dest,
            session_id = call.session_id,
            code = code.name(),
            "thrift call failed for a session not here"
        );
        return;
    };
    shared.metrics.client_error(code);
    match code {
        ErrorCode::UpstreamError => session.send_upstream_error(call.seq, message, result),
        _ => session.send_error(call.seq, code, message),
    };
}
