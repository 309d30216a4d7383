//! Exponential backoff for `POST /login`, per client address.
//!
//! After a wrong token from an address, that address may not try again
//! until its backoff window has passed: [`LOGIN_BACKOFF_FIRST`] after the
//! first failure, doubling with each further one up to
//! [`LOGIN_BACKOFF_MAX`]. An attempt inside the window is refused before
//! the token is even looked at, and the refusal is logged once per window,
//! not once per request. A correct token clears the address.
//!
//! The table is bounded ([`LOGIN_LIMIT_ADDRESSES`]): when it is full,
//! entries whose window has passed go first, then the oldest.
//!
//! This module must never see a token: it is told only "failed" or
//! "succeeded" for an address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The window after the first wrong token.
pub const LOGIN_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest window, however many wrong tokens came before.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Most addresses remembered at once.
pub const LOGIN_LIMIT_ADDRESSES: usize = 4096;

/// Whether an address may try a token now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Refused for `retry_after` more; `log` is true for the first refusal
    /// of this window only.
    Closed {
        retry_after: Duration,
        log: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    until: Instant,
    refusal_logged: bool,
}

/// Every address with recent wrong tokens.
#[derive(Default)]
pub struct LoginLimiter {
    map: Mutex<HashMap<IpAddr, Entry>>,
}

/// The window after `failures` wrong tokens in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    LOGIN_BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(LOGIN_BACKOFF_MAX)
}

impl LoginLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// May `ip` try a token at `now`?
    pub fn check(&self, ip: IpAddr, now: Instant) -> Gate {
        let mut map = self.lock();
        let Some(e) = map.get_mut(&ip) else {
            return Gate::Open;
        };
        if now >= e.until {
            return Gate::Open;
        }
        let log = !e.refusal_logged;
        e.refusal_logged = true;
        Gate::Closed {
            retry_after: e.until - now,
            log,
        }
    }

    /// `ip` presented a wrong token at `now`: its window starts, one step
    /// longer than the last. Returns the new window.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut map = self.lock();
        if !map.contains_key(&ip) && map.len() >= LOGIN_LIMIT_ADDRESSES {
            // A failure count older than the longest window has served its
            // purpose; past that, forget the address that has waited longest.
            map.retain(|_, e| now < e.until + LOGIN_BACKOFF_MAX);
            if map.len() >= LOGIN_LIMIT_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            until: now,
            refusal_logged: false,
        });
        // Quiet for the longest window after the last one ended: the count
        // starts over.
        if now >= e.until + LOGIN_BACKOFF_MAX {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        let window = backoff(e.failures);
        e.until = now + window;
        e.refusal_logged = false;
        window
    }

    /// `ip` logged in: its count is cleared.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // Every operation leaves each entry whole, so a panic elsewhere
        // cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_window_doubles_up_to_its_cap() {
        let w: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(w, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), LOGIN_BACKOFF_MAX);
    }

    #[test]
    fn a_refusal_is_logged_once_per_window_and_only_for_that_address() {
        let limiter = LoginLimiter::new();
        let t0 = Instant::now();
        assert_eq!(limiter.check(A, t0), Gate::Open);
        assert_eq!(limiter.failed(A, t0), Duration::from_secs(1));
        let during = t0 + Duration::from_millis(500);
        assert_eq!(
            limiter.check(A, during),
            Gate::Closed {
                retry_after: Duration::from_millis(500),
                log: true
            }
        );
        for _ in 0..100 {
            assert!(matches!(
                limiter.check(A, during),
                Gate::Closed { log: false, .. }
            ));
        }
        assert_eq!(limiter.check(B, during), Gate::Open, "B is not A");
        // After the window A may try again; a second failure doubles it and
        // its first refusal is logged again.
        let after = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check(A, after), Gate::Open);
        assert_eq!(limiter.failed(A, after), Duration::from_secs(2));
        assert!(matches!(
            limiter.check(A, after + Duration::from_secs(1)),
            Gate::Closed { log: true, .. }
        ));
        limiter.succeeded(A);
        assert_eq!(limiter.check(A, after), Gate::Open);
    }

    #[test]
    fn the_table_is_bounded() {
        let limiter = LoginLimiter::new();
        let t0 = Instant::now();
        for i in 0..(LOGIN_LIMIT_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(limiter.len(), LOGIN_LIMIT_ADDRESSES);
    }
}
