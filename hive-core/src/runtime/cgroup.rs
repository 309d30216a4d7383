//! One cgroup per agent container, on whatever hierarchy the host has:
//! pure cgroup v2 (NixOS: `/sys/fs/cgroup/`) or the hybrid layout (v1
//! controllers under `/sys/fs/cgroup/<controller>/`, v2 at
//! `/sys/fs/cgroup/unified/`). It carries the agent's limits (v2
//! `memory.max`/`cpu.max`, v1 `memory.limit_in_bytes`/`cpu.cfs_quota_us`),
//! freezes it for `pause` (v2 `cgroup.freeze` where the host has it, else
//! the v1 freezer) and counts its OOM kills (`memory.events` or
//! `memory.oom_control`).
//!
//! Agent cgroups of the `nspawn` runtime live below the daemon's own cgroup
//! in each hierarchy, `<own>/hyperhive/<container>/`, so whatever limits
//! the host puts on the daemon also bound its agents. A `nixos-container`
//! lives in the cgroup systemd gives `container@<c>.service`; the runtime
//! finds it from the container's init ([`AgentCgroup::of_process`]) and only
//! freezes it, reads its OOM count and sets its limits. This module must
//! never touch a cgroup outside those, and never create or remove one it
//! was not asked to.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Limits;

/// The period CPU quotas are expressed in, µs.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Longest a freeze or thaw may take to settle.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// Subtree below the daemon's cgroup that holds the agents'.
pub const SUBTREE: &str = "hyperhive";

/// Which cgroup layout the host has, with the daemon's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pure v2: one hierarchy; `base` is `<mount><own>/hyperhive`.
    V2 { base: PathBuf },
    /// v1 controllers, each `(controller, <mount><own>/hyperhive)`, plus the
    /// v2 hierarchy beside them when mounted (it has `cgroup.freeze` but no
    /// controllers).
    Hybrid {
        v1: Vec<(&'static str, PathBuf)>,
        unified: Option<PathBuf>,
    },
}

/// How the agent's cgroup is frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Freezer {
    /// `cgroup.freeze` in the v2 directory.
    V2,
    /// `freezer.state` in the v1 freezer directory.
    V1,
}

/// One agent's cgroup: a directory per hierarchy (all created by us).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentCgroup {
    /// Every directory, v2 first when there is one.
    pub dirs: Vec<PathBuf>,
    pub v2: Option<PathBuf>,
    pub memory_v1: Option<PathBuf>,
    pub cpu_v1: Option<PathBuf>,
    pub freezer_v1: Option<PathBuf>,
    pub freezer: Option<Freezer>,
}

/// v1 controllers agent cgroups are made in.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "freezer", "pids"];

impl Layout {
    /// Reads the host's layout and the daemon's own cgroup paths.
    pub fn detect() -> io::Result<Self> {
        Self::detect_at(
            Path::new("/sys/fs/cgroup"),
            &fs::read_to_string("/proc/self/cgroup")?,
        )
    }

    fn detect_at(mount: &Path, self_cgroup: &str) -> io::Result<Self> {
        let own = |want: Option<&str>| cgroup_path(self_cgroup, want);
        if mount.join("cgroup.controllers").exists() {
            let own = own(None).unwrap_or_default();
            return Ok(Self::V2 {
                base: mount.join(own).join(SUBTREE),
            });
        }
        let mut v1 = Vec::new();
        for &c in V1_CONTROLLERS {
            let dir = mount.join(c);
            if dir.join("cgroup.procs").exists() {
                if let Some(own) = own(Some(c)) {
                    v1.push((c, dir.join(own).join(SUBTREE)));
                }
            }
        }
        let unified = mount.join("unified");
        let unified = unified
            .join("cgroup.procs")
            .exists()
            .then(|| unified.join(own(None).unwrap_or_default()).join(SUBTREE));
        if v1.is_empty() && unified.is_none() {
            return Err(io::Error::other(format!(
                "no cgroup hierarchy under {}",
                mount.display()
            )));
        }
        Ok(Self::Hybrid { v1, unified })
    }

    /// Creates (or reuses) `name`'s cgroup, with `limits` applied.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<AgentCgroup> {
        let mut cg = AgentCgroup::empty();
        match self {
            Self::V2 { base } => {
                ensure_v2_base(base, limits)?;
                let dir = base.join(name);
                mkdir(&dir)?;
                cg.add_v2(dir);
            }
            Self::Hybrid { v1, unified } => {
                if let Some(base) = unified {
                    let dir = base.join(name);
                    mkdir(&dir)?;
                    cg.add_v2(dir);
                }
                for (c, base) in v1 {
                    let dir = base.join(name);
                    mkdir(&dir)?;
                    cg.add_v1(c, dir);
                }
            }
        }
        cg.freezer = cg.pick_freezer();
        cg.apply_limits(limits)?;
        Ok(cg)
    }
}

impl AgentCgroup {
    fn empty() -> Self {
        AgentCgroup {
            dirs: Vec::new(),
            v2: None,
            memory_v1: None,
            cpu_v1: None,
            freezer_v1: None,
            freezer: None,
        }
    }

    fn add_v2(&mut self, dir: PathBuf) {
        self.dirs.push(dir.clone());
        self.v2 = Some(dir);
    }

    /// Records `dir` as this cgroup's directory in v1 `controller`.
    fn add_v1(&mut self, controller: &str, dir: PathBuf) {
        self.dirs.push(dir.clone());
        match controller {
            "memory" => self.memory_v1 = Some(dir),
            "cpu" => self.cpu_v1 = Some(dir),
            "freezer" => self.freezer_v1 = Some(dir),
            _ => {}
        }
    }

    /// The cgroup `pid` is in now, in each hierarchy the host has (its v2
    /// one first), read from `/proc/<pid>/cgroup`: what systemd made for a
    /// unit. The caller checks it is the one it expects.
    pub fn of_process(pid: i32) -> io::Result<Self> {
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Self::of_process_at(Path::new("/sys/fs/cgroup"), &own)
    }

    fn of_process_at(mount: &Path, proc_cgroup: &str) -> io::Result<Self> {
        let path_of = |want: Option<&str>| cgroup_path(proc_cgroup, want);
        let mut cg = AgentCgroup::empty();
        let v2_mount = if mount.join("cgroup.controllers").exists() {
            Some(mount.to_owned())
        } else {
            let u = mount.join("unified");
            u.join("cgroup.procs").exists().then_some(u)
        };
        if let (Some(m), Some(p)) = (v2_mount, path_of(None)) {
            cg.add_v2(m.join(p));
        }
        if !mount.join("cgroup.controllers").exists() {
            for &c in V1_CONTROLLERS {
                if let Some(p) = path_of(Some(c)).filter(|_| mount.join(c).is_dir()) {
                    cg.add_v1(c, mount.join(c).join(p));
                }
            }
        }
        if cg.dirs.is_empty() {
            return Err(io::Error::other(format!(
                "no cgroup of the process under {}",
                mount.display()
            )));
        }
        cg.freezer = cg.pick_freezer();
        Ok(cg)
    }

    fn pick_freezer(&self) -> Option<Freezer> {
        if self
            .v2
            .as_ref()
            .is_some_and(|d| d.join("cgroup.freeze").exists())
        {
            Some(Freezer::V2)
        } else if self.freezer_v1.is_some() {
            Some(Freezer::V1)
        } else {
            None
        }
    }

    /// Whether it is frozen now (`pause` that outlived a daemon).
    pub fn is_frozen(&self) -> bool {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        match self.freezer {
            Some(Freezer::V2) => self.v2.as_ref().is_some_and(|d| {
                read(d.join("cgroup.events"))
                    .lines()
                    .any(|l| l == "frozen 1")
            }),
            Some(Freezer::V1) => self
                .freezer_v1
                .as_ref()
                .is_some_and(|d| read(d.join("freezer.state")).trim() == "FROZEN"),
            None => false,
        }
    }

    /// The `cgroup.procs` files a process must write itself into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Applies `limits`; an unset limit is lifted.
    pub fn apply_limits(&self, limits: &Limits) -> io::Result<()> {
        let cpu_quota = limits
            .cpu_millicores
            .map(|m| u64::from(m) * CPU_PERIOD_US / 1000);
        if let Some(dir) = &self.memory_v1 {
            let v = limits
                .memory_bytes
                .map_or("-1".to_owned(), |b| b.to_string());
            write(&dir.join("memory.limit_in_bytes"), &v)?;
        } else if let Some(dir) = self.v2.as_ref().filter(|d| d.join("memory.max").exists()) {
            let v = limits
                .memory_bytes
                .map_or("max".to_owned(), |b| b.to_string());
            write(&dir.join("memory.max"), &v)?;
            // Swap would let a hog live on past its limit.
            if dir.join("memory.swap.max").exists() {
                write(
                    &dir.join("memory.swap.max"),
                    if limits.memory_bytes.is_some() {
                        "0"
                    } else {
                        "max"
                    },
                )?;
            }
        } else if limits.memory_bytes.is_some() {
            return Err(io::Error::other("no memory controller for limits.memory"));
        }
        if let Some(dir) = &self.cpu_v1 {
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let v = cpu_quota.map_or("-1".to_owned(), |q| q.to_string());
            write(&dir.join("cpu.cfs_quota_us"), &v)?;
        } else if let Some(dir) = self.v2.as_ref().filter(|d| d.join("cpu.max").exists()) {
            let v = cpu_quota.map_or("max".to_owned(), |q| q.to_string());
            write(&dir.join("cpu.max"), &format!("{v} {CPU_PERIOD_US}"))?;
        } else if limits.cpu_millicores.is_some() {
            return Err(io::Error::other("no cpu controller for limits.cpu"));
        }
        Ok(())
    }

    /// OOM kills in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = match (&self.memory_v1, &self.v2) {
            (Some(d), _) => ("memory.oom_control", d),
            (None, Some(d)) => ("memory.events", d),
            _ => return 0,
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Freezes (or thaws) every process in it and waits until that holds.
    pub async fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, value, check): (PathBuf, &str, Box<dyn Fn() -> bool + Send>) = match self.freezer
        {
            Some(Freezer::V2) => {
                let dir = self.v2.clone().expect("v2 freezer has a v2 dir");
                let events = dir.join("cgroup.events");
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    Box::new(move || {
                        fs::read_to_string(&events)
                            .map(|s| s.lines().any(|l| l == want))
                            .unwrap_or(false)
                    }),
                )
            }
            Some(Freezer::V1) => {
                let dir = self.freezer_v1.clone().expect("v1 freezer has a dir");
                let state = dir.join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                (
                    dir.join("freezer.state"),
                    want,
                    Box::new(move || {
                        fs::read_to_string(&state)
                            .map(|s| s.trim() == want)
                            .unwrap_or(false)
                    }),
                )
            }
            None => return Err(io::Error::other("this host has no cgroup freezer")),
        };
        write(&file, value)?;
        let deadline = tokio::time::Instant::now() + FREEZE_TIMEOUT;
        while !check() {
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not settle", file.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Every process in it, sub-cgroups (nspawn's payload) included, in
    /// every hierarchy; each pid once.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            collect_pids(dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in it and waits, at most `timeout`, until
    /// none is left; returns how many there were. For a container nobody
    /// tracks (a core killed between spawning nspawn and recording it), so
    /// a new one never runs beside it on the same dirs.
    pub async fn kill_strays(&self, timeout: Duration) -> io::Result<usize> {
        let found = self.pids().len();
        if found == 0 {
            return Ok(0);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // `cgroup.kill` (v2, Linux 5.14) kills the subtree atomically,
            // forks included; otherwise each pid, again until none is left.
            match self.v2.as_ref().map(|d| d.join("cgroup.kill")) {
                Some(kill) if kill.exists() => write(&kill, "1")?,
                _ => {
                    for pid in self.pids() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.pids().is_empty() {
                return Ok(found);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} process(es) outlived SIGKILL in {:?}",
                        self.pids().len(),
                        self.dirs
                    ),
                ));
            }
        }
    }

    /// Removes the directories (deepest first, sub-cgroups nspawn made
    /// included) once no process is left; what is still busy stays.
    pub fn remove(&self) {
        for dir in &self.dirs {
            remove_tree(dir);
        }
    }
}

/// A process's path (no leading `/`) in the v2 hierarchy (`want` `None`)
/// or in the v1 hierarchy of controller `want`, from its
/// `/proc/<pid>/cgroup`.
fn cgroup_path(proc_cgroup: &str, want: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match want {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.trim_start_matches('/').to_owned())
    })
}

/// The pids in `dir`'s `cgroup.procs` and in those of its sub-cgroups.
fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "leaving a cgroup behind");
        }
    }
}

/// Pure v2: the memory and cpu controllers must be enabled down to the
/// agents' parent. A cgroup with processes cannot delegate controllers
/// ("no internal processes"), so when the daemon's own cgroup refuses, the
/// daemon moves itself into a `hive-core` leaf beside `hyperhive` first
/// (what a systemd unit with `Delegate=yes` expects).
fn ensure_v2_base(base: &Path, limits: &Limits) -> io::Result<()> {
    let own = base
        .parent()
        .ok_or_else(|| io::Error::other("cgroup base has no parent"))?;
    mkdir(base)?;
    if limits.memory_bytes.is_none() && limits.cpu_millicores.is_none() {
        return Ok(());
    }
    let enable = |dir: &Path| write(&dir.join("cgroup.subtree_control"), "+memory +cpu");
    if enable(own).is_err() {
        let leaf = own.join("hive-core");
        mkdir(&leaf)?;
        write(&leaf.join("cgroup.procs"), "0")?;
        enable(own)?;
    }
    enable(base)
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating cgroup {}: {e}", dir.display()),
        )),
    }
}

fn write(file: &Path, value: &str) -> io::Result<()> {
    fs::write(file, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", file.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_read_from_every_hierarchy_and_sub_cgroup_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let (v2, v1) = (
            dir.path().join("unified/h-a"),
            dir.path().join("freezer/h-a"),
        );
        fs::create_dir_all(v2.join("payload")).unwrap();
        fs::create_dir_all(&v1).unwrap();
        fs::write(v2.join("cgroup.procs"), "12\n").unwrap();
        fs::write(v2.join("payload/cgroup.procs"), "40\n41\n").unwrap();
        fs::write(v1.join("cgroup.procs"), "41\n12\n40\nnot-a-pid\n").unwrap();
        let mut cg = AgentCgroup::empty();
        cg.add_v2(v2.clone());
        cg.add_v1("freezer", v1);
        assert_eq!(cg.pids(), vec![12, 40, 41]);
        let mut gone = AgentCgroup::empty();
        gone.add_v2(dir.path().join("no-such"));
        assert!(gone.pids().is_empty());
    }

    #[test]
    fn a_process_cgroup_is_found_on_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for c in ["freezer", "unified"] {
            fs::create_dir_all(m.join(c)).unwrap();
            fs::write(m.join(c).join("cgroup.procs"), "").unwrap();
        }
        let own = "6:freezer:/machine.slice/container@h-a.service\n0::/machine.slice/container@h-a.service/payload\n";
        let cg = AgentCgroup::of_process_at(m, own).unwrap();
        let v2 = m.join("unified/machine.slice/container@h-a.service/payload");
        assert_eq!(cg.v2.as_deref(), Some(v2.as_path()));
        assert_eq!(
            cg.freezer_v1.as_deref(),
            Some(
                m.join("freezer/machine.slice/container@h-a.service")
                    .as_path()
            )
        );
        assert_eq!(cg.freezer, Some(Freezer::V1));
        assert!(!cg.is_frozen());
        let pure = tempfile::tempdir().unwrap();
        fs::write(pure.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let cg =
            AgentCgroup::of_process_at(pure.path(), "0::/machine.slice/container@h-a.service\n")
                .unwrap();
        assert_eq!(
            cg.dirs,
            vec![pure.path().join("machine.slice/container@h-a.service")]
        );
        assert!(AgentCgroup::of_process_at(pure.path(), "").is_err());
    }

    #[test]
    fn the_layout_is_read_for_both_v1_hybrid_and_pure_v2() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for c in ["memory", "cpu", "freezer", "unified"] {
            fs::create_dir_all(m.join(c)).unwrap();
            fs::write(m.join(c).join("cgroup.procs"), "").unwrap();
        }
        let own = "9:name=systemd:/\n6:freezer:/\n4:memory:/box/1\n1:cpu,cpuacct:/\n0::/\n";
        let layout = Layout::detect_at(m, own).unwrap();
        assert_eq!(
            layout,
            Layout::Hybrid {
                v1: vec![
                    ("memory", m.join("memory/box/1/hyperhive")),
                    ("cpu", m.join("cpu/hyperhive")),
                    ("freezer", m.join("freezer/hyperhive")),
                ],
                unified: Some(m.join("unified/hyperhive")),
            }
        );
        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let layout = Layout::detect_at(v2.path(), "0::/system.slice/hive-core.service\n").unwrap();
        assert_eq!(
            layout,
            Layout::V2 {
                base: v2.path().join("system.slice/hive-core.service/hyperhive")
            }
        );
    }
}
