//! The per-agent quotas that live in memory: how fast an agent may `send`
//! (`send_rate`, `send_burst`: a token bucket per agent, a message to `*`
//! costing one token per recipient) and how many status updates per second
//! are written and announced (`status_rate`: above it the newest status
//! waits for the next token and the ones it replaced are never written, so
//! the audit log and the dashboard's event stream see at most
//! `status_rate` status changes per agent per second, and always the last).
//!
//! What is *stored* for an agent (`max_unacked`, `max_unacked_bytes`) is
//! checked inside the send's write job against the store writer's own
//! count (`store::usage`, kept in memory beside the transaction), so the
//! check and the insert commit together.
//!
//! This module owns the meters and nothing else: it never touches the store
//! (the caller writes what it admits) and never refuses anything that is
//! not over a configured quota. Meters are per agent, so one agent spending
//! its quota never slows another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hive_proto::view::ErrorCode;
use hive_proto::AgentName;
use tokio::time::Instant;

use super::Refusal;
use crate::config::Quotas;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `n` tokens if there are that many (`n` is capped at the
    /// bucket's size, so any request can pass once the bucket is full).
    pub fn try_take(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        let n = f64::from(n).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until `n` tokens (capped as in [`Self::try_take`]) are there.
    pub fn wait_for(&mut self, n: u32, now: Instant) -> Duration {
        self.refill(now);
        let missing = f64::from(n).min(self.burst) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

/// What [`Meters::status`] decided for one status update.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusAdmit {
    /// Within the rate: write it now.
    WriteNow,
    /// Over the rate: it is kept as the newest pending status (replacing
    /// any older pending one). `start_flush` is true for the first one
    /// pending, whose caller starts the task that writes it later.
    Coalesced { start_flush: bool },
}

/// What the flush task should do next for one agent.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusFlush {
    /// Write this status (the newest one pending) now.
    Write(String),
    /// Nothing can be written yet; ask again after this long.
    Wait(Duration),
    /// Nothing is pending any more: the task ends.
    Done,
}

/// One agent's meters.
#[derive(Debug)]
struct AgentMeter {
    send: TokenBucket,
    status: TokenBucket,
    /// The newest status over the rate, not yet written.
    pending_status: Option<String>,
    /// A flush task is running for `pending_status`.
    flushing: bool,
}

impl AgentMeter {
    fn new(q: &Quotas, now: Instant) -> Self {
        Self {
            send: TokenBucket::new(q.send_rate, q.send_burst, now),
            status: TokenBucket::new(q.status_rate, q.status_rate, now),
            pending_status: None,
            flushing: false,
        }
    }
}

/// Every agent's meters, created on first use from its quotas.
#[derive(Debug, Default)]
pub struct Meters {
    agents: Mutex<HashMap<AgentName, AgentMeter>>,
}

impl Meters {
    fn with<T>(&self, agent: &AgentName, q: &Quotas, f: impl FnOnce(&mut AgentMeter) -> T) -> T {
        let now = Instant::now();
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let meter = agents
            .entry(agent.clone())
            .or_insert_with(|| AgentMeter::new(q, now));
        f(meter)
    }

    /// Takes `recipients` send tokens for `agent`, or refuses the whole
    /// send with `quota_exceeded` naming `send_rate`.
    pub fn send(&self, agent: &AgentName, q: &Quotas, recipients: u32) -> Result<(), Refusal> {
        let now = Instant::now();
        self.with(agent, q, |m| {
            if m.send.try_take(recipients, now) {
                return Ok(());
            }
            let wait = m.send.wait_for(recipients, now);
            Err(Refusal::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "send_rate: you may send {} messages per second (bursts of {}; a send to * \
                     counts once per recipient); this send of {recipients} was refused, nothing \
                     was stored; retry in {} ms",
                    q.send_rate,
                    q.send_burst,
                    wait.as_millis().max(1)
                ),
            ))
        })
    }

    /// Decides whether `text` is written now or coalesced.
    pub fn status(&self, agent: &AgentName, q: &Quotas, text: String) -> StatusAdmit {
        let now = Instant::now();
        self.with(agent, q, |m| {
            // While one is pending, every newer one replaces it, so the
            // order of what is written is the order of arrival.
            if m.pending_status.is_none() && m.status.try_take(1, now) {
                return StatusAdmit::WriteNow;
            }
            m.pending_status = Some(text);
            let start_flush = !m.flushing;
            m.flushing = true;
            StatusAdmit::Coalesced { start_flush }
        })
    }

    /// For the flush task: the pending status once a token is there.
    pub fn status_flush(&self, agent: &AgentName, q: &Quotas) -> StatusFlush {
        let now = Instant::now();
        self.with(agent, q, |m| {
            if m.pending_status.is_none() {
                m.flushing = false;
                return StatusFlush::Done;
            }
            if m.status.try_take(1, now) {
                return StatusFlush::Write(m.pending_status.take().unwrap_or_default());
            }
            StatusFlush::Wait(m.status.wait_for(1, now))
        })
    }

    /// Every pending status, taken (at clean shutdown, to be written
    /// regardless of the rate: the last status is never dropped).
    pub fn take_pending_statuses(&self) -> Vec<(AgentName, String)> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents
            .iter_mut()
            .filter_map(|(a, m)| m.pending_status.take().map(|t| (a.clone(), t)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(send_rate: u32, send_burst: u32, status_rate: u32) -> Quotas {
        Quotas {
            send_rate,
            send_burst,
            status_rate,
            ..Quotas::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_at_its_rate_and_never_past_its_burst() {
        let mut b = TokenBucket::new(10, 5, Instant::now());
        for _ in 0..5 {
            assert!(b.try_take(1, Instant::now()));
        }
        assert!(!b.try_take(1, Instant::now()));
        assert_eq!(b.wait_for(1, Instant::now()), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_take(1, Instant::now()));
        tokio::time::advance(Duration::from_secs(60)).await;
        // Refilled to the burst, not to 600.
        assert!(b.try_take(5, Instant::now()));
        assert!(!b.try_take(1, Instant::now()));
        // More than the burst at once passes when the bucket is full.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_take(50, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn one_agent_spending_its_send_rate_leaves_another_untouched() {
        let m = Meters::default();
        let q = quotas(10, 3, 2);
        let (a, b) = (AgentName::new("a").unwrap(), AgentName::new("b").unwrap());
        assert!(m.send(&a, &q, 3).is_ok());
        let refused = m.send(&a, &q, 1).unwrap_err();
        assert_eq!(refused.code, ErrorCode::QuotaExceeded);
        assert!(
            refused.message.starts_with("send_rate:"),
            "{}",
            refused.message
        );
        assert!(m.send(&b, &q, 3).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_over_the_rate_coalesce_to_the_newest() {
        let m = Meters::default();
        let q = quotas(10, 10, 2);
        let a = AgentName::new("a").unwrap();
        assert_eq!(m.status(&a, &q, "1".into()), StatusAdmit::WriteNow);
        assert_eq!(m.status(&a, &q, "2".into()), StatusAdmit::WriteNow);
        assert_eq!(
            m.status(&a, &q, "3".into()),
            StatusAdmit::Coalesced { start_flush: true }
        );
        assert_eq!(
            m.status(&a, &q, "4".into()),
            StatusAdmit::Coalesced { start_flush: false }
        );
        assert!(matches!(m.status_flush(&a, &q), StatusFlush::Wait(_)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(m.status_flush(&a, &q), StatusFlush::Write("4".into()));
        // Once a flush runs, newer ones queue behind it rather than jump it.
        assert_eq!(
            m.status(&a, &q, "5".into()),
            StatusAdmit::Coalesced { start_flush: false }
        );
        assert_eq!(m.take_pending_statuses(), vec![(a.clone(), "5".into())]);
        assert_eq!(m.status_flush(&a, &q), StatusFlush::Done);
    }
}
