//! WebSocket frames from a client as the gateway reads them (`ws_read::FrameReader`: masking,
//! fragments, control frames, UTF-8, close codes, the size bound), the input arriving in reads
//! of a size the first byte picks: never panics, never yields a message over the bound or
//! text that is not UTF-8, never a ping over 125 bytes, and ends (every read makes progress).
#![no_main]

mod chunks;

use std::task::{Context, Poll, Waker};

use chunks::Chunks;
use libfuzzer_sys::fuzz_target;
use wasmgate::downstream::ws_read::{Frame, FrameReader};

const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut cx = Context::from_waker(Waker::noop());
    let mut reader = FrameReader::new(MAX_MESSAGE);
    let Some(mut io) = Chunks::split(data) else { return };
    // Each frame returned takes at least 2 bytes; the end of stream ends it.
    for _ in 0..=data.len() {
        match reader.poll_frame(&mut io, &mut cx) {
            Poll::Ready(Ok(Frame::Text(text))) => {
                let data = text.into_bytes();
                assert!(data.len() <= MAX_MESSAGE);
                // What `Text::as_str` relies on.
                assert!(std::str::from_utf8(&data).is_ok());
            }
            Poll::Ready(Ok(Frame::Binary(data))) => assert!(data.len() <= MAX_MESSAGE),
            Poll::Ready(Ok(Frame::Ping(payload))) => assert!(payload.len() <= 125),
            Poll::Ready(Ok(Frame::Close(_))) => {}
            Poll::Ready(Ok(Frame::Eof) | Err(_)) => return,
            Poll::Pending => panic!("a reader that is always ready never leaves the frame pending"),
        }
    }
    panic!("more frames than the input could hold");
});
