//! TCP client framing as the gateway reads it (`tcp::FrameReader`), with every prefix setting
//! (2 or 4 bytes, big- or little-endian, as `tcp.len_msg_len` / `tcp.little_endian`), the
//! input arriving in reads of a size the first byte picks, then each frame as a packet: never
//! panics, never yields a frame over the bound.
#![no_main]

mod chunks;

use std::task::{Context, Poll, Waker};

use chunks::Chunks;
use libfuzzer_sys::fuzz_target;
use wasmgate::config::TcpFramingConfig;
use wasmgate::downstream::tcp;
use wasmgate::protocol::client;

const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut cx = Context::from_waker(Waker::noop());
    for (len_msg_len, little_endian) in [(2, false), (2, true), (4, false), (4, true)] {
        let mut reader = tcp::FrameReader::new(&TcpFramingConfig { len_msg_len, little_endian, ..Default::default() }, MAX_FRAME);
        let Some(mut io) = Chunks::split(data) else { return };
        while let Poll::Ready(Ok(Some(frame))) = reader.poll_frame(&mut io, &mut cx) {
            assert!(frame.len() <= MAX_FRAME);
            let _ = client::decode_binary(frame);
        }
    }
});
