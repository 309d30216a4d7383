//! Byte budgets for list replies, so that no list an agent can grow (open
//! questions, reminders, messages — each item up to 64 KiB of agent text)
//! can make a reply larger than its frame (`admin.sock`/`web.sock`,
//! [`MAX_FRAME`]) or line (`agent.sock`, [`MAX_RECV_REPLY_BYTES`]). Without
//! it, one agent asking a few large questions could make the operator's
//! `Questions` reply unencodable and with it the gateway's connection.
//!
//! A list is filled oldest first (or in whatever order its query defines)
//! until the next item would not fit; from then on nothing more is admitted,
//! so a reply is always a prefix without gaps, and [`Budget::truncated`]
//! says whether anything was left out. Sizes are measured exactly, with the
//! serializer the reply will go through (JSON escaping can make agent text
//! six times longer).
//!
//! This module must never drop an item silently from the middle of a list,
//! and never decide what a list contains — only where it stops.

use hive_proto::agent::MAX_RECV_REPLY_BYTES;
use hive_proto::codec::MAX_FRAME;
use serde::Serialize;

/// Room kept in a reply for what is not a budgeted list item (the frame or
/// line envelope, ids, other small fields).
pub const ENVELOPE_RESERVE: usize = 64 * 1024;
/// What the lists of one operator reply may take together.
pub const OPERATOR_LISTS: usize = MAX_FRAME - ENVELOPE_RESERVE;
/// What the lists of one agent reply (`loose_ends`) may take together.
pub const AGENT_LISTS: usize = MAX_RECV_REPLY_BYTES - ENVELOPE_RESERVE;

/// The serializer a reply goes through.
#[derive(Clone, Copy, Debug)]
enum Wire {
    /// The operator RPC.
    Postcard,
    /// The agent protocol.
    Json,
}

/// Bytes left for the list items of one reply.
#[derive(Debug)]
pub struct Budget {
    left: usize,
    wire: Wire,
    truncated: bool,
}

impl Budget {
    /// For an operator reply (postcard).
    pub fn operator() -> Self {
        Self::new(OPERATOR_LISTS, Wire::Postcard)
    }

    /// For an agent reply (JSON).
    pub fn agent() -> Self {
        Self::new(AGENT_LISTS, Wire::Json)
    }

    fn new(left: usize, wire: Wire) -> Self {
        Self {
            left,
            wire,
            truncated: false,
        }
    }

    /// Whether `item` still fits; if it does, its size is charged. Once one
    /// item did not fit, no later one is admitted.
    pub fn admit<T: Serialize>(&mut self, item: &T) -> bool {
        if self.truncated {
            return false;
        }
        let size = match self.wire {
            Wire::Postcard => {
                postcard::serialize_with_flavor(item, postcard::ser_flavors::Size::default())
                    .unwrap_or(usize::MAX)
            }
            // +1 for the comma between items.
            Wire::Json => serde_json::to_vec(item)
                .map(|v| v.len().saturating_add(1))
                .unwrap_or(usize::MAX),
        };
        if size > self.left {
            self.truncated = true;
            return false;
        }
        self.left -= size;
        true
    }

    /// Whether some item was left out.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_admitted_until_one_does_not_fit_and_none_after() {
        let mut b = Budget::new(25, Wire::Json);
        // "aaaaaaaa" is 10 bytes of JSON, 11 with its comma.
        assert!(b.admit(&"a".repeat(8)));
        assert!(b.admit(&"a".repeat(8)));
        assert!(!b.truncated());
        assert!(!b.admit(&"a".repeat(8)), "3 bytes left");
        assert!(b.truncated());
        assert!(!b.admit(&""), "nothing after the first refusal: no gaps");
    }

    #[test]
    fn json_escaping_is_counted() {
        // A control character becomes \u0001: six bytes for one.
        let mut b = Budget::new(61 + 1, Wire::Json);
        assert!(!b.admit(&"\u{1}".repeat(11)), "68 bytes of JSON");
        let mut b = Budget::new(62 + 1, Wire::Json);
        assert!(b.admit(&"\u{1}".repeat(10)), "62 bytes of JSON");
    }

    #[test]
    fn postcard_sizes_are_exact() {
        let s = "x".repeat(200);
        let exact = postcard::to_stdvec(&s).unwrap().len();
        assert_eq!(exact, 202, "a two-byte varint length, then the bytes");
        let mut b = Budget::new(exact, Wire::Postcard);
        assert!(b.admit(&s));
        assert!(!b.admit(&""));
    }
}
