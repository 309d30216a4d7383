//! The one check every operator-frame fuzz target runs, generic over the
//! frame type: fed both as a whole stream (length prefix included, so the
//! length checks run) and as a body behind a correct prefix (so postcard
//! sees every input). Decoding must return an error, never panic; anything
//! it accepts must encode and decode back to itself.

use hive_proto::codec::{decode_frame, FrameCodec, MAX_FRAME};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Encoder;

fn check<T>(bytes: &[u8])
where
    T: DeserializeOwned + Serialize + Clone + PartialEq + std::fmt::Debug,
{
    if let Ok(Some(frame)) = decode_frame::<T>(bytes) {
        let mut buf = BytesMut::new();
        FrameCodec::<(), T>::new()
            .encode(frame.clone(), &mut buf)
            .expect("a decoded frame encodes");
        let again = decode_frame::<T>(&buf).expect("an encoded frame decodes");
        assert_eq!(again, Some(frame));
    }
}

pub fn fuzz_frame<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + Clone + PartialEq + std::fmt::Debug,
{
    check::<T>(data);
    if data.len() <= MAX_FRAME {
        let mut framed = (data.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        check::<T>(&framed);
    }
}
