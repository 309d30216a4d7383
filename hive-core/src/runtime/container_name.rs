//! The container name of an agent: what `nixos-container`, `systemd-nspawn`
//! (`-M`), `machinectl` and the host's interface list (`ve-<container>`)
//! call it. This module owns the mapping and the check that no two agents
//! of one hive share a container name; it must never depend on anything but
//! the agent's name (so the mapping is the same on every host and after
//! every restart) and never touch the system.
//!
//! The mapping:
//!
//! - A name of at most [`SHORT_NAME_MAX`] (8) characters is used as is:
//!   `h-<name>`, at most 10 characters.
//! - A longer name becomes exactly [`CONTAINER_NAME_MAX`] (11) characters:
//!   `h-`, the name's first [`PREFIX_LEN`] (4) characters, then
//!   [`HASH_LEN`] (5) characters of the lowercase RFC 4648 base32 encoding
//!   of the SHA-256 of the whole name (the first 25 bits of the digest).
//!   `research-assistant` → `h-rese2ewve`.
//!
//! Why these numbers: `nixos-container create` refuses names longer than
//! 11 characters, and Linux interface names stop at 15 bytes
//! (`IFNAMSIZ` - 1), so `ve-` + the container name (at most 14) always fits.
//! The two forms have different lengths (≤ 10 and exactly 11), so a short
//! name can never equal a long one's shortened form; a 9-character name
//! would fit as `h-<name>` too, but would then share its length with the
//! shortened forms, so it is shortened as well.
//!
//! Collisions: two long names collide only if they share their first four
//! characters *and* 25 bits of their SHA-256 (about one pair in 33 million
//! such pairs). [`check_unique`] finds any collision among a hive's agents;
//! the config is refused with a sentence naming both agents, before any
//! container exists, so an agent already running never changes its name —
//! the newcomer has to be named differently.

use std::collections::BTreeMap;

use hive_proto::AgentName;
use sha2::{Digest, Sha256};

/// Longest container name `nixos-container` accepts.
pub const CONTAINER_NAME_MAX: usize = 11;
/// Longest agent name used unchanged (`h-` + 8 = 10 characters).
pub const SHORT_NAME_MAX: usize = 8;
/// Characters of a long agent name kept at the front of its container name.
pub const PREFIX_LEN: usize = 4;
/// Characters of hash at the end of a shortened container name.
pub const HASH_LEN: usize = 5;
/// Longest host interface name (`IFNAMSIZ` - 1).
pub const INTERFACE_NAME_MAX: usize = 15;

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The agent's container name (see the module doc for the mapping).
pub fn container_name(agent: &AgentName) -> String {
    let name = agent.as_str();
    if name.len() <= SHORT_NAME_MAX {
        return format!("h-{name}");
    }
    let digest = Sha256::digest(name.as_bytes());
    // The first 40 bits of the digest, big-endian; the top 25 are used.
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let hash: String = (0..HASH_LEN)
        .map(|i| BASE32[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect();
    // Agent names are ASCII, so byte slicing is character slicing.
    format!("h-{}{hash}", &name[..PREFIX_LEN])
}

/// The host side of the container's veth pair, as `systemd-nspawn
/// --network-veth` and `nixos-container`'s `privateNetwork` name it.
pub fn host_interface(agent: &AgentName) -> String {
    format!("ve-{}", container_name(agent))
}

/// Two agents of one hive whose container names are the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agents {first} and {second} would both run in container {container}; \
     rename one of them (a name of at most {SHORT_NAME_MAX} characters is used as is)"
)]
pub struct ContainerNameCollision {
    pub first: AgentName,
    pub second: AgentName,
    pub container: String,
}

/// Refuses a set of agents in which two share a container name.
pub fn check_unique<'a>(
    agents: impl IntoIterator<Item = &'a AgentName>,
) -> Result<(), ContainerNameCollision> {
    let mut seen: BTreeMap<String, &AgentName> = BTreeMap::new();
    for agent in agents {
        let container = container_name(agent);
        if let Some(first) = seen.get(&container) {
            if *first != agent {
                return Err(ContainerNameCollision {
                    first: (*first).clone(),
                    second: agent.clone(),
                    container,
                });
            }
            continue;
        }
        seen.insert(container, agent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> AgentName {
        AgentName::new(s).unwrap()
    }

    fn is_container_char(c: char) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    }

    #[test]
    fn short_names_are_used_as_is() {
        assert_eq!(container_name(&name("a")), "h-a");
        assert_eq!(container_name(&name("alice")), "h-alice");
        assert_eq!(container_name(&name("abcdefgh")), "h-abcdefgh");
        assert_eq!(host_interface(&name("abcdefgh")), "ve-h-abcdefgh");
    }

    #[test]
    fn long_names_are_shortened_to_eleven_characters_stably() {
        // Pinned: the mapping is part of the on-disk state (container names
        // persist across daemon versions), so a change here is a migration.
        let long = name("abcdefghijklmnopqrstuvwxyz01234");
        assert_eq!(long.as_str().len(), 31);
        let c = container_name(&long);
        expect_test::expect!["h-abcdgbxcr"].assert_eq(&c);
        expect_test::expect!["h-rese2ewve"].assert_eq(&container_name(&name("research-assistant")));
        expect_test::expect!["h-abcddhgaf"].assert_eq(&container_name(&name("abcdefghi")));
        for n in ["abcdefghi", "research-assistant", long.as_str()] {
            let c = container_name(&name(n));
            assert_eq!(c.len(), CONTAINER_NAME_MAX, "{c}");
            assert!(c.starts_with(&format!("h-{}", &n[..PREFIX_LEN])), "{c}");
            assert!(c.chars().all(is_container_char), "{c}");
            assert_eq!(container_name(&name(n)), c, "not stable");
            assert!(host_interface(&name(n)).len() < INTERFACE_NAME_MAX);
        }
    }

    #[test]
    fn the_two_forms_never_meet() {
        // Every short form is at most 10 characters, every long one 11.
        for n in ["abcdefgh", "abcdefghi", "abcdefghij"] {
            let c = container_name(&name(n));
            assert_eq!(c.len() == CONTAINER_NAME_MAX, n.len() > SHORT_NAME_MAX);
        }
    }

    #[test]
    fn names_sharing_a_prefix_get_different_containers() {
        let names: Vec<AgentName> = (0..2000).map(|i| name(&format!("worker-{i:05}"))).collect();
        check_unique(&names).unwrap();
    }

    #[test]
    fn a_collision_names_both_agents() {
        // Found by searching generated names with a common prefix (25 bits
        // collide after a few thousand draws).
        let (a, b) = (name("coll-0004700"), name("coll-0005419"));
        assert_eq!(container_name(&a), "h-collrxaze");
        assert_eq!(container_name(&a), container_name(&b));
        let err = check_unique([&name("alice"), &a, &b]).unwrap_err();
        assert_eq!((&err.first, &err.second), (&a, &b));
        let text = err.to_string();
        assert!(
            text.contains(a.as_str()) && text.contains(b.as_str()),
            "{text}"
        );
        assert!(text.contains(&container_name(&a)), "{text}");
        // The same agent twice is not a collision.
        check_unique([&a, &a]).unwrap();
    }
}
