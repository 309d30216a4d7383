//! Decoding a line the core sends on `agent.sock` (a response or a push), as
//! `hive-agent` does. Must return an error, never panic.
#![no_main]

use hive_proto::agent::ServerLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ServerLine::parse(data);
});
