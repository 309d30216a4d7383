//! The renderer of the hive's own nftables table, `table inet hyperhive`: a
//! pure function from the network config and the agents' addresses and
//! policies to the text one `nft -f` transaction installs, plus the shape
//! (chains and their rule counts) that verifies what was read back.
//!
//! Why each rule is there is written beside it here and in
//! `docs/network.md`. This module must never run a command: it is text.

use std::fmt::Write as _;
use std::net::IpAddr;

use hive_proto::AgentName;
use ipnet::IpNet;

use super::addressing::AgentAddresses;
use super::{AGENT_IF_PREFIX, TABLE};
use crate::config::{EgressPolicy, NetworkConfig};

/// Destinations an `egress = "allow"` agent never reaches unless its
/// `allow_hosts` lists them: "this network", RFC 1918, CGNAT and tailnets
/// (`100.64.0.0/10`), loopback, link-local, multicast and the reserved rest.
pub const PRIVATE4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
];
/// The same for IPv6: unspecified and loopback, IPv4-mapped, the local-use
/// NAT64 prefix, ULA (`fc00::/7`), link-local and multicast.
pub const PRIVATE6: &[&str] = &[
    "::/127",
    "::ffff:0.0.0.0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// What the renderer needs of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRules {
    pub name: AgentName,
    /// The host side of its veth (`ve-h-…`, at most 15 characters).
    pub host_if: String,
    pub addresses: AgentAddresses,
    pub egress: EgressPolicy,
    pub allow_hosts: Vec<IpNet>,
}

/// One chain as the kernel should hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainShape {
    pub name: String,
    /// `Some(hook)` for a base chain.
    pub hook: Option<&'static str>,
    pub rules: usize,
}

/// A rendered table: the `nft -f` text and the shape to verify it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub text: String,
    pub chains: Vec<ChainShape>,
    pub sets: Vec<String>,
}

struct Chain {
    name: String,
    /// `type … hook … priority …; policy accept;` for a base chain.
    head: Option<(&'static str, String)>,
    /// Each rule with the comment that says why (rendered as `# …`).
    rules: Vec<(String, &'static str)>,
}

impl Chain {
    fn regular(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            head: None,
            rules: Vec::new(),
        }
    }

    fn base(name: &str, kind: &str, hook: &'static str, priority: &str) -> Self {
        Self {
            name: name.into(),
            head: Some((
                hook,
                format!("type {kind} hook {hook} priority {priority}; policy accept;"),
            )),
            rules: Vec::new(),
        }
    }

    fn rule(&mut self, rule: impl Into<String>, why: &'static str) {
        self.rules.push((rule.into(), why));
    }
}

/// The chain that holds one agent's egress policy.
pub fn agent_chain(agent: &AgentName) -> String {
    format!("agent-{agent}")
}

/// Renders the whole table. Agents are taken in name order, so the same
/// inputs always give the same text.
pub fn render(net: &NetworkConfig, agents: &[AgentRules]) -> Ruleset {
    let mut agents: Vec<&AgentRules> = agents.iter().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    // An agent with no interface yet, or one whose (predicted) interface
    // another agent already has, is matched by nothing but the catch-all
    // drops until its runtime reports its own.
    let mut seen = std::collections::BTreeSet::new();
    agents.retain(|a| !a.host_if.is_empty() && seen.insert(a.host_if.clone()));
    let any_agent = format!("\"{AGENT_IF_PREFIX}*\"");
    let allowed: Vec<&AgentRules> = agents
        .iter()
        .copied()
        .filter(|a| a.egress == EgressPolicy::Allow)
        .collect();

    let mut input = Chain::base("input", "filter", "input", "filter - 10");
    input.rule(
        format!("iifname != {any_agent} accept"),
        "only traffic from agent interfaces is this table's business",
    );
    input.rule(
        "ct state established,related accept",
        "replies to connections the host opened into a container",
    );
    input.rule(
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
        "IPv6 neighbour discovery, without which the container has no IPv6 gateway",
    );
    if let (Some(resolver), false) = (net.resolver, allowed.is_empty()) {
        let ifs = if_set(&allowed);
        let fam = family(resolver);
        for proto in ["udp", "tcp"] {
            input.rule(
                format!("iifname {ifs} {fam} daddr {resolver} {proto} dport 53 accept"),
                "the configured resolver, should it be an address of the host",
            );
        }
    }
    input.rule(
        "drop",
        "every other new connection to any host address: every interface, loopback, the gateway",
    );

    let mut forward = Chain::base("forward", "filter", "forward", "filter - 10");
    forward.rule(
        format!("oifname {any_agent} ct state established,related accept"),
        "replies to connections an agent opened",
    );
    forward.rule(
        format!("oifname {any_agent} drop"),
        "nothing new into a container: not from another agent, not from the LAN",
    );
    forward.rule(
        format!("iifname {any_agent} jump egress"),
        "what leaves a container is judged by its agent's policy",
    );

    let mut egress = Chain::regular("egress");
    egress.rule("ct state invalid drop", "no half-tracked packets");
    egress.rule(
        "ct state established,related accept",
        "the rest of a connection the policy let start",
    );
    if !agents.is_empty() {
        let map: Vec<String> = agents
            .iter()
            .map(|a| format!("\"{}\" : jump {}", a.host_if, agent_chain(&a.name)))
            .collect();
        egress.rule(
            format!("iifname vmap {{ {} }}", map.join(", ")),
            "each agent interface to its agent's chain",
        );
    }
    egress.rule(
        "drop",
        "an agent interface the hive does not know (yet) sends nothing",
    );

    let mut per_agent = Vec::new();
    for a in &agents {
        let mut c = Chain::regular(agent_chain(&a.name));
        let addr = &a.addresses;
        c.rule(
            format!("ip saddr != {} drop", addr.agent4),
            "an agent speaks only from its own address",
        );
        c.rule(
            format!("ip6 saddr != {} drop", addr.agent6),
            "an agent speaks only from its own address",
        );
        match a.egress {
            EgressPolicy::Deny => c.rule("drop", "egress = \"deny\": nothing leaves"),
            EgressPolicy::Allow => {
                if let Some(r) = net.resolver {
                    let fam = family(r);
                    for proto in ["udp", "tcp"] {
                        c.rule(
                            format!("{fam} daddr {r} {proto} dport 53 accept"),
                            "the configured resolver: the one exception to the private ranges",
                        );
                    }
                }
                let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = IpNet::aggregate(&a.allow_hosts)
                    .into_iter()
                    .partition(|n| matches!(n, IpNet::V4(_)));
                if !v4.is_empty() {
                    c.rule(
                        format!("ip daddr {} accept", net_set(&v4)),
                        "allow_hosts: exceptions the operator listed",
                    );
                }
                if !v6.is_empty() {
                    c.rule(
                        format!("ip6 daddr {} accept", net_set(&v6)),
                        "allow_hosts: exceptions the operator listed",
                    );
                }
                c.rule(
                    "ip daddr @private4 drop",
                    "private, CGNAT/tailnet, link-local and the agent pool",
                );
                c.rule(
                    "ip6 daddr @private6 drop",
                    "ULA, link-local, mapped and the agent pool",
                );
                match &net.uplink {
                    Some(up) => {
                        c.rule(
                            format!("oifname \"{up}\" accept"),
                            "the internet, through the uplink only",
                        );
                        c.rule("drop", "any other interface");
                    }
                    None => c.rule("accept", "the internet"),
                }
            }
        }
        per_agent.push(c);
    }

    let mut nat = Chain::base("postrouting", "nat", "postrouting", "srcnat - 10");
    let out = match &net.uplink {
        Some(up) => format!("oifname \"{up}\""),
        None => format!("oifname != {any_agent}"),
    };
    nat.rule(
        format!("ip saddr {} {out} masquerade", net.pool4),
        "agent egress leaves with the host's address",
    );
    nat.rule(
        format!("ip6 saddr {} {out} masquerade", net.pool6),
        "agent egress leaves with the host's address (the pool is ULA)",
    );

    let mut chains = vec![input, forward, egress];
    chains.extend(per_agent);
    chains.push(nat);

    let private4 = with_pool(PRIVATE4, IpNet::V4(net.pool4));
    let private6 = with_pool(PRIVATE6, IpNet::V6(net.pool6));

    let mut text = String::new();
    let _ = writeln!(
        text,
        "# table inet {TABLE}: rendered by hive-core (isolation::ruleset) and\n\
         # replaced whole; an edit is undone by the reconcile loop. See docs/network.md.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{"
    );
    for (name, kind, elems) in [
        ("private4", "ipv4_addr", &private4),
        ("private6", "ipv6_addr", &private6),
    ] {
        let _ = writeln!(
            text,
            "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n\t\tauto-merge\n\t\telements = {{ {} }}\n\t}}\n",
            elems.join(", ")
        );
    }
    for c in &chains {
        let _ = writeln!(text, "\tchain {} {{", c.name);
        if let Some((_, head)) = &c.head {
            let _ = writeln!(text, "\t\t{head}");
        }
        for (rule, why) in &c.rules {
            let _ = writeln!(text, "\t\t# {why}\n\t\t{rule}");
        }
        let _ = writeln!(text, "\t}}\n");
    }
    text.truncate(text.trim_end().len());
    text.push_str("\n}\n");

    Ruleset {
        text,
        chains: chains
            .iter()
            .map(|c| ChainShape {
                name: c.name.clone(),
                hook: c.head.as_ref().map(|(h, _)| *h),
                rules: c.rules.len(),
            })
            .collect(),
        sets: vec!["private4".into(), "private6".into()],
    }
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

fn if_set(agents: &[&AgentRules]) -> String {
    let names: Vec<String> = agents
        .iter()
        .map(|a| format!("\"{}\"", a.host_if))
        .collect();
    format!("{{ {} }}", names.join(", "))
}

fn net_set(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The fixed ranges plus the agent pool, aggregated so no element overlaps
/// another.
fn with_pool(fixed: &[&str], pool: IpNet) -> Vec<String> {
    let mut nets: Vec<IpNet> = fixed
        .iter()
        .map(|s| s.parse().expect("a valid built-in range"))
        .collect();
    nets.push(pool);
    IpNet::aggregate(&nets)
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::addressing::addresses;

    fn agent(name: &str, slot: u64, egress: EgressPolicy, allow: &[&str]) -> AgentRules {
        let n = AgentName::new(name).unwrap();
        AgentRules {
            host_if: format!("{AGENT_IF_PREFIX}{name}"),
            name: n,
            addresses: addresses(&NetworkConfig::default(), slot).unwrap(),
            egress,
            allow_hosts: allow
                .iter()
                .map(|h| {
                    h.parse()
                        .unwrap_or_else(|_| IpNet::from(h.parse::<IpAddr>().unwrap()))
                })
                .collect(),
        }
    }

    fn net(resolver: Option<&str>, uplink: Option<&str>) -> NetworkConfig {
        NetworkConfig {
            resolver: resolver.map(|r| r.parse().unwrap()),
            uplink: uplink.map(str::to_owned),
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn the_ruleset_for_three_agents() {
        let rs = render(
            &net(Some("10.88.0.53"), Some("eth0")),
            &[
                agent(
                    "bob",
                    1,
                    EgressPolicy::Allow,
                    &["10.88.0.10", "2001:db8::/64"],
                ),
                agent("alice", 0, EgressPolicy::Allow, &[]),
                agent("carol", 2, EgressPolicy::Deny, &["203.0.113.7"]),
            ],
        );
        expect_test::expect_file!["snapshots/three_agents.nft"].assert_eq(&rs.text);
        let shape: Vec<(&str, usize)> = rs
            .chains
            .iter()
            .map(|c| (c.name.as_str(), c.rules))
            .collect();
        assert_eq!(
            shape,
            [
                ("input", 6),
                ("forward", 3),
                ("egress", 4),
                ("agent-alice", 8),
                ("agent-bob", 10),
                ("agent-carol", 3),
                ("postrouting", 2)
            ]
        );
    }

    #[test]
    fn without_agents_every_agent_interface_is_still_dropped() {
        let rs = render(&net(None, None), &[]);
        assert!(rs.text.contains("iifname != \"ve-h-*\" accept"));
        assert!(rs.text.contains("oifname \"ve-h-*\" drop"));
        assert!(!rs.text.contains("vmap"), "an empty vmap is a syntax error");
        assert!(rs.text.contains("oifname != \"ve-h-*\" masquerade"));
        let input = &rs.chains[0];
        assert_eq!(
            (input.name.as_str(), input.hook, input.rules),
            ("input", Some("input"), 4)
        );
    }

    #[test]
    fn deny_agents_get_no_resolver_and_no_exception() {
        let rs = render(
            &net(Some("10.88.0.53"), None),
            &[agent("carol", 0, EgressPolicy::Deny, &["10.88.0.10"])],
        );
        assert!(!rs.text.contains("dport 53"), "{}", rs.text);
        assert!(!rs.text.contains("10.88.0.10"), "{}", rs.text);
    }

    #[test]
    fn a_pool_outside_the_private_ranges_is_dropped_too() {
        let mut n = net(None, None);
        n.pool4 = "198.18.0.0/16".parse().unwrap();
        n.pool6 = "2001:db8:99::/48".parse().unwrap();
        let rs = render(&n, &[]);
        assert!(rs.text.contains("198.18.0.0/16"));
        assert!(rs.text.contains("2001:db8:99::/48"));
        // The default pool sits inside 10/8 and fc00::/7: aggregated away.
        let rs = render(&net(None, None), &[]);
        assert!(!rs.text.contains("10.213.0.0/16,"), "{}", rs.text);
    }
}
