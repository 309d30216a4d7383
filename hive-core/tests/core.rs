//! hive-core's integration tests. Each starts the real `hive-core` binary on
//! temporary directories and talks to it only through its sockets.
//!
//! - `durability`: messages survive `kill -9`; delivery is pushed and at
//!   least once across reconnects.
//! - `authority`: identity is the socket; an agent cannot answer for the
//!   operator or another agent, nor express an operator verb.
//! - `abuse`: garbage, invalid UTF-8, over-long lines and a flood of
//!   connections never stop the core serving other agents.
//! - `operator`: admin.sock and web.sock peer checks (SO_PEERCRED), the
//!   operator identity in the audit log, event streams that resume.
//! - `audit`: `audit verify` detects a row changed behind the daemon's back.
//! - `config_repo`: propose → approve → the agent restarts with the new
//!   config; deny, conflict, forbidden, invalid; spawn; revert; kill -9.
//! - `config_repo_nspawn`: the same on real nspawn containers through the
//!   CLIs (root): env change and revert seen inside, spawn from inside a
//!   container, proposer and approver in plain `git log`.
//! - `dev`: `hive-core dev` flags, directories, token, children, signals.
//! - `disk_full`: a store on a full tmpfs refuses cleanly, recovers, loses
//!   nothing.
//! - `paths`: what an agent plants at its socket path is refused for it
//!   alone.
//! - `quota`: an agent flooding `send`/`status` is refused or coalesced
//!   while others flow; what is stored for an agent is capped.
//! - `containers`: the nspawn runtime with real containers (root): own
//!   socket only, uid ranges, lifecycle, crash seen at once and handled per
//!   restart policy (manager told, on-failure up to its cap, never), idle
//!   stop and wake, adoption, OOM, destroy --purge.
//! - `nixos_container`: the nixos-container runtime against a recording
//!   stand-in for `nixos-container` and `machinectl`: every argv of create,
//!   start, stop, restart, rebuild (update), destroy, the short name of a
//!   31-character agent, a crash seen, adoption by a restarted daemon.
//! - `clis`: `hivectl` and `hive-agent` as real processes against the core.
//! - `config_clis`: `hive-agent propose-config|request-spawn` and `hivectl
//!   approvals|approve|deny|config …` as real processes; refusals on one
//!   line leave no approval and no branch.
//! - `sandbox`: the process runtime refuses to run agents without
//!   bubblewrap unless `allow_unsandboxed`, and then `Health` says so.
//! - `supervision`: crashes recorded, raised and reported to managers;
//!   restart policies and their backoff cap; idle stop and wake on demand.
//! - `mcp`: `hive-agent mcp` driven by the official MCP Python SDK.
//! - `harness`: `hive-agent run`, the turn loop, with shell scripts as CMD.
//! - `startup`: `check-config`, and `READY=1` only once the store is open
//!   and every socket accepts.
//! - `isolation`: the hive's nftables table and agent addressing, with real
//!   network namespaces, veth pairs and `nft` (as root).
//! - `isolation_nspawn`: the same rules from inside real nspawn containers
//!   of a real daemon in a namespace the test made: probes, repairs, `nft`
//!   missing, the table kept for containers that outlive the daemon.
//! - `secrets`: `hivectl secret` and `--secret-env`: the value in its one
//!   file, at `/run/secrets/KEY` in its agent's nspawn container and in the
//!   environment of the one command, nowhere else.

#[path = "common/mod.rs"]
mod common;

#[path = "core/abuse.rs"]
mod abuse;
#[path = "core/audit.rs"]
mod audit;
#[path = "core/authority.rs"]
mod authority;
#[path = "core/clis.rs"]
mod clis;
#[path = "core/config_clis.rs"]
mod config_clis;
#[path = "core/config_repo.rs"]
mod config_repo;
#[path = "core/config_repo_nspawn.rs"]
mod config_repo_nspawn;
#[path = "core/containers.rs"]
mod containers;
#[path = "core/dev.rs"]
mod dev;
#[path = "core/disk_full.rs"]
mod disk_full;
#[path = "core/durability.rs"]
mod durability;
#[path = "core/harness.rs"]
mod harness;
#[path = "core/isolation.rs"]
mod isolation;
#[path = "core/isolation_nspawn.rs"]
mod isolation_nspawn;
#[path = "core/mcp.rs"]
mod mcp;
#[path = "core/nixos_container.rs"]
mod nixos_container;
#[path = "core/operator.rs"]
mod operator;
#[path = "core/secrets.rs"]
mod secrets;

#[path = "core/paths.rs"]
mod paths;
#[path = "core/quota.rs"]
mod quota;
#[path = "core/sandbox.rs"]
mod sandbox;
#[path = "core/startup.rs"]
mod startup;
#[path = "core/supervision.rs"]
mod supervision;
