//! Network namespaces for the isolation tests: namespaces the test makes
//! (removed on drop), veth pairs created directly inside them (never in the
//! machine's own namespace), code run on a thread that entered one, and
//! probes — a TCP connect that reads back the address the listener saw, a
//! DNS query over UDP. No address here is ever reached outside namespaces
//! the test made.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// How long a probe waits: a dropped SYN is never answered, and between
/// namespaces on one machine an allowed connect takes well under this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Whether `prog` runs (`prog --version` or `-V`).
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether `nft`, `ip` and `nsenter` run; otherwise
/// [`skip_or_fail`](super::skip_or_fail) and `false`.
pub fn net_tools_available() -> bool {
    for tool in ["nft", "ip", "nsenter"] {
        if !have(tool) {
            super::skip_or_fail(&format!(
                "{tool} is not installed (apt-get install nftables iproute2 util-linux)"
            ));
            return false;
        }
    }
    true
}

/// Runs a command and panics with its stderr if it fails; returns stdout.
pub fn cmd(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sh -c script` inside the network namespace at `path` (`nsenter
/// --net`, which leaves `/sys` alone, unlike `ip netns exec`).
pub fn sh_in(path: &str, script: &str) -> String {
    cmd(&["nsenter", &format!("--net={path}"), "sh", "-ec", script])
}

/// A network namespace: one the test made (deleted, with its interfaces,
/// on drop), or a process's (`/proc/PID/ns/net`, e.g. a container's).
pub struct Netns {
    pub name: String,
    /// Its namespace file.
    pub path: String,
    /// Made by the test (`ip netns add`): deleted on drop.
    owned: bool,
}

impl Netns {
    /// `hh<pid>-<tag>`: unique per test process and tag.
    pub fn new(tag: &str) -> Self {
        let name = format!("hh{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        cmd(&["ip", "netns", "add", &name]);
        cmd(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self {
            path: format!("/run/netns/{name}"),
            name,
            owned: true,
        }
    }

    /// The network namespace of process `pid` (left alone on drop).
    pub fn of_pid(pid: u32) -> Self {
        Self {
            name: format!("pid{pid}"),
            path: format!("/proc/{pid}/ns/net"),
            owned: false,
        }
    }

    /// `ip args…` inside this namespace.
    pub fn ip(&self, args: &str) -> String {
        let net = format!("--net={}", self.path);
        let mut v = vec!["nsenter", net.as_str(), "ip"];
        v.extend(args.split_whitespace());
        cmd(&v)
    }

    pub fn sh(&self, script: &str) -> String {
        sh_in(&self.path, script)
    }

    /// A command that will run inside this namespace (`nsenter --net`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path)).arg("--").arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in netns panicked")
    }

    /// Starts `f` on a thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path.clone();
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A process that lives in this namespace until dropped (a stand-in for
    /// a container's leader).
    pub fn leader(&self) -> Leader {
        let child = self
            .command("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning the leader");
        Leader(child)
    }

    /// A TCP listener bound inside this namespace that tells each peer the
    /// address it saw, then closes.
    pub fn echo_peer_tcp(&self, addr: &str) -> SocketAddr {
        let addr: SocketAddr = addr.parse().expect("listener address");
        let listener = self.run(move || TcpListener::bind(addr).expect("bind"));
        let local = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let peer = conn
                    .peer_addr()
                    .map(|p| p.ip().to_canonical().to_string())
                    .unwrap_or_default();
                let _ = writeln!(conn, "{peer}");
            }
        });
        local
    }

    /// A UDP "resolver": answers any query by echoing it with the QR bit set.
    pub fn dns_responder(&self, addr: &str) {
        let addr: SocketAddr = addr.parse().expect("resolver address");
        let sock = self.run(move || UdpSocket::bind(addr).expect("bind udp"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if n >= 12 {
                    buf[2] |= 0x80;
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
    }

    /// From inside this namespace: connects to `to` and returns the peer
    /// address the listener reported, or `None` if nothing answered.
    pub fn tcp_probe(&self, to: &str) -> Option<String> {
        let to = to.to_owned();
        self.run(move || tcp_probe_here(&to))
    }

    /// Probes every target at once; those that answered.
    pub fn open_among(&self, targets: &[String]) -> Vec<String> {
        let probes: Vec<_> = targets
            .iter()
            .map(|t| {
                let t = t.clone();
                self.spawn(move || tcp_probe_here(&t).map(|_| t))
            })
            .collect();
        probes
            .into_iter()
            .filter_map(|p| p.join().expect("probe thread"))
            .collect()
    }

    /// Waits until no IPv6 address here is still tentative (duplicate
    /// address detection takes a second or two on a fresh link).
    pub fn wait_for_dad(&self) {
        let start = std::time::Instant::now();
        while !self.ip("-6 addr show tentative").trim().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "DAD never finished in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// From inside this namespace: a DNS query for `example.test` to
    /// `to:53`; whether an answer with the same id came back.
    pub fn dns_probe(&self, to: &str) -> bool {
        let to = to.to_owned();
        self.run(move || dns_probe_here(&to))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process standing in for a container leader; killed on drop.
pub struct Leader(pub Child);

impl Leader {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port of the host's stand-in for the gateway (on every address, a
/// dual-stack wildcard) and of every test listener; the host also listens
/// on `0.0.0.0:7001`.
pub const PORT: u16 = 7000;

/// A "host" namespace (where the hive's table goes) and an "uplink" one
/// reached from it by explicit routes only. The host: `up0`
/// (192.0.2.1, 2001:db8:1::1) to the uplink, a second interface `dum0`
/// (10.77.0.1, fd77::1), forwarding on, and its own services — the
/// gateway's port on every address, a listener on `0.0.0.0:7001`, DNS on
/// every address. The uplink holds the "internet" (203.0.113.10,
/// 2001:db8:2::10), a "LAN" host (10.88.0.10, fd88::10), the resolver
/// (10.88.0.53) and another DNS server (10.88.0.54).
pub struct Outside {
    pub host: Netns,
    pub uplink: Netns,
}

impl Outside {
    pub fn new(tag: &str) -> Self {
        let host = Netns::new(&format!("{tag}h"));
        let uplink = Netns::new(&format!("{tag}u"));
        veth(&host, "up0", &uplink, "down0");
        host.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             ip link set up0 up
             ip addr add 192.0.2.1/24 dev up0
             ip addr add 2001:db8:1::1/64 dev up0 nodad
             ip link add dum0 type veth peer name dum1
             ip link set dum1 up
             ip link set dum0 up
             ip addr add 10.77.0.1/24 dev dum0
             ip addr add fd77::1/64 dev dum0 nodad
             ip route add 203.0.113.0/24 via 192.0.2.2
             ip route add 10.88.0.0/24 via 192.0.2.2
             ip route add 2001:db8:2::/64 via 2001:db8:1::2
             ip route add fd88::/64 via 2001:db8:1::2",
        );
        uplink.sh(
            "ip link set down0 up
             ip addr add 192.0.2.2/24 dev down0
             ip addr add 2001:db8:1::2/64 dev down0 nodad
             for a in 203.0.113.10/32 10.88.0.10/32 10.88.0.53/32 10.88.0.54/32; do ip addr add $a dev lo; done
             for a in 2001:db8:2::10/128 fd88::10/128; do ip addr add $a dev lo nodad; done",
        );
        host.echo_peer_tcp(&format!("[::]:{PORT}"));
        host.echo_peer_tcp("0.0.0.0:7001");
        host.dns_responder("[::]:53");
        uplink.echo_peer_tcp(&format!("[::]:{PORT}"));
        uplink.dns_responder("10.88.0.53:53");
        uplink.dns_responder("10.88.0.54:53");
        Self { host, uplink }
    }

    /// The link-local address of `dev` in the host namespace.
    pub fn host_link_local(&self, dev: &str) -> String {
        let out = self
            .host
            .ip(&format!("-6 -o addr show dev {dev} scope link"));
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap_or_else(|| panic!("no link-local on {dev}: {out}"));
        cidr.split('/').next().unwrap().to_owned()
    }

    /// Every host address and every other agent, as seen from `agent`,
    /// for agents named with their slots in the default pools.
    pub fn forbidden_targets(&self, agent: &str, agents: &[(&str, u32)]) -> Vec<String> {
        let slot = agents.iter().find(|(a, _)| *a == agent).expect("agent").1;
        let ll = self.host_link_local(&format!("ve-h-{agent}"));
        let mut t = vec![
            format!("{}:{PORT}", gateway4(slot)),
            format!("{}:7001", gateway4(slot)),
            format!("[{}]:{PORT}", gateway6(slot)),
            format!("[{ll}%host0]:{PORT}"),
            format!("10.77.0.1:{PORT}"),
            format!("10.77.0.1:7001"),
            format!("[fd77::1]:{PORT}"),
            format!("192.0.2.1:{PORT}"),
            format!("[2001:db8:1::1]:{PORT}"),
        ];
        // Every other agent's gateway (a host address) and container.
        for (other, s) in agents {
            if *other != agent {
                t.push(format!("{}:{PORT}", gateway4(*s)));
                t.push(format!("{}:{PORT}", container4(*s)));
                t.push(format!("[{}]:{PORT}", container6(*s)));
            }
        }
        t
    }
}

/// Slot `slot`'s host-side (gateway) address in the default IPv4 pool.
pub fn gateway4(slot: u32) -> String {
    format!("10.213.0.{}", slot * 4 + 1)
}

/// Slot `slot`'s container address in the default IPv4 pool.
pub fn container4(slot: u32) -> String {
    format!("10.213.0.{}", slot * 4 + 2)
}

fn net6(slot: u32) -> String {
    if slot == 0 {
        "fd68:6976:6500:".to_owned()
    } else {
        format!("fd68:6976:6500:{slot:x}:")
    }
}

/// Slot `slot`'s gateway address in the default IPv6 pool.
pub fn gateway6(slot: u32) -> String {
    format!("{}:1", net6(slot))
}

/// Slot `slot`'s container address in the default IPv6 pool.
pub fn container6(slot: u32) -> String {
    format!("{}:2", net6(slot))
}

/// A veth pair: `host_if` in `host`, `peer_if` in `peer`, both created
/// inside `host` (never in the machine's own namespace).
pub fn veth(host: &Netns, host_if: &str, peer: &Netns, peer_if: &str) {
    cmd(&[
        "ip", "-n", &host.name, "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
        "netns", &peer.name,
    ]);
}

/// `ADDR:PORT` or `[ADDR%SCOPE]:PORT` for the current namespace.
pub fn tcp_probe_here(to: &str) -> Option<String> {
    let addr = resolve(to)?;
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let line = line.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

pub fn dns_probe_here(to: &str) -> bool {
    let Some(addr) = resolve(to) else {
        return false;
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(PROBE_TIMEOUT));
    // id 0x4868, RD, one question: example.test IN A.
    let mut q = vec![0x48, 0x68, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => n >= 12 && buf[0..2] == q[0..2] && buf[2] & 0x80 != 0,
        Err(_) => false,
    }
}

/// `ADDR:PORT`, `[ADDR]:PORT`, or `[fe80::…%IF]:PORT` with `IF` looked up
/// in the calling thread's namespace.
fn resolve(to: &str) -> Option<SocketAddr> {
    if let Some((host, port)) = to.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        if let Some((addr, scope)) = host.split_once('%') {
            let name = std::ffi::CString::new(scope).ok()?;
            // SAFETY: `name` is a valid NUL-terminated string for the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            let addr: std::net::Ipv6Addr = addr.parse().ok()?;
            return Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                addr,
                port.parse().ok()?,
                0,
                index,
            )));
        }
    }
    to.parse().ok()
}
