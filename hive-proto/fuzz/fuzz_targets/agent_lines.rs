//! What the core does with a byte stream on `agent.sock`: split it into lines
//! (`codec::split_lines`, the `LineCodec` the server uses), then parse each.
//! Must never panic, and no line it yields may be over `MAX_LINE`.
#![no_main]

use hive_proto::agent::parse_request;
use hive_proto::codec::{split_lines, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(lines) = split_lines(data) {
        for line in lines {
            assert!(line.len() <= MAX_LINE);
            let _ = parse_request(&line);
        }
    }
});
