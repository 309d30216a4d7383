//! What the core does with one line from `agent.sock`: bytes → UTF-8 → JSON →
//! `AgentRequest`. Must return an error, never panic; anything it accepts
//! must serialize and parse back to itself.
#![no_main]

use hive_proto::agent::{parse_request, RequestLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        let line = serde_json::to_vec(&req).expect("a parsed request serializes");
        let again: RequestLine = parse_request(&line).expect("a serialized request parses");
        assert_eq!(again, req);
    }
});
