//! Prometheus text for `/metrics`, rendered by hand: requests by route and
//! status, request latency, core round trips by verb and outcome with their
//! latency, and the number of SSE followers.
//!
//! Labels are only route *templates* (`/agent/{name}/`), verbs and status
//! codes — never an agent name, a path or anything an agent wrote — so the
//! label set stays small and the page reveals nothing about the hive. That
//! is why `/metrics` needs no login (see `docs/web.md`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

#[derive(Clone, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {}",
                self.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", self.count);
    }
}

#[derive(Default)]
struct Tables {
    requests: BTreeMap<(String, u16), u64>,
    request_latency: BTreeMap<String, Histogram>,
    core_calls: BTreeMap<(&'static str, &'static str), u64>,
    core_latency: BTreeMap<&'static str, Histogram>,
    coalesced: BTreeMap<&'static str, u64>,
}

/// Every counter the gateway keeps.
pub struct Metrics {
    tables: Mutex<Tables>,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            started: Instant::now(),
        }
    }

    /// Counts one answered HTTP request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let mut t = self.lock();
        *t.requests.entry((route.to_owned(), status)).or_default() += 1;
        t.request_latency
            .entry(route.to_owned())
            .or_default()
            .observe(took);
    }

    /// Counts one round trip to the core. `outcome` is `ok`, `refused`,
    /// `unreachable`, `timeout` or `unexpected`.
    pub fn core_call(&self, verb: &'static str, outcome: &'static str, took: Duration) {
        let mut t = self.lock();
        *t.core_calls.entry((verb, outcome)).or_default() += 1;
        t.core_latency.entry(verb).or_default().observe(took);
    }

    /// Counts one read that rode on a round another request opened.
    pub fn coalesced(&self, verb: &'static str) {
        *self.lock().coalesced.entry(verb).or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, sse_clients: usize, sessions: usize, core_up: bool) -> String {
        let t = self.lock();
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP hive_web_requests_total HTTP requests answered, by route template and status.\n# TYPE hive_web_requests_total counter\n");
        for ((route, status), n) in &t.requests {
            let _ = writeln!(
                out,
                "hive_web_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP hive_web_request_duration_seconds Time to answer a request (to the response head for SSE).\n# TYPE hive_web_request_duration_seconds histogram\n");
        for (route, h) in &t.request_latency {
            h.render(
                &mut out,
                "hive_web_request_duration_seconds",
                "route",
                route,
            );
        }
        out.push_str("# HELP hive_web_core_calls_total Round trips to the core over web.sock, by verb and outcome.\n# TYPE hive_web_core_calls_total counter\n");
        for ((verb, outcome), n) in &t.core_calls {
            let _ = writeln!(
                out,
                "hive_web_core_calls_total{{verb=\"{verb}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP hive_web_core_call_duration_seconds Round-trip time to the core, by verb.\n# TYPE hive_web_core_call_duration_seconds histogram\n");
        for (verb, h) in &t.core_latency {
            h.render(
                &mut out,
                "hive_web_core_call_duration_seconds",
                "verb",
                verb,
            );
        }
        out.push_str("# HELP hive_web_core_reads_coalesced_total Reads answered by a round another request opened (no call of their own).\n# TYPE hive_web_core_reads_coalesced_total counter\n");
        for (verb, n) in &t.coalesced {
            let _ = writeln!(
                out,
                "hive_web_core_reads_coalesced_total{{verb=\"{verb}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP hive_web_sse_clients Browsers following /api/events now.\n# TYPE hive_web_sse_clients gauge\nhive_web_sse_clients {sse_clients}");
        let _ = writeln!(out, "# HELP hive_web_sessions Live browser sessions.\n# TYPE hive_web_sessions gauge\nhive_web_sessions {sessions}");
        let _ = writeln!(out, "# HELP hive_web_core_up Whether the call connection to the core is up.\n# TYPE hive_web_core_up gauge\nhive_web_core_up {}", u8::from(core_up));
        let _ = writeln!(out, "# HELP hive_web_uptime_seconds Seconds since the gateway started.\n# TYPE hive_web_uptime_seconds gauge\nhive_web_uptime_seconds {}", self.started.elapsed().as_secs());
        out
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Counters only ever grow by whole steps; a poisoned lock holds
        // consistent numbers.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Middleware: counts every request by its route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.request(
        route.as_deref().unwrap_or(UNMATCHED),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new();
        m.request("/", 200, Duration::from_millis(3));
        m.request("/", 200, Duration::from_millis(30));
        m.core_call("list_agents", "ok", Duration::from_micros(400));
        let text = m.render(2, 1, true);
        assert!(text.contains("hive_web_requests_total{route=\"/\",status=\"200\"} 2"));
        assert!(
            text.contains("hive_web_request_duration_seconds_bucket{route=\"/\",le=\"0.005\"} 1")
        );
        assert!(
            text.contains("hive_web_request_duration_seconds_bucket{route=\"/\",le=\"0.05\"} 2")
        );
        assert!(text.contains("hive_web_request_duration_seconds_count{route=\"/\"} 2"));
        assert!(text.contains("hive_web_core_calls_total{verb=\"list_agents\",outcome=\"ok\"} 1"));
        assert!(text.contains("hive_web_sse_clients 2"));
        assert!(text.contains("hive_web_core_up 1"));
    }
}
