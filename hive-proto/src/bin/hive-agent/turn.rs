//! `hive-agent run -- CMD ARGS…`: the turn loop that wakes an LLM CLI when
//! work arrives.
//!
//! Work is whatever the core delivers to the agent's inbox (a message, a
//! question, an answer to its question, a decided approval, a due
//! reminder). What arrived is batched into one **turn**: `CMD` runs with a
//! prompt describing the batch on stdin and the batch as JSON in the file
//! named by `HIVE_TURN_FILE`, while the agent's status says so. When `CMD`
//! exits 0 its stdout goes back to each sender as a reply (`in_reply_to`
//! their newest item), and only then is the batch acknowledged. A non-zero
//! exit, or a turn over `--max-turn-seconds`, keeps the batch (and what
//! arrived meanwhile) for the next turn after an exponential backoff.
//!
//! The time limit counts only time this process was awake: a pause
//! (`SIGSTOP` under the `process` runtime, a frozen cgroup under the
//! container runtimes) stops the clock with everything else, so a paused
//! turn is not killed for the pause.
//!
//! This module must never run two turns at once (there is one loop and
//! the turn is awaited in it), never acknowledge an item before the turn
//! that handled it succeeded, and never hold a secret anywhere but in the
//! environment of the one `CMD` it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hive_proto::agent::{MAX_BODY, MAX_STATUS};
use hive_proto::client::agent::AgentClient;
use hive_proto::client::ClientError;
use hive_proto::view::{ItemKind, Message, Principal};
use hive_proto::Recipient;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::conn::{Connection, Delivery, DELIVERY_QUEUE};
use crate::{fit, one_line, SeenIds, Stop};

/// How long the loop waits after the first item of a batch for more to
/// arrive, so a burst becomes one turn.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Most items in one turn; the rest wait for the next.
pub const MAX_BATCH: usize = 100;
/// First wait after a failed turn; doubled after each further failure.
pub const RETRY_START: Duration = Duration::from_secs(1);
/// Longest wait between failed turns.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Between SIGTERM and SIGKILL to a turn's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often the awake-time clock of a turn ticks; a gap between two ticks
/// longer than [`PAUSE_GAP`] is a pause and does not count.
const TICK: Duration = Duration::from_millis(250);
const PAUSE_GAP: Duration = Duration::from_secs(2);
/// Wait before retrying a reply or an ack whose connection broke.
const REDELIVER_WAIT: Duration = Duration::from_millis(200);

/// What to do with a running turn on SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnSigterm {
    /// Let it finish (bounded by --max-turn-seconds), reply, ack, exit.
    /// A second SIGTERM abandons it.
    Finish,
    /// Kill it at once and exit; the batch stays unacknowledged and comes
    /// again on the next start.
    Abandon,
}

/// `ENV=KEY`: export the secret `KEY` to `CMD` as `ENV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEnv {
    pub env: String,
    pub key: String,
}

impl std::str::FromStr for SecretEnv {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (env, key) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not ENV=KEY"))?;
        let env_ok = !env.is_empty()
            && !env.starts_with(|c: char| c.is_ascii_digit())
            && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !env_ok {
            return Err(format!(
                "{env:?} is not an environment variable name (letters, digits, '_')"
            ));
        }
        hive_proto::SecretKey::new(key).map_err(|e| format!("{key:?}: {e}"))?;
        Ok(Self {
            env: env.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// Everything `run` needs besides the socket.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub command: Vec<String>,
    pub max_turn: Duration,
    pub on_sigterm: OnSigterm,
    pub secret_env: Vec<SecretEnv>,
    /// Where the secrets are mounted (`/run/secrets`, or `$HIVE_SECRETS_DIR`).
    pub secrets_dir: PathBuf,
}

/// The batch as `CMD` finds it in `HIVE_TURN_FILE`.
#[derive(Serialize)]
struct TurnFile<'a> {
    /// Counts every run of `CMD`, retries included.
    turn: u64,
    agent: &'a str,
    /// 1 for a batch's first run, then 2, 3, … while it keeps failing.
    attempt: u32,
    /// Why the previous run of this batch failed, if it did.
    previous_failure: Option<&'a str>,
    /// Where the reply goes when `CMD` exits 0 (empty stdout: no reply).
    reply_to: Vec<String>,
    messages: &'a [Message],
}

/// Runs turns until SIGTERM or SIGINT.
pub async fn run(socket: PathBuf, opts: RunOptions) -> Result<()> {
    anyhow::ensure!(!opts.command.is_empty(), "run needs a command after --");
    // Fail at start, naming what is missing, rather than at the first turn.
    for s in &opts.secret_env {
        read_secret(&opts.secrets_dir, &s.key)?;
    }
    let mut stop = Stop::new()?;
    let conn = Arc::new(Connection::new(socket, "hive-agent run"));
    let (tx, mut rx) = mpsc::channel(DELIVERY_QUEUE);
    let keeper = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.keep(tx).await })
    };
    let dir = TurnDir::create()?;
    let mut lp = TurnLoop {
        conn: Arc::clone(&conn),
        opts,
        pending: BTreeMap::new(),
        in_flight: BTreeSet::new(),
        done: SeenIds::default(),
        turn: 0,
        attempt: 0,
        previous_failure: None,
        retry_at: None,
        failures: 0,
        me: String::new(),
    };
    let r = lp.run(&mut rx, &mut stop, &dir).await;
    keeper.abort();
    r
}

struct TurnLoop {
    conn: Arc<Connection>,
    opts: RunOptions,
    /// Delivered, not handled yet: the next batch.
    pending: BTreeMap<u64, Message>,
    /// The ids of the batch the running turn handles.
    in_flight: BTreeSet<u64>,
    /// Handled (replied to, acknowledged): a redelivery is acknowledged
    /// again, never run again.
    done: SeenIds,
    turn: u64,
    /// Runs of the current batch so far.
    attempt: u32,
    previous_failure: Option<String>,
    /// No turn before this (the backoff after a failure).
    retry_at: Option<Instant>,
    failures: u32,
    me: String,
}

/// How a turn ended.
enum Outcome {
    /// Exit 0, with what `CMD` printed.
    Replied(String),
    /// Non-zero exit, a signal, a timeout, or `CMD` could not start.
    Failed(String),
    /// Killed for SIGTERM: exit without acknowledging.
    Abandoned,
}

impl TurnLoop {
    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Delivery>,
        stop: &mut Stop,
        dir: &TurnDir,
    ) -> Result<()> {
        loop {
            // Idle until there is work and no backoff holds it back.
            while self.pending.is_empty() || self.retry_at.is_some() {
                let retry = self.retry_at;
                tokio::select! {
                    d = rx.recv() => self.absorb(d),
                    () = sleep_until_opt(retry) => self.retry_at = None,
                    () = stop.wait() => return Ok(()),
                }
            }
            // A burst becomes one batch.
            let window = Instant::now() + BATCH_WINDOW;
            loop {
                tokio::select! {
                    d = rx.recv() => self.absorb(d),
                    () = tokio::time::sleep_until(window) => break,
                    () = stop.wait() => return Ok(()),
                }
            }
            let batch: Vec<Message> = self.pending.values().take(MAX_BATCH).cloned().collect();
            self.in_flight = batch.iter().map(|m| m.id).collect();
            self.turn += 1;
            self.attempt += 1;
            if self.me.is_empty() {
                if let Some(c) = self.conn.current() {
                    if let Ok(me) = c.whoami().await {
                        self.me = me.name;
                    }
                }
            }
            let senders = reply_targets(&batch);
            self.status(running_status(self.turn, &batch)).await;
            let mut stopping = false;
            let outcome = self
                .run_turn(&batch, &senders, dir, rx, stop, &mut stopping)
                .await;
            self.in_flight.clear();
            match outcome {
                Outcome::Replied(stdout) => {
                    let delivered = self.deliver(&batch, &senders, &stdout, stop).await;
                    if !delivered {
                        return Ok(());
                    }
                    for m in &batch {
                        self.pending.remove(&m.id);
                        self.done.insert(m.id);
                    }
                    self.failures = 0;
                    self.attempt = 0;
                    self.previous_failure = None;
                    let to: Vec<&str> = senders.iter().map(|(_, _, n)| n.as_str()).collect();
                    let text = if stdout.trim().is_empty() || to.is_empty() {
                        format!("idle after turn {}", self.turn)
                    } else {
                        format!(
                            "idle after turn {} (replied to {})",
                            self.turn,
                            to.join(", ")
                        )
                    };
                    self.status(text).await;
                }
                Outcome::Failed(why) => {
                    let delay = retry_delay(self.failures);
                    self.failures = self.failures.saturating_add(1);
                    self.retry_at = Some(Instant::now() + delay);
                    eprintln!(
                        "hive-agent run: turn {} failed: {}; retrying in {}s",
                        self.turn,
                        one_line(&why),
                        delay.as_secs_f32()
                    );
                    self.status(format!(
                        "turn {} failed ({why}); retrying in {}s",
                        self.turn,
                        delay.as_secs()
                    ))
                    .await;
                    self.previous_failure = Some(why);
                }
                Outcome::Abandoned => return Ok(()),
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Takes in what the core delivered: new items wait for the next turn,
    /// the running batch's are already handled here, and a handled item
    /// delivered again had its acknowledgement lost, so it is acknowledged
    /// again.
    fn absorb(&mut self, d: Option<Delivery>) {
        let items = match d {
            Some(Delivery::Connected(items)) => items,
            Some(Delivery::Pushed(m)) => vec![m],
            Some(Delivery::Lost) => return,
            // The keeper never ends; if it did, wait for the stop signal.
            None => return,
        };
        for m in items {
            if self.done.contains(m.id) {
                if let Some(c) = self.conn.current() {
                    tokio::spawn(async move {
                        let _ = c.ack(m.id).await;
                    });
                }
            } else if !self.in_flight.contains(&m.id) {
                self.pending.insert(m.id, m);
            }
        }
    }

    /// Sets the status if connected; a turn never waits for the core.
    async fn status(&self, text: String) {
        if let Some(c) = self.conn.current() {
            let _ = c.status(fit(&text, MAX_STATUS)).await;
        }
    }

    async fn run_turn(
        &mut self,
        batch: &[Message],
        senders: &[(Recipient, u64, String)],
        dir: &TurnDir,
        rx: &mut mpsc::Receiver<Delivery>,
        stop: &mut Stop,
        stopping: &mut bool,
    ) -> Outcome {
        let file = TurnFile {
            turn: self.turn,
            agent: &self.me,
            attempt: self.attempt,
            previous_failure: self.previous_failure.as_deref(),
            reply_to: senders.iter().map(|(_, _, n)| n.clone()).collect(),
            messages: batch,
        };
        let path = match dir.write(self.turn, &file) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(format!("cannot write the turn file: {e}")),
        };
        let prompt = prompt(&self.me, &file);
        let mut child = match self.spawn(&path) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Outcome::Failed(e);
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        if let Some(mut stdin) = child.stdin.take() {
            // A command that never reads its stdin must not block the turn.
            tokio::spawn(async move {
                let _ = stdin.write_all(prompt.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let out = child.stdout.take().map(|o| tokio::spawn(read_reply(o)));
        let mut awake = Duration::ZERO;
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        let status = loop {
            tokio::select! {
                s = child.wait() => break s.map_err(|e| format!("waiting for the command: {e}")),
                _ = tick.tick() => {
                    let now = Instant::now();
                    let gap = now - last;
                    last = now;
                    // A long gap is a pause: it stopped us and the command.
                    if gap < PAUSE_GAP {
                        awake += gap;
                    }
                    if awake >= self.opts.max_turn {
                        kill_group(&mut child, pgid).await;
                        let _ = std::fs::remove_file(&path);
                        return Outcome::Failed(format!(
                            "it ran over {}s and was killed",
                            self.opts.max_turn.as_secs()
                        ));
                    }
                }
                d = rx.recv() => self.absorb(d),
                () = stop.wait() => {
                    if self.opts.on_sigterm == OnSigterm::Abandon || *stopping {
                        kill_group(&mut child, pgid).await;
                        let _ = std::fs::remove_file(&path);
                        return Outcome::Abandoned;
                    }
                    eprintln!("hive-agent run: SIGTERM: finishing turn {} first", self.turn);
                    *stopping = true;
                }
            }
        };
        let _ = std::fs::remove_file(&path);
        let reply = match out {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        match status {
            Ok(s) if s.success() => Outcome::Replied(reply),
            Ok(s) => Outcome::Failed(describe(s)),
            Err(e) => Outcome::Failed(e),
        }
    }

    /// `CMD` in a process group of its own (so a timeout kills all of it),
    /// dying with us, with the turn file, the turn number and the secrets
    /// it was given in its environment, and in nobody else's.
    fn spawn(&self, turn_file: &Path) -> Result<Child, String> {
        let mut cmd = Command::new(&self.opts.command[0]);
        cmd.args(&self.opts.command[1..])
            .env("HIVE_TURN_FILE", turn_file)
            .env("HIVE_TURN", self.turn.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for s in &self.opts.secret_env {
            let value =
                read_secret(&self.opts.secrets_dir, &s.key).map_err(|e| format!("{e:#}"))?;
            cmd.env(&s.env, value);
        }
        // SAFETY: runs in the forked child before exec; setpgid and prctl
        // are async-signal-safe and touch only the child itself.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // If we are killed outright, the turn goes too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.opts.command[0]))
    }

    /// Sends the reply to each sender, then acknowledges the batch. Waits
    /// for the core if it is away; a refusal is logged, not retried.
    /// Returns false if a stop signal came while the core was away (the
    /// batch stays unacknowledged and comes again on the next start).
    async fn deliver(
        &self,
        batch: &[Message],
        senders: &[(Recipient, u64, String)],
        stdout: &str,
        stop: &mut Stop,
    ) -> bool {
        let body = fit(stdout.trim_end(), MAX_BODY);
        if !body.trim().is_empty() {
            for (to, in_reply_to, name) in senders {
                let sent = self
                    .redo(stop, |c| {
                        let (to, body) = (to.clone(), body.clone());
                        async move { c.send(to, body, Some(*in_reply_to)).await.map(drop) }
                    })
                    .await;
                match sent {
                    None => return false,
                    Some(Err(e)) => eprintln!(
                        "hive-agent run: the reply to {name} was refused: {}",
                        one_line(&e.to_string())
                    ),
                    Some(Ok(())) => {}
                }
            }
        }
        for m in batch {
            let id = m.id;
            // An item already acknowledged (by the command itself, through
            // `hive-agent mcp`) is refused as not found: that is fine.
            if self
                .redo(stop, |c| async move { c.ack(id).await })
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Runs `f` on a live connection, again on a new one whenever the
    /// connection breaks under it; `None` if stopped while the core was
    /// away.
    async fn redo<F, Fut>(&self, stop: &mut Stop, f: F) -> Option<Result<(), ClientError>>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: std::future::Future<Output = Result<(), ClientError>>,
    {
        loop {
            let client = tokio::select! {
                c = self.conn.wait_client(None) => c?,
                () = stop.wait() => return None,
            };
            match f(client.clone()).await {
                Err(e) if e.is_connection_lost() => {
                    self.conn.forget(&client);
                    tokio::time::sleep(REDELIVER_WAIT).await;
                }
                r => return Some(r),
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The wait after `failures` failed turns in a row.
pub fn retry_delay(failures: u32) -> Duration {
    RETRY_START
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(RETRY_MAX)
}

/// Whom the reply goes to: each agent or operator with an item in the
/// batch, once, answering its newest item; the hive's own items
/// (reminders, expiries, decisions) get no reply.
fn reply_targets(batch: &[Message]) -> Vec<(Recipient, u64, String)> {
    let mut out: Vec<(Recipient, u64, String)> = Vec::new();
    for m in batch {
        let to = match &m.from {
            Principal::Agent(a) => Recipient::Agent(a.clone()),
            Principal::Operator => Recipient::Operator,
            Principal::Hive => continue,
        };
        match out.iter_mut().find(|(r, _, _)| *r == to) {
            Some(slot) => slot.1 = slot.1.max(m.id),
            None => out.push((to.clone(), m.id, to.to_string())),
        }
    }
    out
}

/// "turn 12: 3 messages from bob, carol".
fn running_status(turn: u64, batch: &[Message]) -> String {
    let mut from: Vec<String> = Vec::new();
    for m in batch {
        let f = m.from.to_string();
        if !from.contains(&f) {
            from.push(f);
        }
    }
    let n = batch.len();
    let noun = if n == 1 { "message" } else { "messages" };
    format!("turn {turn}: {n} {noun} from {}", from.join(", "))
}

/// The prompt on `CMD`'s stdin: who it is, each item, and what its stdout
/// will do.
fn prompt(me: &str, f: &TurnFile<'_>) -> String {
    let mut p = String::new();
    let me = if me.is_empty() { "an agent" } else { me };
    let n = f.messages.len();
    p.push_str(&format!(
        "You are {me}, an agent in a hive. Turn {}: {n} new inbox item{}.\n",
        f.turn,
        if n == 1 { "" } else { "s" }
    ));
    if let Some(why) = f.previous_failure {
        p.push_str(&format!(
            "(Attempt {} at this batch; the last one failed: {why}.)\n",
            f.attempt
        ));
    }
    for m in f.messages {
        p.push('\n');
        p.push_str(&format!("--- #{} {} ---\n", m.id, describe_item(m)));
        p.push_str(&m.body);
        if !m.body.ends_with('\n') {
            p.push('\n');
        }
    }
    p.push('\n');
    if f.reply_to.is_empty() {
        p.push_str("Nothing you print is sent: these items came from the hive itself.\n");
    } else {
        p.push_str(&format!(
            "What you print on stdout is sent to {} as your reply; print nothing to send none. \
             Use the hive's MCP tools for anything else (answer a question, ask, send, remind).\n",
            f.reply_to.join(", ")
        ));
    }
    p
}

fn describe_item(m: &Message) -> String {
    let q = m.question_id.map(|q| q.to_string()).unwrap_or_default();
    match m.kind {
        ItemKind::Message => match m.in_reply_to {
            Some(r) => format!("message from {} (reply to #{r})", m.from),
            None => format!("message from {}", m.from),
        },
        ItemKind::Question => {
            let mut s = format!("question {q} from {}", m.from);
            if !m.options.is_empty() {
                s.push_str(&format!(" (options: {}", m.options.join(", ")));
                s.push_str(if m.multi {
                    "; several may be chosen)"
                } else {
                    ")"
                });
            }
            s
        }
        ItemKind::Answer => format!("answer from {} to your question {q}", m.from),
        ItemKind::QuestionExpired => format!("your question {q} expired unanswered"),
        ItemKind::QuestionCancelled => format!("question {q} from {} was withdrawn", m.from),
        ItemKind::Reminder => "reminder".into(),
        ItemKind::ApprovalDecided => "approval decided".into(),
        ItemKind::AgentCrashed => "another agent crashed (you are a manager)".into(),
    }
}

/// At most [`MAX_BODY`] bytes of what `CMD` prints; the rest is read and
/// dropped so the command never blocks on a full pipe.
async fn read_reply(mut out: tokio::process::ChildStdout) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (MAX_BODY + 4).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// SIGTERM to the turn's process group, SIGKILL after [`KILL_GRACE`].
async fn kill_group(child: &mut Child, pgid: Option<Pid>) {
    let Some(pgid) = pgid else {
        let _ = child.kill().await;
        return;
    };
    let _ = killpg(pgid, Signal::SIGTERM);
    let _ = killpg(pgid, Signal::SIGCONT);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    } else {
        // The leader is gone; anything it left in the group goes too.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => "an unknown exit".into(),
    }
}

/// A secret's value from `<dir>/<KEY>`, one trailing newline dropped. The
/// error names the file, never the value.
fn read_secret(dir: &Path, key: &str) -> Result<String> {
    let path = dir.join(key);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read secret {key} at {}", path.display()))?;
    let mut value = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("secret {key} at {} is not UTF-8", path.display()))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    anyhow::ensure!(
        !value.contains('\0'),
        "secret {key} at {} holds a NUL byte and cannot be an environment variable",
        path.display()
    );
    Ok(value)
}

/// A private directory (0700) for the turn files, removed on exit.
struct TurnDir(PathBuf);

impl TurnDir {
    fn create() -> Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("hive-agent-run.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn write(&self, turn: u64, f: &TurnFile<'_>) -> io::Result<PathBuf> {
        let path = self.0.join(format!("turn-{turn}.json"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        serde_json::to_writer(&mut file, f)?;
        Ok(path)
    }
}

impl Drop for TurnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hive_proto::AgentName;

    fn item(id: u64, from: Principal, kind: ItemKind) -> Message {
        Message {
            id,
            kind,
            from,
            to: Principal::Agent(AgentName::new("alice").unwrap()),
            body: format!("body {id}"),
            in_reply_to: None,
            question_id: None,
            options: vec![],
            multi: false,
            sent_at: 1,
            acked_at: None,
        }
    }

    fn agent(n: &str) -> Principal {
        Principal::Agent(AgentName::new(n).unwrap())
    }

    #[test]
    fn each_sender_gets_one_reply_to_its_newest_item_and_the_hive_none() {
        let batch = vec![
            item(1, agent("bob"), ItemKind::Message),
            item(2, agent("carol"), ItemKind::Message),
            item(3, agent("bob"), ItemKind::Message),
            item(4, Principal::Hive, ItemKind::Reminder),
            item(5, Principal::Operator, ItemKind::Answer),
        ];
        let t = reply_targets(&batch);
        let got: Vec<(String, u64)> = t.iter().map(|(_, id, n)| (n.clone(), *id)).collect();
        assert_eq!(
            got,
            [
                ("bob".into(), 3),
                ("carol".into(), 2),
                ("operator".into(), 5)
            ]
        );
        assert_eq!(
            running_status(12, &batch[..3]),
            "turn 12: 3 messages from bob, carol"
        );
        assert_eq!(
            running_status(1, &batch[3..4]),
            "turn 1: 1 message from hive"
        );
    }

    #[test]
    fn the_retry_delay_doubles_to_a_cap() {
        assert_eq!(retry_delay(0), RETRY_START);
        assert_eq!(retry_delay(1), RETRY_START * 2);
        assert_eq!(retry_delay(3), RETRY_START * 8);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn the_prompt_shows_each_item_and_says_where_stdout_goes() {
        let mut q = item(7, Principal::Operator, ItemKind::Question);
        q.question_id = Some(3);
        q.options = vec!["yes".into(), "no".into()];
        let batch = vec![item(6, agent("bob"), ItemKind::Message), q];
        let f = TurnFile {
            turn: 2,
            agent: "alice",
            attempt: 2,
            previous_failure: Some("exit status 1"),
            reply_to: vec!["bob".into(), "operator".into()],
            messages: &batch,
        };
        let p = prompt("alice", &f);
        assert!(
            p.starts_with("You are alice, an agent in a hive. Turn 2: 2 new inbox items."),
            "{p}"
        );
        assert!(p.contains("the last one failed: exit status 1"), "{p}");
        assert!(p.contains("--- #6 message from bob ---\nbody 6\n"), "{p}");
        assert!(
            p.contains("--- #7 question 3 from operator (options: yes, no) ---"),
            "{p}"
        );
        assert!(p.contains("sent to bob, operator as your reply"), "{p}");
    }

    #[test]
    fn secret_env_flags_are_checked() {
        let s: SecretEnv = "ANTHROPIC_API_KEY=anthropic".parse().unwrap();
        assert_eq!(
            (s.env.as_str(), s.key.as_str()),
            ("ANTHROPIC_API_KEY", "anthropic")
        );
        assert!("NOEQUALS".parse::<SecretEnv>().is_err());
        assert!("1BAD=key".parse::<SecretEnv>().is_err());
        assert!("OK=../etc/passwd".parse::<SecretEnv>().is_err());
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_and_errors_never_show_a_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "s3cret\n").unwrap();
        assert_eq!(read_secret(dir.path(), "k").unwrap(), "s3cret");
        std::fs::write(dir.path().join("nul"), "a\0b").unwrap();
        let e = format!("{:#}", read_secret(dir.path(), "nul").unwrap_err());
        assert!(!e.contains("a\0b") && e.contains("NUL"), "{e}");
        let e = format!("{:#}", read_secret(dir.path(), "missing").unwrap_err());
        assert!(e.contains("cannot read secret missing"), "{e}");
    }
}
