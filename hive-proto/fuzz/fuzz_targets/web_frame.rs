//! Decoding a `ClientFrame<WebCall>` frame as it arrives on `web.sock`, from
//! `hive-web`.
//! The check itself is `common/frame.rs`.
#![no_main]

#[path = "common/frame.rs"]
mod frame;

use hive_proto::operator::{ClientFrame, WebCall};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frame::fuzz_frame::<ClientFrame<WebCall>>(data));
