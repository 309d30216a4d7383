//! Decoding a `ServerFrame` as it arrives from the core: what `hive-web` and
//! `hivectl` decode.
//! The check itself is `common/frame.rs`.
#![no_main]

#[path = "common/frame.rs"]
mod frame;

use hive_proto::operator::ServerFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frame::fuzz_frame::<ServerFrame>(data));
