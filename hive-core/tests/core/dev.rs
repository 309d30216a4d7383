//! `hive-core dev`: flags, directories, the operator token, children and
//! signals.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hive_proto::client::operator::OperatorClient;
use hive_proto::operator::{AdminRequest, OperatorRequest, OperatorResponse};
use hive_proto::AgentName;

use crate::common::{
    describe, is_root, kill_containers_under, nspawn_available, sibling_bin, skip_or_fail,
    CORE_BIN, START_TIMEOUT,
};

/// Runs `hive-core dev ARGS` to completion (for flags that must fail).
fn dev_fails(args: &[&str]) -> String {
    let out = Command::new(CORE_BIN)
        .arg("dev")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "dev {args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    err
}

#[test]
fn dev_refuses_bad_flags_and_unusable_state_dirs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let d = dir.path().join("state");
    let d = d.to_str().unwrap();
    let base = ["--listen", "127.0.0.1:0", "--no-web", "--no-demo"];

    let err = dev_fails(&[&["--state-dir", file.to_str().unwrap()][..], &base].concat());
    assert!(err.contains("not a directory"), "{err}");
    let err = dev_fails(&["--state-dir", d, "--listen", "localhost-ish"]);
    assert!(err.contains("--listen"), "{err}");
    let err = dev_fails(&[&["--state-dir", d, "--agents", "Alice"][..], &base].concat());
    assert!(err.contains("lowercase"), "{err}");
    let err = dev_fails(&[
        "--state-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--no-demo",
        "--web-bin",
        "/nonexistent/hive-web",
    ]);
    assert!(
        err.contains("hive-web is not built") && err.contains("--no-web"),
        "{err}"
    );
    let err = dev_fails(&["--state-dir", d, "--bogus"]);
    assert!(err.contains("--bogus"), "{err}");
}

struct Dev {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dev {
    /// `dev` in the machine's network namespace: always the `process`
    /// runtime unless `extra` names one, since as root the default would be
    /// nspawn, whose table must not land in the machine's namespace.
    fn start(extra: &[&str]) -> Self {
        let mut cmd = Command::new(CORE_BIN);
        cmd.arg("dev");
        if !extra.contains(&"--runtime") {
            cmd.args(["--runtime", "process"]);
        }
        Self::spawn(cmd, extra)
    }

    /// `dev` in a network namespace of its own (`unshare --net`, loopback
    /// up): the hive's nftables table and the containers' veths live there,
    /// never in the machine's namespace.
    fn start_in_own_netns(extra: &[&str]) -> Self {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--",
            "sh",
            "-ec",
            "ip link set lo up; exec \"$0\" \"$@\"",
        ])
        .arg(CORE_BIN)
        .arg("dev");
        Self::spawn(cmd, extra)
    }

    fn spawn(mut cmd: Command, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = cmd
            .arg("--state-dir")
            .arg(dir.path().join("hive"))
            .args(["--listen", "127.0.0.1:18099"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let dev = Self { child, dir };
        dev.wait_for(&dev.state().join("run/admin.sock"));
        dev
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("hive")
    }

    fn output(&self) -> String {
        let out = fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default();
        let err = fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        format!("{out}{err}")
    }

    fn wait_for(&self, path: &Path) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "no {}:\n{}",
                path.display(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm_and_wait(mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "dev ignored SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Dev {
    /// Polls `ListAgents` until every row satisfies `want`; the rows.
    async fn wait_rows(
        &self,
        what: &str,
        want: impl Fn(&hive_proto::view::AgentSummary) -> bool,
    ) -> Vec<hive_proto::view::AgentSummary> {
        let admin = OperatorClient::<AdminRequest>::connect(self.state().join("run/admin.sock"))
            .await
            .unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let Ok(OperatorResponse::Agents(rows)) = admin
                .call(AdminRequest::Operator(OperatorRequest::ListAgents))
                .await
            else {
                panic!("list agents")
            };
            if rows.iter().all(&want) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "agents never {what}: {rows:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; `dev` must exit 0 having stopped every one of `pids`.
    fn sigterm_and_expect_gone(self, pids: &[i32]) {
        let (status, output) = self.sigterm_and_wait();
        assert!(
            status.success(),
            "dev exited with {}:\n{output}",
            describe(status)
        );
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "child {pid} outlived dev"
            );
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SIGTERM first, so dev stops hive-web too: a gateway orphaned by a
        // SIGKILL would keep running (and keep whatever it inherited open,
        // such as the nspawn lock of `flock`).
        // Only a child not yet reaped: its pid cannot have been reused.
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A dev hive stops its containers; one that died early cannot.
        kill_containers_under(self.dir.path());
    }
}

#[test]
fn dev_without_demo_makes_sockets_and_a_private_token_and_exits_0_on_sigterm() {
    let dev = Dev::start(&["--no-demo", "--no-web"]);
    let state = dev.state();
    for agent in ["alice", "bob", "carol"] {
        assert!(state
            .join(format!("run/agents/{agent}/agent.sock"))
            .exists());
    }
    assert!(state.join("run/web.sock").exists());
    assert!(state.join("lib/hive.db").exists());
    let token_file = state.join("operator-token");
    let meta = fs::metadata(&token_file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let token = fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // The runtime dir's modes follow DESIGN §2.
    assert_eq!(
        fs::metadata(state.join("run")).unwrap().mode() & 0o777,
        0o751
    );
    assert_eq!(
        fs::metadata(state.join("run/agents")).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(state.join("run/admin.sock")).unwrap().mode() & 0o777,
        0o660
    );

    let (status, output) = dev.sigterm_and_wait();
    assert!(
        status.success(),
        "dev exited with {}:\n{output}",
        describe(status)
    );
    assert!(output.contains("http://127.0.0.1:18099/"), "{output}");
    assert!(!output.contains(token), "the token leaked into the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_each_agent_and_the_gateway_as_children_and_stops_them_all() {
    if !is_root() {
        skip_or_fail("this test checks the root path of dev (hive-web as nobody)");
        return;
    }
    let bins = tempfile::tempdir().unwrap();
    fs::set_permissions(bins.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A stand-in agent: reports through its own socket, records its pid in
    // its state dir, then waits to be stopped.
    let agent = bins.path().join("fake-agent");
    fs::write(
        &agent,
        "#!/bin/sh\n\
         echo $$ > \"$HOME/pid\"\n\
         printf '{\"id\":1,\"op\":\"status\",\"text\":\"up as %s\"}\\n' \"$1\" \
           | socat -t2 - \"UNIX-CONNECT:$HIVE_SOCKET\" > /dev/null\n\
         exec sleep 600\n",
    )
    .unwrap();
    // A stand-in gateway: records its arguments and pid.
    let web_args = bins.path().join("web-args");
    let web = bins.path().join("fake-web");
    fs::write(
        &web,
        format!(
            "#!/bin/sh\necho \"$$ $@\" > {}\nexec sleep 600\n",
            web_args.display()
        ),
    )
    .unwrap();
    for f in [&agent, &web] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dev = Dev::start(&[
        "--agents",
        "alice,bob",
        "--agent-bin",
        agent.to_str().unwrap(),
        "--web-bin",
        web.to_str().unwrap(),
    ]);
    let state = dev.state();
    dev.wait_rows("reported", |r| r.status.as_deref() == Some("up as demo"))
        .await;
    dev.wait_for(&web_args);
    let args = fs::read_to_string(&web_args).unwrap();
    let mut words = args.split_whitespace();
    let web_pid: i32 = words.next().unwrap().parse().unwrap();
    let rest: Vec<&str> = words.collect();
    let copy = state.join("web/operator-token");
    let want = format!(
        "--core-socket {} --listen 127.0.0.1:18099 --tokens-file {} --user nobody",
        state.join("run/web.sock").display(),
        copy.display()
    );
    assert_eq!(rest.join(" "), want);
    // The gateway's copy of the token belongs to nobody and no one else.
    let meta = fs::metadata(&copy).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o400));
    assert_eq!(
        fs::read(&copy).unwrap(),
        fs::read(state.join("operator-token")).unwrap()
    );
    let meta = fs::metadata(state.join("run/web.sock")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (65534, 0o660));

    let mut pids = vec![web_pid];
    for a in ["alice", "bob"] {
        let p = fs::read_to_string(state.join(format!("lib/agents/{a}/state/pid"))).unwrap();
        pids.push(p.trim().parse().unwrap());
    }
    dev.sigterm_and_expect_gone(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_harness_runs_real_turns_that_reply_to_the_operator() {
    let Some(hive_agent) = crate::common::sibling_bin("hive-agent") else {
        return;
    };
    let dev = Dev::start(&[
        "--no-web",
        "--agents",
        "alice",
        "--agent-bin",
        hive_agent.to_str().unwrap(),
        "--harness",
        "cat > /dev/null; echo \"hello operator, this is turn $HIVE_TURN\"",
    ]);
    let admin = OperatorClient::<AdminRequest>::connect(dev.state().join("run/admin.sock"))
        .await
        .unwrap();
    let call = |req| {
        let admin = admin.clone();
        async move { admin.call(AdminRequest::Operator(req)).await.unwrap() }
    };
    let alice = AgentName::new("alice").unwrap();
    let OperatorResponse::MessageSent { id } = call(OperatorRequest::SendMessage {
        to: alice.clone(),
        body: "hi alice".into(),
    })
    .await
    else {
        panic!("send")
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let reply = loop {
        let OperatorResponse::Messages(list) = call(OperatorRequest::Messages {
            mailbox: hive_proto::Principal::Operator,
            before: None,
            limit: 100,
        })
        .await
        else {
            panic!("messages")
        };
        if let Some(m) = list.into_iter().find(|m| m.in_reply_to == Some(id)) {
            break m;
        }
        assert!(Instant::now() < deadline, "no reply:\n{}", dev.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.body, "hello operator, this is turn 1");
    assert_eq!(reply.from, hive_proto::Principal::Agent(alice.clone()));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let OperatorResponse::Agent(d) = call(OperatorRequest::AgentDetail {
            name: alice.clone(),
        })
        .await
        else {
            panic!("detail")
        };
        if d.summary.status.as_deref() == Some("idle after turn 1 (replied to operator)") {
            break;
        }
        assert!(Instant::now() < deadline, "status {:?}", d.summary.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, out) = dev.sigterm_and_wait();
    assert!(status.success(), "{out}");
}

#[test]
fn dev_refuses_nspawn_without_root_in_one_sentence() {
    let args = [
        "dev",
        "--state-dir",
        "/nonexistent/x",
        "--listen",
        "127.0.0.1:0",
        "--runtime",
        "nspawn",
    ];
    let err = if is_root() {
        let (status, _, err) = crate::common::run_as(65534, 65534, CORE_BIN, &args, b"");
        assert!(!status.success());
        err.trim().to_owned()
    } else {
        // Not root already: the refusal is what this run gets.
        dev_fails(&args[1..])
    };
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.contains("--runtime nspawn")
            && err.contains("needs root")
            && err.contains("--runtime process"),
        "{err}"
    );
}

/// An HTTP/1.1 GET from inside `pid`'s network namespace; the whole answer.
fn http_get_in_netns_of(pid: u32, port: u16, path: &str, token: &str) -> String {
    let path = path.to_owned();
    let token = token.to_owned();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let ns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        // dev starts hive-web after the core is ready, which can be after
        // the agents have spoken: retry until the gateway listens.
        let deadline = Instant::now() + START_TIMEOUT;
        let mut conn = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("the gateway never listened on {port}: {e}"),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_nspawn_runs_each_demo_agent_in_its_own_container_behind_the_table() {
    if !nspawn_available() {
        return;
    }
    let (Some(agent_bin), Some(_web)) = (sibling_bin("hive-agent"), sibling_bin("hive-web")) else {
        return;
    };
    // No --runtime: as root with systemd-nspawn installed, nspawn is the
    // default, and the start-up line says so and why.
    let dev = Dev::start_in_own_netns(&[
        "--agents",
        "isdva,isdvb",
        "--agent-bin",
        agent_bin.to_str().unwrap(),
    ]);
    let state = dev.state();
    // The demo agents speak from inside their containers.
    let rows = dev
        .wait_rows("reported from a container", |r| {
            r.leader_pid.is_some() && r.status.as_deref() == Some("demo: waiting for the operator")
        })
        .await;
    // dev prints its start-up lines once the hive is ready, which can be
    // after the agents have spoken: wait for them.
    let says = "runtime: nspawn, one systemd-nspawn container per agent (running as root with systemd-nspawn installed)";
    let said = crate::common::poll_until(|| dev.output().contains(says)).await;
    assert!(
        said,
        "the start-up line does not say nspawn and why:\n{}",
        dev.output()
    );
    let dev_pid = dev.child.id();
    let netns = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let mut leaders = Vec::new();
    for r in &rows {
        assert_eq!(
            r.container.as_deref(),
            Some(format!("h-{}", r.name).as_str())
        );
        let leader = r.leader_pid.unwrap();
        // Its own network namespace, and root inside is not root outside.
        assert_ne!(
            netns(leader as i32),
            netns(dev_pid as i32),
            "{} shares the hive's netns",
            r.name
        );
        let map = fs::read_to_string(format!("/proc/{leader}/uid_map")).unwrap();
        let outside: u32 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_ne!(outside, 0, "{}: uid_map {map}", r.name);
        leaders.push(leader as i32);
    }
    assert_ne!(netns(leaders[0]), netns(leaders[1]));
    // The hive's table guards them, in the dev hive's namespace.
    let table = Command::new("nsenter")
        .args([
            "-t",
            &dev_pid.to_string(),
            "-n",
            "nft",
            "list",
            "table",
            "inet",
            "hyperhive",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && listing.contains("ve-h-isdva"),
        "{listing}"
    );

    // The dashboard answers with both agents.
    let token = fs::read_to_string(state.join("operator-token")).unwrap();
    // The gateway may still be linking to the core: a few tries.
    let deadline = Instant::now() + START_TIMEOUT;
    let reply = loop {
        let reply = http_get_in_netns_of(dev_pid, 18099, "/api/agents", token.trim());
        if reply.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("isdva") && reply.contains("isdvb"),
        "{reply}"
    );

    dev.sigterm_and_expect_gone(&leaders);
}

/// `hivectl --socket ADMIN doctor`: whether it exited 0, and its report.
fn doctor(hivectl: &Path, admin: &Path) -> (bool, String) {
    let out = Command::new(hivectl)
        .arg("--socket")
        .arg(admin)
        .arg("doctor")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "hivectl doctor: {stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `sh -ec script` in the network namespace of `pid`.
fn sh_in_netns_of(pid: u32, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "sh", "-ec", script])
        .output()
        .unwrap()
}

/// The report's lines whose subject contains `what`, as `(word, line)`.
fn lines_about<'a>(report: &'a str, what: &str) -> Vec<(&'a str, &'a str)> {
    report
        .lines()
        .filter(|l| l.contains(what))
        .map(|l| (l.split_whitespace().next().unwrap_or(""), l))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_on_a_live_nspawn_dev_hive_finds_everything_blocked_and_open_while_the_table_is_gone(
) {
    if !nspawn_available() {
        return;
    }
    let (Some(agent_bin), Some(_web), Some(hivectl)) = (
        sibling_bin("hive-agent"),
        sibling_bin("hive-web"),
        sibling_bin("hivectl"),
    ) else {
        return;
    };
    // A "LAN" host on a private address behind the dev hive's namespace;
    // the doctor is told to probe it.
    let lan = crate::common::netns::Netns::new("drlan");
    let lan_target = "192.168.77.2:80";
    let dev = Dev::start_in_own_netns(&[
        "--runtime",
        "nspawn",
        "--agents",
        "drdoa,drdob",
        "--agent-bin",
        agent_bin.to_str().unwrap(),
        // The longest period allowed: the window the test works in.
        "--reconcile-period-ms",
        "5000",
        "--doctor-target",
        lan_target,
    ]);
    let rows = dev
        .wait_rows("running in containers", |r| {
            r.leader_pid.is_some() && r.status.as_deref() == Some("demo: waiting for the operator")
        })
        .await;
    let leaders: Vec<i32> = rows.iter().map(|r| r.leader_pid.unwrap() as i32).collect();
    let dev_pid = dev.child.id();
    // Wire the LAN to the hive's namespace and let that namespace forward,
    // so that only the table stands between an agent and the LAN, the other
    // agent or the host.
    let wired = sh_in_netns_of(
        dev_pid,
        &format!(
            "ip link add drlan0 type veth peer name drlan1 netns {lan}\n\
             ip addr add 192.168.77.1/24 dev drlan0\n\
             ip link set drlan0 up\n\
             sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
            lan = lan.name
        ),
    );
    assert!(
        wired.status.success(),
        "{}",
        String::from_utf8_lossy(&wired.stderr)
    );
    lan.sh("ip addr add 192.168.77.2/24 dev drlan1\n\
         ip link set drlan1 up\n\
         ip route add default via 192.168.77.1");
    lan.echo_peer_tcp(lan_target);
    let admin = dev.state().join("run/admin.sock");

    // With the table in place: every line ok or blocked, exit 0.
    let (healthy, report) = doctor(&hivectl, &admin);
    println!("doctor, table installed:\n{report}");
    assert!(healthy, "{report}");
    for line in report
        .lines()
        .filter(|l| l.starts_with("probe") || l.contains(" probe "))
    {
        assert!(line.starts_with("blocked"), "{line}");
    }
    for (subject, want) in [
        ("table inet hyperhive", "ok"),
        ("admin.sock", "ok"),
        ("web.sock", "ok"),
        ("agent drdoa socket dir", "ok"),
        ("agent drdob socket ", "ok"),
        ("gateway hive-web", "ok"),
        ("(pid", "ok"),
    ] {
        let found = lines_about(&report, subject);
        assert!(
            !found.is_empty() && found.iter().all(|(w, _)| *w == want),
            "{subject}: {found:?}\n{report}"
        );
    }
    assert!(report.contains("uid 65534 (nobody)"), "{report}");
    assert!(report.contains("every capability set empty"), "{report}");
    // Every kind of probe ran, from each agent, and was blocked.
    for (from, to) in [("drdoa", "drdob"), ("drdob", "drdoa")] {
        for what in [
            format!("(agent {to})"),
            format!("host address on ve-h-{from},"),
            format!("host address on ve-h-{to},"),
            "host address on drlan0,".to_owned(),
            "(doctor target)".to_owned(),
        ] {
            let found = lines_about(&report, &format!("probe {from} -> "));
            assert!(
                found
                    .iter()
                    .any(|(w, l)| *w == "blocked" && l.contains(what.as_str())),
                "{from}: no blocked {what}\n{report}"
            );
        }
    }

    // Delete the table right after a reconcile pass (so nearly a whole
    // period is left before the next), then ask the doctor.
    let table_is_there = || {
        sh_in_netns_of(dev_pid, "nft list table inet hyperhive > /dev/null")
            .status
            .success()
    };
    let wait_for_repair = || {
        let deadline = Instant::now() + START_TIMEOUT;
        let started = Instant::now();
        while !table_is_there() {
            assert!(
                Instant::now() < deadline,
                "never repaired:\n{}",
                dev.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    };
    let delete = || {
        let out = sh_in_netns_of(dev_pid, "nft delete table inet hyperhive");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut open_report = None;
    for _attempt in 0..3 {
        delete();
        wait_for_repair();
        delete();
        let (healthy, report) = doctor(&hivectl, &admin);
        let missing = lines_about(&report, "table inet hyperhive");
        if missing
            .iter()
            .any(|(w, l)| *w == "WRONG" && l.contains("is missing"))
        {
            assert!(!healthy, "a missing table must fail the doctor:\n{report}");
            open_report = Some(report);
            break;
        }
        // The repair came first after all; the report must then be clean.
        println!("the repair won the race; again:\n{report}");
    }
    let report = open_report.expect("the doctor never saw the table missing");
    println!("doctor, table deleted:\n{report}");
    for (from, to) in [("drdoa", "drdob"), ("drdob", "drdoa")] {
        let found = lines_about(&report, &format!("probe {from} -> "));
        for what in [
            format!("(agent {to})"),
            format!("host address on ve-h-{from},"),
            "host address on drlan0,".to_owned(),
            "(doctor target)".to_owned(),
        ] {
            assert!(
                found
                    .iter()
                    .any(|(w, l)| *w == "OPEN" && l.contains(what.as_str())),
                "{from}: {what} not OPEN without the table\n{report}"
            );
        }
        // The LAN listener answered: a real connection, not a reset.
        assert!(
            found
                .iter()
                .any(|(w, l)| *w == "OPEN" && l.contains("(doctor target): connected")),
            "{report}"
        );
    }

    // Repaired by the reconcile loop: clean again.
    let took = wait_for_repair();
    println!(
        "the table was back {} ms after the doctor's report",
        took.as_millis()
    );
    let (healthy, report) = doctor(&hivectl, &admin);
    assert!(healthy, "still failing after the repair:\n{report}");

    dev.sigterm_and_expect_gone(&leaders);
}
