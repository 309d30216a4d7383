//! The probes of `hivectl doctor`: TCP connects made from inside an agent
//! container's network namespace, each on a thread of its own that entered
//! that namespace (`setns` on `/proc/<leader>/ns/net`, opened by the core),
//! all at once, each bounded by [`PROBE_TIMEOUT`].
//!
//! A connection, or a refusal (a TCP reset), means the packet reached its
//! target: `OPEN`. No answer, or an unreachable or locally refused route,
//! means it did not: `blocked`. The threads only connect and close; they
//! must never send a byte, and never run anywhere but in the namespace they
//! were given (a thread that cannot enter it reports that and probes
//! nothing). Which targets to probe is decided by the caller.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV6, TcpStream};
use std::time::Duration;

/// How long one connect waits for an answer. A dropped SYN is never
/// answered; anything reachable inside one host answers in well under this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Most probe threads alive at once.
pub const MAX_PARALLEL: usize = 128;

/// One connect to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// For an IPv6 link-local address: the interface inside the namespace
    /// whose index becomes the scope (`host0`).
    pub scope_if: Option<String>,
}

/// What one connect found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It got through; the sentence says how.
    Open(String),
    /// It did not; the sentence says how.
    Blocked(String),
    /// The probe itself could not run.
    Failed(String),
}

/// Sorts a connect's result into [`Outcome`]s.
pub fn classify(result: std::io::Result<TcpStream>) -> Outcome {
    match result {
        Ok(_) => Outcome::Open("connected".into()),
        Err(e) => match (e.kind(), e.raw_os_error()) {
            (ErrorKind::ConnectionRefused, _) => {
                Outcome::Open("refused by the far end, so the packet got there".into())
            }
            (ErrorKind::TimedOut | ErrorKind::WouldBlock, _) => {
                Outcome::Blocked(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()))
            }
            (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH)) => {
                Outcome::Blocked(format!("unreachable ({e})"))
            }
            (_, Some(libc::EACCES | libc::EPERM)) => {
                Outcome::Blocked(format!("refused on the way out ({e})"))
            }
            _ => Outcome::Failed(format!("the connect failed oddly: {e}")),
        },
    }
}

/// Probes every target from inside the namespace `netns` (an open
/// `/proc/<pid>/ns/net`), all at once; the outcomes in `targets`' order.
/// Blocking: run it off the async workers.
pub fn probe_all(netns: &File, targets: &[Target]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(targets.len());
    for batch in targets.chunks(MAX_PARALLEL) {
        let handles: Vec<_> = batch
            .iter()
            .map(|t| {
                let ns = netns.try_clone();
                let t = t.clone();
                std::thread::Builder::new()
                    .name("hive-doctor-probe".into())
                    .spawn(move || match ns {
                        Ok(ns) => probe_from(&ns, &t),
                        Err(e) => Outcome::Failed(format!("cannot share the namespace: {e}")),
                    })
            })
            .collect();
        for h in handles {
            out.push(match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed("the probe thread panicked".into())),
                Err(e) => Outcome::Failed(format!("cannot start a probe thread: {e}")),
            });
        }
    }
    out
}

/// On the current thread, which it leaves inside `netns` (so it must be a
/// thread of its own that ends afterwards).
fn probe_from(netns: &File, target: &Target) -> Outcome {
    if let Err(e) = nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET) {
        return Outcome::Failed(format!("cannot enter the agent's network namespace: {e}"));
    }
    let mut addr = target.addr;
    if let (SocketAddr::V6(v6), Some(ifname)) = (addr, &target.scope_if) {
        match nix::net::if_::if_nametoindex(ifname.as_str()) {
            Ok(index) => addr = SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, index)),
            Err(e) => return Outcome::Failed(format!("no interface {ifname} inside: {e}")),
        }
    }
    classify(TcpStream::connect_timeout(&addr, PROBE_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_or_a_reset_is_open_and_silence_is_blocked() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(matches!(
            classify(TcpStream::connect(addr)),
            Outcome::Open(_)
        ));
        drop(l);
        // Nothing listens there now: the reset proves it got there.
        let Outcome::Open(how) = classify(TcpStream::connect(addr)) else {
            panic!("a refusal must count as open")
        };
        assert!(how.contains("refused by the far end"), "{how}");
        let timed_out = std::io::Error::from(ErrorKind::TimedOut);
        assert!(matches!(classify(Err(timed_out)), Outcome::Blocked(_)));
        let unreachable = std::io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert!(matches!(classify(Err(unreachable)), Outcome::Blocked(_)));
        let odd = std::io::Error::from_raw_os_error(libc::EBADF);
        assert!(matches!(classify(Err(odd)), Outcome::Failed(_)));
    }

    #[test]
    fn probes_from_this_namespace_find_a_listener_open() {
        if !crate::peer::running_as_root() {
            // setns needs CAP_SYS_ADMIN, even into one's own namespace.
            assert!(!hive_proto::ci::on_ci(), "this test needs root under CI");
            eprintln!("skipped: setns needs root");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ns = File::open("/proc/self/ns/net").unwrap();
        let got = probe_all(
            &ns,
            &[Target {
                addr: l.local_addr().unwrap(),
                scope_if: None,
            }],
        );
        assert!(matches!(got.as_slice(), [Outcome::Open(_)]), "{got:?}");
    }
}
