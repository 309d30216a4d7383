//! Network isolation with real namespaces, veth pairs and `nft`: the code
//! under test runs on a thread inside a "host" namespace the test made, so
//! the hive's table never touches this machine's own namespace. Around it:
//! one namespace per agent (its veth named as nspawn names it), an "uplink"
//! namespace reached by explicit routes holding an "internet" host
//! (203.0.113.10, 2001:db8:2::10), a "LAN" host (10.88.0.10, fd88::10), the
//! configured resolver (10.88.0.53) and another DNS server (10.88.0.54).
//!
//! Agents: alice (`egress = "allow"`), bob (`allow`, with the LAN host in
//! `allow_hosts`), carol (`deny`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_core::config::{AgentPolicy, EgressPolicy, NetworkConfig};
use hive_core::hub::Hub;
use hive_core::isolation::nft::Nft;
use hive_core::isolation::{Isolation, IsolationError, Reconciled, Tools, TABLE};
use hive_core::store::Store;
use hive_proto::operator::NetworkIsolation;
use hive_proto::AgentName;
use tokio_util::sync::CancellationToken;

use crate::common::netns::{net_tools_available, veth, Leader, Netns, Outside, PORT};
use crate::common::{is_root, skip_or_fail, REPLY_TIMEOUT};

fn can_run() -> bool {
    if !is_root() {
        skip_or_fail("network namespaces and nft need root");
        return false;
    }
    net_tools_available()
}

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

/// Runs `f` to completion on a current-thread runtime, on a thread inside
/// `ns`: every `nft`, `ip` and `nsenter` the code spawns inherits it.
fn on_host<T, F, Fut>(ns: &Netns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// The world of one test: the host and uplink, and one namespace per
/// agent with its veth named as nspawn names it and a stand-in leader.
struct World {
    outside: Outside,
    agents: BTreeMap<&'static str, (Netns, Leader)>,
    store: Store,
    _dir: tempfile::TempDir,
}

const AGENTS: [(&str, u32); 3] = [("alice", 0), ("bob", 1), ("carol", 2)];

impl World {
    fn new(tag: &str) -> Self {
        let outside = Outside::new(tag);
        let mut agents = BTreeMap::new();
        for (agent, _) in AGENTS {
            let ns = Netns::new(&format!("{tag}{agent}"));
            veth(&outside.host, &format!("ve-h-{agent}"), &ns, "host0");
            ns.echo_peer_tcp(&format!("[::]:{PORT}"));
            let leader = ns.leader();
            agents.insert(agent, (ns, leader));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("hive.db"), Arc::new(Hub::new())).expect("store");
        Self {
            outside,
            agents,
            store,
            _dir: dir,
        }
    }

    fn host(&self) -> &Netns {
        &self.outside.host
    }

    fn agent(&self, a: &str) -> &Netns {
        &self.agents[a].0
    }

    fn policies() -> BTreeMap<AgentName, AgentPolicy> {
        let mut p = BTreeMap::new();
        p.insert(name("alice"), AgentPolicy::default());
        p.insert(
            name("bob"),
            AgentPolicy {
                allow_hosts: vec![
                    "10.88.0.10/32".parse().unwrap(),
                    "fd88::10/128".parse().unwrap(),
                ],
                ..AgentPolicy::default()
            },
        );
        p.insert(
            name("carol"),
            AgentPolicy {
                egress: EgressPolicy::Deny,
                ..AgentPolicy::default()
            },
        );
        p
    }

    fn net() -> NetworkConfig {
        NetworkConfig {
            resolver: Some("10.88.0.53".parse().unwrap()),
            uplink: Some("up0".into()),
            ..NetworkConfig::default()
        }
    }

    /// An isolation over this world's agents, with `tools`.
    fn isolation(&self, tools: Tools) -> Isolation {
        let store = self.store.clone();
        on_host(self.host(), move || async move {
            Isolation::new(World::net(), tools, &store, &World::policies())
                .await
                .expect("allocating")
        })
    }

    /// Runs `f(iso)` on the host's thread ([`on_host`]).
    fn with<T, F, Fut>(&self, iso: &Isolation, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Isolation) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let iso = iso.clone();
        on_host(self.host(), move || f(iso))
    }

    fn attach_all(&self, iso: &Isolation) {
        for (agent, (_, leader)) in &self.agents {
            let (iso, agent, pid) = (iso.clone(), name(agent), leader.pid());
            on_host(self.host(), move || async move {
                iso.attach(&agent, &format!("ve-h-{agent}"), pid).await
            })
            .unwrap_or_else(|e| panic!("attaching: {e}"));
        }
    }

    fn table_present(&self) -> bool {
        on_host(self.host(), || async { Nft::default().list().await })
            .expect("nft list")
            .is_some()
    }

    fn nft(&self, args: &str) {
        self.host().sh(&format!("nft {args}"));
    }
}

/// Every host address and every other agent, as seen from `agent`.
fn forbidden_targets(w: &World, agent: &str) -> Vec<String> {
    w.outside.forbidden_targets(agent, &AGENTS)
}

fn open_ones(ns: &Netns, targets: &[String]) -> Vec<String> {
    ns.open_among(targets)
}

/// The reconcile loop on the host's thread until `stop`; each loss of
/// enforcement it reports is pushed onto `failures`.
fn spawn_reconcile(
    w: &World,
    iso: &Isolation,
    stop: &CancellationToken,
    failures: &Arc<std::sync::Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    let (iso, stop, failures) = (iso.clone(), stop.clone(), Arc::clone(failures));
    w.host().spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(iso.run_reconcile(stop, |reason| {
                failures.lock().unwrap().push(reason);
                async {}
            }))
    })
}

/// Waits until `check` holds; the time it took.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < REPLY_TIMEOUT, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn agents_reach_neither_the_host_nor_each_other_and_egress_follows_policy() {
    if !can_run() {
        return;
    }
    let w = World::new("iso");
    let iso = w.isolation(Tools::default());
    {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.apply().await }).expect("installing the table");
    }
    w.attach_all(&iso);
    let alice = w.agent("alice");
    let bob = w.agent("bob");
    let carol = w.agent("carol");

    // Without the table everything below is reachable: the probes can fail.
    w.nft(&format!("delete table inet {TABLE}"));
    for ns in [w.host(), alice, bob, carol] {
        ns.wait_for_dad();
    }
    let targets = forbidden_targets(&w, "alice");
    assert_eq!(
        open_ones(alice, &targets),
        targets,
        "controls: without the table all is open"
    );
    // (The uplink has no route back to the agent pool: without the table's
    // masquerade nothing outside answers.)
    assert_eq!(alice.tcp_probe(&format!("203.0.113.10:{PORT}")), None);
    {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.apply().await }).expect("reinstalling");
    }

    // Nothing of the host, nothing of another agent, over IPv4 and IPv6.
    for (agent, _) in AGENTS {
        let open = open_ones(w.agent(agent), &forbidden_targets(&w, agent));
        assert!(open.is_empty(), "{agent} reached {open:?}");
    }

    // The internet through the uplink, masqueraded, for egress = allow.
    assert_eq!(
        alice.tcp_probe(&format!("203.0.113.10:{PORT}")).as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(
        alice
            .tcp_probe(&format!("[2001:db8:2::10]:{PORT}"))
            .as_deref(),
        Some("2001:db8:1::1")
    );
    assert!(bob.tcp_probe(&format!("203.0.113.10:{PORT}")).is_some());
    // The LAN only where allow_hosts lists it.
    for lan in [format!("10.88.0.10:{PORT}"), format!("[fd88::10]:{PORT}")] {
        assert_eq!(
            alice.tcp_probe(&lan),
            None,
            "alice reached the LAN at {lan}"
        );
        assert!(
            bob.tcp_probe(&lan).is_some(),
            "bob's allow_hosts lists {lan}"
        );
    }
    // egress = deny: nothing at all.
    for t in [
        format!("203.0.113.10:{PORT}"),
        format!("[2001:db8:2::10]:{PORT}"),
        format!("10.88.0.10:{PORT}"),
    ] {
        assert_eq!(carol.tcp_probe(&t), None, "carol reached {t}");
    }
    // DNS: the configured resolver, and nothing else.
    assert!(alice.dns_probe("10.88.0.53:53"));
    assert!(bob.dns_probe("10.88.0.53:53"));
    for other in [
        "10.88.0.54:53",
        "10.213.0.1:53",
        "192.0.2.1:53",
        "10.77.0.1:53",
        "[fd68:6976:6500::1]:53",
    ] {
        assert!(!alice.dns_probe(other), "alice's DNS reached {other}");
    }
    assert!(
        !carol.dns_probe("10.88.0.53:53"),
        "deny reaches no resolver"
    );

    // The host keeps what it needs: connections it opens get their replies.
    for t in [
        format!("10.213.0.2:{PORT}"),
        format!("[fd68:6976:6500::2]:{PORT}"),
        format!("10.213.0.10:{PORT}"),
    ] {
        assert!(w.host().tcp_probe(&t).is_some(), "host could not reach {t}");
    }

    // Coexistence: a second table that accepts everything first (as an
    // open host firewall or iptables-nft would) undoes none of our drops...
    w.host().sh("nft -f - <<'EOF'
table inet othersfw {
  chain input { type filter hook input priority filter - 100; policy accept; accept; }
  chain forward { type filter hook forward priority filter - 100; policy accept; accept; }
}
table ip filter {
  chain INPUT { type filter hook input priority filter; policy accept; counter accept; }
  chain FORWARD { type filter hook forward priority filter; policy accept; counter accept; }
}
EOF");
    let open = open_ones(alice, &forbidden_targets(&w, "alice"));
    assert!(open.is_empty(), "an accepting table opened {open:?}");
    assert!(bob.tcp_probe(&format!("10.88.0.10:{PORT}")).is_some());
    // ...and a drop there is not undone by our accepts.
    w.nft("insert rule inet othersfw forward ip daddr 203.0.113.10 drop");
    assert_eq!(alice.tcp_probe(&format!("203.0.113.10:{PORT}")), None);
    w.nft("delete table inet othersfw");
    w.nft("delete table ip filter");
    assert!(alice.tcp_probe(&format!("203.0.113.10:{PORT}")).is_some());

    // Deleting the table, or flushing one chain, is repaired by the
    // reconcile loop, and the probes fail again.
    let stop = CancellationToken::new();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reconcile = spawn_reconcile(&w, &iso, &stop, &failures);
    let gateway = format!("10.213.0.1:{PORT}");
    w.nft(&format!("delete table inet {TABLE}"));
    let took = wait_for("the table's return", || w.table_present());
    eprintln!("deleted table restored after {} ms", took.as_millis());
    assert_eq!(alice.tcp_probe(&gateway), None);
    w.nft(&format!("flush chain inet {TABLE} input"));
    let took = wait_for("the flushed chain's repair", || {
        iso.health() == NetworkIsolation::Enforced { repairs: 2 }
    });
    eprintln!("flushed chain restored after {} ms", took.as_millis());
    assert_eq!(alice.tcp_probe(&gateway), None);
    assert!(open_ones(alice, &forbidden_targets(&w, "alice")).is_empty());
    assert!(failures.lock().unwrap().is_empty());

    // Clean shutdown removes the table.
    stop.cancel();
    reconcile.join().unwrap();
    {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.remove().await }).expect("removing");
    }
    assert!(!w.table_present());
    assert!(iso.check_ready().is_err());
    drop(w);
}

#[test]
fn addresses_are_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hive.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut policies = World::policies();
    let first = rt.block_on(async {
        let store = Store::open(&path, Arc::new(Hub::new())).unwrap();
        let iso = Isolation::new(World::net(), Tools::default(), &store, &policies)
            .await
            .unwrap();
        let out: Vec<_> = policies.keys().map(|a| iso.addresses(a).unwrap()).collect();
        store.shutdown().await;
        out
    });
    assert_eq!(first.iter().map(|a| a.slot).collect::<Vec<_>>(), [0, 1, 2]);
    // alice leaves the config and dave arrives: alice's slot stays hers in
    // the store, so dave takes the next free one and nobody moves.
    policies.remove(&name("alice"));
    policies.insert(name("dave"), AgentPolicy::default());
    rt.block_on(async {
        let store = Store::open(&path, Arc::new(Hub::new())).unwrap();
        let iso = Isolation::new(World::net(), Tools::default(), &store, &policies)
            .await
            .unwrap();
        assert_eq!(iso.addresses(&name("bob")), Some(first[1]));
        assert_eq!(iso.addresses(&name("carol")), Some(first[2]));
        assert_eq!(iso.addresses(&name("dave")).unwrap().slot, 3);
        store.shutdown().await;
    });
}

/// An `nft` that works until `FLAG` exists.
fn breakable_nft(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let flag = dir.join("broken");
    let real = crate::common::netns::cmd(&["sh", "-c", "command -v nft"]);
    let script = dir.join("nft");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ -e {} ] && {{ echo 'nft: broken by the test' >&2; exit 1; }}\nexec {} \"$@\"\n", flag.display(), real.trim()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, flag)
}

#[test]
fn without_a_working_nft_no_agent_is_attached_and_running_ones_are_stopped() {
    if !can_run() {
        return;
    }
    let w = World::new("fail");
    // nft missing altogether: nothing installs, the gate refuses, and the
    // veth is left unconfigured.
    let missing = Tools {
        nft: Nft {
            program: "/nonexistent/nft".into(),
        },
        ..Tools::default()
    };
    let iso = w.isolation(missing);
    let err = {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.apply().await }).unwrap_err()
    };
    assert!(matches!(err, IsolationError::Spawn { .. }), "{err}");
    let refused = iso.check_ready().unwrap_err().to_string();
    assert!(
        refused.contains("network isolation is not enforced")
            && refused.contains("/nonexistent/nft"),
        "{refused}"
    );
    let NetworkIsolation::Failed { reason } = iso.health() else {
        panic!("health says {:?}", iso.health());
    };
    assert_eq!(reason, refused);
    assert!(!reason.contains('\n'), "one sentence: {reason}");
    let pid = w.agents["alice"].1.pid();
    let attach = {
        let iso = iso.clone();
        on_host(w.host(), move || async move {
            iso.attach(&name("alice"), "ve-h-alice", pid).await
        })
    };
    assert!(
        matches!(attach, Err(IsolationError::NotEnforced(_))),
        "{attach:?}"
    );
    assert!(
        !w.agent("alice")
            .ip("addr show dev host0")
            .contains("10.213."),
        "attach configured an address"
    );

    // nft that breaks while agents run: the reconcile loop reports the loss
    // once (the daemon stops every container on it) and refuses starts.
    let dir = tempfile::tempdir().unwrap();
    let (script, flag) = breakable_nft(dir.path());
    let iso = w.isolation(Tools {
        nft: Nft { program: script },
        ..Tools::default()
    });
    {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.apply().await }).expect("installing");
    }
    w.attach_all(&iso);
    let stop = CancellationToken::new();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reconcile = spawn_reconcile(&w, &iso, &stop, &failures);
    std::fs::write(&flag, "").unwrap();
    w.nft(&format!("delete table inet {TABLE}"));
    wait_for("the loss to be reported", || {
        !failures.lock().unwrap().is_empty()
    });
    let reason = failures.lock().unwrap()[0].clone();
    assert!(reason.contains("broken by the test"), "{reason}");
    assert!(iso.check_ready().is_err());
    // Repairs resume once nft works again, and starts are allowed again.
    std::fs::remove_file(&flag).unwrap();
    wait_for("isolation to come back", || iso.check_ready().is_ok());
    assert!(w.table_present());
    assert_eq!(
        failures.lock().unwrap().len(),
        1,
        "reported once, not every period"
    );
    stop.cancel();
    reconcile.join().unwrap();
    let r = {
        let iso = iso.clone();
        on_host(w.host(), move || async move { iso.reconcile().await })
    };
    assert_eq!(r, Reconciled::Intact);
}

#[test]
fn agents_added_and_removed_at_run_time_get_and_lose_their_rules() {
    if !can_run() {
        return;
    }
    let w = World::new("dyn");
    // alice and bob at start; carol arrives at run time (a spawn).
    let mut at_start = World::policies();
    let carol_policy = at_start.remove(&name("carol")).unwrap();
    let store = w.store.clone();
    let iso = on_host(w.host(), move || async move {
        let iso = Isolation::new(World::net(), Tools::default(), &store, &at_start)
            .await
            .expect("allocating");
        iso.apply().await.expect("installing");
        iso
    });
    let carol_pid = w.agents["carol"].1.pid();
    let attach_carol = w.with(&iso, move |iso| async move {
        iso.attach(&name("carol"), "ve-h-carol", carol_pid).await
    });
    assert!(
        matches!(attach_carol, Err(IsolationError::UnknownAgent(_))),
        "an agent the table has no rules for is not attached"
    );
    w.with(&iso, |iso| async move {
        iso.set_agent(&name("carol"), &carol_policy).await
    })
    .expect("adding carol");
    assert_eq!(iso.addresses(&name("carol")).unwrap().slot, 2);
    w.attach_all(&iso);
    for ns in [w.host(), w.agent("alice"), w.agent("bob"), w.agent("carol")] {
        ns.wait_for_dad();
    }
    let internet = format!("203.0.113.10:{PORT}");
    let carol = w.agent("carol");
    let open = open_ones(carol, &forbidden_targets(&w, "carol"));
    assert!(open.is_empty(), "carol reached {open:?}");
    assert_eq!(carol.tcp_probe(&internet), None, "carol's egress is deny");
    assert!(w.agent("alice").tcp_probe(&internet).is_some());

    // A deploy that changes bob's policy to deny: his egress stops.
    let bob = w.agent("bob");
    assert!(bob.tcp_probe(&internet).is_some());
    w.with(&iso, |iso| async move {
        let deny = AgentPolicy {
            egress: EgressPolicy::Deny,
            ..AgentPolicy::default()
        };
        iso.set_agent(&name("bob"), &deny)
            .await
            .expect("bob to deny")
    });
    assert_eq!(bob.tcp_probe(&internet), None, "bob's egress is deny now");

    // carol removed: the table no longer names her, and her interface is
    // one the table has no policy for, which reaches nothing.
    w.with(&iso, |iso| async move {
        iso.remove_agent(&name("carol")).await.expect("removing")
    });
    assert!(!iso.agent_names().contains(&name("carol")));
    let listing = w.host().sh(&format!("nft list table inet {TABLE}"));
    assert!(!listing.contains("carol"), "{listing}");
    let open = open_ones(carol, &forbidden_targets(&w, "carol"));
    assert!(open.is_empty(), "removed carol reached {open:?}");
    assert_eq!(carol.tcp_probe(&internet), None);
    assert!(w.agent("alice").tcp_probe(&internet).is_some());
    assert_eq!(
        w.with(&iso, |iso| async move { iso.reconcile().await }),
        Reconciled::Intact
    );
}
