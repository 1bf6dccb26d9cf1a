//! Backend protocol v1 frames, as a backend's connection delivers them: decoding never panics,
//! and every well-formed frame encodes to bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder as _, Encoder as _};
use wasmgate::protocol::backend::{BackendCodec, BackendFrame};

fuzz_target!(|data: &[u8]| {
    let mut codec = BackendCodec::default();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if matches!(frame, BackendFrame::Malformed { .. }) {
            continue;
        }
        let mut encoded = BytesMut::new();
        codec.encode(frame.clone(), &mut encoded).expect("a decoded frame encodes");
        let again = codec.decode(&mut encoded).expect("decodes").expect("a whole frame");
        assert_eq!(again, frame);
    }
});
