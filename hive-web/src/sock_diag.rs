//! Which uid owns the far end of a TCP connection, as the kernel reports it
//! through `NETLINK_SOCK_DIAG` (`inet_diag`, sock_diag(7)).
//!
//! The gateway believes a `Tailscale-User-Login` header only when the
//! connection it arrived on was opened by `tailscaled`'s uid
//! ([`crate::auth`]). `tailscale serve` proxies to TCP on localhost, so the
//! peer address cannot tell `tailscaled` apart from any other local process;
//! the socket's owner can. For a loopback connection both ends live in this
//! kernel: [`owner_of_peer`] asks it, with one exact-match `inet_diag`
//! request for the *client's* socket (its local address is our peer, its
//! remote address is us), which uid created it. Nothing the client sends is
//! part of the question, and only the kernel can answer it (a netlink
//! message to our port from another process needs `CAP_NET_ADMIN`; the
//! reply is also checked to come from port 0, the kernel).
//!
//! An answer counts only for a full, established socket whose address is
//! exactly the one asked for: a closing client's socket can become a
//! time-wait stub, which the kernel reports with uid 0 and inode 0, and a
//! lookup whose socket is gone could fall back to a listener; both are
//! refused ([`DiagError::NotEstablished`], [`DiagError::Mismatch`]).
//!
//! The decoder reads kernel bytes with bounds-checked slices only: it must
//! never panic, whatever it is given (`parsing_garbage_never_panics`). This
//! module must never block (the reply is queued by the kernel before
//! `sendto` returns, so the socket is non-blocking) and never consult
//! anything the peer sent.
//!
//! Why not a crate: `netlink-packet-sock-diag` with `netlink-sys` would do
//! the same with five more dependencies for one fixed 72-byte request and
//! one fixed reply; the hand-written request is short enough to review whole
//! (decision in `docs/web.md`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use nix::sys::socket::{
    recvfrom, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

/// Why the owner of a connection's far end is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiagError {
    #[error("the peer {peer} and our address {local} are not the same kind of address")]
    Family { local: SocketAddr, peer: SocketAddr },
    #[error("the netlink socket failed: {0}")]
    Socket(nix::Error),
    #[error("the kernel has no socket at {0} (it closed)")]
    NotFound(SocketAddr),
    #[error("the kernel refused the lookup: errno {0}")]
    Kernel(i32),
    #[error("the peer's socket is not established (state {0}); it is closing or gone")]
    NotEstablished(u8),
    #[error("the kernel answered for another socket than the one asked for")]
    Mismatch,
    #[error("the kernel's answer does not parse: {0}")]
    Malformed(&'static str),
}

/// What the kernel says about the client's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerOwner {
    /// The uid that created the socket, mapped into our user namespace.
    pub uid: u32,
}

/// One accepted TCP connection's two ends, attached by the accept loop to
/// every request that arrives on it. The owner of the far end is asked of
/// the kernel at most once per connection, the first time a request needs
/// it: the four-tuple is ours for as long as the connection lives, so the
/// socket at the other end cannot change owner under it.
#[derive(Clone, Debug)]
pub struct PeerSocket {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    owner: Arc<OnceLock<Result<PeerOwner, DiagError>>>,
}

impl PeerSocket {
    pub fn new(local: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            local,
            peer,
            owner: Arc::new(OnceLock::new()),
        }
    }

    /// A connection whose owner is already known: for route tests driven
    /// without a socket (`oneshot`), never for a real connection.
    pub fn known(local: SocketAddr, peer: SocketAddr, uid: u32) -> Self {
        let me = Self::new(local, peer);
        let _ = me.owner.set(Ok(PeerOwner { uid }));
        me
    }

    /// The uid that opened the far end, asked of the kernel once.
    pub fn owner(&self) -> &Result<PeerOwner, DiagError> {
        self.owner
            .get_or_init(|| owner_of_peer(self.local, self.peer))
    }
}

/// `SOCK_DIAG_BY_FAMILY` from `<linux/sock_diag.h>`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` (the attributes that may follow are not read).
const MSG_LEN: usize = 72;
const TCP_ESTABLISHED: u8 = 1;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// Room for the reply: one message plus whatever attributes the kernel adds.
const RECV_BUF: usize = 8192;

/// The owner of the socket at `peer` that is connected to us at `local`.
pub fn owner_of_peer(local: SocketAddr, peer: SocketAddr) -> Result<PeerOwner, DiagError> {
    let local = canonical(local);
    let peer = canonical(peer);
    let seq = next_seq();
    let request = build_request(local, peer, seq)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(DiagError::Socket)?;
    let kernel = NetlinkAddr::new(0, 0);
    sendto(fd.as_raw_fd(), &request, &kernel, MsgFlags::empty()).map_err(DiagError::Socket)?;
    let mut buf = vec![0u8; RECV_BUF];
    let (n, from) = recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf)
        .map_err(DiagError::Socket)
        .and_then(|(n, from)| Ok((n, from.ok_or(DiagError::Malformed("no sender address"))?)))?;
    if from.pid() != 0 {
        return Err(DiagError::Malformed(
            "the answer did not come from the kernel",
        ));
    }
    let reply = parse_reply(buf.get(..n).unwrap_or(&[]), seq, peer)?;
    check_reply(&reply, local, peer)?;
    Ok(PeerOwner { uid: reply.uid })
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4
/// client) names the IPv4 socket the client really has.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for the one TCP socket whose local
/// address is `peer` and whose remote address is `local`.
fn build_request(local: SocketAddr, peer: SocketAddr, seq: u32) -> Result<Vec<u8>, DiagError> {
    let family = match (peer.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET as u8,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => return Err(DiagError::Family { local, peer }),
    };
    let mut b = Vec::with_capacity(NLMSG_HDR_LEN + REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(0); // idiag_ext: no extensions
    b.push(0); // pad
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: any
    push_sockid(&mut b, peer, local);
    debug_assert_eq!(b.len(), NLMSG_HDR_LEN + REQ_LEN);
    Ok(b)
}

/// `struct inet_diag_sockid` for the socket bound at `src` connected to
/// `dst`: ports and addresses in network byte order, no interface, no cookie.
fn push_sockid(b: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    b.extend_from_slice(&addr16(src.ip()));
    b.extend_from_slice(&addr16(dst.ip()));
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    b.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
}

/// An address as the 16 bytes of `idiag_src`/`idiag_dst` (IPv4 in the
/// first four).
fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The fields of `struct inet_diag_msg` the check needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DiagMsg {
    family: u8,
    state: u8,
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    uid: u32,
    inode: u32,
}

/// Finds the answer to request `seq` in what the kernel sent.
fn parse_reply(mut bytes: &[u8], seq: u32, peer: SocketAddr) -> Result<DiagMsg, DiagError> {
    while !bytes.is_empty() {
        let len = read_u32(bytes, 0).ok_or(DiagError::Malformed("short netlink header"))? as usize;
        let kind = read_u16(bytes, 4).ok_or(DiagError::Malformed("short netlink header"))?;
        let got_seq = read_u32(bytes, 8).ok_or(DiagError::Malformed("short netlink header"))?;
        if len < NLMSG_HDR_LEN || len > bytes.len() {
            return Err(DiagError::Malformed(
                "a netlink message overruns the datagram",
            ));
        }
        let body = &bytes[NLMSG_HDR_LEN..len];
        if got_seq == seq {
            match kind {
                NLMSG_ERROR => {
                    let errno = read_u32(body, 0)
                        .ok_or(DiagError::Malformed("short netlink error"))?
                        as i32;
                    return Err(if errno == -libc::ENOENT {
                        DiagError::NotFound(peer)
                    } else {
                        DiagError::Kernel(-errno)
                    });
                }
                NLMSG_DONE => return Err(DiagError::NotFound(peer)),
                SOCK_DIAG_BY_FAMILY => return parse_msg(body),
                _ => {}
            }
        }
        // Messages are padded to four bytes.
        let next = len.checked_add(3).map(|l| l & !3).unwrap_or(usize::MAX);
        bytes = bytes.get(next..).unwrap_or(&[]);
    }
    Err(DiagError::Malformed("no answer to our request"))
}

fn parse_msg(body: &[u8]) -> Result<DiagMsg, DiagError> {
    if body.len() < MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag message"));
    }
    let short = DiagError::Malformed("short inet_diag message");
    let be16 = |at: usize| {
        body.get(at..at + 2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
    };
    let addr = |at: usize| {
        body.get(at..at + 16)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
    };
    Ok(DiagMsg {
        family: body[0],
        state: body[1],
        sport: be16(4).ok_or(short.clone())?,
        dport: be16(6).ok_or(short.clone())?,
        src: addr(8).ok_or(short.clone())?,
        dst: addr(24).ok_or(short.clone())?,
        uid: read_u32(body, 64).ok_or(short.clone())?,
        inode: read_u32(body, 68).ok_or(short)?,
    })
}

/// The answer must be the client's own, live socket: the same family,
/// addresses and ports as asked, established, with an inode (a full socket,
/// not a time-wait stub or a listener).
fn check_reply(m: &DiagMsg, local: SocketAddr, peer: SocketAddr) -> Result<(), DiagError> {
    let family = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let same = m.family == family
        && m.sport == peer.port()
        && m.dport == local.port()
        && m.src == addr16(peer.ip())
        && m.dst == addr16(local.ip());
    if !same {
        return Err(DiagError::Mismatch);
    }
    if m.state != TCP_ESTABLISHED || m.inode == 0 {
        return Err(DiagError::NotEstablished(m.state));
    }
    Ok(())
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{TcpListener, TcpStream};

    const LOCAL: &str = "127.0.0.1:8080";
    const PEER: &str = "127.0.0.1:40000";

    /// What the kernel would send for the request `seq`, with `tweak`
    /// applied to the inet_diag_msg body.
    fn reply(seq: u32, tweak: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let local: SocketAddr = LOCAL.parse().unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        let mut body = vec![libc::AF_INET as u8, TCP_ESTABLISHED, 0, 0];
        push_sockid(&mut body, peer, local);
        body.extend_from_slice(&[0u8; 12]); // expires, rqueue, wqueue
        body.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        body.extend_from_slice(&4242u32.to_ne_bytes()); // inode
        tweak(&mut body);
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&body);
        b
    }

    fn decide(bytes: &[u8], seq: u32) -> Result<u32, DiagError> {
        let local: SocketAddr = LOCAL.parse().unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        let m = parse_reply(bytes, seq, peer)?;
        check_reply(&m, local, peer)?;
        Ok(m.uid)
    }

    #[test]
    fn the_request_is_one_exact_inet_diag_lookup_of_the_clients_socket() {
        let req = build_request(LOCAL.parse().unwrap(), PEER.parse().unwrap(), 7).unwrap();
        assert_eq!(req.len(), 72);
        assert_eq!(read_u32(&req, 0), Some(72));
        assert_eq!(read_u16(&req, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(read_u16(&req, 6), Some(NLM_F_REQUEST), "no NLM_F_DUMP");
        assert_eq!(req[16], libc::AF_INET as u8);
        assert_eq!(req[17], libc::IPPROTO_TCP as u8);
        // The client's socket: source port 40000 (ours is the destination).
        assert_eq!(&req[24..26], &40000u16.to_be_bytes());
        assert_eq!(&req[26..28], &8080u16.to_be_bytes());
        assert_eq!(&req[28..32], &[127, 0, 0, 1]);
        assert!(build_request(LOCAL.parse().unwrap(), "[::1]:1".parse().unwrap(), 1).is_err());
    }

    #[test]
    fn only_an_established_full_socket_at_the_asked_address_counts() {
        assert_eq!(decide(&reply(5, |_| {}), 5), Ok(1000));
        // A time-wait stub: the kernel reports uid 0 and no inode.
        let tw = reply(5, |b| {
            b[1] = 6; // TCP_TIME_WAIT
            b[64..68].copy_from_slice(&0u32.to_ne_bytes());
            b[68..72].copy_from_slice(&0u32.to_ne_bytes());
        });
        assert_eq!(decide(&tw, 5), Err(DiagError::NotEstablished(6)));
        let orphan = reply(5, |b| b[68..72].copy_from_slice(&0u32.to_ne_bytes()));
        assert!(matches!(
            decide(&orphan, 5),
            Err(DiagError::NotEstablished(_))
        ));
        // A listener (or anything at another address) is not the client.
        let listener = reply(5, |b| {
            b[1] = 10;
            b[6..8].copy_from_slice(&0u16.to_be_bytes());
        });
        assert_eq!(decide(&listener, 5), Err(DiagError::Mismatch));
        // Another request's answer is not ours.
        assert!(decide(&reply(6, |_| {}), 5).is_err());
    }

    #[test]
    fn a_kernel_error_is_an_error() {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&9u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        assert!(matches!(decide(&b, 9), Err(DiagError::NotFound(_))));
    }

    #[test]
    fn the_kernel_names_our_own_uid_for_our_own_client_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let local = listener.local_addr().unwrap();
        let owner = owner_of_peer(local, peer).unwrap();
        assert_eq!(owner.uid, nix::unistd::geteuid().as_raw());
        drop(client);
        // Once the client has closed, its socket no longer counts.
        assert!(owner_of_peer(local, peer).is_err());
    }

    proptest! {
        #[test]
        fn parsing_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), seq in 0u32..4) {
            let _ = decide(&bytes, seq);
        }

        #[test]
        fn parsing_a_cut_reply_never_panics(cut in 0usize..88) {
            let r = reply(1, |_| {});
            let _ = decide(&r[..cut.min(r.len())], 1);
        }
    }
}
