//! Addresses on an agent's veth: the host side (`ve-h-…`) gets the first
//! address of the agent's `/30` and `/64`, the container side (`host0`,
//! reached by entering the leader's network namespace with `nsenter`) the
//! second, with default routes through the host side. One `ip -batch`
//! per side; every address and route is `replace`, so a second attach
//! after a container restart changes nothing.
//!
//! This module must never configure the namespace it runs in from the
//! container side: a leader pid that shares the daemon's network namespace
//! is refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::addressing::{AgentAddresses, AGENT_PREFIX4, AGENT_PREFIX6};
use super::nft::run;
use super::{IsolationError, AGENT_IF_PREFIX};
use crate::config::MAX_IFNAME;

/// How long attach waits for nspawn to have moved `host0` into the
/// container and the host side to exist.
pub const LINK_WAIT: Duration = Duration::from_secs(5);

/// The programs attach runs.
#[derive(Clone, Debug)]
pub struct IpTools {
    pub ip: PathBuf,
    pub nsenter: PathBuf,
}

impl Default for IpTools {
    fn default() -> Self {
        Self {
            ip: PathBuf::from("ip"),
            nsenter: PathBuf::from("nsenter"),
        }
    }
}

/// Whether `name` is an interface name the table may hold: `ve-h-…`, at
/// most 15 characters of `[A-Za-z0-9_.-]`.
pub fn valid_agent_if(name: &str) -> bool {
    name.len() <= MAX_IFNAME
        && name.len() > AGENT_IF_PREFIX.len()
        && name.starts_with(AGENT_IF_PREFIX)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `/proc/<pid>/ns/net`, refused if it is the caller's own namespace.
pub fn leader_netns(leader_pid: u32) -> Result<PathBuf, IsolationError> {
    let path = PathBuf::from(format!("/proc/{leader_pid}/ns/net"));
    let theirs = std::fs::metadata(&path).map_err(|source| IsolationError::Leader {
        pid: leader_pid,
        message: format!("reading {}: {source}", path.display()),
    })?;
    let ours =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| IsolationError::Leader {
            pid: leader_pid,
            message: format!("reading our own network namespace: {source}"),
        })?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(IsolationError::Leader {
            pid: leader_pid,
            message: "it shares the daemon's network namespace (no --private-network?)".into(),
        });
    }
    Ok(path)
}

/// Configures both ends of the veth.
pub async fn configure(
    tools: &IpTools,
    host_if: &str,
    netns: &Path,
    container_if: &str,
    a: &AgentAddresses,
) -> Result<(), IsolationError> {
    let netns_arg = format!("--net={}", netns.display());
    let enter = [netns_arg.as_str(), "--", path_str(&tools.ip), "-batch", "-"];
    wait_for_links(tools, host_if, &enter, container_if).await?;
    let host = format!(
        "link set dev {host_if} up\n\
         address replace {}/{AGENT_PREFIX4} dev {host_if}\n\
         address replace {}/{AGENT_PREFIX6} dev {host_if} nodad\n",
        a.host4, a.host6
    );
    run(&tools.ip, &["-batch", "-"], Some(&host)).await?;
    let container = format!(
        "link set dev lo up\n\
         link set dev {container_if} up\n\
         address replace {}/{AGENT_PREFIX4} dev {container_if}\n\
         address replace {}/{AGENT_PREFIX6} dev {container_if} nodad\n\
         route replace 0.0.0.0/0 via {} dev {container_if}\n\
         route replace ::/0 via {} dev {container_if}\n",
        a.agent4, a.agent6, a.host4, a.host6
    );
    run(&tools.nsenter, &enter, Some(&container)).await?;
    Ok(())
}

/// Waits (at most [`LINK_WAIT`]) until both ends exist.
async fn wait_for_links(
    tools: &IpTools,
    host_if: &str,
    enter: &[&str],
    container_if: &str,
) -> Result<(), IsolationError> {
    let end = Instant::now() + LINK_WAIT;
    let probe_host = format!("link show dev {host_if}\n");
    let probe_container = format!("link show dev {container_if}\n");
    loop {
        let host = run(&tools.ip, &["-batch", "-"], Some(&probe_host)).await;
        let container = match &host {
            Ok(_) => run(&tools.nsenter, enter, Some(&probe_container)).await,
            Err(_) => Ok(String::new()),
        };
        match (host, container) {
            (Ok(_), Ok(_)) => return Ok(()),
            (Err(e), _) | (_, Err(e)) if Instant::now() >= end => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or("ip")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_interface_names_are_accepted() {
        assert!(valid_agent_if("ve-h-alice"));
        assert!(valid_agent_if("ve-h-abcdefghij"));
        assert!(!valid_agent_if("ve-h-abcdefghijk"), "16 characters");
        assert!(!valid_agent_if("ve-h-"));
        assert!(!valid_agent_if("eth0"));
        assert!(!valid_agent_if("ve-h-a\" accept"));
        assert!(!valid_agent_if("ve-h-a;b"));
    }

    #[test]
    fn our_own_namespace_is_refused_as_a_leader() {
        let me = std::process::id();
        let err = leader_netns(me).unwrap_err().to_string();
        assert!(
            err.contains("shares the daemon's network namespace"),
            "{err}"
        );
        assert!(leader_netns(u32::MAX).is_err());
    }
}
