//! One dest's queue pool: `poolNums` connections, each a bounded frame queue and a task that
//! connects, writes batches, reads replies on a companion task, and reconnects with
//! exponential backoff (with jitter) when the backend goes away.
//!
//! A dest speaks backend protocol v1 (this file) or Thrift ([`thrift`]); the pool, its
//! connections' life cycle and the choice of connection are the same for both.
//!
//! A session's frames take its own connection (a hash of the session id). While that one is
//! down they take the next connected one in index order, and stay there (see [`Moved`]), so
//! a session is served whenever any connection of the pool is up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::{Shared, UpstreamError, dispatch};
use crate::maps::{DestEntry, ThriftSettings};
use crate::metrics::{DestLabel, DestOutcomeLabel};
use crate::protocol::backend::{BackendCodec, BackendFrame, FrameError, PROTOCOL_VERSION};
use crate::tls;

mod thrift;

/// How a dest's connections are made: plain TCP, TLS (`"tls"` in its `dest_map.json` entry),
/// or not at all when its TLS settings are unusable (every attempt fails with the reason).
enum Transport {
    Plain,
    Tls(tls::Connector),
    Unusable(String),
}

impl Transport {
    fn of(dest: u32, entry: &DestEntry) -> Self {
        let Some(settings) = &entry.tls else { return Self::Plain };
        let host = entry.srv_addr.rsplit_once(':').map_or("", |(host, _)| host.trim_matches(['[', ']']));
        let name = settings.server_name.as_deref().unwrap_or(host);
        match tls::Connector::new(settings.ca.as_deref(), name) {
            Ok(connector) => Self::Tls(connector),
            Err(e) => {
                tracing::error!(dest, "upstream TLS settings unusable, the dest stays down: {e:#}");
                Self::Unusable(format!("{e:#}"))
            }
        }
    }
}

/// A connected upstream stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// How long a draining connection keeps reading replies after its last write.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

struct Conn {
    tx: mpsc::Sender<BackendFrame>,
    up: Arc<AtomicBool>,
}

/// How long a session moved to another connection must stay silent (towards this dest)
/// before it goes back to its own: frames it queued on the other connection have been
/// written and, unless the backend takes longer than this to handle them, handled, so its
/// next frame cannot overtake them. Documented in docs/configuration.md (maps).
pub const FAILBACK_IDLE: Duration = Duration::from_secs(1);

/// Sessions whose frames take another connection than their own: key -> (connection index,
/// last frame). A session stays on the connection it was moved to while that one is up and
/// it sends at least every [`FAILBACK_IDLE`]; then the entry lapses and the session's own
/// connection (or, if still down, the next connected one again) takes its next frame.
#[derive(Default)]
struct Moved {
    sessions: HashMap<u64, (usize, Instant)>,
    pruned: Option<Instant>,
}

pub(super) struct Pool {
    dest: u32,
    pub(super) entry: DestEntry,
    conns: Box<[Conn]>,
    stop: CancellationToken,
    up_count: Arc<AtomicUsize>,
    moved: Mutex<Moved>,
    /// `moved.sessions.len()`, read without the lock: when 0 and a session's own connection is
    /// up, the send path takes no lock.
    moved_len: AtomicUsize,
}

impl Pool {
    /// Creates the pool and spawns its connection tasks.
    pub(super) fn start(dest: u32, entry: DestEntry, shared: &Arc<Shared>) -> Arc<Self> {
        let stop = CancellationToken::new();
        let up_count = Arc::new(AtomicUsize::new(0));
        shared
            .metrics
            .upstream_connections_wanted
            .get_or_create(&DestLabel { dest })
            .set(entry.pool_nums as i64);
        for outcome in ["ok", "upstream_unavailable", "upstream_busy"] {
            let _ = shared.metrics.routed.get_or_create(&DestOutcomeLabel { dest, outcome });
        }
        let _ = shared.metrics.upstream_connections_up.get_or_create(&DestLabel { dest });
        let _ = shared.metrics.upstream_frames_in.get_or_create(&DestLabel { dest });
        let transport = Arc::new(Transport::of(dest, &entry));
        let thrift = entry.thrift.clone().map(Arc::new);
        let conns = (0..entry.pool_nums)
            .map(|index| {
                let (tx, rx) = mpsc::channel(shared.settings.queue_len);
                let up = Arc::new(AtomicBool::new(false));
                let task = ConnTask {
                    dest,
                    index,
                    addr: entry.srv_addr.clone(),
                    transport: transport.clone(),
                    thrift: thrift.clone(),
                    rx,
                    up: up.clone(),
                    up_count: up_count.clone(),
                    stop: stop.clone(),
                    shared: shared.clone(),
                };
                shared.tasks.spawn(task.run());
                Conn { tx, up }
            })
            .collect();
        Arc::new(Self {
            dest,
            entry,
            conns,
            stop,
            up_count,
            moved: Mutex::default(),
            moved_len: AtomicUsize::new(0),
        })
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    pub(super) fn connections_up(&self) -> usize {
        self.up_count.load(Ordering::Relaxed)
    }

    /// Frames queued on the pool's connections, not yet taken by their writers.
    pub(super) fn queued(&self) -> usize {
        self.conns.iter().map(|c| c.tx.max_capacity() - c.tx.capacity()).sum()
    }

    fn is_up(&self, index: usize) -> bool {
        self.conns[index].up.load(Ordering::Acquire)
    }

    /// The connection that takes `key`'s next frame: its own when up (and it was not moved
    /// off it within [`FAILBACK_IDLE`]), else the next connected one; `None` when none is up.
    fn conn_for(&self, key: u64) -> Option<&Conn> {
        // Fibonacci hashing spreads sequential session ids over the connections.
        let own = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % self.conns.len();
        if self.moved_len.load(Ordering::Acquire) == 0 && self.is_up(own) {
            return Some(&self.conns[own]);
        }
        let now = Instant::now();
        let mut moved = self.moved.lock();
        if moved.pruned.is_none_or(|at| now.duration_since(at) >= FAILBACK_IDLE) {
            moved.sessions.retain(|_, (_, last)| now.duration_since(*last) < FAILBACK_IDLE);
            moved.pruned = Some(now);
        }
        let index = match moved.sessions.get_mut(&key) {
            Some((index, last)) if self.is_up(*index) && now.duration_since(*last) < FAILBACK_IDLE => {
                *last = now;
                Some(*index)
            }
            _ if self.is_up(own) => {
                moved.sessions.remove(&key);
                Some(own)
            }
            _ => {
                let n = self.conns.len();
                let next = (1..n).map(|i| (own + i) % n).find(|&i| self.is_up(i));
                match next {
                    Some(index) => moved.sessions.insert(key, (index, now)),
                    None => moved.sessions.remove(&key),
                };
                next
            }
        };
        self.moved_len.store(moved.sessions.len(), Ordering::Release);
        index.map(|i| &self.conns[i])
    }

    /// Queues a frame without waiting; gives the frame back with the reason on failure.
    pub(super) fn try_send(
        &self,
        key: u64,
        frame: BackendFrame,
    ) -> Result<(), (UpstreamError, BackendFrame)> {
        let Some(conn) = self.conn_for(key) else {
            return Err((UpstreamError::Unavailable(self.dest), frame));
        };
        conn.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(f) => (UpstreamError::Busy(self.dest), f),
            mpsc::error::TrySendError::Closed(f) => (UpstreamError::Unavailable(self.dest), f),
        })
    }

    /// Queues a frame on the connection for `key`.
    pub(super) async fn send(
        &self,
        key: u64,
        frame: BackendFrame,
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        let dest = self.dest;
        let Some(conn) = self.conn_for(key) else {
            return Err(UpstreamError::Unavailable(dest));
        };
        match tokio::time::timeout(wait, conn.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(UpstreamError::Unavailable(dest)),
            Err(_) => Err(UpstreamError::Busy(dest)),
        }
    }
}

struct ConnTask {
    dest: u32,
    index: usize,
    addr: String,
    transport: Arc<Transport>,
    /// `Some` for a Thrift dest.
    thrift: Option<Arc<ThriftSettings>>,
    rx: mpsc::Receiver<BackendFrame>,
    up: Arc<AtomicBool>,
    up_count: Arc<AtomicUsize>,
    stop: CancellationToken,
    shared: Arc<Shared>,
}

enum Ended {
    /// The pool was stopped and drained.
    Stopped,
    /// The connection failed; reconnect.
    Broken,
}

impl ConnTask {
    async fn run(mut self) {
        let settings = self.shared.settings.clone();
        let initial = Duration::from_millis(settings.backoff_initial_ms.max(1));
        let max = Duration::from_millis(settings.backoff_max_ms.max(settings.backoff_initial_ms));
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let mut backoff = initial;
        let mut failures = 0u32;
        loop {
            let connected = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = tokio::time::timeout(connect_timeout, self.connect()) => r,
            };
            match connected {
                Ok(Ok(stream)) => {
                    if failures > 0 {
                        tracing::info!(dest = self.dest, conn = self.index, addr = %self.addr, "upstream connected after {failures} failed attempts");
                    }
                    failures = 0;
                    backoff = initial;
                    self.set_up(true);
                    let ended = match stream {
                        Stream::Plain(stream) => {
                            let (read, write) = stream.into_split();
                            self.serve_protocol(read, write).await
                        }
                        Stream::Tls(stream) => {
                            let (read, write) = tokio::io::split(stream);
                            self.serve_protocol(read, write).await
                        }
                    };
                    self.set_up(false);
                    self.fail_queued("connection lost");
                    if matches!(ended, Ended::Stopped) {
                        break;
                    }
                }
                Ok(Err(e)) => self.connect_failed(&mut failures, &e.to_string()),
                Err(_) => self.connect_failed(&mut failures, "connect timed out"),
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(max);
        }
        self.fail_queued("dest removed");
    }

    /// Connects (and runs the TLS handshake, for a TLS dest).
    async fn connect(&self) -> std::io::Result<Stream> {
        if let Transport::Unusable(why) = &*self.transport {
            return Err(std::io::Error::other(format!("TLS settings unusable: {why}")));
        }
        let stream = TcpStream::connect(&self.addr).await?;
        let _ = stream.set_nodelay(true);
        match &*self.transport {
            Transport::Tls(connector) => Ok(Stream::Tls(Box::new(connector.connect(stream).await?))),
            _ => Ok(Stream::Plain(stream)),
        }
    }

    fn connect_failed(&mut self, failures: &mut u32, why: &str) {
        *failures += 1;
        if *failures == 1 {
            tracing::warn!(dest = self.dest, conn = self.index, addr = %self.addr, "upstream connect failed: {why}");
        } else {
            tracing::debug!(dest = self.dest, conn = self.index, addr = %self.addr, "upstream connect failed again: {why}");
        }
        self.fail_queued("dest unavailable");
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        let gauge =
            self.shared.metrics.upstream_connections_up.get_or_create(&DestLabel { dest: self.dest }).clone();
        if up {
            self.up_count.fetch_add(1, Ordering::Relaxed);
            gauge.inc();
        } else {
            self.up_count.fetch_sub(1, Ordering::Relaxed);
            gauge.dec();
        }
    }

    /// Answers every queued frame with an error to its session.
    fn fail_queued(&mut self, why: &str) {
        while let Ok(frame) = self.rx.try_recv() {
            dispatch::undeliverable(&self.shared, self.dest, frame, why);
        }
    }

    async fn serve_protocol<R, W>(&mut self, read: R, write: W) -> Ended
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
    {
        match self.thrift.clone() {
            Some(settings) => self.serve_thrift(read, write, settings).await,
            None => self.serve(read, write).await,
        }
    }

    async fn serve<R, W>(&mut self, read: R, write: W) -> Ended
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
    {
        let mut writer = FramedWrite::new(write, BackendCodec::default());
        let hello = BackendFrame::Hello {
            version: PROTOCOL_VERSION,
            node_id: self.shared.node.id,
            node_name: self.shared.node.name.clone(),
        };
        if writer.send(hello).await.is_err() {
            return Ended::Broken;
        }
        let mut reader = tokio::spawn(read_loop(
            FramedRead::new(read, BackendCodec::default()),
            self.dest,
            self.shared.clone(),
        ));
        let mut batch = Vec::new();
        let ended = loop {
            tokio::select! {
                biased;
                _ = &mut reader => break Ended::Broken,
                _ = self.stop.cancelled() => {
                    // Drain: write what is queued, half-close, keep reading replies a while.
                    while let Ok(frame) = self.rx.try_recv() {
                        batch.push(frame);
                    }
                    if !self.write_batch(&mut writer, &mut batch).await {
                        break Ended::Stopped;
                    }
                    let _ = writer.get_mut().shutdown().await;
                    let _ = tokio::time::timeout(DRAIN_GRACE, &mut reader).await;
                    break Ended::Stopped;
                }
                frame = self.rx.recv() => {
                    let Some(frame) = frame else { break Ended::Stopped };
                    batch.push(frame);
                    while batch.len() < 256 {
                        match self.rx.try_recv() {
                            Ok(frame) => batch.push(frame),
                            Err(_) => break,
                        }
                    }
                    if !self.write_batch(&mut writer, &mut batch).await {
                        break Ended::Broken;
                    }
                }
            }
        };
        reader.abort();
        ended
    }

    /// Writes and flushes `batch`; on failure answers its frames with errors. Returns whether
    /// the write succeeded.
    async fn write_batch<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut FramedWrite<W, BackendCodec>,
        batch: &mut Vec<BackendFrame>,
    ) -> bool {
        let mut ok = true;
        for frame in batch.iter() {
            if writer.feed(frame.clone()).await.is_err() {
                ok = false;
                break;
            }
        }
        ok = ok && writer.flush().await.is_ok();
        if ok {
            self.shared.frames_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        } else {
            tracing::warn!(
                dest = self.dest,
                conn = self.index,
                "upstream write failed; answering {} frames with errors",
                batch.len()
            );
            for frame in batch.drain(..) {
                dispatch::undeliverable(&self.shared, self.dest, frame, "connection lost");
            }
        }
        ok
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FramedRead<R, BackendCodec>,
    dest: u32,
    shared: Arc<Shared>,
) {
    let frames_in = shared.metrics.upstream_frames_in.get_or_create(&DestLabel { dest }).clone();
    while let Some(next) = reader.next().await {
        match next {
            Ok(frame) => {
                frames_in.inc();
                dispatch::from_backend(&shared, dest, frame).await;
            }
            Err(FrameError::Io(e)) if peer_closed(&e) => {
                tracing::info!(dest, "backend closed the connection: {e}");
                return;
            }
            Err(e) => {
                // The length prefix or the socket failed: the stream is out of step.
                tracing::warn!(dest, "backend connection unreadable, closing it: {e}");
                return;
            }
        }
    }
}

/// A backend ending the connection (reset, abort, or EOF inside a frame): its restart, not a
/// bad frame.
fn peer_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
}
