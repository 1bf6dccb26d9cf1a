//! A session's output on its way to the socket: frames gathered into one buffer, written with
//! as few syscalls as the socket allows, and the buffer let go once written.
//!
//! The buffer is lent by the worker thread: a session that writes everything it gathered
//! gives it back within the same poll, so one allocation per thread serves every session it
//! polls, and a session owns a buffer only while its socket pushes back.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

use super::WRITE_BUFFER;

/// Capacity of the buffer a worker thread lends, in bytes: a full batch ([`WRITE_BUFFER`])
/// plus the frame that crosses it, without growing.
const LENT_CAPACITY: usize = 2 * WRITE_BUFFER;

/// The largest buffer a thread keeps to lend again, in bytes; a longer one (a large push)
/// is freed once written.
pub(crate) const MAX_KEPT: usize = 2 * LENT_CAPACITY;

thread_local! {
    /// The worker thread's spare write buffer: empty, or lent to the session being polled.
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Bytes waiting for the socket. Empty (no allocation) whenever everything was written: an
/// idle session keeps no write buffer, and one that once sent a 64 KiB push does not keep
/// 64 KiB (docs/benchmarks.md "Memory return"). Whole frames go in; a write the socket takes
/// in part keeps the rest, so the stream stays on a frame boundary whatever interrupts it.
#[derive(Default)]
pub(crate) struct OutBuf {
    buf: BytesMut,
}

impl OutBuf {
    /// Bytes buffered and not yet written.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The buffer, to append whole frames to: the thread's spare one when this holds none.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        if self.buf.capacity() == 0 {
            self.buf = SPARE.take().unwrap_or_else(|| BytesMut::with_capacity(LENT_CAPACITY));
        }
        &mut self.buf
    }

    /// Writes what is buffered to `io`, then flushes it. `Ready(Ok)` once all of it was
    /// written (the allocation is freed then); `Pending` while the socket pushes back (what
    /// was written so far is gone from the buffer).
    pub(crate) fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.buf.has_remaining() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
        }
        give_back(std::mem::take(&mut self.buf));
        Pin::new(io).poll_flush(cx)
    }
}

/// Keeps a written-out buffer as the thread's spare unless the thread has one or it is
/// larger than [`MAX_KEPT`]. An emptied `BytesMut` still owns its allocation (its capacity
/// reads 0 once advanced to the end): `try_reclaim` takes it back without allocating.
fn give_back(mut buf: BytesMut) {
    buf.clear();
    if buf.try_reclaim(LENT_CAPACITY) && buf.capacity() <= MAX_KEPT {
        // A spare already there is kept; this one is freed.
        let kept = SPARE.take().unwrap_or(buf);
        SPARE.set(Some(kept));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut as _;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn the_buffer_is_freed_once_written() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut out = OutBuf::default();
        out.buf_mut().put_slice(b"small");
        std::future::poll_fn(|cx| out.poll_write_to(&mut server, cx)).await.unwrap();
        assert_eq!(out.buf.capacity(), 0, "a written batch leaves the session no buffer");
        let spare = SPARE.take().map(|b| b.capacity());
        assert_eq!(spare, Some(LENT_CAPACITY), "the thread keeps it to lend again");
        out.buf_mut().put_slice(&vec![7u8; 64 * 1024]);
        std::future::poll_fn(|cx| out.poll_write_to(&mut server, cx)).await.unwrap();
        assert_eq!(out.buf.capacity(), 0);
        let spare = SPARE.take().map(|b| b.capacity());
        assert!(spare.is_none_or(|c| c <= MAX_KEPT), "a 64 KiB buffer is not kept: {spare:?}");
        let mut got = vec![0u8; 5 + 64 * 1024];
        client.read_exact(&mut got).await.unwrap();
        assert!(got[5..].iter().all(|&b| b == 7));
    }

    /// A socket that takes part of the buffer keeps the rest for the next write, in order.
    #[tokio::test]
    async fn a_partial_write_keeps_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(1000);
        let mut out = OutBuf::default();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        out.buf_mut().put_slice(&data);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(out.poll_write_to(&mut server, &mut cx).is_pending(), "the pipe holds 1000 bytes");
        assert_eq!(out.len(), 2000);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 3000];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        std::future::poll_fn(|cx| out.poll_write_to(&mut server, cx)).await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
    }
}
