//! A session's output on its way to the socket: frames gathered into one buffer, written with
//! as few syscalls as the socket allows, and the buffer let go once written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

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

    /// The buffer, to append whole frames to.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
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
        // Replaced, not kept: an emptied `BytesMut` still owns its allocation (its capacity
        // reads 0 once advanced to the end, and `reserve` takes the whole allocation back).
        self.buf = BytesMut::new();
        Pin::new(io).poll_flush(cx)
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
        out.buf_mut().put_slice(&vec![7u8; 64 * 1024]);
        std::future::poll_fn(|cx| out.poll_write_to(&mut server, cx)).await.unwrap();
        out.buf_mut().put_slice(b"small");
        assert!(out.buf.capacity() < 1024, "a written batch keeps no buffer: {}", out.buf.capacity());
        let mut got = vec![0u8; 64 * 1024];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
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
