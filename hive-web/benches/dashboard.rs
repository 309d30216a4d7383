//! Benchmark (not a test): `GET /` with 200 agents under 50 concurrent
//! clients, through the real gateway and the real core.
//!
//! Run: `cargo bench -p hive-web --bench dashboard` (release build). It
//! starts `hive-core dev --no-demo --no-web` with 200 agents, gives each a
//! status over its own socket, starts the release `hive-web` (as `nobody`
//! when root), logs in, and drives `wrk -t2 -c50 -d20s --latency` with the
//! session cookie. The figures, the command and the machine go into the
//! "hive-web" section of `docs/perf.md` (only that section is rewritten).
//!
//! Knobs: `HIVE_BENCH_AGENTS` (200), `HIVE_BENCH_CONNECTIONS` (50),
//! `HIVE_BENCH_SECONDS` (20), `HIVE_BENCH_NO_WRITE=1` to only print.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hive_proto::client::agent::AgentClient;

use common::dev::{DevHive, DevOpts, Gateway};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What wrk reported.
#[derive(Debug, Default)]
struct WrkResult {
    requests_per_sec: f64,
    p50: String,
    p90: String,
    p99: String,
    requests: u64,
    non_2xx: u64,
    errors: String,
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50 = v.trim().to_owned();
        } else if let Some(v) = t.strip_prefix("90%") {
            r.p90 = v.trim().to_owned();
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99 = v.trim().to_owned();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            r.errors = t.to_owned();
        } else if t.contains("requests in") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

/// wrk prints latencies as `1.23ms`, `456.00us` or `1.02s`.
fn to_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * scale
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// Replaces the `## hive-web` section of `path` (to the next `## ` heading)
/// or appends it.
fn write_section(path: &Path, section: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Performance\n".into());
    let start = old
        .find("\n## hive-web\n")
        .map(|i| i + 1)
        .or_else(|| old.starts_with("## hive-web\n").then_some(0));
    let new = match start {
        Some(s) => {
            let rest = &old[s + 1..];
            let end = rest
                .find("\n## ")
                .map(|i| s + 1 + i + 1)
                .unwrap_or(old.len());
            // A blank line before the next heading, as markdown wants.
            let gap = if end < old.len() { "\n" } else { "" };
            format!("{}{}{gap}{}", &old[..s], section, &old[end..])
        }
        None => format!(
            "{}\n{}",
            old.trim_end_matches('\n').to_owned() + "\n",
            section
        ),
    };
    std::fs::write(path, new).unwrap();
}

#[tokio::main]
async fn main() {
    let agents = env_num("HIVE_BENCH_AGENTS", 200);
    let conns = env_num("HIVE_BENCH_CONNECTIONS", 50);
    let seconds = env_num("HIVE_BENCH_SECONDS", 20);
    assert!(common::have_tool("wrk"), "the benchmark needs wrk on PATH");

    let names: Vec<String> = (1..=agents).map(|i| format!("agent-{i:03}")).collect();
    let hive = DevHive::start(DevOpts {
        agents: Some(names.join(",")),
        no_demo: true,
        no_web: true,
        ..DevOpts::default()
    });
    assert!(
        hive.wait_for_socket(Duration::from_secs(120)),
        "the core did not start:\n{}",
        hive.log()
    );
    // Every agent has a status, as on a busy hive.
    for (i, n) in names.iter().enumerate() {
        let c = AgentClient::connect(hive.agent_sock(n)).await.unwrap();
        c.status(format!(
            "working on task {i}: reading, planning, writing the report"
        ))
        .await
        .unwrap();
    }
    let web = Gateway::start(&hive, &[]);
    web.wait_serving(Duration::from_secs(60)).await;
    let http = web.http();
    common::poll(Duration::from_secs(60), Duration::from_millis(50), || {
        let http = http.clone();
        async move { (http.get("/readyz", &[]).await.ok()?.status == 200).then_some(()) }
    })
    .await
    .expect("the gateway became ready");
    let cookie = http.login(&hive.token()).await.unwrap();
    let page = http.get("/", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("data-agent=").count() as u64,
        agents,
        "the page lists every agent; gateway log:\n{}\ncore log:\n{}",
        web.log(),
        hive.log()
    );
    let page_bytes = page.body.len();
    // Warm up (connections, caches), then measure.
    let url = format!("{}/", http.base);
    let header = format!("Cookie: {cookie}");
    let _ = Command::new("wrk")
        .args(["-t2", "-c10", "-d2s", "-H", &header, &url])
        .output();
    let args = [
        "-t2".to_owned(),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        "-H".to_owned(),
        header.clone(),
        url.clone(),
    ];
    let out = Command::new("wrk").args(&args).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let r = parse_wrk(&text);
    assert!(r.requests > 0, "wrk made no request: {text}");

    // The gateway's own view: mean core round trip per page.
    let metrics = http.get("/metrics", &[]).await.unwrap().body;
    let mean = |metric: &str, label: &str| -> Option<f64> {
        let find = |suffix: &str| -> Option<f64> {
            let key = format!("{metric}_{suffix}{{{label}}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(find("sum")? / find("count")? * 1000.0)
    };
    let core_list = mean(
        "hive_web_core_call_duration_seconds",
        "verb=\"list_agents\"",
    );
    let page_mean = mean("hive_web_request_duration_seconds", "route=\"/\"");
    let counter = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let pages_served = counter("hive_web_requests_total{route=\"/\",status=\"200\"}");
    let list_calls = counter("hive_web_core_calls_total{verb=\"list_agents\",");

    let p99_ms = to_ms(&r.p99);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let command = format!(
        "wrk {} -H 'Cookie: hive_session=…' {url}",
        args[..4].join(" ")
    );
    let section = format!(
        "## hive-web\n\n\
         `GET /` (the dashboard) with {agents} agents, each with a status line, through the\n\
         release `hive-web` and the real core (`hive-core dev --no-demo --no-web`, store on\n\
         disk; every page reads `ListAgents`, `Questions` and `Pending` over `web.sock`,\n\
         concurrent identical reads collapsed into rounds),\n\
         under {conns} concurrent keep-alive clients for {seconds} s. Load generator, gateway\n\
         and core share the machine.\n\n\
         | figure | value | target |\n| --- | --- | --- |\n\
         | pages/s | {rps:.0} | ≥ 2,000 ({rps_ok}) |\n\
         | p50 latency | {p50} | |\n\
         | p90 latency | {p90} | |\n\
         | p99 latency | {p99} | < 20 ms ({p99_ok}) |\n\
         | requests | {requests} ({non2xx} not 2xx) | |\n\
         | page size | {page_bytes} bytes | |\n\
         | mean `/` time inside the gateway | {page_mean} | |\n\
         | mean `ListAgents` round trip | {core_list} | |\n\
         | `ListAgents` calls sent per page | {per_page} | |\n\n\
         Machine: {machine}.\n\n\
         Reproduce: `cargo bench -p hive-web --bench dashboard` (it builds the release\n\
         binaries, starts the hive, logs in and runs\n\
         `{command}`; knobs `HIVE_BENCH_AGENTS`, `HIVE_BENCH_CONNECTIONS`,\n\
         `HIVE_BENCH_SECONDS`).{errors}\n",
        rps = r.requests_per_sec,
        rps_ok = verdict(r.requests_per_sec >= 2000.0),
        p50 = r.p50,
        p90 = r.p90,
        p99 = r.p99,
        p99_ok = verdict(p99_ms < 20.0),
        requests = r.requests,
        non2xx = r.non_2xx,
        page_mean = page_mean
            .map(|v| format!("{v:.2} ms"))
            .unwrap_or_else(|| "n/a".into()),
        core_list = core_list
            .map(|v| format!("{v:.2} ms"))
            .unwrap_or_else(|| "n/a".into()),
        per_page = if pages_served > 0.0 {
            format!(
                "{:.3} ({list_calls:.0} calls for {pages_served:.0} pages)",
                list_calls / pages_served
            )
        } else {
            "n/a".into()
        },
        machine = machine(),
        errors = if r.errors.is_empty() {
            String::new()
        } else {
            format!(" wrk: {}.", r.errors)
        },
    );
    println!("{section}");
    if std::env::var("HIVE_BENCH_NO_WRITE").is_err() {
        let perf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/perf.md");
        write_section(&perf, &section);
        println!("wrote the hive-web section of {}", perf.display());
    }
    drop(web);
    drop(hive);
}
