//! Network isolation at the daemon level, with real systemd-nspawn
//! containers: the real `hive-core run` (runtime `nspawn`) runs inside a
//! "host" namespace the test made (entered with `nsenter --net`, which
//! leaves `/sys` alone for nspawn), beside the uplink, "internet", "LAN"
//! and resolver namespaces of `isolation.rs` ([`Outside`]). Every probe
//! runs on a thread that entered an agent container's network namespace
//! (`/proc/<leader>/ns/net`) or the host's; listeners "inside" a container
//! are sockets bound in its network namespace.
//!
//! Each test names its agents apart (cgroups are host-wide, and the tests
//! run in parallel).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hive_proto::operator::{NetworkIsolation, OperatorRequest, OperatorResponse};
use hive_proto::view::{AgentSummary, RunState};
use hive_proto::AgentName;

use crate::common::leftovers::containers_under;
use crate::common::netns::{
    container4, container6, gateway4, gateway6, net_tools_available, Netns, Outside, PORT,
};
use serde_json::json;

use crate::common::{nspawn_available, sibling_bin, LineConn, TestHive};

/// nspawn, `nft`, `ip`, `nsenter` and the `hive-agent` binary.
fn can_run() -> Option<std::path::PathBuf> {
    if !nspawn_available() || !net_tools_available() {
        return None;
    }
    sibling_bin("hive-agent")
}

/// A hive on the nspawn runtime whose agents (`(name, extra keys)`) run
/// `hive-agent demo`, resolver and uplink from [`Outside`].
fn hive_config(ha: &std::path::Path, agents: &[(&str, &str)]) -> TestHive {
    let tables: String = agents
        .iter()
        .map(|(name, extra)| {
            format!(
                "[agents.{name}]\ncommand = [\"/bin/sh\", \"-c\", \"exec {} demo\"]\n{extra}\n",
                ha.display()
            )
        })
        .collect();
    TestHive::with_runtime(
        "nspawn",
        "stop_timeout = 5\n[network]\nresolver = \"10.88.0.53\"\nuplink = \"up0\"\n",
        &tables,
    )
}

/// The daemon in `outside`'s host namespace.
fn hive_in(outside: &Outside, ha: &std::path::Path, agents: &[(&str, &str)]) -> TestHive {
    let mut hive = hive_config(ha, agents);
    hive.netns = Some(outside.host.path.clone());
    hive
}

fn up(r: &AgentSummary) -> bool {
    r.run_state == RunState::Running
        && r.leader_pid.is_some()
        && r.status.as_deref() == Some("demo: waiting for the operator")
}

/// Waits until `agent`'s demo reported through its socket from inside its
/// container; the container's network namespace.
async fn container_netns(hive: &TestHive, agent: &str) -> (Netns, u32) {
    let row = hive
        .wait_agent(agent, "reported from its container", up)
        .await;
    let pid = row.leader_pid.unwrap();
    let ns = Netns::of_pid(pid);
    ns.wait_for_dad();
    (ns, pid)
}

async fn health(hive: &TestHive) -> NetworkIsolation {
    match hive.operator(OperatorRequest::Health).await {
        OperatorResponse::Health(h) => h.network,
        other => panic!("Health answered {other:?}"),
    }
}

/// Whether `table inet hyperhive` exists in `ns`.
fn table_present(ns: &Netns) -> bool {
    ns.command("nft")
        .args(["list", "table", "inet", hive_core::isolation::TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("nft")
        .success()
}

/// Waits until `check` holds (bounded); the time it took.
async fn wait_for<F: std::future::Future<Output = bool>>(
    hive: &TestHive,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < crate::common::REPLY_TIMEOUT,
            "{what} did not happen\n{}",
            hive.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Waits until `Health` counts `n` repairs of the table; the time it took.
async fn wait_repairs(hive: &TestHive, n: u64) -> Duration {
    wait_for(hive, "a repair", || async move {
        health(hive).await == (NetworkIsolation::Enforced { repairs: n })
    })
    .await
}

const AGENTS: [(&str, u32); 3] = [("isa", 0), ("isb", 1), ("isc", 2)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_containers_reach_neither_the_host_nor_each_other_and_a_tampered_table_is_repaired() {
    let Some(ha) = can_run() else {
        return;
    };
    let outside = Outside::new("isn");
    let mut hive = hive_in(
        &outside,
        &ha,
        &[
            ("isa", "egress = \"allow\""),
            ("isb", ""),
            ("isc", "egress = \"deny\""),
        ],
    );
    hive.start();
    let host = &outside.host;
    // The host keeps what it needs: each demo reports through its agent
    // socket from inside its container, and hears the operator.
    let (isa, _) = container_netns(&hive, "isa").await;
    let (isb, _) = container_netns(&hive, "isb").await;
    let (isc, _) = container_netns(&hive, "isc").await;
    host.wait_for_dad();
    assert!(table_present(host), "{}", hive.log());
    let send = OperatorRequest::SendMessage {
        to: AgentName::new("isa").unwrap(),
        body: "through the table".into(),
    };
    assert!(matches!(
        hive.operator(send).await,
        OperatorResponse::MessageSent { .. }
    ));
    hive.wait_agent("isa", "heard the operator", |r| {
        r.status.as_deref() == Some("demo: the operator wrote: through the table")
    })
    .await;
    // Listeners inside isa and isb; the host's connections into a
    // container get their replies (which also shows the listeners live).
    for ns in [&isa, &isb] {
        ns.echo_peer_tcp(&format!("[::]:{PORT}"));
    }
    for (slot, _) in [(0u32, "isa"), (1, "isb")] {
        for t in [
            format!("{}:{PORT}", container4(slot)),
            format!("[{}]:{PORT}", container6(slot)),
        ] {
            assert!(host.tcp_probe(&t).is_some(), "the host could not reach {t}");
        }
    }

    // Nothing of the host, nothing of another agent, over IPv4 and IPv6.
    let forbidden = |agent: &str| outside.forbidden_targets(agent, &AGENTS);
    for (agent, ns) in [("isa", &isa), ("isc", &isc)] {
        let open = ns.open_among(&forbidden(agent));
        assert!(open.is_empty(), "{agent} reached {open:?}");
    }
    // The LAN is a private range: dropped.
    for lan in [format!("10.88.0.10:{PORT}"), format!("[fd88::10]:{PORT}")] {
        assert_eq!(isa.tcp_probe(&lan), None, "isa reached the LAN at {lan}");
    }
    // The internet through the uplink, masqueraded, for egress = allow
    // (so isa's routes through its gateway work: the drops above are the
    // table's), and not for deny.
    let internet = [
        format!("203.0.113.10:{PORT}"),
        format!("[2001:db8:2::10]:{PORT}"),
    ];
    assert_eq!(isa.tcp_probe(&internet[0]).as_deref(), Some("192.0.2.1"));
    assert_eq!(
        isa.tcp_probe(&internet[1]).as_deref(),
        Some("2001:db8:1::1")
    );
    for t in &internet {
        assert_eq!(isc.tcp_probe(t), None, "isc (deny) reached {t}");
    }
    // DNS: the configured resolver, and no other address.
    assert!(isa.dns_probe("10.88.0.53:53"), "{}", hive.log());
    for other in [
        "10.88.0.54:53".to_owned(),
        format!("{}:53", gateway4(0)),
        format!("[{}]:53", gateway6(0)),
        "192.0.2.1:53".to_owned(),
        "10.77.0.1:53".to_owned(),
    ] {
        assert!(!isa.dns_probe(&other), "isa's DNS reached {other}");
    }
    assert!(!isc.dns_probe("10.88.0.53:53"), "deny reaches no resolver");

    // Deleting the table, or flushing one chain, by hand: the daemon
    // repairs it within its period and the probes fail again.
    let gateway = format!("{}:{PORT}", gateway4(0));
    host.sh(&format!(
        "nft delete table inet {}",
        hive_core::isolation::TABLE
    ));
    let took = wait_for(&hive, "the table's return", || async {
        table_present(host)
    })
    .await;
    eprintln!(
        "deleted table restored by the daemon after {} ms",
        took.as_millis()
    );
    assert_eq!(isa.tcp_probe(&gateway), None);
    wait_repairs(&hive, 1).await;
    host.sh(&format!(
        "nft flush chain inet {} input",
        hive_core::isolation::TABLE
    ));
    let took = wait_repairs(&hive, 2).await;
    eprintln!(
        "flushed input chain restored by the daemon after {} ms",
        took.as_millis()
    );
    let open = isa.open_among(&forbidden("isa"));
    assert!(open.is_empty(), "after the repairs isa reached {open:?}");
    assert!(isb.tcp_probe(&internet[0]).is_some());
    drop(isb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nft_on_path_no_agent_container_starts_and_the_reason_is_one_sentence() {
    let Some(ha) = can_run() else {
        return;
    };
    // nft lives in /usr/sbin here; systemd-nspawn, ip and nsenter in
    // /usr/bin. The daemon gets a namespace of its own (unshare --net).
    let nft = Command::new("sh")
        .args(["-c", "PATH=/usr/bin:/bin command -v nft"])
        .output()
        .unwrap();
    assert!(
        nft.stdout.is_empty(),
        "nft is on /usr/bin:/bin here; this test needs it elsewhere"
    );
    let mut hive = hive_config(&ha, &[("isf", "")]);
    hive.spawn_with_env(&[("PATH", "/usr/bin:/bin".as_ref())]);
    hive.wait_for_admin_socket();
    let NetworkIsolation::Failed { reason } = health(&hive).await else {
        panic!("health: {:?}\n{}", health(&hive).await, hive.log());
    };
    assert!(
        reason.contains("network isolation is not enforced") && reason.contains("nft"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one sentence: {reason}");
    // Starting the agent is refused with that sentence, and nothing runs.
    let start = hive
        .try_lifecycle("isf", hive_proto::operator::LifecycleAction::Start)
        .await;
    let err = start.expect_err("a start without the table").to_string();
    assert!(err.contains("network isolation is not enforced"), "{err}");
    let row = hive.agent("isf").await;
    assert_ne!(row.run_state, RunState::Running, "{row:?}");
    assert_eq!(row.leader_pid, None);
    assert!(
        containers_under(hive.dir.path()).is_empty(),
        "a container runs:\n{}",
        hive.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_stays_for_containers_a_sigterm_leaves_and_spawned_agents_get_their_rules() {
    let Some(ha) = can_run() else {
        return;
    };
    let outside = Outside::new("ist");
    let host = &outside.host;
    let mut hive = hive_in(&outside, &ha, &[("isd", ""), ("ise", "")]);
    hive.start();
    let (isd, leader) = container_netns(&hive, "isd").await;
    container_netns(&hive, "ise").await;
    host.wait_for_dad();
    let agents = [("isd", 0), ("ise", 1), ("isg", 2)];
    let internet = format!("203.0.113.10:{PORT}");
    let blocked = |agent: &str, ns: &Netns| {
        let open = ns.open_among(&outside.forbidden_targets(agent, &agents[..2]));
        assert!(open.is_empty(), "{agent} reached {open:?}");
    };
    blocked("isd", &isd);

    // SIGTERM: the containers run on for the next daemon, and so does the
    // table guarding them.
    assert!(hive.stop().success(), "{}", hive.log());
    assert!(
        std::path::Path::new(&format!("/proc/{leader}")).exists(),
        "isd's container stopped with the daemon"
    );
    assert!(
        table_present(host),
        "the table went with the daemon\n{}",
        hive.log()
    );
    blocked("isd", &isd);
    assert!(isd.tcp_probe(&internet).is_some());

    // The next daemon adopts the containers and keeps the table.
    hive.start();
    let row = hive.wait_agent("isd", "adopted", up).await;
    assert_eq!(row.leader_pid, Some(leader), "not adopted: a new container");
    assert_eq!(
        health(&hive).await,
        NetworkIsolation::Enforced { repairs: 0 }
    );
    blocked("isd", &isd);

    // An agent spawned on approval gets its own rules before it starts:
    // its egress works (an agent without rules sends nothing) and the host
    // stays closed to it.
    let mut conn = LineConn::connect(&hive.agent_socket("isd")).await.unwrap();
    let toml = format!(
        "command = [\"/bin/sh\", \"-c\", \"exec {} demo\"]\n",
        ha.display()
    );
    let r = conn
        .request(
            "request_spawn",
            json!({"name": "isg", "files": {"agent.toml": toml}, "message": "a scout"}),
        )
        .await;
    let id = r["result"]["approval_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    match hive.operator(OperatorRequest::Approve { id }).await {
        OperatorResponse::Done => {}
        other => panic!("approve: {other:?}\n{}", hive.log()),
    }
    // The deploy follows the approval: wait for the agent's row.
    wait_for(&hive, "isg's row", || async {
        hive.agents().await.iter().any(|r| r.name.as_str() == "isg")
    })
    .await;
    let (isg, _) = container_netns(&hive, "isg").await;
    let open = isg.open_among(&outside.forbidden_targets("isg", &agents));
    assert!(open.is_empty(), "isg reached {open:?}");
    assert_eq!(isg.tcp_probe(&internet).as_deref(), Some("192.0.2.1"));

    // With no container left running, a SIGTERM takes the table along.
    for a in ["isd", "ise", "isg"] {
        hive.lifecycle(a, hive_proto::operator::LifecycleAction::Stop)
            .await;
    }
    assert!(hive.stop().success(), "{}", hive.log());
    assert!(!table_present(host), "{}", hive.log());
}
