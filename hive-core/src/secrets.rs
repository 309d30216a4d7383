//! Agents' secrets (API keys and the like): stored root-only under the
//! hive's state dir, `<state_dir>/secrets/<agent>/<KEY>` (directories
//! `0700`, files `0400`, owned by the daemon's uid), outside the config
//! repo; set and removed through `admin.sock` only
//! (`AdminRequest::SecretSet`, `SecretRemove`), their names listed through
//! `OperatorRequest::SecretNames` (`hivectl` and the dashboard), and mounted
//! read-only into that agent's container alone at `/run/secrets/<KEY>`
//! ([`SecretStore::binds`] gives a runtime the binds).
//!
//! This module must never write a value anywhere but its one file (not to
//! the store, the audit log, an event, a log line or an error message),
//! never follow a symlink it did not create, and never hand one agent's
//! secrets to another.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hive_proto::operator::{OperatorResponse, SecretValue, MAX_SECRET_BYTES};
use hive_proto::view::ErrorCode;
use hive_proto::{AgentName, SecretKey};

use crate::hive::{Hive, OperatorId, Refusal};
use crate::runtime::RoBind;

/// Most secrets one agent may hold.
pub const MAX_SECRETS_PER_AGENT: usize = 64;
/// Where an agent's secrets appear inside its container.
pub const CONTAINER_SECRETS_DIR: &str = "/run/secrets";
/// The store's directory under the state dir.
pub const SECRETS_DIR: &str = "secrets";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o400;

/// Why a secret could not be stored, listed or removed. No variant carries
/// a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret is at most {MAX_SECRET_BYTES} bytes; this one is {len}")]
    TooLarge { len: usize },
    #[error("a secret may not be empty")]
    Empty,
    #[error("agent {agent} already has {MAX_SECRETS_PER_AGENT} secrets; remove one first")]
    TooMany { agent: AgentName },
    #[error("agent {agent} has no secret {key}")]
    NotFound { agent: AgentName, key: SecretKey },
    #[error("{path} is not a directory of the secrets store (a symlink or a file?)")]
    NotOurs { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl From<SecretError> for Refusal {
    fn from(e: SecretError) -> Self {
        let code = match &e {
            SecretError::TooLarge { .. } => ErrorCode::TooLarge,
            SecretError::Empty => ErrorCode::BadRequest,
            SecretError::TooMany { .. } => ErrorCode::Limit,
            SecretError::NotFound { .. } => ErrorCode::NotFound,
            SecretError::NotOurs { .. } | SecretError::Io { .. } => {
                tracing::error!(error = %e, "secrets store");
                ErrorCode::Internal
            }
        };
        Refusal::new(code, e.to_string())
    }
}

/// The secrets of every agent, on disk.
#[derive(Clone, Debug)]
pub struct SecretStore {
    root: PathBuf,
}

impl SecretStore {
    /// The store under `state_dir` (created on first `set`).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join(SECRETS_DIR),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn agent_dir(&self, agent: &AgentName) -> PathBuf {
        self.root.join(agent.as_str())
    }

    /// Stores `value` as `agent`'s `key`, replacing any old value
    /// atomically (write a new file, then rename over the old).
    pub fn set(&self, agent: &AgentName, key: &SecretKey, value: &[u8]) -> Result<(), SecretError> {
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge { len: value.len() });
        }
        private_dir(&self.root)?;
        let dir = self.agent_dir(agent);
        private_dir(&dir)?;
        let path = dir.join(key.as_str());
        if fs::symlink_metadata(&path).is_err() && self.list(agent)?.len() >= MAX_SECRETS_PER_AGENT
        {
            return Err(SecretError::TooMany {
                agent: agent.clone(),
            });
        }
        // A name a key can never have (keys do not start with '.').
        let tmp = dir.join(format!(".new-{}-{}", key.as_str(), std::process::id()));
        let _ = fs::remove_file(&tmp);
        let io = |what| {
            let tmp = tmp.clone();
            move |source| SecretError::Io {
                what,
                path: tmp,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("creating"))?;
        let written = file
            .write_all(value)
            .and_then(|()| file.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
            .and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("writing")(e));
        }
        fs::rename(&tmp, &path).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            SecretError::Io {
                what: "renaming into",
                path: path.clone(),
                source,
            }
        })?;
        sync_dir(&dir)
    }

    /// The names of `agent`'s secrets, sorted.
    pub fn list(&self, agent: &AgentName) -> Result<Vec<SecretKey>, SecretError> {
        let dir = self.agent_dir(agent);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SecretError::Io {
                    what: "listing",
                    path: dir,
                    source,
                })
            }
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SecretError::Io {
                what: "listing",
                path: dir.clone(),
                source,
            })?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            // Half-written files (".new-…") and anything not a key are not
            // secrets.
            let key = entry
                .file_name()
                .to_str()
                .and_then(|n| SecretKey::new(n).ok());
            if let (true, Some(key)) = (is_file, key) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes `agent`'s `key`.
    pub fn remove(&self, agent: &AgentName, key: &SecretKey) -> Result<(), SecretError> {
        let dir = self.agent_dir(agent);
        let path = dir.join(key.as_str());
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::NotFound {
                agent: agent.clone(),
                key: key.clone(),
            }),
            Err(source) => Err(SecretError::Io {
                what: "removing",
                path,
                source,
            }),
        }
    }

    /// The read-only binds that show `agent`'s secrets, and only its own,
    /// at `/run/secrets/<KEY>` inside its container; empty if it has none.
    /// They are idmapped ([`RoBind::idmap`]): the `0400` file, the daemon's
    /// on the host, is the container root's inside and nobody else's.
    /// A runtime adds these to [`AgentSpec::ro_binds`] of the container it
    /// starts, read when it starts it (a secret set later is seen after a
    /// restart).
    ///
    /// [`AgentSpec::ro_binds`]: crate::runtime::AgentSpec::ro_binds
    pub fn binds(&self, agent: &AgentName) -> Result<Vec<RoBind>, SecretError> {
        let dir = self.agent_dir(agent);
        Ok(self
            .list(agent)?
            .into_iter()
            .map(|key| RoBind {
                host: dir.join(key.as_str()),
                inside: Path::new(CONTAINER_SECRETS_DIR).join(key.as_str()),
                idmap: true,
            })
            .collect())
    }
}

/// Creates `dir` as `0700`, or checks that an existing one is a real
/// directory (not a symlink), owned by us, and makes it `0700`.
fn private_dir(dir: &Path) -> Result<(), SecretError> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SecretError::Io {
                what: "creating",
                path: dir.to_owned(),
                source,
            })
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| SecretError::Io {
        what: "checking",
        path: dir.to_owned(),
        source,
    })?;
    if !meta.file_type().is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SecretError::NotOurs {
            path: dir.to_owned(),
        });
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|source| {
            SecretError::Io {
                what: "restricting",
                path: dir.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SecretError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SecretError::Io {
            what: "syncing",
            path: dir.to_owned(),
            source,
        })
}

/// `AdminRequest::SecretSet`: audited (agent, key, who) before it is
/// written, so no secret exists that the log does not name.
pub async fn set(
    hive: &Hive,
    who: &OperatorId,
    agent: AgentName,
    key: SecretKey,
    value: SecretValue,
) -> Result<OperatorResponse, Refusal> {
    let store = audited(hive, who, "secret_set", &agent, &key).await?;
    blocking(move || store.set(&agent, &key, &value.0)).await?;
    Ok(OperatorResponse::Done)
}

/// `OperatorRequest::SecretNames` (both sockets; the agent page lists
/// them): names only, never a value.
pub async fn list(hive: &Hive, agent: AgentName) -> Result<OperatorResponse, Refusal> {
    known(hive, &agent)?;
    let store = SecretStore::new(&hive.config().state_dir);
    let keys = blocking(move || store.list(&agent)).await?;
    Ok(OperatorResponse::Secrets(keys))
}

/// `AdminRequest::SecretRemove`: audited like `set`.
pub async fn remove(
    hive: &Hive,
    who: &OperatorId,
    agent: AgentName,
    key: SecretKey,
) -> Result<OperatorResponse, Refusal> {
    let store = audited(hive, who, "secret_remove", &agent, &key).await?;
    blocking(move || store.remove(&agent, &key)).await?;
    Ok(OperatorResponse::Done)
}

/// Checks the agent, writes the audit row (agent, key, who: never the
/// value), and hands back the store to act on.
async fn audited(
    hive: &Hive,
    who: &OperatorId,
    action: &'static str,
    agent: &AgentName,
    key: &SecretKey,
) -> Result<SecretStore, Refusal> {
    known(hive, agent)?;
    let actor = who.actor();
    let detail = format!("agent={agent} key={key}");
    hive.store()
        .write(move |tx| tx.audit(&actor, action, &detail))
        .await?;
    Ok(SecretStore::new(&hive.config().state_dir))
}

fn known(hive: &Hive, agent: &AgentName) -> Result<(), Refusal> {
    match hive.policy(agent) {
        Some(_) => Ok(()),
        None => Err(Refusal::new(
            ErrorCode::NotFound,
            format!("no agent {agent}"),
        )),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Refusal::from),
        Err(_) => Err(Refusal::new(
            ErrorCode::Internal,
            "the secrets store task failed; see the core's log",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: &str) -> AgentName {
        AgentName::new(n).unwrap()
    }

    fn k(n: &str) -> SecretKey {
        SecretKey::new(n).unwrap()
    }

    #[test]
    fn a_secret_is_a_0400_file_in_0700_dirs_listed_by_name_and_bound_for_its_agent_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = SecretStore::new(dir.path());
        s.set(&a("alice"), &k("anthropic"), b"sk-1").unwrap();
        s.set(&a("alice"), &k("anthropic"), b"sk-2").unwrap();
        s.set(&a("bob"), &k("other"), b"x").unwrap();
        let file = dir.path().join("secrets/alice/anthropic");
        assert_eq!(fs::read(&file).unwrap(), b"sk-2");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&file), 0o400);
        assert_eq!(mode(&dir.path().join("secrets")), 0o700);
        assert_eq!(mode(&dir.path().join("secrets/alice")), 0o700);
        assert_eq!(s.list(&a("alice")).unwrap(), [k("anthropic")]);
        assert_eq!(
            s.binds(&a("alice")).unwrap(),
            [RoBind {
                host: file,
                inside: PathBuf::from("/run/secrets/anthropic"),
                idmap: true,
            }]
        );
        assert!(s.list(&a("carol")).unwrap().is_empty());
        s.remove(&a("alice"), &k("anthropic")).unwrap();
        assert!(s.list(&a("alice")).unwrap().is_empty());
        assert!(matches!(
            s.remove(&a("alice"), &k("anthropic")),
            Err(SecretError::NotFound { .. })
        ));
    }

    #[test]
    fn bad_values_and_limits_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SecretStore::new(dir.path());
        assert!(matches!(
            s.set(&a("alice"), &k("e"), b""),
            Err(SecretError::Empty)
        ));
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        assert!(matches!(
            s.set(&a("alice"), &k("big"), &big),
            Err(SecretError::TooLarge { .. })
        ));
        for n in 0..MAX_SECRETS_PER_AGENT {
            s.set(&a("alice"), &k(&format!("k{n}")), b"v").unwrap();
        }
        let err = s.set(&a("alice"), &k("onemore"), b"v").unwrap_err();
        assert!(matches!(err, SecretError::TooMany { .. }), "{err}");
        // Replacing one is not one more.
        s.set(&a("alice"), &k("k0"), b"w").unwrap();
        assert_eq!(s.list(&a("alice")).unwrap().len(), MAX_SECRETS_PER_AGENT);
    }

    #[test]
    fn a_symlinked_agent_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("secrets/alice")).unwrap();
        let s = SecretStore::new(dir.path());
        let err = s.set(&a("alice"), &k("key"), b"v").unwrap_err();
        assert!(matches!(err, SecretError::NotOurs { .. }), "{err}");
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_error_message_holds_the_value() {
        let e = SecretError::TooLarge { len: 70_000 };
        let r = Refusal::from(e);
        assert_eq!(r.code, ErrorCode::TooLarge);
        let v = SecretValue(b"hunter2".to_vec());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
