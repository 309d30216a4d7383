//! The daemon's configuration: a TOML file parsed into [`RawConfig`] (what
//! the file says) and then validated into [`Config`] (what the rest of the
//! daemon trusts), ripgrep-style. Nothing outside this module reads the raw
//! form; nothing inside it opens sockets or the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hive_proto::AgentName;
use serde::Deserialize;

use crate::Error;

/// Default cap on pending reminders per agent.
pub const DEFAULT_MAX_REMINDERS: u32 = 64;
/// Default cap on questions one agent has open at once.
pub const DEFAULT_MAX_OPEN_QUESTIONS: u32 = 64;
/// Events kept by default; older ones are pruned.
pub const DEFAULT_EVENT_RETENTION: u64 = 100_000;
/// Fewest events a hive may be set to keep: a subscriber that reconnects
/// after a short outage should find what it missed, not a reload.
pub const MIN_EVENT_RETENTION: u64 = 1_000;
/// Default cap on simultaneous connections per agent socket.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;
/// Days an acknowledged message to an agent is kept by default.
pub const DEFAULT_MESSAGE_RETENTION_DAYS: u64 = 30;
/// Days an acknowledged message in the operator's mailbox is kept by default.
pub const DEFAULT_OPERATOR_MESSAGE_RETENTION_DAYS: u64 = 365;
/// Longest retention a config may set (0 means forever).
pub const MAX_RETENTION_DAYS: u64 = 100 * 365;
/// Default cap on unacknowledged messages stored for one agent.
pub const DEFAULT_MAX_UNACKED: u64 = 10_000;
/// Default cap on the bytes of body of the unacknowledged messages stored
/// for one agent: 64 MiB.
pub const DEFAULT_MAX_UNACKED_BYTES: u64 = 64 << 20;
/// Default messages per second an agent may send (a message to `*` counts
/// once per recipient), refilled continuously.
pub const DEFAULT_SEND_RATE: u32 = 100;
/// Default burst: messages an idle agent may send at once.
pub const DEFAULT_SEND_BURST: u32 = 1_000;
/// Default status updates per second written and announced per agent;
/// above it the newest one wins.
pub const DEFAULT_STATUS_RATE: u32 = 2;
/// Highest `status_rate`: the dashboard sees at most this many status
/// events per agent per second.
pub const MAX_STATUS_RATE: u32 = 10;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    /// Group whose members may use `admin.sock` (root always may).
    pub admin_group: Option<String>,
    /// User that `hive-web` runs as; the only non-root uid `web.sock` accepts.
    pub web_user: Option<String>,
    pub runtime: Option<String>,
    /// Let the `process` runtime run agents without bubblewrap when it is
    /// missing or broken (default false: they do not start).
    pub allow_unsandboxed: Option<bool>,
    /// Events kept for reconnecting subscribers (default
    /// [`DEFAULT_EVENT_RETENTION`], at least [`MIN_EVENT_RETENTION`]).
    pub event_retention: Option<u64>,
    /// `[network]`: agent addressing and the hive's nftables table.
    pub network: Option<RawNetwork>,
    /// How the supervisor restarts agents whose policy is `on-failure`.
    pub restart: Option<RawRestart>,
    /// Seconds between a stop's SIGTERM and its SIGKILL (default
    /// [`DEFAULT_STOP_TIMEOUT_S`]).
    pub stop_timeout: Option<u64>,
    /// Where container runtimes take each agent's uid range from.
    pub uid_pool: Option<RawUidPool>,
    /// `[nixos_container]`: the tools and conf dir of the `nixos-container`
    /// runtime.
    pub nixos_container: Option<RawNixosContainer>,
    /// Days acknowledged messages to agents are kept; 0 keeps them forever.
    pub message_retention_days: Option<u64>,
    /// Days acknowledged messages in the operator's mailbox are kept; 0
    /// keeps them forever.
    pub operator_message_retention_days: Option<u64>,
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgent>,
}

/// The `[network]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// IPv4 network the agents' `/30`s are cut from.
    pub pool4: Option<String>,
    /// IPv6 network the agents' `/64`s are cut from.
    pub pool6: Option<String>,
    /// The one private address an `egress = "allow"` agent may reach on
    /// port 53.
    pub resolver: Option<String>,
    /// The interface agent egress leaves through (masqueraded); without it,
    /// any interface that is not an agent's.
    pub uplink: Option<String>,
    /// Milliseconds between two reads of the table by the reconcile loop
    /// (default [`DEFAULT_RECONCILE_PERIOD_MS`], from
    /// [`MIN_RECONCILE_PERIOD_MS`] to [`MAX_RECONCILE_PERIOD_MS`]).
    pub reconcile_period_ms: Option<u64>,
    /// `ADDR:PORT` targets in private ranges that `hivectl doctor` probes
    /// from inside each running agent (a LAN host, a tailnet peer).
    pub doctor_targets: Option<Vec<String>>,
}

/// The `[nixos_container]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNixosContainer {
    /// The `nixos-container` program (a bare name is looked up on `PATH`).
    pub nixos_container: Option<PathBuf>,
    /// The `machinectl` program (a bare name is looked up on `PATH`).
    pub machinectl: Option<PathBuf>,
    /// Where `nixos-container` keeps `<container>.conf`.
    pub conf_dir: Option<PathBuf>,
}

/// The `nixos-container` runtime's tools, validated: each program a bare
/// name (looked up on `PATH` when run) or an absolute path; the conf dir
/// absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixosContainerConfig {
    pub nixos_container: PathBuf,
    pub machinectl: PathBuf,
    pub conf_dir: PathBuf,
}

/// Where NixOS (state version 22.05 and later) keeps imperative containers'
/// `<name>.conf`.
pub const DEFAULT_NIXOS_CONTAINER_CONF_DIR: &str = "/etc/nixos-containers";

impl Default for NixosContainerConfig {
    fn default() -> Self {
        Self {
            nixos_container: PathBuf::from("nixos-container"),
            machinectl: PathBuf::from("machinectl"),
            conf_dir: PathBuf::from(DEFAULT_NIXOS_CONTAINER_CONF_DIR),
        }
    }
}

/// `[restart]`: the backoff and the cap for `restart = "on-failure"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    /// Delay before the first restart, in ms; doubles with each restart in
    /// the window.
    pub backoff_ms: Option<u64>,
    /// Longest delay, in ms.
    pub backoff_max_ms: Option<u64>,
    /// Restarts allowed per window; one more crash leaves it `crashed`.
    pub max: Option<u32>,
    /// The window, in seconds.
    pub window_s: Option<u64>,
}

/// The supervisor's restart settings, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartSettings {
    pub backoff: std::time::Duration,
    pub backoff_max: std::time::Duration,
    pub max: u32,
    pub window: std::time::Duration,
}

/// Default first restart delay.
pub const DEFAULT_RESTART_BACKOFF_MS: u64 = 1_000;
/// Default longest restart delay.
pub const DEFAULT_RESTART_BACKOFF_MAX_MS: u64 = 60_000;
/// Default restarts per window.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Default restart window.
pub const DEFAULT_RESTART_WINDOW_S: u64 = 600;
/// Longest backoff or window accepted: one day.
pub const MAX_RESTART_SPAN_S: u64 = 24 * 3600;

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            backoff: std::time::Duration::from_millis(DEFAULT_RESTART_BACKOFF_MS),
            backoff_max: std::time::Duration::from_millis(DEFAULT_RESTART_BACKOFF_MAX_MS),
            max: DEFAULT_MAX_RESTARTS,
            window: std::time::Duration::from_secs(DEFAULT_RESTART_WINDOW_S),
        }
    }
}

fn validate_restart(raw: RawRestart) -> Result<RestartSettings, String> {
    let span = MAX_RESTART_SPAN_S * 1000;
    let backoff = raw.backoff_ms.unwrap_or(DEFAULT_RESTART_BACKOFF_MS);
    let backoff_max = raw
        .backoff_max_ms
        .unwrap_or(DEFAULT_RESTART_BACKOFF_MAX_MS.max(backoff));
    let window = raw.window_s.unwrap_or(DEFAULT_RESTART_WINDOW_S);
    if !(1..=span).contains(&backoff) {
        return Err(format!(
            "restart.backoff_ms is {backoff}; between 1 and {span}"
        ));
    }
    if backoff_max < backoff || backoff_max > span {
        return Err(format!(
            "restart.backoff_max_ms is {backoff_max}; between backoff_ms ({backoff}) and {span}"
        ));
    }
    if !(1..=MAX_RESTART_SPAN_S).contains(&window) {
        return Err(format!(
            "restart.window_s is {window}; between 1 and {MAX_RESTART_SPAN_S}"
        ));
    }
    let max = raw.max.unwrap_or(DEFAULT_MAX_RESTARTS);
    if max == 0 || max > 1000 {
        return Err(format!(
            "restart.max is {max}; between 1 and 1000 (restart = \"never\" turns restarts off)"
        ));
    }
    Ok(RestartSettings {
        backoff: std::time::Duration::from_millis(backoff),
        backoff_max: std::time::Duration::from_millis(backoff_max),
        max,
        window: std::time::Duration::from_secs(window),
    })
}

/// `[uid_pool] start = 1048576, count = 4096`: `count` ranges of
/// [`UID_RANGE_SIZE`] host uids from `start`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUidPool {
    pub start: Option<u64>,
    pub count: Option<u64>,
}

/// One `[agents.<name>]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Agent names, `operator`, or `*` (everyone). Default `["*"]`.
    pub allowed_recipients: Option<Vec<String>>,
    pub max_reminders: Option<u32>,
    pub max_open_questions: Option<u32>,
    pub max_connections: Option<u32>,
    /// The argv that runs the agent inside its container or sandbox.
    pub command: Option<Vec<String>>,
    /// Extra environment for `command` (never secrets: those are files).
    pub env: Option<BTreeMap<String, String>>,
    /// Receives crash and lifecycle events of the other agents.
    pub manager: Option<bool>,
    /// Agents it may propose config for (itself always).
    pub can_propose_for: Option<Vec<String>>,
    /// Seconds without socket traffic before the agent is stopped as idle;
    /// 0 (the default) never stops it.
    pub idle_timeout: Option<u64>,
    /// `on-failure` (default) or `never`.
    pub restart: Option<String>,
    pub limits: Option<RawLimits>,
    /// `allow` (default) or `deny`.
    pub egress: Option<String>,
    /// Addresses or networks exempt from the private-range drop.
    pub allow_hosts: Option<Vec<String>>,
    /// Unacknowledged messages stored for this agent before `send`s to it
    /// are refused with `quota_exceeded`.
    pub max_unacked: Option<u64>,
    /// Bytes of unacknowledged message bodies stored for this agent (an
    /// integer, or a number with K, M or G).
    pub max_unacked_bytes: Option<toml::Value>,
    /// Messages per second this agent may send (token bucket).
    pub send_rate: Option<u32>,
    /// Messages this agent may send at once after a pause.
    pub send_burst: Option<u32>,
    /// Status updates per second written and announced; above it the
    /// newest one wins.
    pub status_rate: Option<u32>,
}

/// `limits = { memory = "512M", cpu = 1.5 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Bytes, as an integer or a string with a `K`, `M` or `G` suffix.
    pub memory: Option<toml::Value>,
    /// Cores, fractions allowed.
    pub cpu: Option<f64>,
}

/// Which container runtime the daemon drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Agents are child processes (development only).
    Process,
    /// Nothing is started: sockets exist and agents attach by hand.
    Detached,
    /// `systemd-nspawn` containers driven directly (DESIGN §5).
    Nspawn,
    /// `nixos-container` (NixOS's `container@.service`), production on
    /// NixOS (DESIGN §5).
    NixosContainer,
}

impl RuntimeKind {
    /// As the config and `Health` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Detached => "detached",
            Self::Nspawn => "nspawn",
            Self::NixosContainer => "nixos-container",
        }
    }
}

/// Host uids in one agent's user namespace (64 Ki: uid 0 to 65535 inside).
pub const UID_RANGE_SIZE: u32 = 65536;
/// Default first host uid of the pool (16 ranges above 0, clear of any
/// normal user's uid).
pub const DEFAULT_UID_POOL_START: u32 = 1_048_576;
/// Default number of ranges in the pool.
pub const DEFAULT_UID_POOL_COUNT: u32 = 4096;
/// Default seconds between SIGTERM and SIGKILL when an agent is stopped.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 10;
/// Longest `stop_timeout` accepted, in seconds.
pub const MAX_STOP_TIMEOUT_S: u64 = 600;

/// The host uids container runtimes hand out, one [`UID_RANGE_SIZE`] range
/// per agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidPool {
    /// First host uid of range 0; a multiple of [`UID_RANGE_SIZE`].
    pub start: u32,
    /// How many ranges.
    pub count: u32,
}

impl Default for UidPool {
    fn default() -> Self {
        Self {
            start: DEFAULT_UID_POOL_START,
            count: DEFAULT_UID_POOL_COUNT,
        }
    }
}

impl UidPool {
    /// The base uid of range `index` (`index < count`).
    pub fn base(&self, index: u32) -> u32 {
        self.start + index * UID_RANGE_SIZE
    }
}

impl RuntimeKind {
    /// Whether each agent gets a network namespace of its own, which the
    /// hive's nftables table (`isolation`) must guard before any starts.
    pub fn private_network(self) -> bool {
        match self {
            Self::Process | Self::Detached => false,
            Self::Nspawn | Self::NixosContainer => true,
        }
    }
}

/// Whom an agent may message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientPolicy {
    /// `*`: every agent and the operator.
    pub everyone: bool,
    pub operator: bool,
    pub agents: BTreeSet<AgentName>,
}

impl RecipientPolicy {
    pub fn everyone() -> Self {
        Self {
            everyone: true,
            operator: true,
            agents: BTreeSet::new(),
        }
    }

    pub fn allows_operator(&self) -> bool {
        self.everyone || self.operator
    }

    pub fn allows_agent(&self, name: &AgentName) -> bool {
        self.everyone || self.agents.contains(name)
    }

    /// As shown by `whoami` and on the dashboard.
    pub fn to_strings(&self) -> Vec<String> {
        if self.everyone {
            return vec!["*".into()];
        }
        let mut out: Vec<String> = self.agents.iter().map(|a| a.to_string()).collect();
        if self.operator {
            out.push("operator".into());
        }
        out
    }
}

/// What happens when an agent's container exits on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart it, with exponential backoff and a cap on restarts per window.
    #[default]
    OnFailure,
    /// Leave it `crashed` until an operator starts it.
    Never,
}

/// Whether an agent may open connections to the outside world.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressPolicy {
    /// The internet, masqueraded; private ranges and the host still dropped
    /// unless listed in `allow_hosts`.
    #[default]
    Allow,
    /// Nothing leaves the container.
    Deny,
}

/// Default `[network] pool4`.
pub const DEFAULT_POOL4: &str = "10.213.0.0/16";
/// Default `[network] pool6`.
pub const DEFAULT_POOL6: &str = "fd68:6976:6500::/48";
/// Longest prefix `pool4` may have: one agent's `/30`.
pub const MAX_POOL4_PREFIX: u8 = 30;
/// Longest prefix `pool6` may have: one agent's `/64`.
pub const MAX_POOL6_PREFIX: u8 = 64;
/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = 15;
/// Default `[network] reconcile_period_ms`.
pub const DEFAULT_RECONCILE_PERIOD_MS: u64 = 1000;
/// Shortest `reconcile_period_ms`: each pass runs `nft` once or twice.
pub const MIN_RECONCILE_PERIOD_MS: u64 = 100;
/// Longest `reconcile_period_ms`: a deleted or edited table is restored
/// within this (issue 9 promises at most 5 s).
pub const MAX_RECONCILE_PERIOD_MS: u64 = 5000;
/// Most `[network] doctor_targets`.
pub const MAX_DOCTOR_TARGETS: usize = 64;

/// Validated `[network]`: where agent addresses come from and how agent
/// egress leaves the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub pool4: ipnet::Ipv4Net,
    pub pool6: ipnet::Ipv6Net,
    pub resolver: Option<std::net::IpAddr>,
    pub uplink: Option<String>,
    /// How often the reconcile loop reads the table back.
    pub reconcile_period: std::time::Duration,
    /// Private-range targets `hivectl doctor` probes from inside each agent.
    pub doctor_targets: Vec<std::net::SocketAddr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            pool4: DEFAULT_POOL4.parse().expect("default pool4"),
            pool6: DEFAULT_POOL6.parse().expect("default pool6"),
            resolver: None,
            uplink: None,
            reconcile_period: std::time::Duration::from_millis(DEFAULT_RECONCILE_PERIOD_MS),
            doctor_targets: Vec::new(),
        }
    }
}

/// Validates `[network]`; the error is one sentence naming the key.
pub fn validate_network(raw: RawNetwork) -> Result<NetworkConfig, String> {
    let mut net = NetworkConfig::default();
    if let Some(p) = raw.pool4 {
        let pool: ipnet::Ipv4Net = p
            .parse()
            .map_err(|_| format!("network.pool4 {p:?} is not an IPv4 network (ADDR/PREFIX)"))?;
        if pool.prefix_len() > MAX_POOL4_PREFIX {
            return Err(format!(
                "network.pool4 {p} is too small: at most /{MAX_POOL4_PREFIX} (each agent takes a /30)"
            ));
        }
        net.pool4 = pool.trunc();
    }
    if let Some(p) = raw.pool6 {
        let pool: ipnet::Ipv6Net = p
            .parse()
            .map_err(|_| format!("network.pool6 {p:?} is not an IPv6 network (ADDR/PREFIX)"))?;
        if pool.prefix_len() > MAX_POOL6_PREFIX {
            return Err(format!(
                "network.pool6 {p} is too small: at most /{MAX_POOL6_PREFIX} (each agent takes a /64)"
            ));
        }
        net.pool6 = pool.trunc();
    }
    if let Some(r) = raw.resolver {
        let addr: std::net::IpAddr = r
            .parse()
            .map_err(|_| format!("network.resolver {r:?} is not an IP address"))?;
        let in_pool = match addr {
            std::net::IpAddr::V4(a) => net.pool4.contains(&a),
            std::net::IpAddr::V6(a) => net.pool6.contains(&a),
        };
        if in_pool || addr.is_unspecified() || addr.is_loopback() {
            return Err(format!(
                "network.resolver {r} cannot be reached from a container (loopback, unspecified or inside the agent pools)"
            ));
        }
        net.resolver = Some(addr);
    }
    if let Some(u) = raw.uplink {
        let good = !u.is_empty()
            && u.len() <= MAX_IFNAME
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !good {
            return Err(format!(
                "network.uplink {u:?} is not an interface name (1 to {MAX_IFNAME} of [A-Za-z0-9_.-])"
            ));
        }
        if u.starts_with(crate::isolation::AGENT_IF_PREFIX) || u == "lo" {
            return Err(format!(
                "network.uplink {u:?} is an agent interface or loopback, not an uplink"
            ));
        }
        net.uplink = Some(u);
    }
    if let Some(ms) = raw.reconcile_period_ms {
        if !(MIN_RECONCILE_PERIOD_MS..=MAX_RECONCILE_PERIOD_MS).contains(&ms) {
            return Err(format!(
                "network.reconcile_period_ms {ms} is out of range ({MIN_RECONCILE_PERIOD_MS} to {MAX_RECONCILE_PERIOD_MS})"
            ));
        }
        net.reconcile_period = std::time::Duration::from_millis(ms);
    }
    if let Some(targets) = raw.doctor_targets {
        if targets.len() > MAX_DOCTOR_TARGETS {
            return Err(format!(
                "network.doctor_targets lists {} targets, at most {MAX_DOCTOR_TARGETS}",
                targets.len()
            ));
        }
        for t in targets {
            let addr: std::net::SocketAddr = t.parse().map_err(|_| {
                format!("network.doctor_targets {t:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT)")
            })?;
            if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
                return Err(format!(
                    "network.doctor_targets {t:?} is not a host one can connect to"
                ));
            }
            if !net.doctor_targets.contains(&addr) {
                net.doctor_targets.push(addr);
            }
        }
    }
    Ok(net)
}

/// Resource limits applied to the agent's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU quota in thousandths of a core (1500 = one and a half cores).
    pub cpu_millicores: Option<u32>,
}

/// Longest `idle_timeout` accepted: 30 days.
pub const MAX_IDLE_TIMEOUT_S: u64 = 30 * 24 * 3600;
/// Most entries in `env`.
pub const MAX_ENV_VARS: usize = 256;
/// Longest `env` value, in bytes.
pub const MAX_ENV_VALUE: usize = 4096;

/// One agent's validated settings.
#[derive(Clone, Debug)]
pub struct AgentPolicy {
    pub allowed_recipients: RecipientPolicy,
    pub max_reminders: u32,
    pub max_open_questions: u32,
    pub max_connections: u32,
    pub command: Option<Vec<String>>,
    /// Extra environment for `command`: names are `[A-Za-z_][A-Za-z0-9_]*`
    /// and never start with `HIVE_` (the runtime sets those).
    pub env: BTreeMap<String, String>,
    pub manager: bool,
    /// Other agents it may propose config for; itself always.
    pub can_propose_for: BTreeSet<AgentName>,
    /// Stop it after this long without socket traffic; `None` never.
    pub idle_timeout: Option<std::time::Duration>,
    pub restart: RestartPolicy,
    pub limits: Limits,
    pub egress: EgressPolicy,
    pub allow_hosts: Vec<ipnet::IpNet>,
    /// What the agent may store for others and send: its quotas.
    pub quotas: Quotas,
}

/// One agent's quotas (DESIGN: an agent cannot fill the disk or starve the
/// others). Each is a config key with a default; each refusal is
/// `quota_exceeded` naming the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// `max_unacked`: unacknowledged messages stored for this agent.
    pub max_unacked: u64,
    /// `max_unacked_bytes`: their body bytes.
    pub max_unacked_bytes: u64,
    /// `send_rate`: messages per second this agent may send.
    pub send_rate: u32,
    /// `send_burst`: the token bucket's size.
    pub send_burst: u32,
    /// `status_rate`: status updates per second written and announced.
    pub status_rate: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_unacked: DEFAULT_MAX_UNACKED,
            max_unacked_bytes: DEFAULT_MAX_UNACKED_BYTES,
            send_rate: DEFAULT_SEND_RATE,
            send_burst: DEFAULT_SEND_BURST,
            status_rate: DEFAULT_STATUS_RATE,
        }
    }
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            allowed_recipients: RecipientPolicy::everyone(),
            max_reminders: DEFAULT_MAX_REMINDERS,
            max_open_questions: DEFAULT_MAX_OPEN_QUESTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            command: None,
            env: BTreeMap::new(),
            manager: false,
            can_propose_for: BTreeSet::new(),
            idle_timeout: None,
            restart: RestartPolicy::default(),
            limits: Limits::default(),
            egress: EgressPolicy::default(),
            allow_hosts: Vec::new(),
            quotas: Quotas::default(),
        }
    }
}

impl AgentPolicy {
    /// May this agent propose config for `target`?
    pub fn may_propose_for(&self, me: &AgentName, target: &AgentName) -> bool {
        me == target || self.can_propose_for.contains(target)
    }
}

/// The validated configuration the daemon runs on.
#[derive(Clone, Debug)]
pub struct Config {
    /// `/var/lib/hyperhive`: the store, the config repo, agent state.
    pub state_dir: PathBuf,
    /// `/run/hyperhive`: every socket.
    pub runtime_dir: PathBuf,
    pub admin_group: Option<String>,
    pub web_user: Option<String>,
    pub runtime: RuntimeKind,
    /// The `process` runtime may run agents unsandboxed (every page then
    /// says so).
    pub allow_unsandboxed: bool,
    /// Events kept for reconnecting subscribers; older ones are pruned.
    pub event_retention: u64,
    /// Agent addressing and egress (used by runtimes that give each agent
    /// its own network namespace).
    pub network: NetworkConfig,
    pub restart: RestartSettings,
    /// Between a stop's SIGTERM and its SIGKILL.
    pub stop_timeout: std::time::Duration,
    pub uid_pool: UidPool,
    /// The `nixos-container` runtime's tools (defaults under other runtimes).
    pub nixos_container: NixosContainerConfig,
    /// Acknowledged messages to agents older than this are pruned (`None`:
    /// kept forever).
    pub message_retention: Option<std::time::Duration>,
    /// The same for the operator's own mailbox.
    pub operator_message_retention: Option<std::time::Duration>,
    pub agents: BTreeMap<AgentName, AgentPolicy>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        Self::from_raw(raw).map_err(|message| Error::Config {
            path: path.to_owned(),
            message,
        })
    }

    /// Validates a parsed config; the error is one sentence.
    pub fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let runtime = match raw.runtime.as_deref().unwrap_or("process") {
            "process" => RuntimeKind::Process,
            "detached" | "none" => RuntimeKind::Detached,
            "nspawn" => RuntimeKind::Nspawn,
            "nixos-container" => RuntimeKind::NixosContainer,
            other => {
                return Err(format!(
                    "runtime {other:?} is not available (choose nixos-container, nspawn, process or detached)"
                ))
            }
        };
        let nixos_container = validate_nixos_container(raw.nixos_container.unwrap_or_default())?;
        let stop_timeout = raw.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT_S);
        if !(1..=MAX_STOP_TIMEOUT_S).contains(&stop_timeout) {
            return Err(format!(
                "stop_timeout is {stop_timeout} seconds; between 1 and {MAX_STOP_TIMEOUT_S}"
            ));
        }
        let uid_pool = validate_uid_pool(raw.uid_pool.unwrap_or_default())?;
        let event_retention = raw.event_retention.unwrap_or(DEFAULT_EVENT_RETENTION);
        if event_retention < MIN_EVENT_RETENTION {
            return Err(format!(
                "event_retention must be at least {MIN_EVENT_RETENTION} (got {event_retention})"
            ));
        }
        let network = validate_network(raw.network.unwrap_or_default())?;
        let retention = |key: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            0 => Ok(None),
            d if d > MAX_RETENTION_DAYS => Err(format!(
                "{key} is {d} days; at most {MAX_RETENTION_DAYS}, or 0 to keep forever"
            )),
            d => Ok(Some(std::time::Duration::from_secs(d * 24 * 3600))),
        };
        let message_retention = retention(
            "message_retention_days",
            raw.message_retention_days,
            DEFAULT_MESSAGE_RETENTION_DAYS,
        )?;
        let operator_message_retention = retention(
            "operator_message_retention_days",
            raw.operator_message_retention_days,
            DEFAULT_OPERATOR_MESSAGE_RETENTION_DAYS,
        )?;
        let mut agents = BTreeMap::new();
        for (name, raw_agent) in raw.agents {
            let name = AgentName::new(&name).map_err(|e| format!("agent {name:?}: {e}"))?;
            let policy = validate_agent(raw_agent).map_err(|e| format!("agent {name}: {e}"))?;
            agents.insert(name, policy);
        }
        check_agent_references(&agents)?;
        crate::runtime::container_name::check_unique(agents.keys()).map_err(|e| e.to_string())?;
        Ok(Self {
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/hyperhive")),
            runtime_dir: raw
                .runtime_dir
                .unwrap_or_else(|| PathBuf::from("/run/hyperhive")),
            admin_group: raw.admin_group,
            web_user: raw.web_user,
            runtime,
            allow_unsandboxed: raw.allow_unsandboxed.unwrap_or(false),
            event_retention,
            network,
            restart: validate_restart(raw.restart.unwrap_or_default())?,
            stop_timeout: std::time::Duration::from_secs(stop_timeout),
            uid_pool,
            nixos_container,
            message_retention,
            operator_message_retention,
            agents,
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("hive.db")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir.join("admin.sock")
    }

    pub fn web_socket(&self) -> PathBuf {
        self.runtime_dir.join("web.sock")
    }

    /// `…/agents/<name>/`: the directory bind-mounted into the container.
    pub fn agent_socket_dir(&self, name: &AgentName) -> PathBuf {
        self.runtime_dir.join("agents").join(name.as_str())
    }

    pub fn agent_socket(&self, name: &AgentName) -> PathBuf {
        self.agent_socket_dir(name).join("agent.sock")
    }

    /// `…/agents/<name>/state/`: the agent's own files.
    pub fn agent_state_dir(&self, name: &AgentName) -> PathBuf {
        self.state_dir
            .join("agents")
            .join(name.as_str())
            .join("state")
    }
}

/// Every agent an agent's policy names must exist in `agents`.
pub fn check_agent_references(agents: &BTreeMap<AgentName, AgentPolicy>) -> Result<(), String> {
    for (name, policy) in agents {
        for peer in &policy.allowed_recipients.agents {
            if !agents.contains_key(peer) {
                return Err(format!(
                    "agent {name}: allowed recipient {peer} is not a configured agent"
                ));
            }
        }
        for peer in &policy.can_propose_for {
            if !agents.contains_key(peer) {
                return Err(format!(
                    "agent {name}: can_propose_for names {peer}, which is not a configured agent"
                ));
            }
        }
    }
    Ok(())
}

/// Validates one agent's table (the daemon config's `[agents.<name>]` or an
/// `agent.toml`); the error is one sentence naming the key.
pub fn validate_agent(raw: RawAgent) -> Result<AgentPolicy, String> {
    let mut policy = AgentPolicy::default();
    if let Some(list) = raw.allowed_recipients {
        let mut p = RecipientPolicy {
            everyone: false,
            operator: false,
            agents: BTreeSet::new(),
        };
        for entry in list {
            match entry.as_str() {
                "*" => p.everyone = true,
                "operator" => p.operator = true,
                other => {
                    let n = AgentName::new(other)
                        .map_err(|e| format!("allowed recipient {other:?}: {e}"))?;
                    p.agents.insert(n);
                }
            }
        }
        policy.allowed_recipients = p;
    }
    if let Some(n) = raw.max_reminders {
        policy.max_reminders = n;
    }
    if let Some(n) = raw.max_open_questions {
        policy.max_open_questions = n;
    }
    if let Some(n) = raw.max_connections {
        if n == 0 {
            return Err("max_connections must be at least 1".into());
        }
        policy.max_connections = n;
    }
    if let Some(cmd) = raw.command {
        if cmd.is_empty() {
            return Err("command must not be empty".into());
        }
        if cmd.iter().any(|a| a.contains('\0')) {
            return Err("command: an argument contains a NUL byte".into());
        }
        policy.command = Some(cmd);
    }
    if let Some(env) = raw.env {
        if env.len() > MAX_ENV_VARS {
            return Err(format!("env: at most {MAX_ENV_VARS} variables"));
        }
        for (k, v) in &env {
            let mut chars = k.chars();
            let good_name = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good_name {
                return Err(format!(
                    "env: {k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
            if k.starts_with("HIVE_") {
                return Err(format!(
                    "env: {k} is set by the runtime (HIVE_* is reserved)"
                ));
            }
            if v.len() > MAX_ENV_VALUE || v.contains('\0') {
                return Err(format!(
                    "env: the value of {k} is longer than {MAX_ENV_VALUE} bytes or holds a NUL byte"
                ));
            }
        }
        policy.env = env;
    }
    policy.manager = raw.manager.unwrap_or(false);
    if let Some(list) = raw.can_propose_for {
        for entry in list {
            let n =
                AgentName::new(&entry).map_err(|e| format!("can_propose_for {entry:?}: {e}"))?;
            policy.can_propose_for.insert(n);
        }
    }
    match raw.idle_timeout {
        None | Some(0) => {}
        Some(s) if s > MAX_IDLE_TIMEOUT_S => {
            return Err(format!(
            "idle_timeout is {s} seconds; at most {MAX_IDLE_TIMEOUT_S} (30 days), or 0 for never"
        ))
        }
        Some(s) => policy.idle_timeout = Some(std::time::Duration::from_secs(s)),
    }
    policy.restart = match raw.restart.as_deref() {
        None | Some("on-failure") => RestartPolicy::OnFailure,
        Some("never") => RestartPolicy::Never,
        Some(other) => {
            return Err(format!(
                "restart {other:?} is not a policy (choose on-failure or never)"
            ))
        }
    };
    if let Some(limits) = raw.limits {
        policy.limits = validate_limits(limits)?;
    }
    policy.egress = match raw.egress.as_deref() {
        None | Some("allow") => EgressPolicy::Allow,
        Some("deny") => EgressPolicy::Deny,
        Some(other) => {
            return Err(format!(
                "egress {other:?} is not a policy (choose allow or deny)"
            ))
        }
    };
    if let Some(hosts) = raw.allow_hosts {
        for h in hosts {
            let net = h
                .parse::<ipnet::IpNet>()
                .or_else(|_| h.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!(
                        "allow_hosts {h:?} is not an IP address or network (ADDR or ADDR/PREFIX)"
                    )
                })?;
            policy.allow_hosts.push(net.trunc());
        }
    }
    let quotas = RawQuotas {
        max_unacked: raw.max_unacked,
        max_unacked_bytes: raw.max_unacked_bytes,
        send_rate: raw.send_rate,
        send_burst: raw.send_burst,
        status_rate: raw.status_rate,
    };
    validate_quotas(&quotas, &mut policy.quotas)?;
    Ok(policy)
}

/// The quota keys of a [`RawAgent`].
struct RawQuotas {
    max_unacked: Option<u64>,
    max_unacked_bytes: Option<toml::Value>,
    send_rate: Option<u32>,
    send_burst: Option<u32>,
    status_rate: Option<u32>,
}

fn validate_quotas(raw: &RawQuotas, q: &mut Quotas) -> Result<(), String> {
    if let Some(n) = raw.max_unacked {
        if n == 0 {
            return Err("max_unacked must be at least 1".into());
        }
        q.max_unacked = n;
    }
    if let Some(v) = &raw.max_unacked_bytes {
        let bytes = match v {
            toml::Value::Integer(n) if *n > 0 => Some(*n as u64),
            toml::Value::String(s) => parse_bytes(s),
            _ => None,
        }
        .ok_or_else(|| {
            format!("max_unacked_bytes {v} is not a size (bytes, or a number with K, M or G)")
        })?;
        // One largest message must always fit.
        let min = hive_proto::agent::MAX_BODY as u64;
        if bytes < min {
            return Err(format!(
                "max_unacked_bytes is {bytes}; at least {min} (one largest message body)"
            ));
        }
        q.max_unacked_bytes = bytes;
    }
    if let Some(n) = raw.send_rate {
        if n == 0 {
            return Err("send_rate must be at least 1 message per second".into());
        }
        q.send_rate = n;
    }
    if let Some(n) = raw.send_burst {
        if n == 0 {
            return Err("send_burst must be at least 1".into());
        }
        q.send_burst = n;
    }
    if let Some(n) = raw.status_rate {
        if !(1..=MAX_STATUS_RATE).contains(&n) {
            return Err(format!(
                "status_rate is {n}; between 1 and {MAX_STATUS_RATE} updates per second"
            ));
        }
        q.status_rate = n;
    }
    Ok(())
}

/// `[uid_pool]`: `start` a multiple of [`UID_RANGE_SIZE`] and at least one
/// range (uid 0's range is the host's own), at least one range, and the
/// last uid below 2^32 - 1 (`(uid_t)-1` means "no uid").
fn validate_nixos_container(raw: RawNixosContainer) -> Result<NixosContainerConfig, String> {
    let d = NixosContainerConfig::default();
    let program = |key: &str, v: Option<PathBuf>, default: PathBuf| -> Result<PathBuf, String> {
        let p = v.unwrap_or(default);
        let text = p.to_str().unwrap_or("");
        let bare = !text.is_empty() && !text.contains('/');
        if !(bare || p.is_absolute()) || text.chars().any(|c| c.is_control()) {
            return Err(format!(
                "nixos_container.{key} {p:?} must be a program name (looked up on PATH) or an absolute path"
            ));
        }
        Ok(p)
    };
    let conf_dir = raw.conf_dir.unwrap_or(d.conf_dir);
    if !conf_dir.is_absolute()
        || conf_dir
            .to_str()
            .is_none_or(|t| t.chars().any(|c| c.is_control()))
    {
        return Err(format!(
            "nixos_container.conf_dir {conf_dir:?} must be an absolute path"
        ));
    }
    Ok(NixosContainerConfig {
        nixos_container: program("nixos_container", raw.nixos_container, d.nixos_container)?,
        machinectl: program("machinectl", raw.machinectl, d.machinectl)?,
        conf_dir,
    })
}

fn validate_uid_pool(raw: RawUidPool) -> Result<UidPool, String> {
    let size = u64::from(UID_RANGE_SIZE);
    let start = raw.start.unwrap_or(u64::from(DEFAULT_UID_POOL_START));
    let count = raw.count.unwrap_or(u64::from(DEFAULT_UID_POOL_COUNT));
    if start < size || !start.is_multiple_of(size) {
        return Err(format!(
            "uid_pool.start is {start}; a multiple of {size} and at least {size}"
        ));
    }
    if count == 0 {
        return Err("uid_pool.count must be at least 1".into());
    }
    let end = start + count.saturating_mul(size);
    if end > u64::from(u32::MAX) {
        return Err(format!(
            "uid_pool: {count} ranges from {start} end past the last uid ({})",
            u32::MAX - 1
        ));
    }
    Ok(UidPool {
        start: start as u32,
        count: count as u32,
    })
}

/// Smallest memory limit accepted: below this an agent cannot even start.
pub const MIN_MEMORY_LIMIT: u64 = 16 << 20;

fn validate_limits(raw: RawLimits) -> Result<Limits, String> {
    let mut limits = Limits::default();
    if let Some(v) = raw.memory {
        let bytes = match &v {
            toml::Value::Integer(n) if *n > 0 => Some(*n as u64),
            toml::Value::String(s) => parse_bytes(s),
            _ => None,
        }
        .ok_or_else(|| {
            format!("limits.memory {v} is not a size (bytes, or a number with K, M or G)")
        })?;
        if bytes < MIN_MEMORY_LIMIT {
            return Err(format!(
                "limits.memory is {bytes} bytes; at least {} MiB",
                MIN_MEMORY_LIMIT >> 20
            ));
        }
        limits.memory_bytes = Some(bytes);
    }
    if let Some(cpu) = raw.cpu {
        if !(cpu.is_finite() && (0.01..=1024.0).contains(&cpu)) {
            return Err(format!("limits.cpu is {cpu}; between 0.01 and 1024 cores"));
        }
        limits.cpu_millicores = Some((cpu * 1000.0).round() as u32);
    }
    Ok(limits)
}

/// `"512M"` → bytes; `K`, `M`, `G` are powers of 1024.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        Config::from_raw(toml::from_str(s).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_and_policies() {
        let c = parse(
            r#"
            [agents.alice]
            allowed_recipients = ["bob", "operator"]
            [agents.bob]
            "#,
        )
        .unwrap();
        let alice = &c.agents[&AgentName::new("alice").unwrap()];
        assert!(alice.allowed_recipients.allows_operator());
        assert!(alice
            .allowed_recipients
            .allows_agent(&AgentName::new("bob").unwrap()));
        let bob = &c.agents[&AgentName::new("bob").unwrap()];
        assert_eq!(bob.allowed_recipients.to_strings(), vec!["*"]);
        assert_eq!(c.runtime_dir, PathBuf::from("/run/hyperhive"));
        assert_eq!(c.event_retention, DEFAULT_EVENT_RETENTION);
        assert_eq!(bob.max_open_questions, DEFAULT_MAX_OPEN_QUESTIONS);
        assert_eq!(
            parse("event_retention = 5000").unwrap().event_retention,
            5000
        );
        assert_eq!(c.stop_timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.uid_pool, UidPool::default());
        let n =
            parse("runtime = \"nspawn\"\nstop_timeout = 3\n[uid_pool]\nstart = 131072\ncount = 2")
                .unwrap();
        assert_eq!(n.runtime, RuntimeKind::Nspawn);
        assert_eq!(n.stop_timeout, std::time::Duration::from_secs(3));
        assert_eq!((n.uid_pool.base(0), n.uid_pool.base(1)), (131072, 196608));
        assert_eq!(n.nixos_container, NixosContainerConfig::default());
    }

    #[test]
    fn the_nixos_container_runtime_and_its_tools_are_validated() {
        let c = parse(
            "runtime = \"nixos-container\"\n[nixos_container]\nnixos_container = \"/run/current-system/sw/bin/nixos-container\"\nconf_dir = \"/tmp/nc\"",
        )
        .unwrap();
        assert_eq!(c.runtime, RuntimeKind::NixosContainer);
        assert!(c.runtime.private_network());
        assert_eq!(c.runtime.name(), "nixos-container");
        assert_eq!(
            c.nixos_container,
            NixosContainerConfig {
                nixos_container: "/run/current-system/sw/bin/nixos-container".into(),
                machinectl: "machinectl".into(),
                conf_dir: "/tmp/nc".into(),
            }
        );
        for (bad, key) in [
            (
                "nixos_container = \"bin/nixos-container\"",
                "nixos_container.nixos_container",
            ),
            ("machinectl = \"\"", "nixos_container.machinectl"),
            (
                "conf_dir = \"etc/nixos-containers\"",
                "nixos_container.conf_dir",
            ),
        ] {
            let err = parse(&format!("[nixos_container]\n{bad}")).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(parse("[nixos_container]\nbogus = 1")
            .unwrap_err()
            .contains("bogus"));
    }

    #[test]
    fn bad_configs_say_why() {
        assert!(parse("[agents.Alice]").unwrap_err().contains("lowercase"));
        assert!(parse("[agents.a]\nallowed_recipients=[\"zed\"]")
            .unwrap_err()
            .contains("not a configured agent"));
        assert!(parse("runtime = \"docker\"")
            .unwrap_err()
            .contains("docker"));
        assert!(parse("bogus = 1").is_err());
        assert!(parse("event_retention = 999")
            .unwrap_err()
            .contains("at least 1000"));
        assert!(parse("stop_timeout = 0")
            .unwrap_err()
            .contains("stop_timeout"));
        assert!(parse("[uid_pool]\nstart = 1000")
            .unwrap_err()
            .contains("multiple of 65536"));
        assert!(parse("[uid_pool]\nstart = 0")
            .unwrap_err()
            .contains("uid_pool.start"));
        assert!(parse("[uid_pool]\ncount = 0")
            .unwrap_err()
            .contains("uid_pool.count"));
        assert!(parse("[uid_pool]\ncount = 70000")
            .unwrap_err()
            .contains("past the last uid"));
    }

    #[test]
    fn the_container_keys_parse_into_the_policy() {
        let c = parse(
            r#"
            [agents.alice]
            command = ["hive-agent", "run", "--", "claude", "-p"]
            env = { MODEL = "opus", _X = "1" }
            manager = true
            can_propose_for = ["bob"]
            idle_timeout = 1800
            restart = "never"
            limits = { memory = "512M", cpu = 1.5 }
            egress = "deny"
            allow_hosts = ["203.0.113.7", "198.51.100.9/24", "2001:db8::1"]
            [agents.bob]
            limits = { memory = 33554432 }
            "#,
        )
        .unwrap();
        let alice = &c.agents[&AgentName::new("alice").unwrap()];
        let bob = AgentName::new("bob").unwrap();
        assert!(alice.manager);
        assert_eq!(alice.env["MODEL"], "opus");
        assert!(alice.may_propose_for(&AgentName::new("alice").unwrap(), &bob));
        assert_eq!(
            alice.idle_timeout,
            Some(std::time::Duration::from_secs(1800))
        );
        assert_eq!(alice.restart, RestartPolicy::Never);
        assert_eq!(alice.limits.memory_bytes, Some(512 << 20));
        assert_eq!(alice.limits.cpu_millicores, Some(1500));
        assert_eq!(alice.egress, EgressPolicy::Deny);
        let hosts: Vec<String> = alice.allow_hosts.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            hosts,
            ["203.0.113.7/32", "198.51.100.0/24", "2001:db8::1/128"]
        );
        let b = &c.agents[&bob];
        assert!(!b.manager);
        assert!(!b.may_propose_for(&bob, &AgentName::new("alice").unwrap()));
        assert!(b.may_propose_for(&bob, &bob));
        assert_eq!(b.limits.memory_bytes, Some(32 << 20));
        assert_eq!(
            (b.restart, b.egress, b.idle_timeout),
            (RestartPolicy::OnFailure, EgressPolicy::Allow, None)
        );
    }

    #[test]
    fn the_network_table_parses_with_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.network, NetworkConfig::default());
        assert_eq!(c.network.pool4.to_string(), DEFAULT_POOL4);
        let c = parse(
            r#"
            [network]
            pool4 = "10.99.1.7/24"
            pool6 = "fd00:1::/56"
            resolver = "10.88.0.53"
            uplink = "eth0"
            reconcile_period_ms = 5000
            doctor_targets = ["192.168.1.10:22", "[fd00::10]:443"]
            "#,
        )
        .unwrap();
        assert_eq!(
            c.network.reconcile_period,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            c.network.doctor_targets,
            [
                "192.168.1.10:22".parse().unwrap(),
                "[fd00::10]:443".parse().unwrap()
            ]
        );
        assert_eq!(c.network.pool4.to_string(), "10.99.1.0/24");
        assert_eq!(c.network.pool6.to_string(), "fd00:1::/56");
        assert_eq!(c.network.resolver, Some("10.88.0.53".parse().unwrap()));
        assert_eq!(c.network.uplink.as_deref(), Some("eth0"));
    }

    #[test]
    fn bad_network_keys_name_the_key() {
        let bad = |body: &str, want: &str| {
            let err = parse(&format!("[network]\n{body}")).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        };
        bad("pool4 = \"10.0.0.0\"", "network.pool4");
        bad("pool4 = \"10.0.0.0/31\"", "too small");
        bad("pool4 = \"fd00::/48\"", "not an IPv4 network");
        bad("pool6 = \"fd00::/65\"", "too small");
        bad("resolver = \"dns.example\"", "network.resolver");
        bad("resolver = \"10.213.0.1\"", "inside the agent pools");
        bad("resolver = \"127.0.0.53\"", "loopback");
        bad("uplink = \"eth0; drop\"", "network.uplink");
        bad("uplink = \"a-very-long-interface\"", "network.uplink");
        bad("reconcile_period_ms = 5001", "network.reconcile_period_ms");
        bad("reconcile_period_ms = 10", "network.reconcile_period_ms");
        bad("doctor_targets = [\"10.0.0.5\"]", "network.doctor_targets");
        bad(
            "doctor_targets = [\"10.0.0.5:0\"]",
            "network.doctor_targets",
        );
        bad(
            "doctor_targets = [\"fd00::5:80\"]",
            "network.doctor_targets",
        );
        bad("uplink = \"ve-h-alice\"", "agent interface");
        bad("pool = \"10.0.0.0/8\"", "pool");
    }

    #[test]
    fn bad_container_keys_name_the_key() {
        let bad = |body: &str, want: &str| {
            let err = parse(&format!("[agents.a]\n{body}")).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        };
        // Errors from validation (not from the TOML parser) say which agent.
        assert!(parse("[agents.a]\nrestart = \"x\"")
            .unwrap_err()
            .starts_with("agent a: restart"));
        bad("env = { HIVE_SOCKET = \"x\" }", "HIVE_* is reserved");
        bad("env = { \"1X\" = \"x\" }", "is not a variable name");
        bad("can_propose_for = [\"zed\"]", "can_propose_for names zed");
        bad("can_propose_for = [\"Zed\"]", "can_propose_for");
        bad("idle_timeout = 99999999", "idle_timeout");
        bad("restart = \"always\"", "restart \"always\"");
        bad("limits = { memory = \"lots\" }", "limits.memory");
        bad("limits = { memory = \"1M\" }", "at least 16 MiB");
        bad("limits = { cpu = 0.0 }", "limits.cpu");
        bad("limits = { disk = 1 }", "disk");
        bad("egress = \"open\"", "egress \"open\"");
        bad(
            "allow_hosts = [\"example.com\"]",
            "allow_hosts \"example.com\"",
        );
        bad("command = []", "command must not be empty");
    }

    #[test]
    fn restart_settings_default_and_refuse_nonsense() {
        let c = parse("").unwrap();
        assert_eq!(c.restart, RestartSettings::default());
        let c = parse("[restart]\nbackoff_ms = 50\nmax = 2\nwindow_s = 60").unwrap();
        assert_eq!(c.restart.backoff.as_millis(), 50);
        assert_eq!(c.restart.backoff_max.as_millis(), 60_000);
        assert_eq!(c.restart.max, 2);
        for (body, want) in [
            ("backoff_ms = 0", "restart.backoff_ms"),
            (
                "backoff_ms = 5000\nbackoff_max_ms = 10",
                "restart.backoff_max_ms",
            ),
            ("max = 0", "restart.max"),
            ("window_s = 0", "restart.window_s"),
        ] {
            let err = parse(&format!("[restart]\n{body}")).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn two_agents_sharing_a_container_name_are_refused() {
        // These two long names shorten to the same container name.
        let err = parse("[agents.coll-0004700]\n[agents.coll-0005419]").unwrap_err();
        assert!(
            err.contains("coll-0004700 and coll-0005419 would both run in container h-collrxaze"),
            "{err}"
        );
    }
}
