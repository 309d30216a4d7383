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

/// `sh -c script` inside namespace `ns`.
pub fn sh_in(ns: &str, script: &str) -> String {
    cmd(&["ip", "netns", "exec", ns, "sh", "-ec", script])
}

/// A namespace the test made; deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
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
        Self { name }
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &str) -> String {
        let mut v = vec!["ip", "-n", self.name.as_str()];
        v.extend(args.split_whitespace());
        cmd(&v)
    }

    pub fn sh(&self, script: &str) -> String {
        sh_in(&self.name, script)
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
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A process that lives in this namespace until dropped (a stand-in for
    /// a container's leader).
    pub fn leader(&self) -> Leader {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "3600"])
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
