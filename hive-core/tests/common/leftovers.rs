//! Containers a test left behind: a test's nspawn containers outlive its
//! daemon by design (the runtime adopts them on restart), so every harness
//! that starts a container hive calls [`kill_containers_under`] from its
//! `Drop`, which runs even when the test fails. Shared by hive-core's and
//! hive-web's tests (hive-web includes this file by `#[path]`); it must only
//! ever signal `systemd-nspawn` processes whose `--directory=` lies under
//! the directory it is given, never a container it did not start.

use std::fs;
use std::path::Path;

/// The `systemd-nspawn` processes whose container root lies under `dir`.
pub fn containers_under(dir: &Path) -> Vec<i32> {
    let needle = format!("--directory={}", dir.display());
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"))
                && args.iter().any(|a| a.starts_with(needle.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every nspawn container whose root lies under `dir` (its init
/// first, which ends the container, then nspawn): what a test leaves
/// behind when it ends early.
pub fn kill_containers_under(dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for pid in containers_under(dir) {
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
