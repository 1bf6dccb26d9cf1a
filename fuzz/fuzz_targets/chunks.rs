//! An input handed to a reader in reads of a size the input's first byte picks, so that frames
//! split across reads are covered (shared by the framing targets).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Hands out its bytes `step` at a time, then end of stream.
pub struct Chunks<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl<'a> Chunks<'a> {
    /// The reader over `data` after its first byte, which picks the read size (1 to 1,786
    /// bytes); `None` for an empty input.
    pub fn split(data: &'a [u8]) -> Option<Self> {
        let (&step, bytes) = data.split_first()?;
        Some(Self { bytes, step: usize::from(step) * 7 + 1 })
    }
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.bytes.len()).min(buf.remaining());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(()))
    }
}
