//! `destroy --purge`: removing one agent's own directories and nothing
//! else. The agent controls what is inside them — it can plant symlinks and,
//! with the right privileges inside, mount points — so every step opens
//! relative to a directory fd already checked, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, and
//! removes with `unlinkat`, which never follows a final symlink: a link is
//! removed as a link, its target untouched.
//!
//! The dir itself being a symlink, or a mount point anywhere below it,
//! refuses the whole purge before anything is removed. This module must
//! never remove a path it reached through a symlink.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Deepest directory nesting a purge follows (each level holds one fd).
pub const MAX_DEPTH: usize = 256;

/// Why a purge did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{path} is a symlink (or has one on its way); refusing to purge through it")]
    Symlink { path: PathBuf },
    #[error("{path} is another file system (a mount point); refusing to purge across it")]
    MountPoint { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is nested deeper than {MAX_DEPTH} directories")]
    TooDeep { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `destroy` of a container backend: without `purge`, removes `lib/root`
/// (what the core built; `None` when it builds nothing); with it, the
/// agent's whole lib dir `agents_dir/<name>` and, when its state dir is
/// configured outside it, that dir too. Blocking.
pub fn destroy_agent_dirs(
    agents_dir: &Path,
    name: &str,
    state_dir: &Path,
    purge: bool,
    built_root: Option<&str>,
) -> Result<(), PurgeError> {
    let lib = agents_dir.join(name);
    if !purge {
        return match built_root {
            Some(leaf) => remove_dir_beneath(&lib, leaf),
            None => Ok(()),
        };
    }
    remove_dir_beneath(agents_dir, name)?;
    // A state dir configured outside the lib dir is the agent's too.
    if !state_dir.starts_with(&lib) {
        if let (Some(parent), Some(leaf)) = (state_dir.parent(), state_dir.file_name()) {
            remove_dir_beneath(parent, &leaf.to_string_lossy())?;
        }
    }
    Ok(())
}

/// Removes `parent/leaf` and everything below it. `parent` must be a real
/// directory (not a symlink) the caller trusts; `leaf` one path component.
/// A missing `leaf` is nothing to do.
pub fn remove_dir_beneath(parent: &Path, leaf: &str) -> Result<(), PurgeError> {
    if leaf.is_empty() || leaf.contains('/') || leaf == "." || leaf == ".." {
        return Err(PurgeError::NotADirectory {
            path: parent.join(leaf),
        });
    }
    let parent_fd = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| classify(e, parent.to_owned()))?;
    let path = parent.join(leaf);
    let top = match open_beneath(&parent_fd, leaf) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTDIR)
            if rustix::fs::statat(&parent_fd, leaf, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) =>
        {
            return Err(PurgeError::Symlink { path })
        }
        Err(e) => return Err(classify(e, path)),
    };
    // First look at everything, then remove: a refusal leaves it all.
    walk(&top, &path, 0, false)?;
    walk(&top, &path, 0, true)?;
    drop(top);
    rustix::fs::unlinkat(&parent_fd, leaf, AtFlags::REMOVEDIR).map_err(|e| classify(e, path))
}

fn open_beneath(dir: &OwnedFd, name: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_XDEV
            | ResolveFlags::NO_MAGICLINKS,
    )
}

fn classify(e: Errno, path: PathBuf) -> PurgeError {
    match e {
        Errno::LOOP => PurgeError::Symlink { path },
        Errno::XDEV => PurgeError::MountPoint { path },
        Errno::NOTDIR => PurgeError::NotADirectory { path },
        other => PurgeError::Io {
            path,
            source: other.into(),
        },
    }
}

/// Visits every entry below `dir`; with `remove`, removes each on the way
/// back up.
fn walk(dir: &OwnedFd, path: &Path, depth: usize, remove: bool) -> Result<(), PurgeError> {
    if depth >= MAX_DEPTH {
        return Err(PurgeError::TooDeep {
            path: path.to_owned(),
        });
    }
    let names: Vec<OsString> = {
        let mut d = rustix::fs::Dir::read_from(dir).map_err(|e| classify(e, path.to_owned()))?;
        let mut out = Vec::new();
        while let Some(entry) = d.read() {
            let entry = entry.map_err(|e| classify(e, path.to_owned()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                use std::os::unix::ffi::OsStrExt;
                out.push(std::ffi::OsStr::from_bytes(name).to_owned());
            }
        }
        out
    };
    for name in names {
        let child = path.join(&name);
        let st = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| classify(e, child.clone()))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub =
                open_beneath(dir, name.as_os_str()).map_err(|e| classify(e, child.clone()))?;
            walk(&sub, &child, depth + 1, remove)?;
            if remove {
                rustix::fs::unlinkat(dir, name.as_os_str(), AtFlags::REMOVEDIR)
                    .map_err(|e| classify(e, child))?;
            }
        } else if remove {
            // Files, symlinks (the link itself), sockets, fifos.
            rustix::fs::unlinkat(dir, name.as_os_str(), AtFlags::empty())
                .map_err(|e| classify(e, child))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_purge_removes_the_tree_and_never_follows_a_link_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let agents = dir.path().join("agents");
        let a = agents.join("alice");
        fs::create_dir_all(a.join("state/deep/er")).unwrap();
        fs::write(a.join("state/deep/er/f"), "x").unwrap();
        symlink(&outside, a.join("state/escape")).unwrap();
        symlink(outside.join("keep"), a.join("state/deep/file-link")).unwrap();
        remove_dir_beneath(&agents, "alice").unwrap();
        assert!(!a.exists());
        assert!(outside.join("keep").exists());
        // Nothing to do the second time.
        remove_dir_beneath(&agents, "alice").unwrap();
    }

    #[test]
    fn a_symlinked_agent_dir_is_refused_and_nothing_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let agents = dir.path().join("agents");
        fs::create_dir(&agents).unwrap();
        symlink(&outside, agents.join("bob")).unwrap();
        let err = remove_dir_beneath(&agents, "bob").unwrap_err();
        assert!(matches!(err, PurgeError::Symlink { .. }), "{err}");
        assert!(outside.join("keep").exists());
        assert!(remove_dir_beneath(&agents, "../outside").is_err());
        assert!(outside.join("keep").exists());
    }
}
