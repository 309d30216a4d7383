//! Decoding a `ClientFrame<AdminRequest>` frame as it arrives on `admin.sock`,
//! from `hivectl` or any member of the admin group.
//! Fed both as a whole stream (length prefix included, so the length checks
//! run) and as a body behind a correct prefix (so postcard sees every input).
//! Must return an error, never panic; anything it accepts must encode and
//! decode back to itself.
#![no_main]

use hive_proto::codec::{decode_frame, FrameCodec, MAX_FRAME};
use hive_proto::operator::{AdminRequest, ClientFrame};
use libfuzzer_sys::fuzz_target;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Encoder;

type Frame = ClientFrame<AdminRequest>;

fn check(bytes: &[u8]) {
    if let Ok(Some(frame)) = decode_frame::<Frame>(bytes) {
        let mut buf = BytesMut::new();
        FrameCodec::<(), Frame>::new()
            .encode(frame.clone(), &mut buf)
            .expect("a decoded frame encodes");
        let again = decode_frame::<Frame>(&buf).expect("an encoded frame decodes");
        assert_eq!(again, Some(frame));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() <= MAX_FRAME {
        let mut framed = (data.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        check(&framed);
    }
});
