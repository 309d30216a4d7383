//! Reading an agent's state dir for the operator. The agent owns that
//! directory and can plant symlinks in it, so every path is resolved by the
//! kernel with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` below a
//! directory fd opened with `O_NOFOLLOW`: a link that points outside, an
//! absolute link, or a `..` that climbs out fails with `EXDEV` instead of
//! being followed. Only regular files are read, and only up to
//! [`MAX_STATE_FILE`] bytes: the path is first opened with `O_PATH` (which
//! opens nothing: no FIFO handshake, no device driver's `open`), checked
//! with `fstat`, and only a regular file is then opened for reading,
//! through that same descriptor (`/proc/self/fd/N`), so what is read is
//! exactly what was checked. A planted FIFO or device node is refused
//! without ever being opened.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use hive_proto::operator::DirEntry;
use hive_proto::view::ErrorCode;
use hive_proto::RelPath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::Refusal;

/// Most bytes of a state file sent in one reply (the frame limit is 1 MiB).
pub const MAX_STATE_FILE: usize = 512 * 1024;
/// Most entries of one directory listing.
pub const MAX_DIR_ENTRIES: usize = 1000;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

fn refusal(e: Errno, rel: &str) -> Refusal {
    match e {
        Errno::NOENT => Refusal::new(ErrorCode::NotFound, format!("{rel}: no such file")),
        Errno::XDEV | Errno::LOOP => Refusal::new(
            ErrorCode::Forbidden,
            format!("{rel}: resolves outside the agent's state dir"),
        ),
        Errno::NOTDIR => Refusal::new(ErrorCode::BadRequest, format!("{rel}: not a directory")),
        Errno::ISDIR => Refusal::new(ErrorCode::BadRequest, format!("{rel}: is a directory")),
        Errno::ACCESS | Errno::PERM => {
            Refusal::new(ErrorCode::Forbidden, format!("{rel}: permission denied"))
        }
        other => {
            tracing::error!(error = %other, path = rel, "reading state dir");
            Refusal::new(ErrorCode::Internal, format!("{rel}: {other}"))
        }
    }
}

fn open_root(state_dir: &Path) -> Result<OwnedFd, Refusal> {
    rustix::fs::open(
        state_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Refusal::new(ErrorCode::NotFound, "this agent has no state dir yet"),
        other => refusal(other, "."),
    })
}

/// Reads `rel` below `state_dir`: `(bytes, truncated)`.
pub fn read_file(state_dir: &Path, rel: &RelPath) -> Result<(Vec<u8>, bool), Refusal> {
    let root = open_root(state_dir)?;
    let path_fd = rustix::fs::openat2(
        &root,
        rel.as_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_flags(),
    )
    .map_err(|e| refusal(e, rel.as_str()))?;
    let st = rustix::fs::fstat(&path_fd).map_err(|e| refusal(e, rel.as_str()))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Err(refusal(Errno::ISDIR, rel.as_str())),
        _ => {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("{rel}: not a regular file"),
            ))
        }
    }
    // Reopening the O_PATH descriptor opens the very inode just checked,
    // whatever the agent has done to the path since.
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| refusal(e, rel.as_str()))?;
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_STATE_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("{rel}: {e}")))?;
    let truncated = buf.len() > MAX_STATE_FILE;
    buf.truncate(MAX_STATE_FILE);
    Ok((buf, truncated))
}

/// Lists `rel` (or the state dir itself) below `state_dir`, sorted by name.
pub fn list_dir(state_dir: &Path, rel: Option<&RelPath>) -> Result<Vec<DirEntry>, Refusal> {
    let root = open_root(state_dir)?;
    let shown = rel.map(|r| r.as_str()).unwrap_or(".");
    let dir = match rel {
        None => root,
        Some(rel) => rustix::fs::openat2(
            &root,
            rel.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| refusal(e, shown))?,
    };
    let mut entries = Vec::new();
    let reader = rustix::fs::Dir::read_from(&dir).map_err(|e| refusal(e, shown))?;
    for entry in reader {
        let entry = entry.map_err(|e| refusal(e, shown))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if entries.len() >= MAX_DIR_ENTRIES {
            break;
        }
        let Ok(st) = rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        entries.push(DirEntry {
            name,
            is_dir: FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            size: st.st_size as u64,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn symlinks_cannot_leave_the_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(tmp.path().join("secret"), "host secret").unwrap();
        std::fs::write(state.join("notes.md"), "hello").unwrap();
        std::fs::create_dir(state.join("sub")).unwrap();
        symlink("../notes.md", state.join("sub/up")).unwrap();
        symlink("../secret", state.join("escape")).unwrap();
        symlink(tmp.path().join("secret"), state.join("absolute")).unwrap();
        symlink("/proc/self/root/etc/passwd", state.join("magic")).unwrap();

        assert_eq!(read_file(&state, &rel("notes.md")).unwrap().0, b"hello");
        // A link that stays inside is followed.
        assert_eq!(read_file(&state, &rel("sub/up")).unwrap().0, b"hello");
        for bad in ["escape", "absolute", "magic"] {
            let e = read_file(&state, &rel(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{bad}: {e}");
        }
        assert_eq!(
            read_file(&state, &rel("sub")).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let names: Vec<_> = list_dir(&state, None)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["absolute", "escape", "magic", "notes.md", "sub"]);
        assert_eq!(
            list_dir(&state, Some(&rel("escape"))).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn a_planted_fifo_is_refused_without_being_opened() {
        use rustix::fs::inotify;
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        // The kernel reports every open of the FIFO (an `O_PATH` one is not
        // an open): a read of it, or the device driver of a node, would show.
        let watch =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(&watch, &fifo, inotify::WatchFlags::OPEN).unwrap();
        let opens = |watch: &OwnedFd| {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
            let mut reader = inotify::Reader::new(watch, &mut buf);
            let mut n = 0;
            while reader.next().is_ok() {
                n += 1;
            }
            n
        };
        let e = read_file(tmp.path(), &rel("pipe")).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
        assert!(e.message.contains("not a regular file"), "{e}");
        assert_eq!(opens(&watch), 0, "the FIFO was opened");
        // The watch does see a real open: the check above can fail.
        let _r = rustix::fs::open(&fifo, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()).unwrap();
        assert_eq!(opens(&watch), 1);
    }

    #[test]
    fn the_state_dir_itself_may_not_be_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("/etc", tmp.path().join("state")).unwrap();
        assert!(read_file(&tmp.path().join("state"), &rel("passwd")).is_err());
    }

    #[test]
    fn big_files_are_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big"), vec![b'x'; MAX_STATE_FILE + 10]).unwrap();
        let (bytes, truncated) = read_file(tmp.path(), &rel("big")).unwrap();
        assert!(truncated);
        assert_eq!(bytes.len(), MAX_STATE_FILE);
    }
}
