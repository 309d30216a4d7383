//! The wire shape of `hivectl doctor` (`AdminRequest::Doctor`): the core
//! checks the live host — socket modes and owners, the gateway's
//! credentials, the hive's nftables table, and probes run inside each
//! running agent's network namespace — and answers with one
//! [`DoctorCheck`] per line. `hivectl` only renders it.
//!
//! This module is types only: it never runs a check and never does I/O.

use serde::{Deserialize, Serialize};

/// Everything one `Doctor` call found, in the order it was checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<DoctorCheck>,
}

impl DoctorReport {
    /// Whether every check is [`Verdict::Ok`] or [`Verdict::Blocked`]:
    /// `hivectl doctor` exits 0 exactly then.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.verdict.is_good())
    }

    /// How many checks are not good.
    pub fn problems(&self) -> usize {
        self.checks.iter().filter(|c| !c.verdict.is_good()).count()
    }
}

/// One line of the report: what was checked and what was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// What was checked, e.g. `admin.sock /run/hyperhive/admin.sock` or
    /// `probe alice -> 10.213.0.1:8080 (host address, gateway port)`.
    pub subject: String,
    pub verdict: Verdict,
}

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// As it should be; `detail` says what was seen (e.g. `0660 root:hive-admin`).
    Ok { detail: String },
    /// Not as it should be: what is wrong and how to fix it, one sentence each.
    Wrong { what: String, fix: String },
    /// A probe from inside an agent's network namespace got no connection:
    /// `how` says what happened (no answer, unreachable, refused locally).
    Blocked { how: String },
    /// A probe reached its target when it should not have: `how` says what
    /// came back (a connection, or a refusal from the far end, which means
    /// the packet got there).
    Open { how: String },
}

impl Verdict {
    /// `Ok` and `Blocked` are good; `Wrong` and `Open` are problems.
    pub fn is_good(&self) -> bool {
        matches!(self, Verdict::Ok { .. } | Verdict::Blocked { .. })
    }

    /// The word a report line starts with.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Ok { .. } => "ok",
            Verdict::Wrong { .. } => "WRONG",
            Verdict::Blocked { .. } => "blocked",
            Verdict::Open { .. } => "OPEN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(verdict: Verdict) -> DoctorCheck {
        DoctorCheck {
            subject: "x".into(),
            verdict,
        }
    }

    #[test]
    fn a_report_is_healthy_only_when_every_line_is_ok_or_blocked() {
        let good = DoctorReport {
            checks: vec![
                check(Verdict::Ok { detail: "d".into() }),
                check(Verdict::Blocked { how: "h".into() }),
            ],
        };
        assert!(good.healthy());
        assert_eq!(good.problems(), 0);
        for bad in [
            Verdict::Open { how: "h".into() },
            Verdict::Wrong {
                what: "w".into(),
                fix: "f".into(),
            },
        ] {
            let mut r = good.clone();
            r.checks.push(check(bad));
            assert!(!r.healthy());
            assert_eq!(r.problems(), 1);
        }
    }
}
