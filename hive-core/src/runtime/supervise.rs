//! Supervision every child-process backend shares: spawn a program in its
//! own session with its output pumped into a [`Journal`], watch for its
//! exit, and stop it with SIGTERM and then SIGKILL after a grace period.
//! `hive-core dev` runs `hive-web` through it too.
//!
//! A [`Supervised`] child carries PDEATHSIG, so it dies with the daemon:
//! right for the `process` runtime and `dev`, wrong for containers that must
//! outlive a daemon restart (the `nspawn` backend spawns those itself). This
//! module must never touch the store or the sockets, and never decide
//! whether an exit was a crash: it reports the status and whether a stop
//! was asked for.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use super::journal::{pump, Journal};

/// How long a stopped child gets between SIGTERM and SIGKILL by default.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Called once when a supervised child exits: its status and whether it was
/// asked to stop.
pub type OnExit = Box<dyn FnOnce(ExitStatus, bool) + Send>;

/// Learns, after the spawn, which pid signals should go to when the direct
/// child is only a wrapper (bubblewrap reports its sandboxed pid on a
/// pipe). `None` from the future means "signal the direct child".
pub trait InnerPid: Send {
    fn after_spawn(self: Box<Self>) -> BoxFuture<'static, Option<i32>>;
}

/// A child process the daemon watches and can stop.
pub struct Supervised {
    /// Our direct child (a wrapper such as bubblewrap, or the program).
    leader: Pid,
    /// Where SIGTERM, SIGSTOP and SIGCONT go: the program inside a wrapper
    /// (bubblewrap would die at once and take it down with SIGKILL), or the
    /// leader when there is none.
    target: Pid,
    exited: watch::Receiver<Option<ExitStatus>>,
    stopping: Arc<AtomicBool>,
}

impl Supervised {
    /// Spawns `cmd` in its own session (so a terminal's Ctrl-C reaches only
    /// the daemon, which then stops its children in order), with stdout and
    /// stderr captured line by line into `journal` and the daemon's log.
    pub async fn spawn(
        mut cmd: Command,
        label: &str,
        journal: Option<Journal>,
        inner: Option<Box<dyn InnerPid>>,
        on_exit: OnExit,
    ) -> io::Result<Arc<Self>> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: runs in the forked child before exec; setsid and prctl are
        // async-signal-safe and touch only the child itself.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // If the daemon dies without stopping us, go too. (Best
                // effort: the kernel clears this on a uid change.)
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // Whatever happened, the reporter may now close its copy of the
        // child's end.
        let inner = inner.map(|i| i.after_spawn());
        let mut child = spawned?;
        let leader = Pid::from_raw(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .ok_or_else(|| io::Error::other("child exited before it had a pid"))?,
        );
        let journal = journal.unwrap_or_default();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, label.to_owned(), journal.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, label.to_owned(), journal));
        }
        let (tx, exited) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let stopping_w = Arc::clone(&stopping);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "waiting for a child failed");
                    return;
                }
            };
            on_exit(status, stopping_w.load(Ordering::SeqCst));
            let _ = tx.send(Some(status));
        });
        let target = match inner {
            Some(fut) => match fut.await {
                Some(pid) => Pid::from_raw(pid),
                None => {
                    tracing::warn!(
                        agent = label,
                        "the wrapper did not report the inner pid; signals go to the wrapper"
                    );
                    leader
                }
            },
            None => leader,
        };
        Ok(Arc::new(Self {
            leader,
            target,
            exited,
            stopping,
        }))
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// The pid signals go to (the program itself, inside any wrapper).
    pub fn pid(&self) -> u32 {
        self.target.as_raw() as u32
    }

    /// Waits for the child to exit.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exited.clone();
        let r = rx.wait_for(Option::is_some).await;
        r.ok().and_then(|s| *s)
    }

    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        kill(self.target, signal)
    }

    /// SIGTERM (and SIGCONT, in case it is paused), then SIGKILL to the
    /// program and its leader if it is still there after `grace`.
    pub async fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.stopping.store(true, Ordering::SeqCst);
        if self.has_exited() {
            return self.wait().await;
        }
        let _ = kill(self.target, Signal::SIGTERM);
        let _ = kill(self.target, Signal::SIGCONT);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = self.target.as_raw(),
                    "child ignored SIGTERM; killing it"
                );
                let _ = kill(self.target, Signal::SIGKILL);
                let _ = kill(self.leader, Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}
