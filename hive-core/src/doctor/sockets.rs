//! The filesystem half of `hivectl doctor`: the runtime and state dirs,
//! `admin.sock`, `web.sock`, the agents' socket dir and each agent's socket
//! dir and socket, checked against the modes and owners the core sets
//! (DESIGN §2; the constants beside the code that creates them).
//!
//! This module only looks (`lstat`, never following a link); it must never
//! change a mode or an owner — the fix is the operator's, and says how.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hive_proto::doctor::{DoctorCheck, Verdict};

/// What kind of file a path must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Socket,
}

/// What one path must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Names it in the report (`admin.sock`, `agent alice socket dir`).
    pub label: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// The permission bits, exactly.
    pub mode: u32,
    pub uid: u32,
    /// The group, where the design names one.
    pub gid: Option<u32>,
}

/// Checks one path; the verdict says what differs and the command that
/// fixes it.
pub fn check(want: &Expect) -> DoctorCheck {
    let subject = format!("{} {}", want.label, want.path.display());
    let shown = want.path.display();
    let verdict = match std::fs::symlink_metadata(&want.path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict::Wrong {
            what: "it is missing".into(),
            fix: "restart hive-core, which creates it at start".into(),
        },
        Err(e) => Verdict::Wrong {
            what: format!("it cannot be read: {e}"),
            fix: "check the path's parent directories".into(),
        },
        Ok(m) => {
            let kind_ok = match want.kind {
                Kind::Dir => m.file_type().is_dir(),
                Kind::Socket => m.file_type().is_socket(),
            };
            let mode = m.mode() & 0o7777;
            let mut wrong = Vec::new();
            let mut fixes = Vec::new();
            if !kind_ok {
                let what = match want.kind {
                    Kind::Dir => "a directory",
                    Kind::Socket => "a socket",
                };
                wrong.push(format!("it is not {what}"));
                fixes.push(format!(
                    "remove {shown} and restart hive-core, which creates it"
                ));
            }
            if mode != want.mode {
                wrong.push(format!("mode {mode:04o}, want {:04o}", want.mode));
                fixes.push(format!("chmod {:04o} {shown}", want.mode));
            }
            let gid_ok = want.gid.is_none_or(|g| g == m.gid());
            if m.uid() != want.uid || !gid_ok {
                let want_owner = owner(want.uid, want.gid.unwrap_or(m.gid()));
                wrong.push(format!(
                    "owner {}, want {want_owner}",
                    owner(m.uid(), m.gid())
                ));
                fixes.push(format!("chown {want_owner} {shown}"));
            }
            if wrong.is_empty() {
                Verdict::Ok {
                    detail: format!("{mode:04o} {}", owner(m.uid(), m.gid())),
                }
            } else {
                Verdict::Wrong {
                    what: wrong.join(", "),
                    fix: fixes.join(" && "),
                }
            }
        }
    };
    DoctorCheck { subject, verdict }
}

/// `user:group`, by name where the databases have one.
fn owner(uid: u32, gid: u32) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    format!("{user}:{group}")
}

/// The expectation for a path of `kind` with `mode`, owned by this daemon.
pub fn ours(
    label: impl Into<String>,
    path: &Path,
    kind: Kind,
    mode: u32,
    gid: Option<u32>,
) -> Expect {
    Expect {
        label: label.into(),
        path: path.to_owned(),
        kind,
        mode,
        uid: crate::peer::own_uid(),
        gid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    fn gid() -> u32 {
        nix::unistd::getegid().as_raw()
    }

    #[test]
    fn a_socket_as_the_core_binds_it_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o660)).unwrap();
        let c = check(&ours("admin.sock", &path, Kind::Socket, 0o660, Some(gid())));
        assert_eq!(c.verdict.word(), "ok", "{c:?}");
        assert_eq!(c.subject, format!("admin.sock {}", path.display()));
    }

    #[test]
    fn a_world_writable_socket_is_reported_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        let c = check(&ours("admin.sock", &path, Kind::Socket, 0o660, Some(gid())));
        let Verdict::Wrong { what, fix } = c.verdict else {
            panic!("{c:?}")
        };
        assert_eq!(what, "mode 0666, want 0660");
        assert_eq!(fix, format!("chmod 0660 {}", path.display()));
    }

    #[test]
    fn a_wrong_owner_a_wrong_kind_and_a_missing_path_are_each_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o700)).unwrap();
        let mut want = ours("agent socket dirs", &path, Kind::Dir, 0o700, None);
        want.uid = crate::peer::own_uid() + 1;
        let Verdict::Wrong { what, fix } = check(&want).verdict else {
            panic!("owner not checked")
        };
        assert!(what.starts_with("owner "), "{what}");
        assert!(fix.starts_with("chown "), "{fix}");

        let file = dir.path().join("web.sock");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o660)).unwrap();
        let Verdict::Wrong { what, .. } =
            check(&ours("web.sock", &file, Kind::Socket, 0o660, None)).verdict
        else {
            panic!("kind not checked")
        };
        assert_eq!(what, "it is not a socket");

        let gone = dir.path().join("gone.sock");
        let Verdict::Wrong { what, .. } =
            check(&ours("web.sock", &gone, Kind::Socket, 0o660, None)).verdict
        else {
            panic!("missing not reported")
        };
        assert_eq!(what, "it is missing");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let c = check(&ours("state dir", &link, Kind::Dir, 0o700, None));
        assert_eq!(c.verdict.word(), "WRONG", "{c:?}");
    }
}
