//! The server side of a TLS connection that holds no buffer while idle: rustls' unbuffered
//! connection API, with the ciphertext read into and encrypted from buffers the worker thread
//! lends.
//!
//! Why not tokio-rustls: its `ServerConnection` keeps a 4 KiB record buffer for the life of
//! the connection (rustls sizes it before every read, the read that finds nothing included),
//! more than a whole idle plain session (docs/benchmarks.md, "TLS"). Here a connection keeps
//! bytes of its own only while a record is partly received ([`ServerStream::incoming`]), while
//! decrypted data waits for a reader with less room than a record ([`ServerStream::plaintext`]),
//! or while the socket pushes back ([`ServerStream::outgoing`]); between messages an idle
//! session holds rustls' connection state alone (its keys and handshake outcome).
//!
//! Behaviour matches tokio-rustls' server stream: reads end (`Ok` with nothing read) at the
//! client's `close_notify`; the TCP stream ending without one is `UnexpectedEof`; a protocol
//! error is `InvalidData` after the alert rustls queued for it was offered to the socket;
//! shutdown sends `close_notify` and then ends the TCP stream.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much ciphertext one read takes at most, in bytes: a whole record at its largest
/// (RFC 8446 section 5.2: 2^14 + 256 of payload, 5 of header) fits.
const READ_SCRATCH: usize = 16 * 1024 + 256 + 5;

/// The least one read asks the socket for, in bytes, however little room the reader has:
/// a record's worth of small messages, not one syscall per few bytes.
const MIN_READ: usize = 4096;

/// How much plaintext one write encrypts at most, in bytes (four full records).
const MAX_WRITE: usize = 64 * 1024;

/// The most received ciphertext a connection may hold while waiting for the rest of a
/// message, in bytes: rustls accepts handshake messages up to 64 KiB, spread over records.
const MAX_INCOMING: usize = 64 * 1024 + READ_SCRATCH;

thread_local! {
    /// Ciphertext just read, processed in place; what is left of a record moves to the
    /// connection.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
    /// Ciphertext just encrypted, written from here; what the socket does not take moves to
    /// the connection. Grows to the largest write's need.
    static WRITE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A server-side TLS stream over a TCP connection, after its handshake ([`super::Acceptor::accept`]).
pub struct ServerStream {
    io: TcpStream,
    tls: Tls,
    /// Ciphertext received and not yet processed: the start of a record (or of a handshake
    /// message spread over records). Empty, with no allocation, between records.
    incoming: Vec<u8>,
}

/// The connection's state apart from the socket and the received ciphertext, so that
/// processing can borrow the ciphertext (the thread's buffer or [`ServerStream::incoming`])
/// and this at once.
struct Tls {
    conn: UnbufferedServerConnection,
    /// Decrypted data the reader had no room for; empty (no allocation) otherwise.
    plaintext: BytesMut,
    /// Ciphertext not yet written; empty (no allocation) unless the socket pushed back.
    outgoing: BytesMut,
    /// The client's `close_notify` arrived: reads end.
    peer_closed: bool,
    /// Our `close_notify` is queued.
    close_sent: bool,
}

/// Runs the server side of the handshake on `io` with `config`. Errors: the peer is not a TLS
/// client or the handshake fails (`InvalidData`, after the alert was offered to the peer),
/// the connection ends first (`UnexpectedEof`), socket errors. Not bounded in time: the caller
/// bounds it (`timeouts.handshake_ms`).
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<ServerStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = ServerStream {
        io,
        tls: Tls {
            conn,
            plaintext: BytesMut::new(),
            outgoing: BytesMut::new(),
            peer_closed: false,
            close_sent: false,
        },
        incoming: Vec::new(),
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl ServerStream {
    /// The protocol the client and server agreed on with ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.conn.alpn_protocol()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // What was read so far, processed: handshake records, and any data the client sent
            // right after its Finished (kept in `plaintext` for the first read).
            let used = match self.tls.process(&mut self.incoming, None) {
                Ok(used) => used,
                Err(e) => return self.fail(cx, e),
            };
            self.incoming.drain(..used);
            ready!(self.tls.poll_write_outgoing(&mut self.io, cx))?;
            if !self.tls.conn.is_handshaking() {
                self.incoming.shrink_to_fit();
                return Poll::Ready(Ok(()));
            }
            if self.incoming.len() >= MAX_INCOMING {
                return self.fail(cx, invalid_data("handshake message too long"));
            }
            // The handshake's input is short-lived: read straight into the connection's buffer.
            let at = self.incoming.len();
            self.incoming.resize(at + MIN_READ, 0);
            let mut buf = ReadBuf::new(&mut self.incoming[at..]);
            let read = Pin::new(&mut self.io).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            self.incoming.truncate(at + n);
            ready!(read)?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended during the TLS handshake",
                )));
            }
        }
    }

    /// Reads once from the socket (at least [`MIN_READ`] bytes asked for, `out`'s room if more) and
    /// processes every whole record: application data goes to `out` while it has room, then
    /// to [`Tls::plaintext`]. `Ready(Ok(0))` at the TCP stream's end.
    fn poll_read_records(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        READ_BUF.with_borrow_mut(|scratch| {
            let want = out.remaining().clamp(MIN_READ, scratch.len());
            let mut buf = ReadBuf::new(&mut scratch[..want]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if self.incoming.is_empty() {
                let used = self.tls.process(&mut scratch[..n], Some(out))?;
                self.incoming.extend_from_slice(&scratch[used..n]);
            } else {
                if self.incoming.len() + n > MAX_INCOMING {
                    return Poll::Ready(Err(invalid_data("TLS message too long")));
                }
                self.incoming.extend_from_slice(&scratch[..n]);
                let used = self.tls.process(&mut self.incoming, Some(out))?;
                self.incoming.drain(..used);
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                }
            }
            Poll::Ready(Ok(n))
        })
    }

    /// Offers the alert rustls queued for `error` to the socket (one attempt), then fails.
    fn fail<T>(&mut self, cx: &mut Context<'_>, error: io::Error) -> Poll<io::Result<T>> {
        let _ = self.tls.poll_write_outgoing(&mut self.io, cx);
        Poll::Ready(Err(error))
    }
}

impl Tls {
    /// Processes the records at the start of `data` until rustls needs more input; returns
    /// how many bytes of `data` are done with (the rest must be passed again, first).
    /// Application data goes to `out` while it has room, then to `plaintext`; handshake
    /// output and alerts go to `outgoing`. On an error the alert for it is in `outgoing`.
    fn process(&mut self, data: &mut [u8], mut out: Option<&mut ReadBuf<'_>>) -> io::Result<usize> {
        let mut at = 0;
        loop {
            let status = self.conn.process_tls_records(&mut data[at..]);
            let mut discard = status.discard;
            let more = match status.state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid_data)?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(out) = out.as_deref_mut() {
                            let n = payload.len().min(out.remaining());
                            out.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plaintext.extend_from_slice(payload);
                    }
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, |buf| encode.encode(buf).map_err(encode_room))?;
                    true
                }
                // Encoded bytes are written before anything encoded after them: done already.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    true
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    false
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => false,
                Ok(_) => return Err(invalid_data("unexpected TLS state (early data is not accepted)")),
                Err(e) => {
                    self.queue_alert();
                    return Err(invalid_data(e));
                }
            };
            at += discard;
            if !more {
                return Ok(at);
            }
        }
    }

    /// After an error, moves the alert rustls queued for it to `outgoing`.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let encoded =
                        encode_into(&mut self.outgoing, |buf| encode.encode(buf).map_err(encode_room));
                    if encoded.is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Writes `outgoing` to `io`; `Ready(Ok)` once all of it is written (its allocation freed).
    fn poll_write_outgoing(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.outgoing.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.outgoing.has_remaining() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.outgoing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.advance(n);
        }
        // An emptied `BytesMut` still owns its allocation: let it go.
        self.outgoing = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Moves waiting plaintext into `out`; whether any moved.
    fn take_plaintext(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.plaintext.is_empty() || out.remaining() == 0 {
            return false;
        }
        let n = self.plaintext.len().min(out.remaining());
        out.put_slice(&self.plaintext[..n]);
        self.plaintext.advance(n);
        if self.plaintext.is_empty() {
            self.plaintext = BytesMut::new();
        }
        true
    }
}

/// Appends what `encode` writes to `out`, giving it more room when it says how much it needs
/// (`Err(Some(size))`); `Err(None)` is a failure.
fn encode_into(
    out: &mut BytesMut,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 512;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS record could not be encoded"));
            }
        }
    }
}

/// How much room an encoding needs, when that is why it failed.
fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        EncodeError::AlreadyEncoded => None,
    }
}

/// How much room an encryption needs, when that is why it failed.
fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        _ => None,
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.tls.take_plaintext(out) || this.tls.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Output queued while reading (a key update's answer) goes with the next write, or
            // now if the socket takes it.
            if !this.tls.outgoing.is_empty()
                && let Poll::Ready(Err(e)) = this.tls.poll_write_outgoing(&mut this.io, cx)
            {
                return Poll::Ready(Err(e));
            }
            let before = out.filled().len();
            let n = match ready!(this.poll_read_records(cx, out)) {
                Ok(n) => n,
                Err(e) => return this.fail(cx, e),
            };
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for ServerStream {
    /// Encrypts up to 64 KiB of `data` and writes the records; what the socket
    /// does not take is kept, and the next write or flush waits for it first.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.tls.poll_write_outgoing(&mut this.io, cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        WRITE_BUF.with_borrow_mut(|scratch| {
            let n = this.encrypt(data, scratch)?;
            let tls = &mut this.tls;
            if tls.outgoing.is_empty() {
                match Pin::new(&mut this.io).poll_write(cx, &scratch[..n]) {
                    Poll::Ready(Ok(written)) => tls.outgoing.extend_from_slice(&scratch[written..n]),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => tls.outgoing.extend_from_slice(&scratch[..n]),
                }
            } else {
                tls.outgoing.extend_from_slice(&scratch[..n]);
                if let Poll::Ready(Err(e)) = tls.poll_write_outgoing(&mut this.io, cx) {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Ok(data.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.tls.poll_write_outgoing(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends `close_notify` (once), then ends the TCP stream's sending direction.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.close_sent {
            this.tls.close_sent = true;
            this.queue_close_notify()?;
        }
        ready!(this.tls.poll_write_outgoing(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl ServerStream {
    /// Encrypts `data` into `scratch` (grown as needed), after any handshake output rustls has
    /// queued (a key update), which goes to `outgoing`; returns the ciphertext's length.
    fn encrypt(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let tls = &mut self.tls;
            let status = tls.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let result = match status.state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match traffic.encrypt(data, scratch) {
                    Ok(n) => Some(Ok(n)),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        scratch.resize(required_size, 0);
                        None
                    }
                    Err(e) => Some(Err(io::Error::other(e))),
                },
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut tls.outgoing, |buf| encode.encode(buf).map_err(encode_room))?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                // Records are processed as they are read, so none wait here; should one,
                // its data is kept for the next read.
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        tls.plaintext.extend_from_slice(record.map_err(invalid_data)?.payload);
                    }
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    tls.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    Some(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS connection is closed")))
                }
                Ok(_) => Some(Err(io::Error::other("TLS connection cannot send application data"))),
                Err(e) => Some(Err(invalid_data(e))),
            };
            self.incoming.drain(..discard);
            if let Some(result) = result {
                return result;
            }
        }
    }

    /// Queues `close_notify` in `outgoing`, unless the connection can no longer send.
    fn queue_close_notify(&mut self) -> io::Result<()> {
        let tls = &mut self.tls;
        let status = tls.conn.process_tls_records(&mut self.incoming);
        let discard = status.discard;
        let result = match status.state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                encode_into(&mut tls.outgoing, |buf| traffic.queue_close_notify(buf).map_err(encrypt_room))
            }
            _ => Ok(()),
        };
        self.incoming.drain(..discard);
        result
    }
}

#[cfg(test)]
mod tests;
