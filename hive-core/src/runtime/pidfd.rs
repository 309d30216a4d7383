//! Watching processes that may not be the daemon's children: a pidfd
//! (`pidfd_open(2)`) turns "has pid N exited?" into a readable fd, so a
//! container's init is noticed the moment it dies — no polling, and the same
//! for a container adopted from a previous daemon. [`ProcIdentity`] pins a
//! pid to one process (its start time), so a recycled pid is never mistaken
//! for the process that was recorded.
//!
//! This module must never signal a process it has not verified.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// An open pidfd.
pub struct PidFd {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// Opens a pidfd for `pid` (any process, child or not).
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall just returned this fd and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: `owned` is the open pidfd just returned; the AsyncFd owns
        // it from here until it is dropped, so the fd stays valid and refers
        // to the same pidfd for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { pid, fd })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Resolves when the process has exited (it is readable from then on).
    pub async fn exited(&self) {
        // A pidfd stays readable once the process is gone; readiness is
        // never cleared, so every later call returns at once.
        if let Err(e) = self.fd.readable().await {
            tracing::error!(pid = self.pid, error = %e, "polling a pidfd failed");
        }
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & libc::POLLIN != 0
    }

    /// Sends `signal` through the pidfd: it reaches this process or none,
    /// never a later one with the same pid.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a
        // null siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(()); // already gone
            }
            return Err(e);
        }
        Ok(())
    }
}

/// One process, pinned by pid and start time (clock ticks after boot,
/// `/proc/<pid>/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcIdentity {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcIdentity {
    /// The process now running as `pid`, if any.
    pub fn of(pid: i32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Opens a pidfd for this very process: `None` if it is gone or the pid
    /// now belongs to another. The start time is checked *after* opening, so
    /// the pidfd cannot refer to a newer process.
    pub fn open(&self) -> Option<PidFd> {
        let fd = PidFd::open(self.pid).ok()?;
        (start_time(self.pid) == Some(self.start_time)).then_some(fd)
    }
}

/// Field 22 of `/proc/<pid>/stat`, counted after the `(comm)` field, which
/// may itself hold spaces and parentheses.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After the comm: state is field 3, so start time is the 20th here.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The pids `pid`'s main thread has forked and not yet lost.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `pid`'s number in its innermost pid namespace (last `NSpid` entry).
pub fn innermost_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The first line of `/proc/<pid>/uid_map`: `(inside, outside, count)`.
pub fn uid_map(pid: i32) -> Option<(u32, u32, u32)> {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    let mut it = map
        .lines()
        .next()?
        .split_whitespace()
        .map(|n| n.parse().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pidfd_sees_a_process_end_and_a_recycled_identity_is_refused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let id = ProcIdentity::of(pid).unwrap();
        assert_eq!(id, ProcIdentity::of(pid).unwrap());
        let fd = id.open().expect("the same process");
        assert!(!fd.has_exited());
        let stale = ProcIdentity {
            pid,
            start_time: id.start_time + 1,
        };
        assert!(stale.open().is_none());
        fd.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), fd.exited())
            .await
            .unwrap();
        assert!(fd.has_exited());
        child.wait().unwrap();
        assert!(ProcIdentity::of(pid).is_none() || id.open().is_none());
        assert_eq!(
            innermost_pid(std::process::id() as i32),
            Some(std::process::id() as i32)
        );
    }
}
