//! The gateway's half of `hivectl doctor`: what `/proc/<pid>` says of each
//! process connected to `web.sock` (the peers the kernel named, kept by
//! `operator_socket::GatewayPeers`): its uids, its capability sets, its
//! `no_new_privs` bit (DESIGN §1.4), and the TCP ports it listens on,
//! which the probes then aim at.
//!
//! This module only reads `/proc`; it must never signal or change the
//! process it inspects.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hive_proto::doctor::{DoctorCheck, Verdict};

/// The capability sets `/proc/<pid>/status` shows; every one must be empty.
pub const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// What `/proc/<pid>/status` says of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// Each of [`CAP_FIELDS`] present, with its mask.
    pub caps: Vec<(&'static str, u64)>,
    pub no_new_privs: Option<bool>,
}

/// Parses `/proc/<pid>/status`; fields it cannot read are left out (and
/// then reported as unknown), it never panics.
pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "Uid" {
            st.uids = value
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        } else if key == "NoNewPrivs" {
            st.no_new_privs = match value {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
        } else if let Some(field) = CAP_FIELDS.iter().find(|f| **f == key) {
            if let Ok(mask) = u64::from_str_radix(value, 16) {
                st.caps.push((field, mask));
            }
        }
    }
    st
}

/// The three lines for the gateway process `pid`: its uid (all four equal,
/// not root, and `want_uid` when the config names the gateway's user), its
/// capability sets (all empty) and `no_new_privs` (set).
pub fn check_status(pid: i32, st: &ProcStatus, want_uid: Option<(u32, &str)>) -> Vec<DoctorCheck> {
    let subject = |what: &str| format!("gateway hive-web (pid {pid}) {what}");
    let mut out = Vec::new();

    let uid_fix = "run hive-web as its own unprivileged user (User= in hive-web.service, or hive-web --user NAME when started as root)";
    let verdict = match (st.uids.as_slice(), want_uid) {
        ([r, e, s, f], _) if !(r == e && e == s && s == f) => Verdict::Wrong {
            what: format!("its uids differ (real {r}, effective {e}, saved {s}, fs {f})"),
            fix: uid_fix.into(),
        },
        ([0, ..], _) => Verdict::Wrong {
            what: "it runs as root".into(),
            fix: uid_fix.into(),
        },
        ([u, _, _, _], Some((want, name))) if *u != want => Verdict::Wrong {
            what: format!("it runs as uid {u}, not web_user {name} (uid {want})"),
            fix: uid_fix.into(),
        },
        ([u, _, _, _], _) => Verdict::Ok {
            detail: match want_uid {
                Some((_, name)) => format!("uid {u} ({name}), not root"),
                None => format!("uid {u}, not root"),
            },
        },
        _ => Verdict::Wrong {
            what: "its uids cannot be read from /proc".into(),
            fix: "check that /proc is mounted and that hive-web is still running".into(),
        },
    };
    out.push(DoctorCheck {
        subject: subject("uid"),
        verdict,
    });

    let held: Vec<String> = st
        .caps
        .iter()
        .filter(|(_, mask)| *mask != 0)
        .map(|(f, mask)| format!("{f}={mask:016x}"))
        .collect();
    let verdict = if st.caps.len() < CAP_FIELDS.len() {
        Verdict::Wrong {
            what: "its capability sets cannot be read from /proc".into(),
            fix: "check that /proc is mounted and that hive-web is still running".into(),
        }
    } else if held.is_empty() {
        Verdict::Ok {
            detail: "every capability set empty (CapInh CapPrm CapEff CapBnd CapAmb)".into(),
        }
    } else {
        Verdict::Wrong {
            what: format!("it holds capabilities: {}", held.join(" ")),
            fix: "start hive-web with an empty CapabilityBoundingSet= and AmbientCapabilities= (the NixOS module does); started as root it clears every set itself".into(),
        }
    };
    out.push(DoctorCheck {
        subject: subject("capabilities"),
        verdict,
    });

    let verdict = match st.no_new_privs {
        Some(true) => Verdict::Ok {
            detail: "set".into(),
        },
        Some(false) => Verdict::Wrong {
            what: "no_new_privs is not set".into(),
            fix: "run a hive-web that sets it (every release does) with NoNewPrivileges=true"
                .into(),
        },
        None => Verdict::Wrong {
            what: "no_new_privs cannot be read from /proc".into(),
            fix: "check that /proc is mounted and that hive-web is still running".into(),
        },
    };
    out.push(DoctorCheck {
        subject: subject("no_new_privs"),
        verdict,
    });
    out
}

/// The socket inodes among `/proc/<pid>/fd`'s link targets (`socket:[N]`).
pub fn socket_inodes<'a>(links: impl IntoIterator<Item = &'a str>) -> BTreeSet<u64> {
    links
        .into_iter()
        .filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// The listening sockets in a `/proc/<pid>/net/tcp` or `tcp6` table whose
/// inode is in `inodes`. Lines it cannot read are skipped.
pub fn listening(table: &str, inodes: &BTreeSet<u64>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
        let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
        else {
            continue;
        };
        // 0A is TCP_LISTEN.
        if *state != "0A" || !inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
            continue;
        }
        if let Some(addr) = parse_hex_addr(local) {
            out.push(addr);
        }
    }
    out
}

/// `0100007F:46A3` (IPv4) or 32 hex digits and a port (IPv6): the address
/// as the kernel prints it, each 32-bit word as a number in host byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let h = addr.get(i * 8..i * 8 + 8)?;
        u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Reads what the checks need of `pid` from `/proc`: its status text and
/// its listening TCP sockets.
pub fn read_proc(pid: i32) -> std::io::Result<(String, Vec<SocketAddr>)> {
    let base = std::path::PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(base.join("status"))?;
    let mut links = Vec::new();
    for entry in std::fs::read_dir(base.join("fd"))? {
        // A descriptor closed while we list is not an error.
        if let Ok(target) = std::fs::read_link(entry?.path()) {
            links.push(target.to_string_lossy().into_owned());
        }
    }
    let inodes = socket_inodes(links.iter().map(String::as_str));
    let mut listen = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(base.join(table)) {
            listen.extend(listening(&text, &inodes));
        }
    }
    listen.sort();
    listen.dedup();
    Ok((status, listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPPED: &str =
        "Name:\thive-web\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";

    fn words(checks: &[DoctorCheck]) -> Vec<&'static str> {
        checks.iter().map(|c| c.verdict.word()).collect()
    }

    #[test]
    fn a_dropped_gateway_is_ok_on_every_line() {
        let st = parse_status(DROPPED);
        let checks = check_status(7, &st, Some((65534, "nobody")));
        assert_eq!(words(&checks), ["ok", "ok", "ok"], "{checks:?}");
        assert_eq!(checks[0].subject, "gateway hive-web (pid 7) uid");
    }

    #[test]
    fn root_capabilities_and_a_missing_no_new_privs_are_each_reported() {
        let st = parse_status(
            &DROPPED
                .replace("65534\t65534\t65534\t65534\nGid", "0\t0\t0\t0\nGid")
                .replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff")
                .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0"),
        );
        let checks = check_status(7, &st, None);
        assert_eq!(words(&checks), ["WRONG", "WRONG", "WRONG"]);
        let Verdict::Wrong { what, .. } = &checks[1].verdict else {
            unreachable!()
        };
        assert_eq!(what, "it holds capabilities: CapBnd=000001ffffffffff");
        // Another uid than the configured gateway user's.
        let checks = check_status(7, &parse_status(DROPPED), Some((1000, "hive-web")));
        assert_eq!(checks[0].verdict.word(), "WRONG");
        // Nothing readable: wrong, not ok, and no panic.
        assert_eq!(
            words(&check_status(7, &parse_status("junk\n\u{0}"), None)),
            ["WRONG", "WRONG", "WRONG"]
        );
    }

    #[test]
    fn listening_sockets_of_the_process_are_found_in_both_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:46A3 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534 0 4242 1 0 100 0 0 10 0\n\
           1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534 0 999 1 0 100 0 0 10 0\n\
           2: 0100007F:46A3 0200007F:C350 01 00000000:00000000 00:00000000 00000000 65534 0 4243 1 0 100 0 0 10 0\n";
        let tcp6 = "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode\n\
           0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4244 1 0 100 0 0 10 0\n";
        let inodes = socket_inodes([
            "socket:[4242]",
            "/dev/null",
            "socket:[4243]",
            "socket:[4244]",
            "pipe:[1]",
        ]);
        assert_eq!(
            listening(tcp, &inodes),
            ["127.0.0.1:18083".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            listening(tcp6, &inodes),
            ["[::1]:80".parse::<SocketAddr>().unwrap()]
        );
        assert!(listening("header\n0: zz:zz 0 0A", &inodes).is_empty());
    }

    #[test]
    fn this_process_listening_on_a_port_is_found_through_proc() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_, listen) = read_proc(std::process::id() as i32).unwrap();
        assert!(listen.contains(&l.local_addr().unwrap()), "{listen:?}");
    }
}
