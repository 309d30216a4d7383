//! Checks a proposal before anything is written: paths, sizes, and that
//! `agent.toml` parses and validates with the daemon config's validator.
//! A proposal that fails here leaves no commit, no branch and no approval.
//! This module must never touch git, the store or a runtime.

use std::collections::{BTreeMap, BTreeSet};

use hive_proto::agent::{
    MAX_PROPOSAL_BYTES, MAX_PROPOSAL_FILE, MAX_PROPOSAL_FILES, MAX_PROPOSAL_MESSAGE,
};
use hive_proto::view::ErrorCode;
use hive_proto::{AgentName, RelPath};

use super::{parse_agent_toml, render};
use crate::config::AgentPolicy;

/// Most directory levels below `agents/<name>/`.
pub const MAX_PROPOSAL_DEPTH: usize = 4;

/// Why a proposal was refused; shown to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("a proposal needs at least one file")]
    NoFiles,
    #[error("a proposal carries at most {MAX_PROPOSAL_FILES} files (got {0})")]
    TooManyFiles(usize),
    #[error("{path} is {len} bytes; a file may be at most {MAX_PROPOSAL_FILE}")]
    FileTooLarge { path: String, len: usize },
    #[error("the files are {0} bytes together; at most {MAX_PROPOSAL_BYTES}")]
    TooLarge(usize),
    #[error("the message is {0} bytes; at most {MAX_PROPOSAL_MESSAGE}")]
    MessageTooLong(usize),
    #[error("path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("agent.toml: {0}")]
    BadAgentToml(String),
    #[error("agent {0} already exists; propose_config changes it")]
    NameTaken(AgentName),
    #[error("no agent {0}; request_spawn creates one")]
    NoSuchAgent(AgentName),
}

impl ProposalError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooManyFiles(_)
            | Self::FileTooLarge { .. }
            | Self::TooLarge(_)
            | Self::MessageTooLong(_) => ErrorCode::TooLarge,
            Self::NameTaken(_) => ErrorCode::Conflict,
            Self::NoSuchAgent(_) => ErrorCode::NotFound,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A proposal that passed every check: paths relative to `agents/<name>/`.
#[derive(Debug, Clone)]
pub struct CheckedProposal {
    pub files: BTreeMap<String, String>,
    /// The policy its `agent.toml` validates into, when it carries one.
    pub policy: Option<AgentPolicy>,
}

/// Checks `files` and `message` for `agent`; `known` is the set of agents
/// in `main`, `spawn` whether this asks for a new agent.
pub fn check(
    agent: &AgentName,
    files: &BTreeMap<RelPath, String>,
    message: &str,
    known: &BTreeSet<AgentName>,
    spawn: bool,
) -> Result<CheckedProposal, ProposalError> {
    match (spawn, known.contains(agent)) {
        (true, true) => return Err(ProposalError::NameTaken(agent.clone())),
        (false, false) => return Err(ProposalError::NoSuchAgent(agent.clone())),
        _ => {}
    }
    if message.len() > MAX_PROPOSAL_MESSAGE {
        return Err(ProposalError::MessageTooLong(message.len()));
    }
    if files.is_empty() {
        return Err(ProposalError::NoFiles);
    }
    if files.len() > MAX_PROPOSAL_FILES {
        return Err(ProposalError::TooManyFiles(files.len()));
    }
    let mut total = 0;
    let mut out = BTreeMap::new();
    for (path, text) in files {
        check_path(path.as_str())?;
        if text.len() > MAX_PROPOSAL_FILE {
            return Err(ProposalError::FileTooLarge {
                path: path.to_string(),
                len: text.len(),
            });
        }
        total += text.len();
        out.insert(path.as_str().to_owned(), text.clone());
    }
    if total > MAX_PROPOSAL_BYTES {
        return Err(ProposalError::TooLarge(total));
    }
    let policy = match out.get("agent.toml") {
        Some(text) => {
            let p = parse_agent_toml(text).map_err(ProposalError::BadAgentToml)?;
            for peer in p.can_propose_for.iter().chain(&p.allowed_recipients.agents) {
                if peer != agent && !known.contains(peer) {
                    return Err(ProposalError::BadAgentToml(format!(
                        "{peer} is not an agent (named in can_propose_for or allowed_recipients)"
                    )));
                }
            }
            Some(p)
        }
        None => None,
    };
    // A new agent that names no command gets the template's: the turn loop
    // around an LLM CLI (`render::default_command`), written into its
    // `agent.toml` so the repo says what runs.
    let policy = match policy {
        Some(p) if p.command.is_some() || !spawn => Some(p),
        None if !spawn => None,
        _ => {
            let text = render::with_default_command(out.get("agent.toml").map_or("", |t| t));
            let p = parse_agent_toml(&text).map_err(ProposalError::BadAgentToml)?;
            out.insert("agent.toml".to_owned(), text);
            Some(p)
        }
    };
    Ok(CheckedProposal { files: out, policy })
}

/// Paths are `RelPath`s already (no `..`, not absolute); here, stricter:
/// plain names only, so nothing can land outside `agents/<name>/` or in git.
fn check_path(path: &str) -> Result<(), ProposalError> {
    let bad = |why| ProposalError::BadPath {
        path: path.to_owned(),
        why,
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_PROPOSAL_DEPTH + 1 {
        return Err(bad("too deep"));
    }
    for part in parts {
        match part {
            "" => return Err(bad("empty path component")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed")),
            p if p.eq_ignore_ascii_case(".git") => return Err(bad(".git is not allowed")),
            p if !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
            {
                return Err(bad("only A-Z, a-z, 0-9, '.', '_' and '-' in names"))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<RelPath, String> {
        list.iter()
            .map(|(p, t)| (RelPath::new(p).unwrap(), t.to_string()))
            .collect()
    }

    fn name(s: &str) -> AgentName {
        AgentName::new(s).unwrap()
    }

    #[test]
    fn a_spawn_without_a_command_gets_the_turn_loop_around_an_llm_cli_with_hive_agent_mcp() {
        let known: BTreeSet<AgentName> = [name("alice")].into();
        let scout = name("scout");
        let template = render::default_command();
        assert_eq!(&template[..2], ["hive-agent", "run"]);
        let cli = template.iter().position(|a| a == "--").unwrap() + 1;
        assert_eq!(&template[cli..cli + 2], ["claude", "-p"]);
        let config = template.iter().position(|a| a == "--mcp-config").unwrap() + 1;
        assert_eq!(template[config], render::MCP_CONFIG_PATH);
        // An agent.toml without `command`: the template's goes first and
        // the proposer's keys stay as written.
        let c = check(
            &scout,
            &files(&[(
                "agent.toml",
                "manager = true\n\n[limits]\nmemory = \"1G\"\n",
            )]),
            "m",
            &known,
            true,
        )
        .unwrap();
        let policy = c.policy.unwrap();
        assert_eq!(policy.command.as_ref(), Some(&template));
        assert!(policy.manager);
        assert_eq!(policy.limits.memory_bytes, Some(1 << 30));
        let text = &c.files["agent.toml"];
        assert!(text.starts_with("# The template for a new agent"), "{text}");
        assert!(
            text.ends_with("manager = true\n\n[limits]\nmemory = \"1G\"\n"),
            "{text}"
        );
        // No agent.toml at all: it is written with the template's command.
        let c = check(
            &scout,
            &files(&[("agent.nix", "{ ... }: { }\n")]),
            "m",
            &known,
            true,
        )
        .unwrap();
        assert_eq!(c.policy.unwrap().command, Some(template.clone()));
        assert_eq!(
            parse_agent_toml(&c.files["agent.toml"]).unwrap().command,
            Some(template)
        );
        // A command given is kept, and a change to an existing agent never
        // gets one added.
        let c = check(
            &scout,
            &files(&[("agent.toml", "command = [\"x\"]")]),
            "m",
            &known,
            true,
        )
        .unwrap();
        assert_eq!(c.policy.unwrap().command, Some(vec!["x".to_owned()]));
        let c = check(
            &name("alice"),
            &files(&[("agent.toml", "")]),
            "m",
            &known,
            false,
        )
        .unwrap();
        assert_eq!(c.files["agent.toml"], "");
        assert_eq!(c.policy.unwrap().command, None);
    }

    #[test]
    fn bad_proposals_say_why() {
        let known: BTreeSet<AgentName> = [name("alice")].into();
        let alice = name("alice");
        let err = |f: &[(&str, &str)], spawn: bool, who: &AgentName| {
            check(who, &files(f), "m", &known, spawn).unwrap_err()
        };
        assert!(matches!(
            err(&[("a/./b", "")], false, &alice),
            ProposalError::BadPath { .. }
        ));
        assert!(matches!(
            err(&[(".git/config", "")], false, &alice),
            ProposalError::BadPath { .. }
        ));
        assert!(matches!(
            err(&[("a//b", "")], false, &alice),
            ProposalError::BadPath { .. }
        ));
        let big = "x".repeat(MAX_PROPOSAL_FILE + 1);
        assert_eq!(
            err(&[("agent.nix", &big)], false, &alice).code(),
            ErrorCode::TooLarge
        );
        let e = err(&[("agent.toml", "restart = \"always\"")], false, &alice);
        assert!(e.to_string().contains("restart \"always\""), "{e}");
        let e = err(
            &[("agent.toml", "can_propose_for = [\"zed\"]")],
            false,
            &alice,
        );
        assert!(e.to_string().contains("zed is not an agent"), "{e}");
        assert_eq!(
            err(&[("agent.toml", "command=[\"x\"]")], true, &alice),
            ProposalError::NameTaken(alice.clone())
        );
        assert_eq!(
            err(&[("agent.toml", "")], false, &name("zed")),
            ProposalError::NoSuchAgent(name("zed"))
        );
        assert_eq!(err(&[], false, &alice), ProposalError::NoFiles);
    }

    #[test]
    fn a_good_proposal_carries_its_validated_policy() {
        let known: BTreeSet<AgentName> = [name("alice")].into();
        let ok = check(
            &name("alice"),
            &files(&[
                ("agent.toml", "env = { MODE = \"fast\" }"),
                ("nix/extra.nix", "{}"),
            ]),
            "faster",
            &known,
            false,
        )
        .unwrap();
        assert_eq!(ok.policy.unwrap().env["MODE"], "fast");
        assert!(ok.files.contains_key("nix/extra.nix"));
    }
}
