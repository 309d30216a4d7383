//! Creating the runtime directories and binding unix sockets with exact
//! modes and owners, shared by the agent and operator socket servers.
//!
//! A socket is bound under a temporary name, given its mode and group, and
//! only then renamed into place, so no client can ever connect to it while
//! it still has the umask's mode. This module must never remove anything
//! that is not a socket: a stale path that is a file or a directory is an
//! error for the operator to look at.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Gid, Uid};
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

/// Makes sure `path` is a real directory (not a symlink) with exactly `mode`,
/// creating it (and missing parents, with the umask's mode) if needed.
/// `owner`, when given, is applied with `chown`.
pub fn ensure_dir(
    path: &Path,
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<(), SocketSetupError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SocketSetupError::WrongKind {
                path: path.to_owned(),
                expected: "directory",
            })
        }
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
    if let Some((uid, gid)) = owner {
        chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw)).map_err(|source| {
            SocketSetupError::Chown {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

/// Binds a listening socket at `path` with `mode` and, if given, group
/// `gid`, replacing a stale socket left by an earlier run.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, SocketSetupError> {
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(SocketSetupError::BadPath(path.to_owned()));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    remove_stale_socket(&tmp)?;
    remove_stale_socket(path)?;

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
        let first = bind(&path, 0o660, None).unwrap();
        drop(first);
        // The file is still there after the listener dropped: stale.
        assert!(path.exists());
        let _second = bind(&path, 0o600, None).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(meta.file_type().is_socket());
        // Nothing but the socket is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
