//! The gateway holds no privilege (DESIGN §1, invariant 4), read back from
//! the kernel through `/proc/<pid>/status` of the running binary.
//!
//! `READY=1` is part of the same story: systemd hears it only from the
//! dropped process, once its listener accepts.
//!
//! These tests need root (to start it as root, and to start it as another
//! user with `setpriv`); off CI they skip with a printed reason, under
//! `CI=true` they fail instead.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hive_web::privilege::{ProcCreds, CAP_FIELDS};
use nix::unistd::User;

use common::dev::free_port;
use common::http::Http;
use common::notify::NotifySocket;

const TOKEN: &str = "privilege-test-token-0123456789abcdef";

/// A tokens file in a fresh directory, readable by `owner` (or root).
fn tokens_file(owner: Option<&User>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    fs::write(&path, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    if let Some(u) = owner {
        nix::unistd::chown(&path, Some(u.uid), Some(u.gid)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, path)
}

fn web_command(prefix: &[&str], tokens: &Path, port: u16, extra: &[&str]) -> Command {
    let web = web_bin();
    let mut cmd = if prefix.is_empty() {
        Command::new(&web)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(&web);
        c
    };
    cmd.arg("--core-socket")
        .arg("/nonexistent/hive-web-test/web.sock")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tokens-file")
        .arg(tokens)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Only the gateway is needed here: no core is built or started, so the
/// gateway runs with "core unreachable".
fn web_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hive-web"))
}

/// Every thread's credentials, from `/proc/<pid>/task/*/status`.
fn creds_of_every_thread(pid: u32) -> Vec<ProcCreds> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        out.push(ProcCreds::parse(&status));
    }
    out
}

async fn wait_serving(port: u16, child: &mut Child) {
    let http = Http::new(&format!("http://127.0.0.1:{port}"));
    let ok = common::poll(Duration::from_secs(30), Duration::from_millis(20), || {
        let http = http.clone();
        async move { http.get("/healthz", &[]).await.ok().map(|r| r.status) }
    })
    .await;
    if ok.is_none() {
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("hive-web never served: {err}");
    }
    assert_eq!(ok, Some(hyper::StatusCode::OK));
}

/// Stops a gateway with SIGTERM (it shuts down gracefully) and collects
/// its output.
fn stop(child: Child) -> Output {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait_with_output().unwrap()
}

fn assert_unprivileged(pid: u32, uid: u32) {
    assert_creds(pid, uid, &CAP_FIELDS);
}

/// As [`assert_unprivileged`], except that the bounding set, which an
/// ordinary process cannot empty, is not looked at.
fn assert_unprivileged_but_bounding(pid: u32, uid: u32) {
    let sets: Vec<&str> = CAP_FIELDS.into_iter().filter(|n| *n != "CapBnd").collect();
    assert_creds(pid, uid, &sets);
}

/// Every thread of `pid` runs as `uid` with no_new_privs and each of the
/// capability sets named in `empty` empty.
fn assert_creds(pid: u32, uid: u32, empty: &[&str]) {
    let threads = creds_of_every_thread(pid);
    assert!(!threads.is_empty());
    for c in &threads {
        assert_eq!(
            c.uids,
            vec![uid; 4],
            "real, effective, saved and fs uid: {c:?}"
        );
        assert!(!c.gids.contains(&0), "no root group: {c:?}");
        assert_eq!(c.no_new_privs, Some(1), "{c:?}");
        assert_eq!(c.caps.len(), CAP_FIELDS.len(), "{c:?}");
        for (name, mask) in c.caps.iter().filter(|(n, _)| empty.contains(n)) {
            assert_eq!(*mask, 0, "{name} must be empty: {c:?}");
        }
    }
    // Said in the words: CapEff is 0.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn started_as_root_with_user_nobody_it_runs_as_nobody_with_no_capability() {
    if !common::skip_unless(common::is_root(), "needs root to start hive-web as root") {
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
    // The tokens file stays root's and 0600: it is read before the drop.
    let (_dir, tokens) = tokens_file(None);
    let port = free_port();
    let mut child = web_command(&[], &tokens, port, &["--user", "nobody"])
        .spawn()
        .unwrap();
    wait_serving(port, &mut child).await;
    let pid = child.id();
    assert_unprivileged(pid, nobody.uid.as_raw());
    // It serves, as nobody, and can still check tokens it read as root.
    let http = Http::new(&format!("http://127.0.0.1:{port}"));
    let cookie = http.login(TOKEN).await.unwrap();
    let page = http.get("/", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("core unreachable"));
    let out = stop(child);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("no capability left, no_new_privs set"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token never reaches a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_is_sent_by_the_dropped_process_once_the_listener_accepts_and_not_before() {
    if !common::skip_unless(common::is_root(), "needs root to start hive-web as root") {
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
    let mut notify = NotifySocket::hold();
    let (_dir, tokens) = tokens_file(None);
    let port = free_port();
    let mut child = web_command(&[], &tokens, port, &["--user", "nobody"])
        .env("NOTIFY_SOCKET", notify.path())
        .spawn()
        .unwrap();
    let pid = child.id();
    if !notify.wait_until_held(pid, Duration::from_secs(30)) {
        let out = stop(child);
        panic!(
            "hive-web never tried to send READY=1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Held inside its send of READY=1: the listener accepts already, and
    // the sender is the dropped process.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("the listener accepts while READY=1 is being sent");
    assert_unprivileged(pid, nobody.uid.as_raw());
    assert_eq!(notify.release(Duration::from_secs(30)), "READY=1\n");
    wait_serving(port, &mut child).await;
    stop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_cannot_listen_never_says_ready() {
    if !common::skip_unless(common::is_root(), "needs root to start hive-web as root") {
        return;
    }
    let notify = NotifySocket::new();
    let (_dir, tokens) = tokens_file(None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = web_command(&[], &tokens, port, &["--user", "nobody"])
        .env("NOTIFY_SOCKET", notify.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(notify.queued(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn started_as_root_without_user_it_exits_nonzero_with_one_sentence() {
    if !common::skip_unless(common::is_root(), "needs root to start hive-web as root") {
        return;
    }
    let (_dir, tokens) = tokens_file(None);
    let port = free_port();
    let out = web_command(&[], &tokens, port, &[]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hive-web:")).collect();
    assert_eq!(
        lines,
        ["hive-web: hive-web was started as root without --user; refusing to serve with root's privileges (pass --user NAME)"],
        "{err}"
    );
    // It never bound its port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // --user root is refused just the same.
    let out = web_command(&[], &tokens, port, &["--user", "root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("is root; hive-web must run as an unprivileged user"));
}

/// Runs `cmd` to its exit; one that is still running after 30 s (it
/// started serving instead of refusing) is killed and fails the test.
fn exit_of(mut cmd: Command) -> std::process::Output {
    let mut child = cmd.spawn().unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hive-web did not refuse to start:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_tokens_file_open_to_others_or_owned_by_another_user_is_refused_at_start_with_one_sentence() {
    let (_dir, tokens) = tokens_file(None);
    let port = free_port();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o644)).unwrap();
    let out = exit_of(web_command(&[], &tokens, port, &["--user", "nobody"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hive-web:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0]
            .contains("readable or writable by group or others (mode 644); make it 0600 or 0400"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "the token never reaches a log");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // Private, but someone else's (as root: a file a third user owns).
    if common::is_root() {
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
        nix::unistd::chown(&tokens, Some(nix::unistd::Uid::from_raw(12345)), None).unwrap();
        let out = exit_of(web_command(&[], &tokens, port, &["--user", "nobody"]));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is owned by uid 12345, not by the gateway's own user"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn started_unprivileged_it_clears_every_capability_it_was_handed() {
    let ok = common::is_root() && common::have_tool("setpriv");
    if !common::skip_unless(
        ok,
        "needs root and setpriv (util-linux) to start hive-web as another user",
    ) {
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
    let (_dir, tokens) = tokens_file(Some(&nobody));
    let as_nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];

    // A service manager hands it a capability in every set it can
    // (`AmbientCapabilities=` does this): it must clear them all.
    let mut handed = as_nobody.to_vec();
    handed.extend([
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
    ]);
    let port = free_port();
    let mut child = web_command(&handed, &tokens, port, &[]).spawn().unwrap();
    wait_serving(port, &mut child).await;
    // An ordinary process cannot empty its bounding set (that needs
    // CAP_SETPCAP); with no_new_privs it grants nothing, and every set that
    // could hold a capability is empty.
    assert_unprivileged_but_bounding(child.id(), nobody.uid.as_raw());
    let out = stop(child);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bounding set cannot be emptied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the bounding set emptied by its supervisor (what systemd's
    // `CapabilityBoundingSet=` does) every set is empty.
    let mut prefix = as_nobody.to_vec();
    prefix.push("--bounding-set=-all");
    let port = free_port();
    let mut child = web_command(&prefix, &tokens, port, &[]).spawn().unwrap();
    wait_serving(port, &mut child).await;
    assert_unprivileged(child.id(), nobody.uid.as_raw());
    stop(child);

    // --user naming someone else cannot be honoured without root.
    let out = web_command(&prefix, &tokens, free_port(), &["--user", "daemon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot become that user"));
}

#[test]
fn a_wildcard_bind_needs_its_flag() {
    let (_dir, tokens) = tokens_file(None);
    let out = Command::new(web_bin())
        .args(["--listen", "0.0.0.0:0", "--tokens-file"])
        .arg(&tokens)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --allow-wildcard-bind"), "{err}");
}
