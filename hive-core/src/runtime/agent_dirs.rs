//! The host directories a container backend prepares for an agent: private
//! dirs of the core's (`0700 root`), and the dirs the agent's user
//! namespace owns (its state dir and socket-dir leaf, `0700` and owned by
//! its range's root, so no other range can enter them; writable bind
//! mounts are not id-mapped on every host, nixpkgs #419007).
//!
//! This module must never follow a symlink the agent may have planted in
//! place of one of these dirs, and never chown anything but the dir itself.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hive_proto::AgentName;

use super::{purge, AgentSpec, RuntimeError};

/// `dir` exists as a real directory; created `0700` if missing.
pub fn mkdir_private(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::other("exists and is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().mode(0o700).create(dir)
        }
        Err(e) => Err(e),
    }
}

/// `dir` exists, is a real directory, mode 0700, owned by the range's root
/// (so no other range can enter it).
pub fn own_dir(dir: &Path, base: u32) -> io::Result<()> {
    mkdir_private(dir)?;
    // Not through a symlink the agent may have planted in its place.
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::other("is not a directory"));
    }
    std::os::unix::fs::lchown(dir, Some(base), Some(base))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates the dirs every container backend needs: the lib dir and its
/// `harness/` (root's, 0700), the state dir and the socket dir (the range
/// root's, 0700). Blocking.
pub fn prepare(
    agents_dir: &Path,
    lib: &Path,
    spec: &AgentSpec,
    base: u32,
    agent: &AgentName,
) -> Result<(), RuntimeError> {
    let err = |what, path: &Path| RuntimeError::io(agent, what, path);
    for dir in [agents_dir, lib, &lib.join("harness")] {
        mkdir_private(dir).map_err(err("creating", dir))?;
    }
    if let Some(parent) = spec.state_dir.parent() {
        fs::create_dir_all(parent).map_err(err("creating", parent))?;
    }
    own_dir(&spec.state_dir, base).map_err(err("preparing its state dir", &spec.state_dir))?;
    own_dir(&spec.socket_dir, base).map_err(err("preparing its socket dir", &spec.socket_dir))
}

/// `destroy`'s part on disk, off the async threads: see
/// [`purge::destroy_agent_dirs`].
pub async fn destroy(
    agent: &AgentName,
    agents_dir: PathBuf,
    state_dir: PathBuf,
    purge: bool,
    built_root: Option<&'static str>,
) -> Result<(), RuntimeError> {
    let name = agent.clone();
    let lib = agents_dir.join(agent.as_str());
    tokio::task::spawn_blocking(move || {
        purge::destroy_agent_dirs(&agents_dir, name.as_str(), &state_dir, purge, built_root)
    })
    .await
    .map_err(|e| RuntimeError::Io {
        agent: agent.clone(),
        what: "purging",
        path: lib,
        source: io::Error::other(e),
    })?
    .map_err(|e| RuntimeError::from_purge(agent, e))
}
