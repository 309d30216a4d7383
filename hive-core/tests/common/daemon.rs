//! Waiting for a daemon the test started to bind its socket: connect until
//! the socket accepts, fail at once (with the daemon's log) if the process
//! exited instead, fail with the log at the deadline. Shared by hive-core's
//! `TestHive` and hive-web's `RunHive` (included there by `#[path]`); it
//! only ever connects to the socket it is given and reads the log file.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits until `sock` accepts a connection. If `child` exits first it is
/// taken (set to `None`) and the call panics with the log at `log`.
pub fn wait_until_accepting(
    child: &mut Option<Child>,
    sock: &Path,
    deadline: Duration,
    log: &Path,
) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let end = Instant::now() + deadline;
    loop {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return;
        }
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            *child = None;
            panic!("hive-core exited at start ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < end,
            "hive-core did not bind {} in time:\n{}",
            sock.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
