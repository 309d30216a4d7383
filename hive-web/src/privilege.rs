//! Dropping privilege before the gateway opens anything to the network.
//!
//! Started as root, `hive-web` must be told which user to become; it then,
//! in this order (each step needs what the previous one still had):
//!
//! 1. looks the user up (uid, primary gid);
//! 2. clears the ambient set and drops every capability from the bounding
//!    set — dropping from the bounding set needs `CAP_SETPCAP`, which the
//!    uid change below takes away, so it must come first;
//! 3. sets the supplementary groups to just the user's primary group, then
//!    the real, effective and saved gid, then the real, effective and saved
//!    uid;
//! 4. clears the effective, permitted and inheritable sets (the kernel does
//!    so on the uid change already; doing it again costs nothing);
//! 5. sets `PR_SET_NO_NEW_PRIVS`, so no later `execve` can gain anything;
//! 6. re-reads everything from the kernel (`/proc/self/status` and the caps
//!    crate) and refuses to go on unless every capability set is empty,
//!    `NoNewPrivs` is 1, no uid is 0, and `setuid(0)` fails.
//!
//! Started as an ordinary user (as systemd does with `User=hive-web`, or
//! `hive-core dev` run by a developer), steps 2, 4, 5 and 6 still run: any
//! capability the service manager handed over (effective, permitted,
//! inheritable, ambient) is cleared and verified gone. The bounding set is
//! the one exception there: taking anything out of it needs `CAP_SETPCAP`,
//! which an ordinary process does not hold, and it grants nothing by itself
//! — it only caps what a later `execve` could add to the permitted set, and
//! with `no_new_privs` set no `execve` can add anything (no file
//! capabilities, no set-uid). So an ordinary start with an untouched bounding
//! set runs (and says so in its log); a start that held `CAP_SETPCAP` — every
//! start as root — must leave the bounding set empty too. Any failure is one
//! sentence and a non-zero exit.
//!
//! This must run while the process has a single thread (before the tokio
//! runtime starts): credentials and capability sets are per thread on Linux.
//! This module must never be skipped, and never loosen a check for
//! convenience.

use std::fs;
use std::io;

use nix::unistd::{self, Uid, User};
use rustix::thread::CapabilitySet;

/// Every capability set the kernel keeps for a thread, with the name
/// `/proc/<pid>/status` gives it.
pub const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Why the gateway refused to run.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("hive-web was started as root without --user; refusing to serve with root's privileges (pass --user NAME)")]
    RootWithoutUser,
    #[error("--user {0:?} names no user on this system")]
    NoSuchUser(String),
    #[error("cannot look up --user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("--user {0:?} is root; hive-web must run as an unprivileged user")]
    UserIsRoot(String),
    #[error("--user {user:?} was given but hive-web runs as uid {uid}, not root, so it cannot become that user")]
    CannotSwitch { user: String, uid: u32 },
    #[error("dropping privileges failed at {step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
    #[error("capabilities remain after dropping privileges ({0}); refusing to serve")]
    CapabilityLeft(String),
    #[error("no_new_privs is not set after dropping privileges; refusing to serve")]
    NoNewPrivsUnset,
    #[error("the process could still become root after dropping privileges; refusing to serve")]
    RootRegainable,
    #[error("cannot read /proc/self/status to verify privileges: {0}")]
    Status(io::Error),
}

/// What the process runs as once [`drop_privileges`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub gid: u32,
    /// Whether a switch from root happened.
    pub switched: bool,
}

/// Drops to `user` when root, clears every capability, sets
/// `no_new_privs` and verifies the result. See the module header.
pub fn drop_privileges(user: Option<&str>) -> Result<Dropped, PrivilegeError> {
    let uid = unistd::getuid();
    let euid = unistd::geteuid();
    let switched = uid.is_root() || euid.is_root();
    let mut bounding_must_be_empty = true;
    if switched {
        let name = user.ok_or(PrivilegeError::RootWithoutUser)?;
        let target = lookup(name)?;
        if target.uid.is_root() {
            return Err(PrivilegeError::UserIsRoot(name.to_owned()));
        }
        clear_ambient()?;
        clear_bounding()?;
        step("setgroups", unistd::setgroups(&[target.gid]))?;
        step(
            "setresgid",
            unistd::setresgid(target.gid, target.gid, target.gid),
        )?;
        step(
            "setresuid",
            unistd::setresuid(target.uid, target.uid, target.uid),
        )?;
    } else {
        if let Some(name) = user {
            // Already unprivileged: --user can only confirm who we are.
            let target = lookup(name)?;
            if target.uid != uid {
                return Err(PrivilegeError::CannotSwitch {
                    user: name.to_owned(),
                    uid: uid.as_raw(),
                });
            }
        }
        clear_ambient()?;
        // Without CAP_SETPCAP this fails; see the module header for why
        // the bounding set may then stay (and only it).
        bounding_must_be_empty = clear_bounding().is_ok();
    }
    for set in [
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
        caps::CapSet::Inheritable,
    ] {
        caps::clear(None, set).map_err(|e| PrivilegeError::Step {
            step: "clearing a capability set",
            source: io::Error::other(e.to_string()),
        })?;
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| PrivilegeError::Step {
        step: "PR_SET_NO_NEW_PRIVS",
        source: e.into(),
    })?;
    verify(bounding_must_be_empty)?;
    if !bounding_must_be_empty {
        tracing::info!(
            "the capability bounding set cannot be emptied without CAP_SETPCAP; \
             with no_new_privs and every other set empty it grants nothing"
        );
    }
    Ok(Dropped {
        uid: unistd::getuid().as_raw(),
        gid: unistd::getgid().as_raw(),
        switched,
    })
}

/// Re-reads the process's credentials from the kernel and fails unless it
/// holds no capability, has `no_new_privs`, is not root and cannot become
/// root again. `bounding_must_be_empty` is false only for a start that never
/// held `CAP_SETPCAP` (see the module header).
pub fn verify(bounding_must_be_empty: bool) -> Result<(), PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Status)?;
    let proc = ProcCreds::parse(&status);
    let checked = |name: &str| bounding_must_be_empty || name != "CapBnd";
    let mut left: Vec<String> = proc
        .caps
        .iter()
        .filter(|(name, mask)| *mask != 0 && checked(name))
        .map(|(name, mask)| format!("{name}={mask:016x}"))
        .collect();
    // The caps crate reads the same sets through capget/prctl; both views
    // must agree that nothing is left.
    for (set, name) in [
        (caps::CapSet::Effective, "effective"),
        (caps::CapSet::Permitted, "permitted"),
        (caps::CapSet::Inheritable, "inheritable"),
        (caps::CapSet::Ambient, "ambient"),
        (caps::CapSet::Bounding, "bounding"),
    ] {
        if matches!(set, caps::CapSet::Bounding) && !bounding_must_be_empty {
            continue;
        }
        match caps::read(None, set) {
            Ok(s) if s.is_empty() => {}
            Ok(s) => left.push(format!("{name}: {} capabilities", s.len())),
            Err(e) => left.push(format!("{name}: unreadable ({e})")),
        }
    }
    if proc.caps.len() != CAP_FIELDS.len() {
        left.push("some capability sets are missing from /proc/self/status".into());
    }
    if !left.is_empty() {
        return Err(PrivilegeError::CapabilityLeft(left.join(", ")));
    }
    if proc.no_new_privs != Some(1) {
        return Err(PrivilegeError::NoNewPrivsUnset);
    }
    if proc.uids.is_empty() || proc.uids.contains(&0) {
        return Err(PrivilegeError::RootRegainable);
    }
    // The last word: actually try. With every id non-zero and no
    // CAP_SETUID this must fail.
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::RootRegainable);
    }
    Ok(())
}

/// What `/proc/<pid>/status` says about a process's credentials. Public so
/// the privilege tests read another process the same way.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProcCreds {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// Each `Cap*` line present, as `(name, mask)`.
    pub caps: Vec<(&'static str, u64)>,
    pub no_new_privs: Option<u8>,
}

impl ProcCreds {
    /// Parses the text of a `status` file; unknown or malformed lines are
    /// skipped (and so show up as missing, which callers treat as failure).
    pub fn parse(status: &str) -> Self {
        let mut out = Self::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let ids = || {
                value
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            };
            match key {
                "Uid" => out.uids = ids(),
                "Gid" => out.gids = ids(),
                "NoNewPrivs" => out.no_new_privs = value.parse().ok(),
                _ => {
                    if let Some(name) = CAP_FIELDS.iter().find(|n| **n == key) {
                        if let Ok(mask) = u64::from_str_radix(value, 16) {
                            out.caps.push((name, mask));
                        }
                    }
                }
            }
        }
        out
    }
}

fn lookup(name: &str) -> Result<User, PrivilegeError> {
    User::from_name(name)
        .map_err(|source| PrivilegeError::Lookup {
            user: name.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_owned()))
}

fn step<T>(name: &'static str, r: nix::Result<T>) -> Result<T, PrivilegeError> {
    r.map_err(|e| PrivilegeError::Step {
        step: name,
        source: io::Error::from_raw_os_error(e as i32),
    })
}

fn clear_ambient() -> Result<(), PrivilegeError> {
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| PrivilegeError::Step {
        step: "clearing the ambient capability set",
        source: io::Error::other(e.to_string()),
    })
}

/// Drops every capability from the bounding set: first every one the caps
/// crate knows, then, by index up to the kernel's `cap_last_cap`, any newer
/// one the crate has no name for.
fn clear_bounding() -> Result<(), PrivilegeError> {
    caps::clear(None, caps::CapSet::Bounding).map_err(|e| PrivilegeError::Step {
        step: "dropping the capability bounding set",
        source: io::Error::other(e.to_string()),
    })?;
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
        .min(63);
    for bit in 0..=last {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        // An error (EINVAL) means the kernel has no capability with this
        // index: nothing to drop.
        if let Ok(true) = rustix::thread::capability_is_in_bounding_set(cap) {
            rustix::thread::remove_capability_from_bounding_set(cap).map_err(|e| {
                PrivilegeError::Step {
                    step: "dropping the capability bounding set",
                    source: e.into(),
                }
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_credential_lines_of_a_status_file() {
        let text = "Name:\thive-web\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
                    NoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                    CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let p = ProcCreds::parse(text);
        assert_eq!(p.uids, [65534; 4]);
        assert_eq!(p.no_new_privs, Some(1));
        assert_eq!(p.caps.len(), 5);
        assert_eq!(p.caps[3], ("CapBnd", 0x1ff_ffff_ffff));
    }
}
