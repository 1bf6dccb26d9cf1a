//! Reading frames without a read buffer per connection: a read lands in a buffer shared by
//! every session its worker thread polls, frames are parsed there, and a session keeps bytes
//! of its own only while a frame is partly received or a read brought more than one frame
//! (docs/architecture.md, "An idle session in memory").
//!
//! Why not tokio-util's `FramedRead`: its decoders parse from a `BytesMut` the connection
//! owns, which an idle connection keeps (1 KiB each here before, 8 KiB by default). The
//! frame formats themselves (WebSocket, length prefix) are parsed by the callers.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// The read buffer each worker thread lends to the sessions it polls, in bytes. A read takes
/// at most this much; a longer frame is completed in the session's own buffer.
const SHARED_READ_BUFFER: usize = 16 * 1024;

/// How much a session's own buffer grows by per read while a long frame arrives, in bytes.
const PENDING_READ: usize = 4096;

thread_local! {
    static SHARED: RefCell<Box<[u8]>> = RefCell::new(vec![0; SHARED_READ_BUFFER].into_boxed_slice());
}

/// What a parser made of the bytes at the start of a buffer.
pub(crate) enum Parsed<T> {
    /// A frame of this many bytes was taken (and may be edited in place, e.g. unmasked); some
    /// are worth returning.
    Frame(usize, Option<T>),
    /// At least this many more bytes are needed.
    Needs(usize),
}

/// What [`SharedRead::poll_next`] yields.
pub(crate) enum Next<T, E> {
    Item(T),
    /// The peer ended its stream; `mid_frame` if part of a frame had arrived.
    Eof {
        mid_frame: bool,
    },
    /// The parser refused the input.
    Invalid(E),
    Io(io::Error),
}

/// One connection's unparsed input: empty, with no heap memory, while no frame is partly read.
#[derive(Default)]
pub(crate) struct SharedRead {
    pending: BytesMut,
}

impl SharedRead {
    /// Reads and parses until `parse` returns something. Cancel-safe: bytes read stay here.
    pub(crate) fn poll_next<R, T, E>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        parse: &mut impl FnMut(&mut [u8]) -> Result<Parsed<T>, E>,
    ) -> Poll<Next<T, E>>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            if self.pending.is_empty() {
                let read = SHARED.with_borrow_mut(|shared| self.read_shared(io, cx, shared, parse));
                match ready!(read) {
                    Some(next) => return Poll::Ready(next),
                    None => continue,
                }
            }
            match parse(&mut self.pending) {
                Err(e) => return Poll::Ready(Next::Invalid(e)),
                Ok(Parsed::Frame(used, item)) => {
                    self.pending.advance(used);
                    if self.pending.is_empty() {
                        self.pending = BytesMut::new();
                    }
                    if let Some(item) = item {
                        return Poll::Ready(Next::Item(item));
                    }
                }
                Ok(Parsed::Needs(more)) => {
                    // A frame's remainder is read straight into the session's buffer.
                    self.pending.reserve(more.clamp(1, PENDING_READ));
                    match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.pending)) {
                        Ok(0) => return Poll::Ready(Next::Eof { mid_frame: true }),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Next::Io(e)),
                    }
                }
            }
        }
    }

    /// Reads into the worker's buffer and parses frames from it until one is worth returning;
    /// what is left is copied into the session's buffer. `None`: read on.
    fn read_shared<R, T, E>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        shared: &mut [u8],
        parse: &mut impl FnMut(&mut [u8]) -> Result<Parsed<T>, E>,
    ) -> Poll<Option<Next<T, E>>>
    where
        R: AsyncRead + Unpin,
    {
        let mut buf = ReadBuf::new(shared);
        if let Err(e) = ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
            return Poll::Ready(Some(Next::Io(e)));
        }
        let n = buf.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Next::Eof { mid_frame: false }));
        }
        let mut at = 0;
        while at < n {
            match parse(&mut shared[at..n]) {
                Err(e) => return Poll::Ready(Some(Next::Invalid(e))),
                Ok(Parsed::Frame(used, item)) => {
                    at += used;
                    if let Some(item) = item {
                        self.pending.extend_from_slice(&shared[at..n]);
                        return Poll::Ready(Some(Next::Item(item)));
                    }
                }
                Ok(Parsed::Needs(_)) => break,
            }
        }
        self.pending.extend_from_slice(&shared[at..n]);
        Poll::Ready(None)
    }

    /// Whether the connection holds a buffer of its own.
    #[cfg(test)]
    pub(crate) fn holds_memory(&self) -> bool {
        self.pending.capacity() > 0
    }
}
