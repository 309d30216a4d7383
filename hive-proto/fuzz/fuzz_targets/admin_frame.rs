//! Decoding a `ClientFrame<AdminRequest>` frame as it arrives on `admin.sock`,
//! from `hivectl` or any member of the admin group.
//! The check itself is `common/frame.rs`.
#![no_main]

#[path = "common/frame.rs"]
mod frame;

use hive_proto::operator::{AdminRequest, ClientFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frame::fuzz_frame::<ClientFrame<AdminRequest>>(data));
