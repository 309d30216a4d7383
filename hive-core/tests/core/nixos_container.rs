//! The `nixos-container` runtime against a recording stand-in for
//! `nixos-container` and `machinectl` (`tests/fixtures/nixos-container-standin.py`)
//! on the daemon's `PATH`: the real daemon is driven through its whole
//! lifecycle over `admin.sock` and every argv it ran is asserted, for an
//! agent whose 31-character name maps to an 11-character container. The
//! stand-in starts a real leader (own user and network namespace, in a
//! `container@<c>.service` cgroup, with a veth), so the leader checks, the
//! pidfd crash watch, the cgroup freezer and adoption all run for real.
//! The real tools run in the NixOS VM test (`nixos-modules/tests/vm.nix`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_proto::operator::LifecycleAction;
use hive_proto::view::{AgentSummary, RunState};

use crate::common::{is_root, poll_until, sibling_bin, skip_or_fail, TestHive};

/// 31 characters: the longest agent name there is.
const AGENT: &str = "nx-lifecycle-of-a-long-agent-01";
/// Its container (`runtime::container_name`, pinned: it is on-disk state).
const SHORT: &str = "h-nx-l6kba5";

/// The stand-in's files, and what it leaves behind removed on drop.
struct StandIn {
    bin: PathBuf,
    conf_dir: PathBuf,
    run_dir: PathBuf,
    /// The cgroup standing for `machine.slice`, and its test-owned parent.
    cgroup: PathBuf,
    cgroup_top: PathBuf,
    log: PathBuf,
    /// Log lines already asserted.
    seen: usize,
}

impl StandIn {
    /// Installs the stand-in under `dir`; `None` (after [`skip_or_fail`])
    /// where it cannot run: it needs root, python3, `ip` and cgroup v2.
    fn install(dir: &Path) -> Option<Self> {
        if !is_root() {
            skip_or_fail("the nixos-container stand-in needs root (namespaces, cgroups, veths)");
            return None;
        }
        let on_path = |tool: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|d| d.join(tool).is_file())
        };
        if !Path::new("/usr/bin/python3").is_file() {
            skip_or_fail("the stand-in runs on /usr/bin/python3 (apt-get install python3)");
            return None;
        }
        for tool in ["ip", "sleep"] {
            if !on_path(tool) {
                skip_or_fail(&format!("{tool} is not on PATH"));
                return None;
            }
        }
        let v2 = [
            Path::new("/sys/fs/cgroup"),
            Path::new("/sys/fs/cgroup/unified"),
        ]
        .into_iter()
        .find(|m| m.join("cgroup.procs").exists() && m.join("cgroup.subtree_control").exists());
        let Some(v2) = v2 else {
            skip_or_fail("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
            return None;
        };
        let root = dir.join("standin");
        let (bin, conf_dir, run_dir) = (root.join("bin"), root.join("conf"), root.join("run"));
        for d in [&bin, &conf_dir, &run_dir] {
            fs::create_dir_all(d).unwrap();
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nixos-container-standin.py");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        for tool in ["nixos-container", "machinectl"] {
            std::os::unix::fs::symlink(&script, bin.join(tool)).unwrap();
        }
        let cgroup_top = v2.join(format!("hive-test-nx-{}", std::process::id()));
        let cgroup = cgroup_top.join("machine.slice");
        fs::create_dir_all(&cgroup).unwrap();
        let log = root.join("argv.log");
        let cfg = serde_json::json!({
            "conf_dir": conf_dir, "run_dir": run_dir, "cgroup": cgroup, "log": log,
        });
        fs::write(bin.join("standin.json"), cfg.to_string()).unwrap();
        Some(Self {
            bin,
            conf_dir,
            run_dir,
            cgroup,
            cgroup_top,
            log,
            seen: 0,
        })
    }

    /// `PATH` for the daemon: the stand-in first.
    fn path(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.bin.clone()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).unwrap()
    }

    /// The argvs run since the last call, each `[tool, args...]`.
    fn new_calls(&mut self) -> Vec<Vec<String>> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let new = lines[self.seen..]
            .iter()
            .map(|l| serde_json::from_str(l).expect("an argv line"))
            .collect();
        self.seen = lines.len();
        new
    }

    fn conf(&self) -> String {
        fs::read_to_string(self.conf_dir.join(format!("{SHORT}.conf"))).unwrap_or_default()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // Leaders outlive the daemon by design; a test's must not.
        if let Ok(entries) = fs::read_dir(&self.run_dir) {
            for e in entries.flatten() {
                if let Some(pid) = fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let unit = self.cgroup.join(format!("container@{SHORT}.service"));
        let _ = poll_until_sync(|| fs::remove_dir(&unit).is_ok() || !unit.exists());
        let _ = fs::remove_dir(&self.cgroup);
        let _ = fs::remove_dir(&self.cgroup_top);
    }
}

fn poll_until_sync(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn running(a: &AgentSummary) -> bool {
    a.run_state == RunState::Running && a.leader_pid.is_some()
}

#[tokio::test]
async fn every_nixos_container_call_has_its_exact_argv_through_the_whole_lifecycle() {
    assert_eq!(AGENT.len(), 31);
    let dir = tempfile::Builder::new()
        .prefix("hive-nx-standin")
        .tempdir()
        .unwrap();
    let Some(mut nc) = StandIn::install(dir.path()) else {
        return;
    };
    let top = format!(
        "stop_timeout = 5\n[nixos_container]\nconf_dir = {:?}\n",
        nc.conf_dir
    );
    let agents = format!("[agents.{AGENT}]\nrestart = \"never\"\n");
    let mut hive = TestHive::with_runtime("nixos-container", &top, &agents);
    let path = nc.path();
    hive.spawn_with_env(&[("PATH", path.as_os_str())]);
    hive.wait_for_admin_socket();
    let flake = format!("{}#{AGENT}", hive.dir.path().join("lib/meta").display());
    let (start, show, stop) = (
        argv(&["nixos-container", "start", SHORT]),
        argv(&["machinectl", "show", SHORT, "--property=Leader", "--value"]),
        argv(&["nixos-container", "stop", SHORT]),
    );

    // Create (with the flake attribute and the agent's own addresses),
    // start, leader: the daemon starts it by itself.
    let first = hive.wait_agent(AGENT, "started", running).await;
    assert_eq!(
        nc.new_calls(),
        [
            argv(&[
                "nixos-container",
                "create",
                SHORT,
                "--flake",
                &flake,
                "--host-address",
                "10.213.0.1",
                "--local-address",
                "10.213.0.2",
            ]),
            start.clone(),
            show.clone(),
        ]
    );
    // The short name is the row's, and the range is the one in the conf and
    // in the leader's uid map.
    assert_eq!(first.container.as_deref(), Some(SHORT));
    let base = first.uid_range.expect("a uid range").base;
    let leader = first.leader_pid.unwrap();
    let conf = nc.conf();
    let lib = hive.dir.path().join("lib/agents").join(AGENT);
    let sock = hive.runtime_dir().join("agents").join(AGENT);
    assert!(
        conf.contains(&format!("\nPRIVATE_USERS={base}\n")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!(
            "\nEXTRA_NSPAWN_FLAGS=\"--private-users-ownership=auto --bind={}:/state --bind={}:/run/hive --bind-ro={}:/run/hive-agent/bin\"\n",
            lib.join("state").display(),
            sock.display(),
            sibling_bin("hive-agent").unwrap().parent().unwrap().display()
        )),
        "{conf}"
    );
    let uid_map = fs::read_to_string(format!("/proc/{leader}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &base.to_string(), "65536"]
    );

    // `hivectl status` shows the short name, the range and the leader.
    let Some(hivectl) = sibling_bin("hivectl") else {
        return;
    };
    let out = tokio::process::Command::new(hivectl)
        .arg("--socket")
        .arg(hive.admin_socket())
        .args(["status", AGENT])
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    let row = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in\n{status}"))
            .to_owned()
    };
    assert_eq!(row("container "), SHORT);
    assert_eq!(row("uid range "), format!("{base}-{}", base + 65535));
    assert_eq!(row("leader pid "), leader.to_string());

    // stop, start, restart.
    hive.lifecycle(AGENT, LifecycleAction::Stop).await;
    let row = hive.agent(AGENT).await;
    assert_eq!((row.run_state, row.leader_pid), (RunState::Stopped, None));
    assert!(row.crash_reason.is_none(), "{row:?}");
    assert_eq!(nc.new_calls(), std::slice::from_ref(&stop));
    hive.lifecycle(AGENT, LifecycleAction::Start).await;
    let second = hive.wait_agent(AGENT, "started again", running).await;
    assert_eq!(nc.new_calls(), [start.clone(), show.clone()]);
    hive.lifecycle(AGENT, LifecycleAction::Restart).await;
    let third = hive.wait_agent(AGENT, "restarted", running).await;
    assert_eq!(nc.new_calls(), [stop.clone(), start.clone(), show.clone()]);
    let pids = [
        leader,
        second.leader_pid.unwrap(),
        third.leader_pid.unwrap(),
    ];
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");

    // pause / resume freeze the cgroup the leader is in; no tool is run.
    let events = nc
        .cgroup
        .join(format!("container@{SHORT}.service"))
        .join("cgroup.events");
    hive.lifecycle(AGENT, LifecycleAction::Pause).await;
    assert_eq!(hive.agent(AGENT).await.run_state, RunState::Paused);
    assert!(fs::read_to_string(&events).unwrap().contains("frozen 1"));
    hive.lifecycle(AGENT, LifecycleAction::Resume).await;
    assert_eq!(hive.agent(AGENT).await.run_state, RunState::Running);
    assert!(fs::read_to_string(&events).unwrap().contains("frozen 0"));
    assert_eq!(nc.new_calls(), Vec::<Vec<String>>::new());

    // rebuild: stop, update from the flake, start.
    hive.lifecycle(AGENT, LifecycleAction::Rebuild).await;
    let rebuilt = hive.wait_agent(AGENT, "rebuilt", running).await;
    assert_eq!(
        nc.new_calls(),
        [
            stop.clone(),
            argv(&["nixos-container", "update", SHORT, "--flake", &flake]),
            start.clone(),
            show.clone(),
        ]
    );

    // A crash of the leader is seen through its pidfd, and with
    // restart = "never" nothing starts it again.
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rebuilt.leader_pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    hive.wait_agent(AGENT, "crashed", |r| r.run_state == RunState::Crashed)
        .await;
    let elapsed = killed_at.elapsed();
    // The reason follows the state (the supervisor adds its decision).
    let crashed = hive
        .wait_agent(AGENT, "crashed with a reason", |r| {
            r.run_state == RunState::Crashed
                && r.crash_reason
                    .as_deref()
                    .is_some_and(|c| c.contains("restart"))
        })
        .await;
    println!(
        "nixos-container leader SIGKILL seen as crashed after {} ms (including the test's polling)",
        elapsed.as_millis()
    );
    let reason = crashed.crash_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("its init is gone (exit status unknown)")
            && reason.contains("restart = \"never\""),
        "{reason}"
    );
    assert_eq!(crashed.leader_pid, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(nc.new_calls(), Vec::<Vec<String>>::new());
    hive.lifecycle(AGENT, LifecycleAction::Start).await;
    let before = hive
        .wait_agent(AGENT, "started after the crash", running)
        .await;
    assert_eq!(nc.new_calls(), [start.clone(), show.clone()]);

    // A restarted daemon adopts the running container: same leader, asked
    // of machinectl, never started twice.
    hive.stop();
    hive.spawn_with_env(&[("PATH", path.as_os_str())]);
    hive.wait_for_admin_socket();
    let adopted = hive.wait_agent(AGENT, "adopted", running).await;
    assert_eq!(adopted.leader_pid, before.leader_pid);
    assert_eq!(adopted.uid_range, before.uid_range);
    assert_eq!(nc.new_calls(), std::slice::from_ref(&show));

    // destroy: stop, destroy; the conf goes, the state dir stays.
    hive.lifecycle(AGENT, LifecycleAction::Destroy).await;
    assert_eq!(
        nc.new_calls(),
        [stop.clone(), argv(&["nixos-container", "destroy", SHORT])]
    );
    let row = hive.agent(AGENT).await;
    assert_eq!((row.run_state, row.leader_pid), (RunState::Stopped, None));
    assert!(!nc.conf_dir.join(format!("{SHORT}.conf")).exists());
    assert!(lib.join("state").is_dir());
    // The stand-in's leader is really gone.
    let last = before.leader_pid.unwrap();
    assert!(
        poll_until(|| !Path::new(&format!("/proc/{last}")).exists()
            || fs::read_to_string(format!("/proc/{last}/stat")).is_ok_and(|s| s.contains(") Z ")))
        .await
    );
    // The journal holds the calls the daemon made.
    let journal = fs::read_to_string(lib.join("harness/journal.log")).unwrap();
    assert!(
        journal.contains(&format!("-- hive-core: nixos-container destroy {SHORT}")),
        "{journal}"
    );
}
