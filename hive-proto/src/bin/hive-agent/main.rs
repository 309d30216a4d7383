//! `hive-agent`: the agent-side CLI on `agent.sock`, `demo` (the scripted
//! agent the local dev hive runs), and `mcp` (the agent's verbs as Model
//! Context Protocol tools for an LLM CLI, in [`mcp`]).
//!
//! Every verb subcommand is one verb of the agent protocol; results print as
//! one JSON object per line so a harness can read them. The core knows who
//! we are from the socket: nothing here names the sender.
//!
//! This program must never hide a delivery: `recv` prints every new message
//! (repeats after a reconnect are dropped by id, never by content), and
//! `--ack` acknowledges only what was printed.

mod conn;
mod mcp;
#[path = "../common/proposal_files.rs"]
mod proposal_files;
mod turn;

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hive_proto::agent::{Push, MAX_BODY, MAX_RECV, MAX_STATUS};
use hive_proto::client::agent::{AgentClient, AskOptions, Pushes, RemindAt};
use hive_proto::client::ClientError;
use hive_proto::view::{ItemKind, Message, Principal, QuestionState};
use hive_proto::{AgentName, Recipient};
use proposal_files::FileArg;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

/// Where the core bind-mounts the agent's socket inside its container.
const DEFAULT_SOCKET: &str = "/run/hive/agent.sock";

/// Where the core mounts an agent's secrets inside its container.
const DEFAULT_SECRETS_DIR: &str = "/run/secrets";

/// First wait before reconnecting; doubled after each failure.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Message ids remembered to drop repeats; the oldest are forgotten first.
/// Repeats come from re-delivery after a reconnect, which replays only
/// unacknowledged messages, so a window this size is ample.
const MAX_SEEN: usize = 100_000;

/// What the demo asks the operator.
const DEMO_QUESTION: &str = "Ship the demo build?";
const DEMO_OPTIONS: [&str; 2] = ["yes", "no"];

#[derive(Parser)]
#[command(
    name = "hive-agent",
    version,
    about = "Speak for this agent on its hive socket"
)]
struct Cli {
    /// The agent socket.
    #[arg(long, global = true, env = "HIVE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Who the core thinks I am, and whom I may message.
    Whoami,
    /// Send a message to an agent, `operator`, or `*`.
    Send {
        to: Recipient,
        body: String,
        /// The id of the message this one answers.
        #[arg(long)]
        reply_to: Option<u64>,
    },
    /// Print unacknowledged messages, one JSON object per line.
    Recv {
        /// Keep running and print new messages as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// Wait up to this long for a first message.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// At most this many messages from the first fetch.
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Acknowledge each message once it is printed.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge a message so it is not delivered again.
    Ack { id: u64 },
    /// Ask an agent or the operator a question.
    Ask {
        to: Recipient,
        question: String,
        /// A choice to offer (repeat for several).
        #[arg(long = "option")]
        options: Vec<String>,
        /// Allow several options to be chosen.
        #[arg(long)]
        multi: bool,
        /// Seconds until the question expires unanswered.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Answer a question addressed to me.
    Answer { id: u64, text: String },
    /// Set my status line on the dashboard.
    Status { text: String },
    /// Remind me of BODY in SECONDS.
    Remind { seconds: u64, body: String },
    /// My open questions, pending proposals and reminders.
    LooseEnds,
    /// Propose new config files for AGENT (myself, or an agent my policy's
    /// can_propose_for names); nothing changes until the operator approves.
    ProposeConfig {
        agent: AgentName,
        /// A file for `agents/AGENT/REL` in the config repo, with the
        /// content of the local file LOCAL (repeat for several).
        #[arg(long = "file", value_name = "REL=LOCAL", required = true)]
        files: Vec<FileArg>,
        /// The commit message: what the change is for.
        #[arg(short, long)]
        message: String,
    },
    /// Ask for a new agent NAME with these files (an agent.toml without a
    /// command gets the template's turn loop around Claude Code); it exists
    /// once the operator approves.
    RequestSpawn {
        name: AgentName,
        /// A file for `agents/NAME/REL`, with the content of LOCAL (repeat
        /// for several).
        #[arg(long = "file", value_name = "REL=LOCAL", required = true)]
        files: Vec<FileArg>,
        /// The commit message: what the agent is for.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Run the scripted demo agent until SIGTERM.
    Demo,
    /// Serve this agent's verbs as MCP tools on stdin/stdout (for an LLM CLI).
    Mcp,
    /// The turn loop: run CMD for each batch of inbox items, reply with its
    /// stdout, acknowledge the batch once it exits 0.
    Run {
        /// Kill a turn (and retry it later) after this many seconds awake.
        #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        max_turn_seconds: u64,
        /// What SIGTERM does to a running turn.
        #[arg(long, value_enum, default_value_t = turn::OnSigterm::Finish)]
        on_sigterm: turn::OnSigterm,
        /// Export the secret KEY (from /run/secrets/KEY) to CMD as ENV;
        /// repeat for several.
        #[arg(long = "secret-env", value_name = "ENV=KEY")]
        secret_env: Vec<turn::SecretEnv>,
        /// Where the secrets are mounted.
        #[arg(long, env = "HIVE_SECRETS_DIR", default_value = DEFAULT_SECRETS_DIR)]
        secrets_dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match hive_proto::command_line::parse_or_one_line::<Cli>("hive-agent") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`hive-agent recv --follow | head`) is the
        // reader's choice to stop, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hive-agent: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket;
    match cli.cmd {
        Cmd::Demo => return demo(&socket).await,
        Cmd::Mcp => return mcp::serve(socket).await,
        Cmd::Run {
            max_turn_seconds,
            on_sigterm,
            secret_env,
            secrets_dir,
            command,
        } => {
            let opts = turn::RunOptions {
                command,
                max_turn: Duration::from_secs(max_turn_seconds),
                on_sigterm,
                secret_env,
                secrets_dir,
            };
            return turn::run(socket, opts).await;
        }
        Cmd::Recv {
            follow: true,
            wait_ms,
            max,
            ack,
        } => return follow(&socket, wait_ms, max, ack).await,
        cmd @ (Cmd::ProposeConfig { .. } | Cmd::RequestSpawn { .. }) => {
            return propose(&socket, cmd).await
        }
        _ => {}
    }
    let client = AgentClient::connect(&socket).await?;
    match cli.cmd {
        Cmd::Whoami => print(&client.whoami().await?),
        Cmd::Send { to, body, reply_to } => print(&client.send(to, body, reply_to).await?),
        Cmd::Recv {
            wait_ms, max, ack, ..
        } => {
            for m in client.recv(wait_ms, max).await?.messages {
                print(&m)?;
                if ack {
                    client.ack(m.id).await?;
                }
            }
            Ok(())
        }
        Cmd::Ack { id } => done(client.ack(id).await?),
        Cmd::Ask {
            to,
            question,
            options,
            multi,
            ttl,
        } => {
            let opts = AskOptions {
                options,
                multi,
                ttl_s: ttl,
            };
            print(&client.ask(to, question, opts).await?)
        }
        Cmd::Answer { id, text } => done(client.answer(id, text).await?),
        Cmd::Status { text } => done(client.status(text).await?),
        Cmd::Remind { seconds, body } => print(&client.remind(RemindAt::In(seconds), body).await?),
        Cmd::LooseEnds => print(&client.loose_ends().await?),
        Cmd::Demo
        | Cmd::Mcp
        | Cmd::Run { .. }
        | Cmd::ProposeConfig { .. }
        | Cmd::RequestSpawn { .. } => unreachable!("handled above"),
    }
}

/// `propose-config` and `request-spawn`: the files are read (and refused)
/// before the socket is opened, so a bad one sends nothing.
async fn propose(socket: &Path, cmd: Cmd) -> Result<()> {
    let (spawn, agent, files, message) = match cmd {
        Cmd::ProposeConfig {
            agent,
            files,
            message,
        } => (false, agent, files, message),
        Cmd::RequestSpawn {
            name,
            files,
            message,
        } => (true, name, files, message),
        _ => unreachable!("only the proposal commands come here"),
    };
    proposal_files::check_message(&message)?;
    let files = proposal_files::read_files(&files)?;
    let client = AgentClient::connect(socket).await?;
    let opened = if spawn {
        client.request_spawn(agent, files, message).await?
    } else {
        client.propose_config(agent, files, message).await?
    };
    print(&opened)
}

fn print<T: Serialize>(value: &T) -> Result<()> {
    out(&serde_json::to_string(value)?)
}

fn done(_: ()) -> Result<()> {
    out("{}")
}

/// Writes one line to stdout and flushes it (a harness reads line by line),
/// returning (not panicking on) a closed pipe.
fn out(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Keeps error output to one line whatever the core's message contains.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `recv --follow`: print what is waiting, then every pushed message, across
/// reconnects, each message once.
async fn follow(socket: &Path, wait_ms: u64, max: u32, ack: bool) -> Result<()> {
    let mut seen = SeenIds::default();
    let mut backoff = Backoff::default();
    let mut stop = Stop::new()?;
    loop {
        let session = async {
            let client = AgentClient::connect(socket).await?;
            let mut pushes = take_pushes(&client)?;
            let first = client.recv(wait_ms, max).await?;
            backoff.reset();
            let mut show = |m: Message| {
                let client = client.clone();
                let new = seen.insert(m.id);
                async move {
                    if new {
                        print(&m)?;
                    }
                    // A repeat is acknowledged again: the first ack may be
                    // what the lost connection swallowed.
                    if ack {
                        client.ack(m.id).await?;
                    }
                    anyhow::Ok(())
                }
            };
            for m in first.messages {
                show(m).await?;
            }
            while let Some(Push::Message { message }) = pushes.next_push().await {
                show(message).await?;
            }
            Err::<(), _>(anyhow::Error::from(ClientError::Disconnected))
        };
        tokio::select! {
            r = session => match r {
                Err(e) if connection_lost(&e) => {
                    eprintln!("hive-agent: {}; reconnecting", one_line(&e.to_string()));
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            },
            () = stop.wait() => return Ok(()),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stop.wait() => return Ok(()),
        }
    }
}

fn connection_lost(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(ClientError::is_connection_lost)
}

fn take_pushes(client: &AgentClient) -> Result<Pushes, ClientError> {
    client
        .pushes()
        .ok_or_else(|| ClientError::Unexpected("push stream already taken".into()))
}

/// SIGTERM or SIGINT: the polite ways to stop `demo` and `recv --follow`.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Exponential backoff between reconnect attempts.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// The ids of messages already handled, bounded by [`MAX_SEEN`].
#[derive(Default)]
struct SeenIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenIds {
    /// Whether `id` was recorded (and not yet forgotten).
    fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }

    /// Records `id`; false if it was already there (a repeat).
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > MAX_SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the demo remembers across reconnects.
#[derive(Default)]
struct Demo {
    /// Greeted the peers and asked the question (once per run).
    started: bool,
    me: String,
    seen: SeenIds,
}

/// `demo`: a scripted agent. It sets its status, greets its peers, asks the
/// operator one question, then reacts to what arrives, reconnecting with
/// backoff whenever the core goes away, until SIGTERM or SIGINT.
async fn demo(socket: &Path) -> Result<()> {
    let mut stop = Stop::new()?;
    let mut state = Demo::default();
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            r = demo_session(socket, &mut state, &mut backoff) => {
                let e = match r { Ok(()) => ClientError::Disconnected, Err(e) => e };
                if !e.is_connection_lost() {
                    // A refusal we did not expect; log it and start over
                    // rather than exit, so the dev hive keeps its agents.
                    eprintln!("hive-agent demo: {}", one_line(&e.to_string()));
                }
            }
            () = stop.wait() => return Ok(()),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stop.wait() => return Ok(()),
        }
    }
}

async fn demo_session(
    socket: &Path,
    state: &mut Demo,
    backoff: &mut Backoff,
) -> Result<(), ClientError> {
    let client = AgentClient::connect(socket).await?;
    let mut pushes = take_pushes(&client)?;
    let me = client.whoami().await?;
    backoff.reset();
    eprintln!("hive-agent demo: connected as {}", one_line(&me.name));
    state.me = me.name.clone();
    if !state.started {
        client.status("demo: starting").await?;
        for to in greeting_targets(&me.name, &me.allowed_recipients) {
            let body = format!("hello from {}, a demo agent", me.name);
            soft(client.send(to, body, None).await)?;
        }
        ask_once(&client).await?;
        client.status("demo: waiting for the operator").await?;
        state.started = true;
    }
    let first = client.recv(0, MAX_RECV).await?;
    for m in first.messages {
        react(&client, state, m).await?;
    }
    while let Some(Push::Message { message }) = pushes.next_push().await {
        react(&client, state, message).await?;
    }
    Err(ClientError::Disconnected)
}

/// Whom the demo greets: `*` if the policy allows everyone, otherwise each
/// allowed agent except itself (the operator gets a question instead).
fn greeting_targets(me: &str, allowed: &[String]) -> Vec<Recipient> {
    if allowed.iter().any(|a| a == "*") {
        return vec![Recipient::All];
    }
    allowed
        .iter()
        .filter(|a| a.as_str() != "operator" && a.as_str() != me)
        .filter_map(|a| Recipient::parse(a).ok())
        .collect()
}

/// Asks the operator the demo question unless it is already open (a demo
/// restarted while its question waits must not ask twice).
async fn ask_once(client: &AgentClient) -> Result<(), ClientError> {
    let open = client.loose_ends().await?.asked.into_iter().any(|q| {
        q.to == Principal::Operator && q.question == DEMO_QUESTION && q.state == QuestionState::Open
    });
    if !open {
        let opts = AskOptions {
            options: DEMO_OPTIONS.iter().map(|s| s.to_string()).collect(),
            multi: false,
            ttl_s: None,
        };
        soft(client.ask(Recipient::Operator, DEMO_QUESTION, opts).await)?;
    }
    Ok(())
}

/// Turns a refusal by the core into a log line, so one forbidden send does
/// not stop the demo; a lost connection still ends the session.
fn soft<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_connection_lost() => Err(e),
        Err(e) => {
            eprintln!("hive-agent demo: {}", one_line(&e.to_string()));
            Ok(None)
        }
    }
}

/// Acknowledges one inbox item and reacts to it once.
async fn react(client: &AgentClient, state: &mut Demo, m: Message) -> Result<(), ClientError> {
    // Ack first, then react: a demo would rather miss a reaction after a
    // crash than say the same thing twice.
    soft(client.ack(m.id).await)?;
    if !state.seen.insert(m.id) {
        return Ok(());
    }
    match m.kind {
        ItemKind::Message => match &m.from {
            // Reply only to messages that are not replies themselves, so two
            // demos greeting each other exchange exactly one round.
            Principal::Agent(peer) if peer.as_str() != state.me && m.in_reply_to.is_none() => {
                let body = fit(
                    &format!("hi {peer}, {} here. You said: {}", state.me, m.body),
                    MAX_BODY,
                );
                soft(
                    client
                        .send(Recipient::Agent(peer.clone()), body, Some(m.id))
                        .await,
                )?;
            }
            Principal::Operator => {
                let text = fit(&format!("demo: the operator wrote: {}", m.body), MAX_STATUS);
                soft(client.status(text).await)?;
                if m.in_reply_to.is_none() {
                    let body = "Got your message, thanks.";
                    soft(client.send(Recipient::Operator, body, Some(m.id)).await)?;
                }
            }
            _ => {}
        },
        ItemKind::Answer => {
            let text = fit(&format!("demo: {} said {}", m.from, m.body), MAX_STATUS);
            soft(client.status(text).await)?;
            if m.from == Principal::Operator {
                let body = fit(&format!("Thank you! I heard: {}", m.body), MAX_BODY);
                soft(client.send(Recipient::Operator, body, None).await)?;
            }
        }
        ItemKind::Reminder => {
            let text = fit(&format!("demo: reminder: {}", m.body), MAX_STATUS);
            soft(client.status(text).await)?;
        }
        ItemKind::Question => {
            if let Some(qid) = m.question_id {
                let answer = m
                    .options
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "I am only a demo agent.".into());
                soft(client.answer(qid, answer).await)?;
            }
        }
        ItemKind::QuestionExpired => {
            soft(client.status("demo: my question expired unanswered").await)?;
        }
        ItemKind::ApprovalDecided => {
            let text = fit(&format!("demo: {}", m.body), MAX_STATUS);
            soft(client.status(text).await)?;
        }
        ItemKind::QuestionCancelled => {}
        ItemKind::AgentCrashed => {
            let text = fit(&format!("demo: {}", m.body), MAX_STATUS);
            soft(client.status(text).await)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_greets_star_or_each_allowed_peer_but_not_itself() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(greeting_targets("alice", &s(&["*"])), vec![Recipient::All]);
        assert_eq!(
            greeting_targets("alice", &s(&["operator", "alice", "bob", "carol"])),
            vec![
                Recipient::parse("bob").unwrap(),
                Recipient::parse("carol").unwrap()
            ]
        );
        assert!(greeting_targets("alice", &s(&["operator"])).is_empty());
    }

    #[test]
    fn seen_ids_drop_repeats_and_stay_bounded() {
        let mut seen = SeenIds::default();
        assert!(seen.insert(1));
        assert!(!seen.insert(1));
        for id in 2..(MAX_SEEN as u64 + 10) {
            seen.insert(id);
        }
        assert!(seen.set.len() <= MAX_SEEN);
        assert!(seen.insert(1), "the oldest id was forgotten first");
    }

    #[test]
    fn fit_cuts_on_a_character_boundary() {
        assert_eq!(fit("abc", 3), "abc");
        let cut = fit("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert_eq!(b.next_delay(), first * 2);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_START);
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_environment() {
        let cli = Cli::try_parse_from(["hive-agent", "--socket", "/tmp/x.sock", "whoami"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        let cli = Cli::try_parse_from([
            "hive-agent",
            "ask",
            "operator",
            "ship?",
            "--option",
            "yes",
            "--option",
            "no",
            "--ttl",
            "60",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Ask { options, ttl, .. } => {
                assert_eq!(options, ["yes", "no"]);
                assert_eq!(ttl, Some(60));
            }
            _ => panic!("parsed as another command"),
        }
        assert!(Cli::try_parse_from(["hive-agent", "send", "../x", "hi"]).is_err());
    }
}
