//! Agent addressing: slot `n` of the `[network]` pools is agent `n`'s IPv4
//! `/30` and IPv6 `/64`, the host side of its veth taking the first address
//! and the container the second. Slots are allocated once and kept in the
//! store (`isolation_slots`), so an agent's addresses survive restarts of
//! its container and of the daemon.
//!
//! This module is arithmetic only: it never touches an interface or the
//! store.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;

/// Each agent's IPv4 network: network, host side, container, broadcast.
pub const AGENT_PREFIX4: u8 = 30;
/// Each agent's IPv6 network.
pub const AGENT_PREFIX6: u8 = 64;
/// Most agents a hive addresses, whatever the pools would hold.
pub const MAX_SLOTS: u64 = 1 << 16;

/// One agent's addresses, derived from its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentAddresses {
    pub slot: u64,
    pub net4: Ipv4Net,
    /// The host side of the veth: the agent's IPv4 gateway.
    pub host4: Ipv4Addr,
    /// The container side (`host0`).
    pub agent4: Ipv4Addr,
    pub net6: Ipv6Net,
    pub host6: Ipv6Addr,
    pub agent6: Ipv6Addr,
}

/// How many agents the pools hold: the smaller of the two, at most
/// [`MAX_SLOTS`].
pub fn capacity(net: &NetworkConfig) -> u64 {
    let v4 = 1u64 << u32::from(AGENT_PREFIX4 - net.pool4.prefix_len().min(AGENT_PREFIX4));
    let bits6 = u32::from(AGENT_PREFIX6 - net.pool6.prefix_len().min(AGENT_PREFIX6));
    let v6 = 1u64.checked_shl(bits6).unwrap_or(u64::MAX);
    v4.min(v6).min(MAX_SLOTS)
}

/// Slot `slot`'s addresses; `None` past the pools' [`capacity`].
pub fn addresses(net: &NetworkConfig, slot: u64) -> Option<AgentAddresses> {
    if slot >= capacity(net) {
        return None;
    }
    let base4 = u32::from(net.pool4.network()) + (slot as u32) * 4;
    let base6 = u128::from(net.pool6.network()) + (u128::from(slot) << 64);
    Some(AgentAddresses {
        slot,
        net4: Ipv4Net::new(Ipv4Addr::from(base4), AGENT_PREFIX4).ok()?,
        host4: Ipv4Addr::from(base4 + 1),
        agent4: Ipv4Addr::from(base4 + 2),
        net6: Ipv6Net::new(Ipv6Addr::from(base6), AGENT_PREFIX6).ok()?,
        host6: Ipv6Addr::from(base6 + 1),
        agent6: Ipv6Addr::from(base6 + 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(p4: &str, p6: &str) -> NetworkConfig {
        NetworkConfig {
            pool4: p4.parse().unwrap(),
            pool6: p6.parse().unwrap(),
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn slots_are_consecutive_subnets_of_the_pools() {
        let n = NetworkConfig::default();
        let a = addresses(&n, 0).unwrap();
        assert_eq!(a.net4.to_string(), "10.213.0.0/30");
        assert_eq!(
            (a.host4.to_string(), a.agent4.to_string()),
            ("10.213.0.1".into(), "10.213.0.2".into())
        );
        assert_eq!(a.net6.to_string(), "fd68:6976:6500::/64");
        assert_eq!(a.host6.to_string(), "fd68:6976:6500::1");
        assert_eq!(a.agent6.to_string(), "fd68:6976:6500::2");
        let b = addresses(&n, 257).unwrap();
        assert_eq!(b.net4.to_string(), "10.213.4.4/30");
        assert_eq!(b.agent6.to_string(), "fd68:6976:6500:101::2");
        assert!(n.pool4.contains(&b.net4) && n.pool6.contains(&b.net6));
    }

    #[test]
    fn capacity_is_the_smaller_pool_and_nothing_past_it_is_addressed() {
        assert_eq!(capacity(&NetworkConfig::default()), MAX_SLOTS.min(1 << 14));
        let small = net("10.1.0.0/28", "fd00::/48");
        assert_eq!(capacity(&small), 4);
        assert!(addresses(&small, 3).is_some());
        assert_eq!(addresses(&small, 4), None);
        assert_eq!(capacity(&net("10.0.0.0/8", "fd00::/62")), 4);
        assert_eq!(capacity(&net("10.0.0.0/30", "fd00::/64")), 1);
        assert_eq!(capacity(&net("10.0.0.0/8", "fd00::/16")), MAX_SLOTS);
    }
}
