//! A `NOTIFY_SOCKET` of the test's own, for proving when a daemon says
//! `READY=1` (used by hive-core's and hive-web's tests; hive-web includes
//! this file by path, so there is one copy).
//!
//! [`NotifySocket::hold`] fills the socket's receive queue first, so the
//! daemon's send blocks in the kernel (`unix_wait_for_peer`) until the test
//! reads: while the daemon is held inside its send, the test checks what
//! `READY=1` promises (sockets accept, the store answers). Had the daemon
//! notified before binding, those checks would find nothing to connect to.
//! Nothing here asserts how long anything takes; the deadlines only bound a
//! hung daemon.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a sender sleeps while the receiving unix datagram socket is full.
const BLOCKED_ON_FULL_PEER: &str = "unix_wait_for_peer";
/// A datagram no daemon sends, used to fill the queue.
const FILLER: &[u8] = b"X-TEST-FILLER=1\n";

pub struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    recv: UnixDatagram,
    fillers: usize,
}

impl NotifySocket {
    /// A fresh socket any local user may send to (the gateway sends after
    /// dropping to its own user, as under systemd, where the socket is
    /// `0777` too).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("notify-test")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let path = dir.path().join("notify.sock");
        let recv = UnixDatagram::bind(&path).expect("binding the notify socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod socket");
        Self {
            _dir: dir,
            path,
            recv,
            fillers: 0,
        }
    }

    /// Like [`NotifySocket::new`], with the queue full: the next sender
    /// blocks until [`NotifySocket::release`].
    pub fn hold() -> Self {
        let mut s = Self::new();
        let filler = UnixDatagram::unbound().expect("filler socket");
        filler.set_nonblocking(true).expect("nonblocking");
        loop {
            match filler.send_to(FILLER, &s.path) {
                Ok(_) => s.fillers += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the notify socket: {e}"),
            }
        }
        assert!(s.fillers > 0, "the notify socket never filled");
        s
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until some thread of `pid` sleeps sending to a full unix
    /// datagram socket — this one, the only one the test filled. False if
    /// `pid` is gone or `deadline` passes first.
    pub fn wait_until_held(&self, pid: u32, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let tasks = PathBuf::from(format!("/proc/{pid}/task"));
        while Instant::now() < until {
            let Ok(entries) = std::fs::read_dir(&tasks) else {
                return false;
            };
            for task in entries.flatten() {
                let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
                if wchan.trim() == BLOCKED_ON_FULL_PEER {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Drains the fillers, then returns what the held sender sent.
    pub fn release(&mut self, deadline: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        while self.fillers > 0 {
            let n = self.recv.recv(&mut buf).expect("reading a filler");
            assert_eq!(&buf[..n], FILLER, "a message arrived among the fillers");
            self.fillers -= 1;
        }
        self.next(deadline)
            .expect("the held sender sent nothing once released")
    }

    /// The next message, or `None` if none comes within `deadline`.
    pub fn next(&self, deadline: Duration) -> Option<String> {
        self.recv
            .set_read_timeout(Some(deadline))
            .expect("read timeout");
        let mut buf = vec![0u8; 4096];
        match self.recv.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// Whatever is queued now, without waiting.
    pub fn queued(&self) -> Vec<String> {
        self.recv.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.recv.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.recv.set_nonblocking(false).expect("blocking");
        out
    }
}
