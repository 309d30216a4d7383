//! `hivectl doctor` (`AdminRequest::Doctor`, admin.sock only): the core
//! checks the live host and answers one [`DoctorCheck`] per line —
//!
//! 1. the modes and owners of the runtime and state dirs, `web.sock`,
//!    `admin.sock` and every agent's socket dir and socket ([`sockets`]);
//! 2. the gateway: each process connected to `web.sock`, by the pid the
//!    kernel reported — its uids, capability sets and `no_new_privs`, and the
//!    TCP ports it listens on ([`gateway`]);
//! 3. the hive's table `inet hyperhive`: present, shaped as the core would
//!    render it now and equal to what it installed;
//! 4. per running agent, probes from inside its container's network
//!    namespace ([`probe`]): every host address on the gateway's port(s),
//!    every other running agent's addresses, and the `[network]
//!    doctor_targets` — each `blocked` or `OPEN`.
//!
//! The table check and the probes run at the same time, so one report
//! describes one moment. This module must never change the host: it
//! repairs nothing (the reconcile loop does), sends nothing but TCP SYNs
//! from inside agent namespaces, and probes no address it was not given by
//! the host's own interfaces, the agents' allocations or the config.

pub mod gateway;
pub mod probe;
pub mod sockets;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};

use hive_proto::doctor::{DoctorCheck, DoctorReport, Verdict};
use hive_proto::AgentName;

use crate::config::{AgentPolicy, EgressPolicy, NetworkConfig};
use crate::hive::Hive;
use probe::{Outcome, Target};
use sockets::Kind;

/// The port host addresses and agents are probed on when no gateway is
/// connected to tell its own (the NixOS module's default web port).
pub const FALLBACK_PROBE_PORT: u16 = 8080;

/// An agent's socket dir under a container runtime: its range's root's
/// alone (`runtime::nspawn` sets it so; the `0700` parent keeps host users
/// out either way).
pub const CONTAINER_SOCKET_DIR_MODE: u32 = 0o700;

/// Runs every check. Never fails: what cannot be checked is a line saying so.
pub async fn run(hive: &Hive) -> DoctorReport {
    let mut checks = Vec::new();
    let expectations = socket_expectations(hive);
    checks.extend(
        tokio::task::spawn_blocking(move || {
            expectations.iter().map(sockets::check).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![failed("sockets", format!("the check panicked: {e}"))]),
    );
    let (gateway_checks, ports) = check_gateway(hive).await;
    checks.extend(gateway_checks);
    let (table, probes) = tokio::join!(check_table(hive), probe_agents(hive, &ports));
    checks.push(table);
    checks.extend(probes);
    DoctorReport { checks }
}

fn failed(subject: &str, what: String) -> DoctorCheck {
    DoctorCheck {
        subject: subject.into(),
        verdict: Verdict::Wrong {
            what,
            fix: "run hivectl doctor again; if it persists, see hive-core's log".into(),
        },
    }
}

/// What DESIGN §2 (and the constants beside the code that creates them)
/// says each path must be.
fn socket_expectations(hive: &Hive) -> Vec<sockets::Expect> {
    use crate::agent_socket::{AGENTS_DIR_MODE, AGENT_DIR_MODE, AGENT_SOCKET_MODE};
    use crate::daemon::{RUNTIME_DIR_MODE, STATE_DIR_MODE};
    use crate::operator_socket::OPERATOR_SOCKET_MODE;
    let config = hive.config();
    let own_gid = nix::unistd::getegid().as_raw();
    let web_gid = config
        .web_user
        .as_deref()
        .and_then(|u| crate::peer::lookup_user(u).ok())
        .map_or(own_gid, |u| u.gid);
    let admin_gid = config
        .admin_group
        .as_deref()
        .and_then(|g| crate::peer::lookup_group_gid(g).ok())
        .unwrap_or(own_gid);
    let mut want = vec![
        sockets::ours(
            "runtime dir",
            &config.runtime_dir,
            Kind::Dir,
            RUNTIME_DIR_MODE,
            None,
        ),
        sockets::ours(
            "state dir",
            &config.state_dir,
            Kind::Dir,
            STATE_DIR_MODE,
            None,
        ),
        sockets::ours(
            "web.sock",
            &config.web_socket(),
            Kind::Socket,
            OPERATOR_SOCKET_MODE,
            Some(web_gid),
        ),
        sockets::ours(
            "admin.sock",
            &config.admin_socket(),
            Kind::Socket,
            OPERATOR_SOCKET_MODE,
            Some(admin_gid),
        ),
        sockets::ours(
            "agent socket dirs",
            &config.runtime_dir.join("agents"),
            Kind::Dir,
            AGENTS_DIR_MODE,
            None,
        ),
    ];
    for agent in hive.agent_names() {
        let dir = config.agent_socket_dir(&agent);
        let label = format!("agent {agent} socket dir");
        // A container runtime gives the dir to the agent's uid range
        // (`runtime::nspawn`'s `own_dir`); otherwise it stays the core's.
        want.push(match hive.agent_view(&agent).uid_range {
            Some(range) => sockets::Expect {
                label,
                path: dir,
                kind: Kind::Dir,
                mode: CONTAINER_SOCKET_DIR_MODE,
                uid: range.base,
                gid: Some(range.base),
            },
            None => sockets::ours(label, &dir, Kind::Dir, AGENT_DIR_MODE, None),
        });
        want.push(sockets::ours(
            format!("agent {agent} socket"),
            &config.agent_socket(&agent),
            Kind::Socket,
            AGENT_SOCKET_MODE,
            None,
        ));
    }
    want
}

/// The gateway lines, and the ports it listens on.
async fn check_gateway(hive: &Hive) -> (Vec<DoctorCheck>, Vec<u16>) {
    let peers = hive.gateway_peers().current();
    if peers.is_empty() {
        let check = DoctorCheck {
            subject: "gateway hive-web".into(),
            verdict: Verdict::Wrong {
                what: "no hive-web is connected to web.sock".into(),
                fix: "start hive-web (systemctl start hive-web); it connects by itself".into(),
            },
        };
        return (vec![check], Vec::new());
    }
    let web_user = hive.config().web_user.clone();
    tokio::task::spawn_blocking(move || {
        let want = web_user
            .as_deref()
            .and_then(|u| crate::peer::lookup_user(u).ok());
        let mut checks = Vec::new();
        let mut ports = Vec::new();
        for (pid, _uid) in peers {
            match gateway::read_proc(pid) {
                Ok((status, listen)) => {
                    let st = gateway::parse_status(&status);
                    checks.extend(gateway::check_status(
                        pid,
                        &st,
                        want.as_ref().map(|u| (u.uid, u.name.as_str())),
                    ));
                    let subject = format!("gateway hive-web (pid {pid}) listens");
                    let verdict = if listen.is_empty() {
                        Verdict::Wrong {
                            what: "on no TCP port".into(),
                            fix: "check hive-web's --listen and its log".into(),
                        }
                    } else {
                        Verdict::Ok {
                            detail: listen
                                .iter()
                                .map(SocketAddr::to_string)
                                .collect::<Vec<_>>()
                                .join(" "),
                        }
                    };
                    checks.push(DoctorCheck { subject, verdict });
                    ports.extend(listen.iter().map(SocketAddr::port));
                }
                Err(e) => checks.push(failed(
                    &format!("gateway hive-web (pid {pid})"),
                    format!("/proc/{pid} cannot be read: {e}"),
                )),
            }
        }
        ports.sort_unstable();
        ports.dedup();
        (checks, ports)
    })
    .await
    .unwrap_or_else(|e| {
        (
            vec![failed("gateway", format!("the check panicked: {e}"))],
            Vec::new(),
        )
    })
}

async fn check_table(hive: &Hive) -> DoctorCheck {
    let subject = format!("table inet {}", crate::isolation::TABLE);
    let Some(isolation) = hive.isolation() else {
        return DoctorCheck {
            subject,
            verdict: Verdict::Ok {
                detail: format!(
                    "not used: the {} runtime gives agents no network namespace",
                    hive.config().runtime.name()
                ),
            },
        };
    };
    let verdict = match isolation.check_table().await {
        Ok(()) => Verdict::Ok {
            detail: "present and equal to what the core installs".into(),
        },
        Err(what) => Verdict::Wrong {
            what,
            fix: format!(
                "the reconcile loop restores it within {} ms; if it stays wrong, see `hivectl health` and hive-core's log",
                isolation.reconcile_period().as_millis()
            ),
        },
    };
    DoctorCheck { subject, verdict }
}

/// A running agent as the probes see it.
struct Running {
    name: AgentName,
    leader: u32,
    host_if: Option<String>,
}

/// One planned probe: where, what it is, and whether it may get through.
struct Planned {
    target: Target,
    label: String,
    /// `Some(reason)` when the agent's policy lets this through.
    allowed: Option<String>,
}

async fn probe_agents(hive: &Hive, gateway_ports: &[u16]) -> Vec<DoctorCheck> {
    let Some(isolation) = hive.isolation() else {
        return Vec::new();
    };
    let running: Vec<Running> = hive
        .agent_names()
        .into_iter()
        .filter_map(|name| {
            let view = hive.agent_view(&name);
            Some(Running {
                leader: view.leader_pid?,
                host_if: view.host_veth,
                name,
            })
        })
        .collect();
    if running.is_empty() {
        return vec![DoctorCheck {
            subject: "probes".into(),
            verdict: Verdict::Ok {
                detail: "no agent container runs, so there is nothing to probe from".into(),
            },
        }];
    }
    let host = match tokio::task::spawn_blocking(host_addresses).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => return vec![failed("probes", format!("listing host addresses: {e}"))],
        Err(e) => return vec![failed("probes", format!("listing host addresses: {e}"))],
    };
    let (ports, port_note) = match gateway_ports {
        [] => (
            vec![FALLBACK_PROBE_PORT],
            format!("port {FALLBACK_PROBE_PORT}, no gateway to ask"),
        ),
        p => (p.to_vec(), "gateway port".to_owned()),
    };
    let net = hive.config().network.clone();
    let mut jobs = Vec::new();
    for agent in &running {
        let policy = hive.policy(&agent.name);
        let mut plan = Vec::new();
        for (ifname, ip) in &host {
            let scope_if = match ip {
                IpAddr::V6(v6) if is_link_local6(v6) => {
                    // Only the agent's own link reaches a link-local address.
                    if agent.host_if.as_deref() != Some(ifname.as_str()) {
                        continue;
                    }
                    Some(crate::isolation::CONTAINER_IF.to_owned())
                }
                _ => None,
            };
            for port in &ports {
                plan.push(Planned {
                    target: Target {
                        addr: SocketAddr::new(*ip, *port),
                        scope_if: scope_if.clone(),
                    },
                    label: format!("host address on {ifname}, {port_note}"),
                    allowed: None,
                });
            }
        }
        for other in running.iter().filter(|o| o.name != agent.name) {
            let Some(a) = isolation.addresses(&other.name) else {
                continue;
            };
            for ip in [IpAddr::V4(a.agent4), IpAddr::V6(a.agent6)] {
                plan.push(Planned {
                    target: Target {
                        addr: SocketAddr::new(ip, ports[0]),
                        scope_if: None,
                    },
                    label: format!("agent {}", other.name),
                    allowed: None,
                });
            }
        }
        for t in &net.doctor_targets {
            plan.push(Planned {
                target: Target {
                    addr: *t,
                    scope_if: None,
                },
                label: "doctor target".into(),
                allowed: policy
                    .as_deref()
                    .and_then(|p| allowed_by_policy(&net, p, *t)),
            });
        }
        jobs.push((agent.name.clone(), agent.leader, plan));
    }
    // Every agent's probes at once, each agent's on threads of its own.
    let runs = jobs.into_iter().map(|(name, leader, plan)| async move {
        let targets: Vec<Target> = plan.iter().map(|p| p.target.clone()).collect();
        let outcomes = tokio::task::spawn_blocking(move || enter_and_probe(leader, &targets))
            .await
            .unwrap_or_else(|e| Err(format!("the probes panicked: {e}")));
        (name, plan, outcomes)
    });
    let mut checks = Vec::new();
    for (name, plan, outcomes) in futures::future::join_all(runs).await {
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(what) => {
                checks.push(DoctorCheck {
                    subject: format!("probes from agent {name}"),
                    verdict: Verdict::Wrong {
                        what,
                        fix: "check that its container still runs (hivectl status); run hivectl doctor again".into(),
                    },
                });
                continue;
            }
        };
        for (p, outcome) in plan.into_iter().zip(outcomes) {
            let subject = format!("probe {name} -> {} ({})", show(&p.target), p.label);
            let verdict = match (outcome, p.allowed) {
                (Outcome::Open(how), Some(why)) => Verdict::Ok {
                    detail: format!("reachable ({how}), as {why} allows"),
                },
                (Outcome::Open(how), None) => Verdict::Open { how },
                (Outcome::Blocked(how), _) => Verdict::Blocked { how },
                (Outcome::Failed(what), _) => Verdict::Wrong {
                    what,
                    fix: "run hivectl doctor again; if it persists, see hive-core's log".into(),
                },
            };
            checks.push(DoctorCheck { subject, verdict });
        }
    }
    checks
}

/// Opens the leader's network namespace, refuses the core's own, and runs
/// the probes in it.
fn enter_and_probe(leader: u32, targets: &[Target]) -> Result<Vec<Outcome>, String> {
    let path = format!("/proc/{leader}/ns/net");
    let ns = File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let theirs = std::fs::read_link(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ours = std::fs::read_link("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot read the core's own namespace: {e}"))?;
    if theirs == ours {
        return Err(
            "its container shares the core's network namespace, so nothing isolates it".into(),
        );
    }
    Ok(probe::probe_all(&ns, targets))
}

/// `ADDR:PORT`, with `%IF` for a scoped link-local address.
fn show(t: &Target) -> String {
    match (&t.addr, &t.scope_if) {
        (SocketAddr::V6(v6), Some(ifname)) => format!("[{}%{ifname}]:{}", v6.ip(), v6.port()),
        (addr, _) => addr.to_string(),
    }
}

fn is_link_local6(ip: &std::net::Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// Why the agent's policy lets a connect to `to` through, if it does: the
/// table passes an `egress = "allow"` agent's traffic to any address outside
/// the private ranges, to what its `allow_hosts` lists, and to the resolver
/// on port 53.
fn allowed_by_policy(net: &NetworkConfig, policy: &AgentPolicy, to: SocketAddr) -> Option<String> {
    if policy.egress != EgressPolicy::Allow {
        return None;
    }
    let ip = to.ip();
    if net.resolver == Some(ip) && to.port() == 53 {
        return Some("the configured resolver".into());
    }
    if policy.allow_hosts.iter().any(|n| n.contains(&ip)) {
        return Some("its allow_hosts".into());
    }
    let private = crate::isolation::ruleset::PRIVATE4
        .iter()
        .chain(crate::isolation::ruleset::PRIVATE6)
        .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&ip));
    let in_pools = match ip {
        IpAddr::V4(a) => net.pool4.contains(&a),
        IpAddr::V6(a) => net.pool6.contains(&a),
    };
    (!private && !in_pools).then(|| "egress = \"allow\" to a public address".into())
}

/// Every address of the core's own network namespace but loopback (an
/// agent's 127.0.0.1 is its own), with the interface it is on.
fn host_addresses() -> Result<Vec<(String, IpAddr)>, nix::Error> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        out.push((ifa.interface_name, ip));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_table_lets_through_counts_as_allowed() {
        let net = NetworkConfig {
            resolver: Some("10.88.0.53".parse().unwrap()),
            ..NetworkConfig::default()
        };
        let allow = AgentPolicy {
            allow_hosts: vec!["192.168.7.0/24".parse().unwrap()],
            ..AgentPolicy::default()
        };
        let deny = AgentPolicy {
            egress: EgressPolicy::Deny,
            ..allow.clone()
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(allowed_by_policy(&net, &allow, at("10.88.0.53:53")).is_some());
        assert!(allowed_by_policy(&net, &allow, at("10.88.0.53:80")).is_none());
        assert!(allowed_by_policy(&net, &allow, at("192.168.7.9:22")).is_some());
        assert!(allowed_by_policy(&net, &allow, at("192.168.8.9:22")).is_none());
        assert!(allowed_by_policy(&net, &allow, at("[fd00::1]:22")).is_none());
        assert!(allowed_by_policy(&net, &allow, at("10.213.0.6:22")).is_none());
        assert!(allowed_by_policy(&net, &allow, at("203.0.113.9:443")).is_some());
        for t in ["192.168.7.9:22", "203.0.113.9:443", "10.88.0.53:53"] {
            assert!(allowed_by_policy(&net, &deny, at(t)).is_none(), "{t}");
        }
    }

    #[test]
    fn host_addresses_leave_out_loopback() {
        let list = host_addresses().unwrap();
        assert!(list.iter().all(|(_, ip)| !ip.is_loopback()), "{list:?}");
    }
}
