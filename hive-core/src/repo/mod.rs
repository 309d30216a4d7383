//! The config repo at `<state_dir>/meta`: a plain git repository (`git2`,
//! libgit2 vendored) that holds `agents/<name>/agent.toml`,
//! `agents/<name>/agent.nix` and a generated `flake.nix`, and that an
//! operator can clone and read with ordinary `git`.
//!
//! This module owns the repository's shape and its history: seeding on
//! first start, proposal commits on `proposals/<id>`, merging an approved
//! one into `main`, reverts, and reading files, diffs and logs at any
//! revision. It keeps the work tree checked out at `main`, so
//! `<meta>#<name>` is a flake path `nixos-container` can build.
//!
//! **Architecture invariant:** only an operator's approval moves `main`:
//! [`ConfigRepo::merge`] and [`ConfigRepo::revert`] are its only writers
//! after seeding, and the hive calls them only from the operator verbs
//! `Approve` and `ConfigRevert` (and from the restart reconcile, which
//! only finishes an approval already merged). This module must never
//! decide who may propose or approve (that is [`crate::hive`]'s), and
//! never touch the store or a runtime.

pub mod proposal;
pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use git2::build::{CheckoutBuilder, TreeUpdateBuilder};
use git2::{FileMode, ObjectType, Oid, Repository, Signature, Tree};
use hive_proto::AgentName;

use crate::config::{validate_agent, AgentPolicy, RawAgent};

/// The branch the hive runs from.
pub const MAIN: &str = "refs/heads/main";
/// Most entries `log` returns.
pub const MAX_LOG: usize = 1000;

/// Why a repo operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("config repo: {op}: {source}")]
    Git {
        op: &'static str,
        #[source]
        source: git2::Error,
    },
    #[error("config repo: agent {agent}: agent.toml at {rev}: {message}")]
    BadAgentToml {
        agent: String,
        rev: String,
        message: String,
    },
    #[error("config repo: no revision {0:?}")]
    NoSuchRev(String),
    #[error("config repo: agent {0} is not in main")]
    UnknownAgent(AgentName),
    #[error("config repo: {what} conflicts with main: {paths}")]
    Conflict { what: String, paths: String },
}

fn git(op: &'static str) -> impl FnOnce(git2::Error) -> RepoError {
    move |source| RepoError::Git { op, source }
}

/// One commit as `config log` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub sha: String,
    pub summary: String,
    pub author: String,
    pub committer: String,
    /// Seconds since the epoch.
    pub time: i64,
}

/// What an approve did to `main`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// `main` is now this commit (also when the proposal was already in it).
    Merged(Oid),
    /// The proposal and `main` changed the same lines; these paths clash.
    Conflict(Vec<String>),
}

/// The config repo. Every method is blocking (git and the file system);
/// async callers run them on the blocking pool.
pub struct ConfigRepo {
    path: PathBuf,
    repo: Mutex<Repository>,
}

impl ConfigRepo {
    /// Opens the repo at `path`, creating and seeding it with `seed` (the
    /// daemon config's agents) when it does not exist yet. Returns whether
    /// it was seeded now.
    pub fn open_or_seed(
        path: &Path,
        seed: &BTreeMap<AgentName, AgentPolicy>,
    ) -> Result<(Self, bool), RepoError> {
        if path.join(".git").exists() {
            let repo = Repository::open(path).map_err(git("open"))?;
            let this = Self {
                path: path.to_owned(),
                repo: Mutex::new(repo),
            };
            this.main()?;
            return Ok((this, false));
        }
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main").mkpath(true);
        let repo = Repository::init_opts(path, &opts).map_err(git("init"))?;
        let this = Self {
            path: path.to_owned(),
            repo: Mutex::new(repo),
        };
        {
            let repo = this.lock();
            let empty = repo
                .treebuilder(None)
                .and_then(|b| b.write())
                .map_err(git("empty tree"))?;
            let empty = repo.find_tree(empty).map_err(git("empty tree"))?;
            let mut b = TreeUpdateBuilder::new();
            for (name, policy) in seed {
                for (rel, text) in render::seed_files(policy) {
                    let blob = repo.blob(text.as_bytes()).map_err(git("blob"))?;
                    b.upsert(format!("agents/{name}/{rel}"), blob, FileMode::Blob);
                }
            }
            let flake = repo
                .blob(render::flake_nix(seed.keys()).as_bytes())
                .map_err(git("blob"))?;
            b.upsert("flake.nix", flake, FileMode::Blob);
            let tree = b.create_updated(&repo, &empty).map_err(git("seed tree"))?;
            let tree = repo.find_tree(tree).map_err(git("seed tree"))?;
            let sig = hive_signature()?;
            let msg = format!(
                "seed {} agent(s) from the daemon config\n\nApproved-by: the daemon config (first start)\n",
                seed.len()
            );
            repo.commit(Some(MAIN), &sig, &sig, &msg, &tree, &[])
                .map_err(git("seed commit"))?;
            checkout_main(&repo)?;
        }
        Ok((this, true))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Repository> {
        self.repo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The commit `main` points at.
    pub fn main(&self) -> Result<Oid, RepoError> {
        let repo = self.lock();
        main_of(&repo)
    }

    /// Resolves a revision (`main`, a sha, `main~2`, ...) to a commit.
    pub fn resolve(&self, rev: &str) -> Result<Oid, RepoError> {
        let repo = self.lock();
        resolve_in(&repo, rev)
    }

    /// Every agent in `rev` with its validated `agent.toml`.
    pub fn agents_at(&self, rev: Oid) -> Result<BTreeMap<AgentName, AgentPolicy>, RepoError> {
        let repo = self.lock();
        let tree = tree_of(&repo, rev)?;
        let mut out = BTreeMap::new();
        for name in agent_names(&repo, &tree)? {
            let text =
                read_blob(&repo, &tree, &format!("agents/{name}/agent.toml"))?.unwrap_or_default();
            let policy = parse_agent_toml(&text).map_err(|message| RepoError::BadAgentToml {
                agent: name.to_string(),
                rev: rev.to_string(),
                message,
            })?;
            out.insert(name, policy);
        }
        Ok(out)
    }

    /// The id of the tree `agents/<name>` at `rev`, `None` if absent: two
    /// revisions with the same id give the agent the same config.
    pub fn agent_tree(&self, name: &AgentName, rev: Oid) -> Result<Option<Oid>, RepoError> {
        let repo = self.lock();
        let tree = tree_of(&repo, rev)?;
        Ok(tree
            .get_path(Path::new(&format!("agents/{name}")))
            .ok()
            .map(|e| e.id()))
    }

    /// The agent's files at `rev`, paths relative to `agents/<name>/`.
    pub fn files_at(&self, name: &AgentName, rev: Oid) -> Result<Vec<(String, String)>, RepoError> {
        let repo = self.lock();
        let tree = tree_of(&repo, rev)?;
        let Ok(entry) = tree.get_path(Path::new(&format!("agents/{name}"))) else {
            return Err(RepoError::UnknownAgent(name.clone()));
        };
        let sub = repo.find_tree(entry.id()).map_err(git("agent tree"))?;
        let mut out = Vec::new();
        sub.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
            if e.kind() == Some(ObjectType::Blob) {
                if let Ok(blob) = repo.find_blob(e.id()) {
                    let name = format!("{dir}{}", e.name().unwrap_or("?"));
                    out.push((name, String::from_utf8_lossy(blob.content()).into_owned()));
                }
            }
            git2::TreeWalkResult::Ok
        })
        .map_err(git("walk"))?;
        Ok(out)
    }

    /// Commits `files` (relative to `agents/<agent>/`) on top of `main`
    /// without moving any ref; the flake is regenerated when the set of
    /// agents changes. Returns the commit and its parent (`main` as it
    /// was). The caller validated the files ([`proposal`]).
    pub fn commit_proposal(
        &self,
        agent: &AgentName,
        files: &BTreeMap<String, String>,
        message: &str,
        proposer: &str,
    ) -> Result<(Oid, Oid), RepoError> {
        let repo = self.lock();
        let base = main_of(&repo)?;
        let base_commit = repo.find_commit(base).map_err(git("main"))?;
        let base_tree = base_commit.tree().map_err(git("main tree"))?;
        let mut b = TreeUpdateBuilder::new();
        for (rel, text) in files {
            let blob = repo.blob(text.as_bytes()).map_err(git("blob"))?;
            b.upsert(format!("agents/{agent}/{rel}"), blob, FileMode::Blob);
        }
        let spawn = base_tree
            .get_path(Path::new(&format!("agents/{agent}")))
            .is_err();
        if spawn && !files.contains_key("agent.nix") {
            let blob = repo
                .blob(render::DEFAULT_AGENT_NIX.as_bytes())
                .map_err(git("blob"))?;
            b.upsert(format!("agents/{agent}/agent.nix"), blob, FileMode::Blob);
        }
        let tree = b
            .create_updated(&repo, &base_tree)
            .map_err(git("proposal tree"))?;
        let tree = with_flake(&repo, tree)?;
        let sig = person(proposer)?;
        let summary = first_line(message);
        let msg = format!(
            "{agent}: {summary} (proposed by {proposer})\n\n{message}\n\nProposed-by: {proposer}\n"
        );
        let commit = repo
            .commit(None, &sig, &sig, &msg, &tree, &[&base_commit])
            .map_err(git("proposal commit"))?;
        Ok((commit, base))
    }

    /// Points `proposals/<id>` at `commit`.
    pub fn set_proposal_branch(&self, id: u64, commit: Oid) -> Result<(), RepoError> {
        let repo = self.lock();
        repo.reference(
            &format!("refs/heads/proposals/{id}"),
            commit,
            true,
            &format!("proposal {id}"),
        )
        .map_err(git("proposal branch"))?;
        Ok(())
    }

    /// Whether `proposals/<id>` exists.
    pub fn has_proposal_branch(&self, id: u64) -> bool {
        let repo = self.lock();
        let found = repo
            .find_reference(&format!("refs/heads/proposals/{id}"))
            .is_ok();
        found
    }

    /// Merges proposal `commit` into `main` with a merge commit authored by
    /// `approver` (so `git log` names proposer and approver), regenerating
    /// the flake. A proposal already in `main` is not merged twice.
    pub fn merge(
        &self,
        id: u64,
        commit: Oid,
        proposer: &str,
        approver: &str,
    ) -> Result<MergeOutcome, RepoError> {
        let repo = self.lock();
        let main = main_of(&repo)?;
        if main == commit
            || repo
                .graph_descendant_of(main, commit)
                .map_err(git("ancestry"))?
        {
            return Ok(MergeOutcome::Merged(main));
        }
        let theirs = repo.find_commit(commit).map_err(git("proposal"))?;
        let base = theirs.parent(0).map_err(git("proposal parent"))?;
        let ours = repo.find_commit(main).map_err(git("main"))?;
        let mut index = repo
            .merge_trees(
                &base.tree().map_err(git("tree"))?,
                &ours.tree().map_err(git("tree"))?,
                &theirs.tree().map_err(git("tree"))?,
                None,
            )
            .map_err(git("merge"))?;
        if index.has_conflicts() {
            let mut paths: Vec<String> = index
                .conflicts()
                .map_err(git("conflicts"))?
                .flatten()
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect();
            paths.dedup();
            return Ok(MergeOutcome::Conflict(paths));
        }
        let tree = index.write_tree_to(&repo).map_err(git("merge tree"))?;
        let tree = with_flake(&repo, tree)?;
        let sig = person(approver)?;
        let msg = format!(
            "approve #{id} by {approver} (proposed by {proposer}): {}\n\nProposed-by: {proposer}\nApproved-by: {approver}\n",
            first_line(theirs.summary().unwrap_or(""))
        );
        let new = repo
            .commit(None, &sig, &sig, &msg, &tree, &[&ours, &theirs])
            .map_err(git("merge commit"))?;
        move_main(&repo, main, new, &format!("approve #{id}"))?;
        Ok(MergeOutcome::Merged(new))
    }

    /// Commits the revert of `rev` on `main` as `operator`; returns the new
    /// `main`. A merge commit is reverted against its first parent.
    pub fn revert(&self, rev: &str, operator: &str) -> Result<Oid, RepoError> {
        let repo = self.lock();
        let target = resolve_in(&repo, rev)?;
        let target = repo.find_commit(target).map_err(git("revert target"))?;
        let main = main_of(&repo)?;
        let ours = repo.find_commit(main).map_err(git("main"))?;
        let mainline = if target.parent_count() > 1 { 1 } else { 0 };
        let mut index = repo
            .revert_commit(&target, &ours, mainline, None)
            .map_err(git("revert"))?;
        if index.has_conflicts() {
            return Err(RepoError::Conflict {
                what: format!("reverting {}", short(target.id())),
                paths: "later commits changed the same lines".into(),
            });
        }
        let tree = index.write_tree_to(&repo).map_err(git("revert tree"))?;
        let tree = with_flake(&repo, tree)?;
        let sig = person(operator)?;
        let msg = format!(
            "revert {} by {operator}: {}\n\nReverted-by: {operator}\nApproved-by: {operator}\n",
            short(target.id()),
            first_line(target.summary().unwrap_or(""))
        );
        let new = repo
            .commit(None, &sig, &sig, &msg, &tree, &[&ours])
            .map_err(git("revert commit"))?;
        move_main(&repo, main, new, &format!("revert {}", short(target.id())))?;
        Ok(new)
    }

    /// The unified diff of `commit` against its first parent.
    pub fn diff_commit(&self, commit: Oid) -> Result<String, RepoError> {
        let repo = self.lock();
        let c = repo.find_commit(commit).map_err(git("commit"))?;
        let new = c.tree().map_err(git("tree"))?;
        let old = c.parent(0).ok().and_then(|p| p.tree().ok());
        diff_trees(&repo, old.as_ref(), &new, None)
    }

    /// The diff of the agent's files from `from` (nothing when `None`) to
    /// `to`.
    pub fn diff_agent(
        &self,
        name: &AgentName,
        from: Option<Oid>,
        to: Oid,
    ) -> Result<String, RepoError> {
        let repo = self.lock();
        let old = match from {
            Some(f) => Some(tree_of(&repo, f)?),
            None => None,
        };
        let new = tree_of(&repo, to)?;
        diff_trees(&repo, old.as_ref(), &new, Some(&format!("agents/{name}/")))
    }

    /// `main`'s history, newest first, at most `limit`; with `agent`, only
    /// commits that changed that agent's files.
    pub fn log(&self, agent: Option<&AgentName>, limit: usize) -> Result<Vec<LogEntry>, RepoError> {
        let repo = self.lock();
        let mut walk = repo.revwalk().map_err(git("log"))?;
        walk.push(main_of(&repo)?).map_err(git("log"))?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
            .map_err(git("log"))?;
        let mut out = Vec::new();
        for oid in walk {
            if out.len() >= limit.min(MAX_LOG) {
                break;
            }
            let c = repo
                .find_commit(oid.map_err(git("log"))?)
                .map_err(git("log"))?;
            if let Some(name) = agent {
                let path = format!("agents/{name}");
                let id_of = |t: Option<Tree>| {
                    t.and_then(|t| t.get_path(Path::new(&path)).ok().map(|e| e.id()))
                };
                let mine = id_of(c.tree().ok());
                let parent = id_of(c.parent(0).ok().and_then(|p| p.tree().ok()));
                if mine == parent {
                    continue;
                }
            }
            out.push(LogEntry {
                sha: c.id().to_string(),
                summary: c.summary().unwrap_or("").to_owned(),
                author: c.author().name().unwrap_or("?").to_owned(),
                committer: c.committer().name().unwrap_or("?").to_owned(),
                time: c.time().seconds(),
            });
        }
        Ok(out)
    }

    /// Who merged proposal `commit` into `main`, read back from the merge
    /// commit (for the reconcile after a crash between merge and store).
    pub fn merged_by(&self, commit: Oid) -> Result<Option<(Oid, String)>, RepoError> {
        let repo = self.lock();
        let mut walk = repo.revwalk().map_err(git("log"))?;
        walk.push(main_of(&repo)?).map_err(git("log"))?;
        walk.simplify_first_parent().map_err(git("log"))?;
        for oid in walk {
            let c = repo
                .find_commit(oid.map_err(git("log"))?)
                .map_err(git("log"))?;
            if c.parent_ids().nth(1) == Some(commit) {
                return Ok(Some((
                    c.id(),
                    c.committer().name().unwrap_or("?").to_owned(),
                )));
            }
        }
        Ok(None)
    }

    /// Whether `commit` is in `main`'s history.
    pub fn in_main(&self, commit: Oid) -> Result<bool, RepoError> {
        let repo = self.lock();
        let main = main_of(&repo)?;
        Ok(main == commit
            || repo
                .graph_descendant_of(main, commit)
                .map_err(git("ancestry"))?)
    }
}

/// Parses and validates one `agent.toml` with the daemon config's own
/// validator (one schema, one parser).
pub fn parse_agent_toml(text: &str) -> Result<AgentPolicy, String> {
    let raw: RawAgent = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    validate_agent(raw)
}

/// The first 12 hex digits of a commit id.
pub fn short(oid: Oid) -> String {
    oid.to_string()[..12].to_owned()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn hive_signature() -> Result<Signature<'static>, RepoError> {
    Signature::now("hive-core", "hive-core@hyperhive.invalid").map_err(git("signature"))
}

/// A git identity for a principal (`agent:alice`, `operator:root`).
fn person(who: &str) -> Result<Signature<'static>, RepoError> {
    let local: String = who
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '.' })
        .collect();
    Signature::now(who, &format!("{local}@hyperhive.invalid")).map_err(git("signature"))
}

fn main_of(repo: &Repository) -> Result<Oid, RepoError> {
    repo.refname_to_id(MAIN).map_err(git("read main"))
}

fn resolve_in(repo: &Repository, rev: &str) -> Result<Oid, RepoError> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|_| RepoError::NoSuchRev(rev.to_owned()))
}

fn tree_of(repo: &Repository, rev: Oid) -> Result<Tree<'_>, RepoError> {
    repo.find_commit(rev)
        .and_then(|c| c.tree())
        .map_err(|_| RepoError::NoSuchRev(rev.to_string()))
}

fn read_blob(repo: &Repository, tree: &Tree, path: &str) -> Result<Option<String>, RepoError> {
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(None);
    };
    let blob = repo.find_blob(entry.id()).map_err(git("blob"))?;
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

/// The directories under `agents/` that are valid agent names.
fn agent_names(repo: &Repository, tree: &Tree) -> Result<Vec<AgentName>, RepoError> {
    let Ok(entry) = tree.get_path(Path::new("agents")) else {
        return Ok(Vec::new());
    };
    let agents = repo.find_tree(entry.id()).map_err(git("agents tree"))?;
    Ok(agents
        .iter()
        .filter(|e| e.kind() == Some(ObjectType::Tree))
        .filter_map(|e| e.name().and_then(|n| AgentName::new(n).ok()))
        .collect())
}

/// `tree` with `flake.nix` rewritten for the agents it holds.
fn with_flake(repo: &Repository, tree: Oid) -> Result<Tree<'_>, RepoError> {
    let t = repo.find_tree(tree).map_err(git("tree"))?;
    let names = agent_names(repo, &t)?;
    let flake = render::flake_nix(&names);
    if read_blob(repo, &t, "flake.nix")?.as_deref() == Some(flake.as_str()) {
        return Ok(t);
    }
    let blob = repo.blob(flake.as_bytes()).map_err(git("blob"))?;
    let mut b = TreeUpdateBuilder::new();
    b.upsert("flake.nix", blob, FileMode::Blob);
    let id = b.create_updated(repo, &t).map_err(git("flake tree"))?;
    repo.find_tree(id).map_err(git("flake tree"))
}

/// Moves `main` from `old` to `new` (refusing if it moved meanwhile) and
/// checks the work tree out at it.
fn move_main(repo: &Repository, old: Oid, new: Oid, why: &str) -> Result<(), RepoError> {
    repo.reference_matching(MAIN, new, true, old, why)
        .map_err(git("move main"))?;
    checkout_main(repo)
}

fn checkout_main(repo: &Repository) -> Result<(), RepoError> {
    repo.set_head(MAIN).map_err(git("set HEAD"))?;
    repo.checkout_head(Some(CheckoutBuilder::new().force().remove_untracked(true)))
        .map_err(git("checkout main"))
}

fn diff_trees(
    repo: &Repository,
    old: Option<&Tree>,
    new: &Tree,
    prefix: Option<&str>,
) -> Result<String, RepoError> {
    let mut opts = git2::DiffOptions::new();
    if let Some(p) = prefix {
        opts.pathspec(p);
    }
    let diff = repo
        .diff_tree_to_tree(old, Some(new), Some(&mut opts))
        .map_err(git("diff"))?;
    let mut out = String::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        match line.origin() {
            '+' | '-' | ' ' => out.push(line.origin()),
            _ => {}
        }
        out.push_str(&String::from_utf8_lossy(line.content()));
        true
    })
    .map_err(git("diff"))?;
    Ok(out)
}

#[cfg(test)]
mod tests;
