//! `hivectl`: the operator's shell on `admin.sock`.
//!
//! Every command is one [`AdminRequest`] (or a subscription) on the admin
//! socket; the core decides who the operator is from SO_PEERCRED, so this
//! program never claims a name. Listings print aligned plain-text tables, or
//! the view types as JSON with `--json`. Any failure is one line on stderr
//! and exit code 1.
//!
//! This program must never hold state of its own or retry a call that may
//! have reached the core: what it prints is what the core answered.

#[path = "../common/proposal_files.rs"]
mod proposal_files;
mod render;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use hive_proto::client::operator::{subscribe_as, OperatorClient, Streamed};
use hive_proto::client::ClientError;
use hive_proto::command_line;
use hive_proto::operator::{
    AdminRequest, LifecycleAction, OperatorRequest, OperatorResponse, SecretValue, MAX_SECRET_BYTES,
};
use hive_proto::{AgentName, Principal, SecretKey};
use proposal_files::FileArg;
use serde::Serialize;

/// Where the admin socket lives on a host set up by the NixOS module.
const DEFAULT_SOCKET: &str = "/run/hyperhive/admin.sock";

/// Rows asked for per `Audit` call; `audit` pages until it has them all.
const AUDIT_PAGE: u32 = 500;

/// How long `events` without `--follow` waits for the next event before it
/// decides it has caught up, should the stream stop short of the head the
/// core reported (events pruned in between).
const CATCH_UP_IDLE: Duration = Duration::from_secs(2);

/// Commits `config log` shows unless told otherwise.
const LOG_DEFAULT: u32 = 50;

const CLIENT_NAME: &str = concat!("hivectl ", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(
    name = "hivectl",
    version,
    about = "Operate a hyperhive from the shell"
)]
struct Cli {
    /// The core's admin socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON (the protocol's view types) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The core's version, runtime, uptime and whether network isolation is
    /// enforced; exit 1 when it should be and is not.
    Health,
    /// List every agent with its state, status and unread count.
    Agents,
    /// Show one agent: state, status, policy, open questions, reminders.
    Status { name: AgentName },
    /// Show a mailbox, newest first: an agent's inbox, or `operator`.
    Messages {
        /// An agent name, or `operator`.
        name: Principal,
        /// At most this many messages.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only messages older than this id (to page back).
        #[arg(long)]
        before: Option<u64>,
    },
    /// List the open questions addressed to the operator.
    Questions,
    /// Answer a question addressed to the operator.
    Answer { id: u64, text: String },
    /// Send a message to an agent as the operator.
    Send { name: AgentName, text: String },
    /// Print the hive's events since SEQ; with --follow, keep printing.
    Events {
        /// Keep the stream open and print events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Start after this event sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Start an agent's container.
    Start { name: AgentName },
    /// Stop it: SIGTERM to its init, then SIGKILL after the stop timeout.
    Stop { name: AgentName },
    /// Stop it, then start it.
    Restart { name: AgentName },
    /// Freeze it; nothing is delivered while paused, messages queue.
    Pause { name: AgentName },
    /// Thaw a paused agent.
    Resume { name: AgentName },
    /// Recreate its container from its config and restart it.
    Rebuild { name: AgentName },
    /// Remove its container; its state dir stays unless --purge.
    Destroy {
        name: AgentName,
        /// Also remove the agent's own dirs (state, sockets) and nothing else.
        #[arg(long)]
        purge: bool,
    },
    /// List the pending approvals (config proposals and spawn requests).
    Approvals {
        /// Also print each one's diff.
        #[arg(long)]
        diff: bool,
    },
    /// Approve one: merge it into main, then rebuild (or create) the agent.
    Approve { id: u64 },
    /// Deny one; the proposer receives REASON.
    Deny { id: u64, reason: String },
    /// The config repo: propose, revert, log, show, diff.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// An agent's secrets, mounted at /run/secrets/KEY in its container.
    Secret {
        #[command(subcommand)]
        action: SecretCmd,
    },
    /// Check the live host: socket modes and owners, the gateway's uid and
    /// capabilities, the hive's nftables table, and probes from inside each
    /// running agent's container (`blocked` or `OPEN`). One line per check;
    /// exit 1 when any line is not `ok` or `blocked`.
    Doctor,
    /// Print the audit log, or verify its hash chain (`audit verify`).
    Audit {
        #[command(subcommand)]
        action: Option<AuditCmd>,
        /// Only rows with a sequence number above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store (or replace) AGENT's secret KEY; the value is read from stdin,
    /// never from the command line.
    Set { agent: AgentName, key: SecretKey },
    /// List the names of AGENT's secrets (never their values).
    List { agent: AgentName },
    /// Remove AGENT's secret KEY.
    Rm { agent: AgentName, key: SecretKey },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Propose files for NAME as this operator (a new agent if NAME is not
    /// in main); it becomes a pending approval like an agent's proposal.
    Propose {
        name: AgentName,
        /// A file for `agents/NAME/REL`, with the content of the local file
        /// LOCAL (repeat for several).
        #[arg(long = "file", value_name = "REL=LOCAL", required = true)]
        files: Vec<FileArg>,
        /// The commit message.
        #[arg(short, long)]
        message: String,
    },
    /// Commit the revert of SHA on main and rebuild the agents it changes.
    Revert { sha: String },
    /// main's history, newest first; with NAME, only commits touching it.
    Log {
        name: Option<AgentName>,
        /// At most this many commits.
        #[arg(long, default_value_t = LOG_DEFAULT)]
        limit: u32,
    },
    /// NAME's files at a revision (main, a sha, main~1, …).
    Show {
        name: AgentName,
        #[arg(long, default_value = "main")]
        rev: String,
    },
    /// The diff of NAME's files from what runs to main.
    Diff { name: AgentName },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain; exit 1 with the first bad row if broken.
    Verify,
    /// Print every row after --since as one JSON object per line (with its
    /// hash), page by page, for safekeeping outside the host.
    Export {
        /// Only rows with a sequence number above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match command_line::parse_or_one_line::<Cli>("hivectl") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`hivectl events | head`) is the reader's choice to
        // stop, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined by ": ".
            eprintln!("hivectl: {}", render::clean(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Events { follow, since } = cli.cmd {
        return events(&cli.socket, cli.json, follow, since).await;
    }
    let client = OperatorClient::<AdminRequest>::connect_as(&cli.socket, CLIENT_NAME).await?;
    let call = |req: OperatorRequest| {
        let client = client.clone();
        async move { client.call(AdminRequest::Operator(req)).await }
    };
    let json = cli.json;
    match cli.cmd {
        Cmd::Health => match call(OperatorRequest::Health).await? {
            OperatorResponse::Health(h) => {
                print(json, &h, render::health)?;
                if matches!(
                    h.network,
                    hive_proto::operator::NetworkIsolation::Failed { .. }
                ) {
                    // The sentence is printed above; the status says it too.
                    let _ = std::io::stdout().flush();
                    std::process::exit(1);
                }
            }
            other => return unexpected(other),
        },
        Cmd::Agents => match call(OperatorRequest::ListAgents).await? {
            OperatorResponse::Agents(list) => print(json, list.as_slice(), render::agents)?,
            other => return unexpected(other),
        },
        Cmd::Status { name } => match call(OperatorRequest::AgentDetail { name }).await? {
            OperatorResponse::Agent(d) => print(json, &*d, render::detail)?,
            other => return unexpected(other),
        },
        Cmd::Messages {
            name,
            limit,
            before,
        } => {
            let req = OperatorRequest::Messages {
                mailbox: name,
                before,
                limit,
            };
            match call(req).await? {
                OperatorResponse::Messages(list) => print(json, list.as_slice(), render::messages)?,
                other => return unexpected(other),
            }
        }
        Cmd::Questions => match call(OperatorRequest::Questions).await? {
            OperatorResponse::Questions(list) => print(json, list.as_slice(), render::questions)?,
            other => return unexpected(other),
        },
        Cmd::Answer { id, text } => {
            match call(OperatorRequest::AnswerQuestion { id, answer: text }).await? {
                OperatorResponse::Done => {
                    done(json, serde_json::json!({ "answered": id }), || {
                        format!("answered question {id}")
                    })?
                }
                other => return unexpected(other),
            }
        }
        Cmd::Send { name, text } => {
            let to = name.clone();
            match call(OperatorRequest::SendMessage { to, body: text }).await? {
                OperatorResponse::MessageSent { id } => {
                    done(json, serde_json::json!({ "id": id }), || {
                        format!("sent message {id} to {name}")
                    })?
                }
                other => return unexpected(other),
            }
        }
        Cmd::Audit {
            action: Some(AuditCmd::Verify),
            ..
        } => match client.call(AdminRequest::AuditVerify).await {
            Ok(OperatorResponse::AuditVerified { rows, head }) => done(
                json,
                serde_json::json!({ "rows": rows, "head": head }),
                || format!("audit chain intact: {rows} rows, head {head}"),
            )?,
            // The core names the first bad row; that sentence is the output.
            Err(ClientError::Rpc(e)) => bail!("audit verify failed: {}", e.message),
            Err(e) => return Err(e.into()),
            Ok(other) => return unexpected(other),
        },
        Cmd::Audit {
            action: Some(AuditCmd::Export { since }),
            ..
        } => audit_export(&client, since).await?,
        Cmd::Audit {
            action: None,
            since,
            limit,
        } => {
            let rows = audit_rows(&client, since, limit).await?;
            print(json, rows.as_slice(), render::audit)?;
        }
        Cmd::Start { name } => lifecycle(&client, json, name, LifecycleAction::Start).await?,
        Cmd::Stop { name } => lifecycle(&client, json, name, LifecycleAction::Stop).await?,
        Cmd::Restart { name } => lifecycle(&client, json, name, LifecycleAction::Restart).await?,
        Cmd::Pause { name } => lifecycle(&client, json, name, LifecycleAction::Pause).await?,
        Cmd::Resume { name } => lifecycle(&client, json, name, LifecycleAction::Resume).await?,
        Cmd::Rebuild { name } => lifecycle(&client, json, name, LifecycleAction::Rebuild).await?,
        Cmd::Destroy { name, purge: false } => {
            lifecycle(&client, json, name, LifecycleAction::Destroy).await?
        }
        Cmd::Destroy { name, purge: true } => {
            match client
                .call(AdminRequest::Purge { name: name.clone() })
                .await?
            {
                OperatorResponse::Done => done(
                    json,
                    serde_json::json!({ "agent": name, "action": "destroy", "purge": true }),
                    || format!("destroyed {name} and removed its dirs"),
                )?,
                other => return unexpected(other),
            }
        }
        Cmd::Approvals { diff } => match call(OperatorRequest::Pending).await? {
            OperatorResponse::Approvals(list) => {
                let table = |l: &[hive_proto::operator::Approval]| render::approvals(l, diff);
                print(json, list.as_slice(), table)?
            }
            other => return unexpected(other),
        },
        Cmd::Approve { id } => match call(OperatorRequest::Approve { id }).await? {
            OperatorResponse::Done => done(json, serde_json::json!({ "approved": id }), || {
                format!("approved #{id}")
            })?,
            other => return unexpected(other),
        },
        Cmd::Deny { id, reason } => match call(OperatorRequest::Deny { id, reason }).await? {
            OperatorResponse::Done => done(json, serde_json::json!({ "denied": id }), || {
                format!("denied #{id}")
            })?,
            other => return unexpected(other),
        },
        Cmd::Config { action } => config(&client, json, action).await?,
        Cmd::Secret { action } => secret(&client, json, action).await?,
        Cmd::Doctor => match client.call(AdminRequest::Doctor).await? {
            OperatorResponse::Doctor(report) => {
                print(json, &report, render::doctor)?;
                if !report.healthy() {
                    // The lines above say what; the status says it too.
                    let _ = std::io::stdout().flush();
                    std::process::exit(1);
                }
            }
            other => return unexpected(other),
        },
        Cmd::Events { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `config propose|revert|log|show|diff`: admin verbs on the config repo.
async fn config(
    client: &OperatorClient<AdminRequest>,
    json: bool,
    action: ConfigCmd,
) -> Result<()> {
    let req = match action {
        ConfigCmd::Propose {
            name,
            files,
            message,
        } => {
            proposal_files::check_message(&message)?;
            AdminRequest::ConfigPropose {
                agent: name,
                files: proposal_files::read_files(&files)?,
                message,
            }
        }
        ConfigCmd::Revert { sha } => AdminRequest::ConfigRevert { rev: sha },
        ConfigCmd::Log { name, limit } => AdminRequest::ConfigLog { agent: name, limit },
        ConfigCmd::Show { name, rev } => AdminRequest::ConfigShow { agent: name, rev },
        ConfigCmd::Diff { name } => AdminRequest::ConfigDiff { agent: name },
    };
    match client.call(req).await? {
        OperatorResponse::Proposed(p) => print(json, &p, |p| {
            format!(
                "proposed #{} on {} (commit {}); approve with `hivectl approve {}`",
                p.approval_id, p.branch, p.commit, p.approval_id
            )
        }),
        OperatorResponse::Reverted { main } => {
            done(json, serde_json::json!({ "main": main }), || {
                format!("reverted; main is now {main}")
            })
        }
        OperatorResponse::ConfigLog(log) => print(json, log.as_slice(), render::config_log),
        OperatorResponse::Config { sha, files } => {
            let shown = serde_json::json!({ "sha": sha, "files": files });
            if json {
                out(&serde_json::to_string_pretty(&shown)?)
            } else {
                out(render::config_files(sha.as_deref(), &files).trim_end_matches('\n'))
            }
        }
        OperatorResponse::Diff(diff) => {
            if json {
                out(&serde_json::json!({ "diff": diff }).to_string())
            } else if diff.is_empty() {
                out("no difference: it runs main")
            } else {
                out(render::text_block(&diff).trim_end_matches('\n'))
            }
        }
        other => unexpected(other),
    }
}

/// `secret set|list|rm`: admin verbs only, the value read from stdin.
async fn secret(
    client: &OperatorClient<AdminRequest>,
    json: bool,
    action: SecretCmd,
) -> Result<()> {
    match action {
        SecretCmd::Set { agent, key } => {
            let value = SecretValue(read_secret_value()?);
            let req = AdminRequest::SecretSet {
                agent: agent.clone(),
                key: key.clone(),
                value,
            };
            match client.call(req).await? {
                OperatorResponse::Done => done(
                    json,
                    serde_json::json!({ "agent": agent, "secret": key, "action": "set" }),
                    || format!("set secret {key} of {agent}"),
                ),
                other => unexpected(other),
            }
        }
        SecretCmd::List { agent } => match client
            .call(AdminRequest::Operator(OperatorRequest::SecretNames {
                agent,
            }))
            .await?
        {
            OperatorResponse::Secrets(keys) => print(json, keys.as_slice(), |keys| {
                keys.iter().map(|k| format!("{k}\n")).collect()
            }),
            other => unexpected(other),
        },
        SecretCmd::Rm { agent, key } => {
            let req = AdminRequest::SecretRemove {
                agent: agent.clone(),
                key: key.clone(),
            };
            match client.call(req).await? {
                OperatorResponse::Done => done(
                    json,
                    serde_json::json!({ "agent": agent, "secret": key, "action": "rm" }),
                    || format!("removed secret {key} of {agent}"),
                ),
                other => unexpected(other),
            }
        }
    }
}

/// The secret from stdin, refusing a terminal (it would echo the value)
/// and anything over the limit, before anything is sent.
fn read_secret_value() -> Result<Vec<u8>> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "the secret is read from stdin, and stdin is a terminal (it would echo): pipe it in, \
             e.g. `read -rs V && printf %s \"$V\" | hivectl secret set AGENT KEY`"
        );
    }
    let mut value = Vec::new();
    stdin
        .lock()
        .take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut value)
        .context("reading the secret from stdin")?;
    if value.len() > MAX_SECRET_BYTES {
        bail!("the secret on stdin is over {MAX_SECRET_BYTES} bytes; nothing was stored");
    }
    if value.is_empty() {
        bail!("stdin was empty; nothing was stored");
    }
    Ok(value)
}

/// One lifecycle action; prints what was done once the core says it is.
async fn lifecycle(
    client: &OperatorClient<AdminRequest>,
    json: bool,
    name: AgentName,
    action: LifecycleAction,
) -> Result<()> {
    let req = OperatorRequest::Lifecycle {
        name: name.clone(),
        action,
    };
    match client.call(AdminRequest::Operator(req)).await? {
        OperatorResponse::Done => {
            let (verb, past) = match action {
                LifecycleAction::Start => ("start", "started"),
                LifecycleAction::Stop => ("stop", "stopped"),
                LifecycleAction::Restart => ("restart", "restarted"),
                LifecycleAction::Pause => ("pause", "paused"),
                LifecycleAction::Resume => ("resume", "resumed"),
                LifecycleAction::Rebuild => ("rebuild", "rebuilt"),
                LifecycleAction::Destroy => ("destroy", "destroyed"),
            };
            done(
                json,
                serde_json::json!({ "agent": name, "action": verb }),
                || format!("{past} {name}"),
            )
        }
        other => unexpected(other),
    }
}

/// `audit export`: streams the rows after `since` as JSON lines, one page
/// at a time, until the core has no more.
async fn audit_export(client: &OperatorClient<AdminRequest>, mut since: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    loop {
        let req = AdminRequest::AuditExport {
            since,
            limit: AUDIT_PAGE,
        };
        let page = match client.call(req).await? {
            OperatorResponse::Audit(page) => page,
            other => return unexpected(other),
        };
        let Some(last) = page.last().map(|r| r.seq) else {
            return Ok(());
        };
        if last <= since {
            bail!("the core returned audit rows at or before seq {since}");
        }
        for row in &page {
            serde_json::to_writer(&mut out, row)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        since = last;
    }
}

/// Pages through the audit log from `since` until the core has no more rows
/// (or `limit` is reached), whatever page size the core clamps us to.
async fn audit_rows(
    client: &OperatorClient<AdminRequest>,
    mut since: u64,
    limit: Option<u64>,
) -> Result<Vec<hive_proto::view::AuditEntry>> {
    let mut rows = Vec::new();
    loop {
        let want = limit.map_or(u64::from(AUDIT_PAGE), |l| {
            (l - rows.len() as u64).min(u64::from(AUDIT_PAGE))
        });
        if want == 0 {
            break;
        }
        let req = OperatorRequest::Audit {
            since,
            limit: want as u32,
        };
        let page = match client.call(AdminRequest::Operator(req)).await? {
            OperatorResponse::Audit(page) => page,
            other => return unexpected(other),
        };
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        // A core that does not move forward would loop us forever.
        if last <= since {
            bail!("the core returned audit rows at or before seq {since}");
        }
        since = last;
        rows.extend(page);
    }
    Ok(rows)
}

/// Streams events. Without `follow`, it asks the core for the newest event's
/// sequence number first and stops once it has printed that one, so the
/// output is exactly "everything so far"; [`CATCH_UP_IDLE`] only guards
/// against a stream that stops short of that head.
async fn events(socket: &std::path::Path, json: bool, follow: bool, since: u64) -> Result<()> {
    let head = if follow {
        None
    } else {
        let client = OperatorClient::<AdminRequest>::connect_as(socket, CLIENT_NAME).await?;
        match client
            .call(AdminRequest::Operator(OperatorRequest::Health))
            .await?
        {
            OperatorResponse::Health(h) => Some(h.last_event_seq),
            other => return unexpected(other),
        }
    };
    let mut since = since;
    loop {
        if head.is_some_and(|h| since >= h) {
            return Ok(());
        }
        let mut stream = subscribe_as(socket, since, CLIENT_NAME).await?;
        loop {
            let item = if follow {
                stream.next_item().await
            } else {
                match tokio::time::timeout(CATCH_UP_IDLE, stream.next_item()).await {
                    Ok(item) => item,
                    Err(_) => return Ok(()),
                }
            };
            match item {
                Some(Ok(Streamed::Event(record))) => {
                    since = record.seq;
                    if json {
                        out(&serde_json::to_string(&record)?)?;
                    } else {
                        out(&render::event(&record))?;
                    }
                    if head.is_some_and(|h| since >= h) {
                        return Ok(());
                    }
                }
                Some(Ok(Streamed::Lagged { resume_from })) => {
                    // The events in between are gone from the store; say so
                    // and carry on from where the core can resume.
                    eprintln!(
                        "hivectl: events {}..{resume_from} are no longer kept; continuing",
                        since + 1
                    );
                    since = resume_from;
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(anyhow!("the event stream ended")),
            }
        }
    }
}

fn print<T: Serialize + ?Sized>(json: bool, value: &T, table: impl Fn(&T) -> String) -> Result<()> {
    if json {
        out(&serde_json::to_string_pretty(value)?)?;
    } else {
        out(table(value).trim_end_matches('\n'))?;
    }
    Ok(())
}

fn done(json: bool, value: serde_json::Value, text: impl Fn() -> String) -> Result<()> {
    if json {
        out(&value.to_string())?;
    } else {
        out(&text())?;
    }
    Ok(())
}

/// Writes one line to stdout, returning (not panicking on) a closed pipe.
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

fn unexpected<T>(resp: OperatorResponse) -> Result<T> {
    let kind = format!("{resp:?}");
    let kind = kind.split(['(', ' ', '{']).next().unwrap_or("?");
    Err(anyhow!(
        "the core answered with {kind}, which this hivectl does not expect here"
    ))
    .context("unexpected reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_in_any_position() {
        let cli = Cli::try_parse_from(["hivectl", "messages", "operator", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.cmd,
            Cmd::Messages {
                name: Principal::Operator,
                limit: 50,
                before: None
            }
        ));
        let cli =
            Cli::try_parse_from(["hivectl", "--socket", "/tmp/a.sock", "audit", "verify"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/a.sock"));
        assert!(matches!(
            cli.cmd,
            Cmd::Audit {
                action: Some(AuditCmd::Verify),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["hivectl", "audit", "--since", "9"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Audit {
                action: None,
                since: 9,
                ..
            }
        ));
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_sent() {
        let bad: [&[&str]; 3] = [
            &["hivectl", "status", "../etc"],
            &["hivectl", "send", "Bob", "hi"],
            &["hivectl", "messages", "a/b"],
        ];
        for argv in bad {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
