//! Creating the runtime directories and binding unix sockets with exact
//! modes and owners, shared by the agent and operator socket servers.
//!
//! Nothing here follows a symlink someone else could plant. An agent may
//! write into its own socket directory (it is bind-mounted into its
//! container, and may be owned by the container's uid), so:
//!
//! - a socket is bound under a temporary name in a **staging directory only
//!   root can write** (`<runtime_dir>/agents/.staging/` for agent sockets,
//!   the root-owned runtime dir itself for the operator sockets), given its
//!   mode and group there by path — nobody else can swap that path for a
//!   link — and only then renamed into place. `rename` replaces the
//!   directory entry at the destination and never follows it, so no client
//!   can connect while the socket still has the umask's mode, and a link
//!   planted at the destination is replaced, not followed. Anything at the
//!   destination that is not a socket is refused before, for the operator
//!   to look at;
//! - a directory is opened with `O_DIRECTORY | O_NOFOLLOW` and its owner
//!   and mode are set on that fd (`fchown`, `fchmod`), never by path.
//!
//! This module must never remove anything that is not a socket.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::{chown, Gid};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tokio::net::UnixListener;

/// Why a directory or socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketSetupError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} exists and is not a {expected}; remove it or choose another path")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("changing the owner of {path}: {source}")]
    Chown { path: PathBuf, source: nix::Error },
    #[error("socket path {0} has no parent directory or file name")]
    BadPath(PathBuf),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SocketSetupError {
    let path = path.to_owned();
    move |source| SocketSetupError::Io { what, path, source }
}

fn errno(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> SocketSetupError {
    let f = io_err(what, path);
    move |e| f(io::Error::from(e))
}

/// Makes sure `path` is a real directory (not a symlink) with exactly `mode`,
/// creating it (and missing parents, with the umask's mode) if needed.
/// `owner`, when given, is applied too. Owner and mode are set on a
/// descriptor opened with `O_NOFOLLOW`, so a link swapped in at `path` is
/// refused, never followed.
pub fn ensure_dir(
    path: &Path,
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<(), SocketSetupError> {
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err("creating directory", parent))?;
            }
            // Created with at most `mode` (the umask can only remove bits), so
            // it is never more open than asked, even for an instant.
            match DirBuilder::new().mode(mode).create(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating directory", path)(e)),
            }
        }
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => SocketSetupError::WrongKind {
            path: path.to_owned(),
            expected: "directory",
        },
        other => errno("opening directory", path)(other),
    })?;
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            &dir,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
        )
        .map_err(|e| SocketSetupError::Chown {
            path: path.to_owned(),
            source: nix::Error::from_raw(e.raw_os_error()),
        })?;
    }
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(errno("setting the mode of", path))
}

/// Distinguishes the temporary names of sockets bound at once.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// Binds a listening socket at `path` with `mode` and, if given, group
/// `gid`, replacing a stale socket left by an earlier run. The socket is
/// made in `staging`, which must be a directory only root can write on the
/// same filesystem as `path` (see the module doc); anything but a socket at
/// `path` is refused and left alone.
pub fn bind(
    staging: &Path,
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, SocketSetupError> {
    if path.parent().is_none() || path.file_name().is_none() {
        return Err(SocketSetupError::BadPath(path.to_owned()));
    }
    let n = STAGED.fetch_add(1, Ordering::Relaxed);
    let tmp = staging.join(format!(".{}.{n}.sock.tmp", std::process::id()));
    remove_stale_socket(&tmp)?;
    refuse_non_socket(path)?;

    let listener = UnixListener::bind(&tmp).map_err(io_err("binding socket", &tmp))?;
    let result = (|| {
        if let Some(gid) = gid {
            chown(&tmp, None, Some(Gid::from_raw(gid))).map_err(|source| {
                SocketSetupError::Chown {
                    path: tmp.clone(),
                    source,
                }
            })?;
        }
        fs::set_permissions(&tmp, Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming socket into place at", path))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// `Ok` if nothing or a socket is at `path` (the rename will replace it).
fn refuse_non_socket(path: &Path) -> Result<(), SocketSetupError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => Err(SocketSetupError::WrongKind {
            path: path.to_owned(),
            expected: "socket",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

/// Removes `path` if it is a socket; leaves it alone if it does not exist;
/// refuses anything else.
pub fn remove_stale_socket(path: &Path) -> Result<(), SocketSetupError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(io_err("removing stale socket", path))
        }
        Ok(_) => Err(SocketSetupError::WrongKind {
            path: path.to_owned(),
            expected: "socket",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn bind_sets_mode_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let first = bind(dir.path(), &path, 0o660, None).unwrap();
        drop(first);
        // The file is still there after the listener dropped: stale.
        assert!(path.exists());
        let _second = bind(dir.path(), &path, 0o600, None).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(meta.file_type().is_socket());
        // Nothing but the socket is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_symlink_planted_at_the_socket_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, agent_dir) = (dir.path().join("staging"), dir.path().join("alice"));
        fs::create_dir(&staging).unwrap();
        fs::create_dir(&agent_dir).unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"host file").unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o600)).unwrap();
        let path = agent_dir.join("agent.sock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = bind(&staging, &path, 0o666, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&target).unwrap(), b"host file");
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        // Nothing was ever made in the agent's directory, and the staging
        // directory is left empty.
        assert_eq!(fs::read_dir(&agent_dir).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_socket_is_made_in_the_staging_dir_never_in_the_agents() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, agent_dir) = (dir.path().join("staging"), dir.path().join("alice"));
        fs::create_dir(&staging).unwrap();
        fs::create_dir(&agent_dir).unwrap();
        // A link the agent planted under the name an unstaged bind would
        // have used for its temporary socket: never touched.
        let target = dir.path().join("precious");
        fs::write(&target, b"x").unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o600)).unwrap();
        let planted = agent_dir.join(format!(".agent.sock.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let path = agent_dir.join("agent.sock");
        let _l = bind(&staging, &path, 0o666, None).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        assert!(fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_stale_path_that_is_not_a_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        fs::write(&path, b"precious").unwrap();
        let err = remove_stale_socket(&path).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn ensure_dir_sets_the_exact_mode_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        ensure_dir(&d, 0o751, None).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o751);
        ensure_dir(&d, 0o700, None).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_dir(&link, 0o700, None).is_err());
    }
}
