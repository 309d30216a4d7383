//! Who is on the other end of a unix socket, as the kernel reports it
//! (`SO_PEERCRED`), and what the user and group databases say about that
//! uid: its name and whether it belongs to a group (primary or
//! supplementary).
//!
//! This module must never take an identity from bytes a peer sent: the only
//! inputs are a connected socket and names from the daemon's own config.
//! Database lookups go through NSS and may block (LDAP, sssd), so async
//! callers run them with [`tokio::task::spawn_blocking`] (see
//! [`lookup_uid_blocking`]).

use std::ffi::CString;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

/// Why a peer or a database entry could not be established.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("reading SO_PEERCRED: {0}")]
    PeerCred(nix::Error),
    #[error("looking up uid {uid} in the user database: {source}")]
    LookupUid { uid: u32, source: nix::Error },
    #[error("looking up user {name:?} in the user database: {source}")]
    LookupUser { name: String, source: nix::Error },
    #[error("looking up group {name:?} in the group database: {source}")]
    LookupGroup { name: String, source: nix::Error },
    #[error("listing the groups of user {name:?}: {source}")]
    GroupList { name: String, source: nix::Error },
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("group {0:?} does not exist")]
    NoSuchGroup(String),
    #[error("the user-database lookup task failed: {0}")]
    Join(String),
}

/// The credentials the kernel recorded for the peer when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A user as the user database describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` from a connected unix socket.
pub fn peer_cred(sock: &impl AsFd) -> Result<PeerCred, PeerError> {
    let cred = getsockopt(sock, PeerCredentials).map_err(PeerError::PeerCred)?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// The user with this uid, or `None` if the database has no entry for it.
pub fn lookup_uid(uid: u32) -> Result<Option<UserInfo>, PeerError> {
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|source| PeerError::LookupUid { uid, source })?;
    Ok(user.map(user_info))
}

/// [`lookup_uid`] off the async runtime's worker threads.
pub async fn lookup_uid_blocking(uid: u32) -> Result<Option<UserInfo>, PeerError> {
    tokio::task::spawn_blocking(move || lookup_uid(uid))
        .await
        .map_err(|e| PeerError::Join(e.to_string()))?
}

/// The user called `name`; a missing user is an error because the name came
/// from the daemon's config, which promised it exists.
pub fn lookup_user(name: &str) -> Result<UserInfo, PeerError> {
    let user = User::from_name(name).map_err(|source| PeerError::LookupUser {
        name: name.to_owned(),
        source,
    })?;
    user.map(user_info)
        .ok_or_else(|| PeerError::NoSuchUser(name.to_owned()))
}

/// The gid of the group called `name`.
pub fn lookup_group_gid(name: &str) -> Result<u32, PeerError> {
    let group = Group::from_name(name).map_err(|source| PeerError::LookupGroup {
        name: name.to_owned(),
        source,
    })?;
    group
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| PeerError::NoSuchGroup(name.to_owned()))
}

/// Whether `user` belongs to group `gid`, as its primary group or as a
/// supplementary group listed in the group database (`getgrouplist`, which
/// also consults NSS sources other than `/etc/group`).
pub fn user_in_group(user: &UserInfo, gid: u32) -> Result<bool, PeerError> {
    if user.gid == gid {
        return Ok(true);
    }
    // A user name with an interior NUL cannot be in any database.
    let Ok(cname) = CString::new(user.name.as_str()) else {
        return Ok(false);
    };
    let groups =
        getgrouplist(&cname, Gid::from_raw(user.gid)).map_err(|source| PeerError::GroupList {
            name: user.name.clone(),
            source,
        })?;
    Ok(groups.iter().any(|g| g.as_raw() == gid))
}

/// The uid this daemon runs as.
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether this daemon runs as root.
pub fn running_as_root() -> bool {
    own_uid() == 0
}

fn user_info(u: User) -> UserInfo {
    UserInfo {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = peer_cred(&a).unwrap();
        assert_eq!(cred.uid, own_uid());
        assert_eq!(cred.pid, std::process::id() as i32);
    }

    #[test]
    fn root_is_in_its_primary_group_and_not_in_nogroup() {
        let root = lookup_uid(0).unwrap().expect("every system has uid 0");
        assert_eq!(root.name, "root");
        assert!(user_in_group(&root, 0).unwrap());
        // gid 65534 is `nogroup`/`nobody` on Debian and NixOS; root is not
        // a member of it on any sane system.
        assert!(!user_in_group(&root, 65534).unwrap());
    }

    #[test]
    fn missing_names_say_so() {
        assert!(matches!(
            lookup_user("no-such-user-hyperhive"),
            Err(PeerError::NoSuchUser(_))
        ));
        assert!(matches!(
            lookup_group_gid("no-such-group-hyperhive"),
            Err(PeerError::NoSuchGroup(_))
        ));
    }
}
