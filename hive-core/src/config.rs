//! The daemon's configuration: a TOML file parsed into [`RawConfig`] (what
//! the file says) and then validated into [`Config`] (what the rest of the
//! daemon trusts), ripgrep-style. Nothing outside this module reads the raw
//! form; nothing inside it opens sockets or the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hive_proto::AgentName;
use serde::Deserialize;

use crate::Error;

/// Default cap on pending reminders per agent.
pub const DEFAULT_MAX_REMINDERS: u32 = 64;
/// Default cap on questions one agent has open at once.
pub const DEFAULT_MAX_OPEN_QUESTIONS: u32 = 64;
/// Events kept by default; older ones are pruned.
pub const DEFAULT_EVENT_RETENTION: u64 = 100_000;
/// Fewest events a hive may be set to keep: a subscriber that reconnects
/// after a short outage should find what it missed, not a reload.
pub const MIN_EVENT_RETENTION: u64 = 1_000;
/// Default cap on simultaneous connections per agent socket.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    /// Group whose members may use `admin.sock` (root always may).
    pub admin_group: Option<String>,
    /// User that `hive-web` runs as; the only non-root uid `web.sock` accepts.
    pub web_user: Option<String>,
    pub runtime: Option<String>,
    /// Events kept for reconnecting subscribers (default
    /// [`DEFAULT_EVENT_RETENTION`], at least [`MIN_EVENT_RETENTION`]).
    pub event_retention: Option<u64>,
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgent>,
}

/// One `[agents.<name>]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Agent names, `operator`, or `*` (everyone). Default `["*"]`.
    pub allowed_recipients: Option<Vec<String>>,
    pub max_reminders: Option<u32>,
    pub max_open_questions: Option<u32>,
    pub max_connections: Option<u32>,
    /// For the `process` runtime: the command that runs the agent.
    pub command: Option<Vec<String>>,
}

/// Which container runtime the daemon drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Agents are child processes (development only).
    Process,
    /// Nothing is started: sockets exist and agents attach by hand.
    Detached,
}

/// Whom an agent may message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientPolicy {
    /// `*`: every agent and the operator.
    pub everyone: bool,
    pub operator: bool,
    pub agents: BTreeSet<AgentName>,
}

impl RecipientPolicy {
    pub fn everyone() -> Self {
        Self {
            everyone: true,
            operator: true,
            agents: BTreeSet::new(),
        }
    }

    pub fn allows_operator(&self) -> bool {
        self.everyone || self.operator
    }

    pub fn allows_agent(&self, name: &AgentName) -> bool {
        self.everyone || self.agents.contains(name)
    }

    /// As shown by `whoami` and on the dashboard.
    pub fn to_strings(&self) -> Vec<String> {
        if self.everyone {
            return vec!["*".into()];
        }
        let mut out: Vec<String> = self.agents.iter().map(|a| a.to_string()).collect();
        if self.operator {
            out.push("operator".into());
        }
        out
    }
}

/// One agent's validated settings.
#[derive(Clone, Debug)]
pub struct AgentPolicy {
    pub allowed_recipients: RecipientPolicy,
    pub max_reminders: u32,
    pub max_open_questions: u32,
    pub max_connections: u32,
    pub command: Option<Vec<String>>,
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            allowed_recipients: RecipientPolicy::everyone(),
            max_reminders: DEFAULT_MAX_REMINDERS,
            max_open_questions: DEFAULT_MAX_OPEN_QUESTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            command: None,
        }
    }
}

/// The validated configuration the daemon runs on.
#[derive(Clone, Debug)]
pub struct Config {
    /// `/var/lib/hyperhive`: the store, the config repo, agent state.
    pub state_dir: PathBuf,
    /// `/run/hyperhive`: every socket.
    pub runtime_dir: PathBuf,
    pub admin_group: Option<String>,
    pub web_user: Option<String>,
    pub runtime: RuntimeKind,
    /// Events kept for reconnecting subscribers; older ones are pruned.
    pub event_retention: u64,
    pub agents: BTreeMap<AgentName, AgentPolicy>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        Self::from_raw(raw).map_err(|message| Error::Config {
            path: path.to_owned(),
            message,
        })
    }

    /// Validates a parsed config; the error is one sentence.
    pub fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let runtime = match raw.runtime.as_deref().unwrap_or("process") {
            "process" => RuntimeKind::Process,
            "detached" | "none" => RuntimeKind::Detached,
            other => {
                return Err(format!(
                    "runtime {other:?} is not available (choose process or detached)"
                ))
            }
        };
        let event_retention = raw.event_retention.unwrap_or(DEFAULT_EVENT_RETENTION);
        if event_retention < MIN_EVENT_RETENTION {
            return Err(format!(
                "event_retention must be at least {MIN_EVENT_RETENTION} (got {event_retention})"
            ));
        }
        let mut agents = BTreeMap::new();
        for (name, raw_agent) in raw.agents {
            let name = AgentName::new(&name).map_err(|e| format!("agent {name:?}: {e}"))?;
            agents.insert(name, validate_agent(raw_agent)?);
        }
        for (name, policy) in &agents {
            for peer in &policy.allowed_recipients.agents {
                if !agents.contains_key(peer) {
                    return Err(format!(
                        "agent {name}: allowed recipient {peer} is not a configured agent"
                    ));
                }
            }
        }
        Ok(Self {
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/hyperhive")),
            runtime_dir: raw
                .runtime_dir
                .unwrap_or_else(|| PathBuf::from("/run/hyperhive")),
            admin_group: raw.admin_group,
            web_user: raw.web_user,
            runtime,
            event_retention,
            agents,
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("hive.db")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir.join("admin.sock")
    }

    pub fn web_socket(&self) -> PathBuf {
        self.runtime_dir.join("web.sock")
    }

    /// `…/agents/<name>/`: the directory bind-mounted into the container.
    pub fn agent_socket_dir(&self, name: &AgentName) -> PathBuf {
        self.runtime_dir.join("agents").join(name.as_str())
    }

    pub fn agent_socket(&self, name: &AgentName) -> PathBuf {
        self.agent_socket_dir(name).join("agent.sock")
    }

    /// `…/agents/<name>/state/`: the agent's own files.
    pub fn agent_state_dir(&self, name: &AgentName) -> PathBuf {
        self.state_dir
            .join("agents")
            .join(name.as_str())
            .join("state")
    }
}

fn validate_agent(raw: RawAgent) -> Result<AgentPolicy, String> {
    let mut policy = AgentPolicy::default();
    if let Some(list) = raw.allowed_recipients {
        let mut p = RecipientPolicy {
            everyone: false,
            operator: false,
            agents: BTreeSet::new(),
        };
        for entry in list {
            match entry.as_str() {
                "*" => p.everyone = true,
                "operator" => p.operator = true,
                other => {
                    let n = AgentName::new(other)
                        .map_err(|e| format!("allowed recipient {other:?}: {e}"))?;
                    p.agents.insert(n);
                }
            }
        }
        policy.allowed_recipients = p;
    }
    if let Some(n) = raw.max_reminders {
        policy.max_reminders = n;
    }
    if let Some(n) = raw.max_open_questions {
        policy.max_open_questions = n;
    }
    if let Some(n) = raw.max_connections {
        if n == 0 {
            return Err("max_connections must be at least 1".into());
        }
        policy.max_connections = n;
    }
    if let Some(cmd) = raw.command {
        if cmd.is_empty() {
            return Err("command must not be empty".into());
        }
        policy.command = Some(cmd);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        Config::from_raw(toml::from_str(s).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_and_policies() {
        let c = parse(
            r#"
            [agents.alice]
            allowed_recipients = ["bob", "operator"]
            [agents.bob]
            "#,
        )
        .unwrap();
        let alice = &c.agents[&AgentName::new("alice").unwrap()];
        assert!(alice.allowed_recipients.allows_operator());
        assert!(alice
            .allowed_recipients
            .allows_agent(&AgentName::new("bob").unwrap()));
        let bob = &c.agents[&AgentName::new("bob").unwrap()];
        assert_eq!(bob.allowed_recipients.to_strings(), vec!["*"]);
        assert_eq!(c.runtime_dir, PathBuf::from("/run/hyperhive"));
        assert_eq!(c.event_retention, DEFAULT_EVENT_RETENTION);
        assert_eq!(bob.max_open_questions, DEFAULT_MAX_OPEN_QUESTIONS);
        assert_eq!(
            parse("event_retention = 5000").unwrap().event_retention,
            5000
        );
    }

    #[test]
    fn bad_configs_say_why() {
        assert!(parse("[agents.Alice]").unwrap_err().contains("lowercase"));
        assert!(parse("[agents.a]\nallowed_recipients=[\"zed\"]")
            .unwrap_err()
            .contains("not a configured agent"));
        assert!(parse("runtime = \"docker\"")
            .unwrap_err()
            .contains("docker"));
        assert!(parse("bogus = 1").is_err());
        assert!(parse("event_retention = 999")
            .unwrap_err()
            .contains("at least 1000"));
    }
}
