//! Turning the core's answers into what a terminal shows: aligned plain-text
//! tables with one line per row, UTC timestamps, and agent-written text made
//! safe to print.
//!
//! Everything an agent wrote (status, message bodies, questions) is data: it
//! must never reach the terminal as control characters, or an agent could
//! move the operator's cursor, rewrite earlier lines or set the window title.
//! So every cell goes through [`clean`]. This module must never print.

use hive_proto::event::{Event, EventRecord};
use hive_proto::operator::{Approval, ConfigCommit};
use hive_proto::view::{AgentDetail, AgentSummary, AuditEntry, Message, Question, Reminder};
use hive_proto::UnixMillis;

/// Widest a cell other than a row's last may be, in characters; longer text
/// is cut with `…` so one long status cannot push every column off screen.
/// The last column is never cut (it is where bodies and statuses go).
pub const MAX_CELL_CHARS: usize = 60;

/// Columns are separated by this many spaces.
const GAP: usize = 2;

/// A table: a header row and data rows, rendered with aligned columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row; every cell is cleaned, and all but the last are cut.
    pub fn row(&mut self, cells: Vec<String>) {
        let last = cells.len().saturating_sub(1);
        let cells = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let c = clean(&c);
                if i < last {
                    cut(&c, MAX_CELL_CHARS)
                } else {
                    c
                }
            })
            .collect();
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Makes text safe to print on one terminal line: control characters
/// (newline and escape included) and bidirectional overrides are shown as
/// escapes instead of acting on the terminal.
pub fn clean(s: &str) -> String {
    hive_proto::command_line::escape_controls(s)
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

pub use hive_proto::time::utc as time;

fn opt_time(ms: Option<UnixMillis>) -> String {
    ms.map(time).unwrap_or_else(|| "-".into())
}

fn dash(s: Option<&str>) -> String {
    s.map(str::to_owned).unwrap_or_else(|| "-".into())
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

pub fn health(h: &hive_proto::operator::Health) -> String {
    format!(
        "hive-core {} ({} runtime), up {} s, {} agents ({} connected), last event {}\n{}",
        h.version,
        h.runtime,
        h.uptime_ms / 1000,
        h.agents,
        h.connected_agents,
        h.last_event_seq,
        h.network.sentence()
    )
}

pub fn agents(list: &[AgentSummary]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "CONN",
        "UNREAD",
        "QUESTIONS",
        "DEPLOYED",
        "STATUS",
    ]);
    for a in list {
        let sha = match (&a.deployed_sha, a.needs_update) {
            (Some(sha), true) => format!("{}*", short(sha)),
            (Some(sha), false) => short(sha),
            (None, true) => "-*".into(),
            (None, false) => "-".into(),
        };
        t.row(vec![
            a.name.to_string(),
            snake(&a.run_state),
            a.connections.to_string(),
            a.unread.to_string(),
            a.open_questions.to_string(),
            sha,
            dash(a.status.as_deref()),
        ]);
    }
    t.render()
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

pub fn detail(d: &AgentDetail) -> String {
    let s = &d.summary;
    let mut kv = Table::new(&["AGENT", &clean(s.name.as_str())]);
    kv.row(vec!["state".into(), snake(&s.run_state)]);
    kv.row(vec!["connections".into(), s.connections.to_string()]);
    kv.row(vec!["status".into(), dash(s.status.as_deref())]);
    kv.row(vec!["status at".into(), opt_time(s.status_at)]);
    kv.row(vec!["last activity".into(), opt_time(s.last_activity_at)]);
    kv.row(vec!["unread".into(), s.unread.to_string()]);
    kv.row(vec!["open questions".into(), s.open_questions.to_string()]);
    kv.row(vec!["deployed".into(), dash(s.deployed_sha.as_deref())]);
    kv.row(vec!["needs update".into(), s.needs_update.to_string()]);
    kv.row(vec!["container".into(), dash(s.container.as_deref())]);
    kv.row(vec![
        "uid range".into(),
        s.uid_range.map_or("-".into(), |r| {
            format!("{}-{}", r.base, r.base + (r.count - 1))
        }),
    ]);
    kv.row(vec![
        "leader pid".into(),
        s.leader_pid.map_or("-".into(), |p| p.to_string()),
    ]);
    kv.row(vec!["may message".into(), d.allowed_recipients.join(", ")]);
    let mut out = kv.render();
    out.push_str("\nQUESTIONS\n");
    out.push_str(&questions(&d.questions));
    out.push_str("\nREMINDERS\n");
    out.push_str(&reminders(&d.reminders));
    out
}

pub fn questions(list: &[Question]) -> String {
    let mut t = Table::new(&[
        "ID", "ASKED", "FROM", "TO", "STATE", "EXPIRES", "OPTIONS", "QUESTION",
    ]);
    for q in list {
        let options = if q.options.is_empty() {
            "-".to_owned()
        } else {
            let sep = if q.multi { " + " } else { " / " };
            q.options.join(sep)
        };
        t.row(vec![
            q.id.to_string(),
            time(q.asked_at),
            q.asker.to_string(),
            q.to.to_string(),
            snake(&q.state),
            opt_time(q.expires_at),
            options,
            q.question.clone(),
        ]);
    }
    t.render()
}

pub fn reminders(list: &[Reminder]) -> String {
    let mut t = Table::new(&["ID", "DUE", "AGENT", "BODY"]);
    for r in list {
        t.row(vec![
            r.id.to_string(),
            time(r.due_at),
            r.agent.to_string(),
            r.body.clone(),
        ]);
    }
    t.render()
}

pub fn messages(list: &[Message]) -> String {
    let mut t = Table::new(&[
        "ID", "SENT", "FROM", "TO", "KIND", "REPLY-TO", "ACKED", "BODY",
    ]);
    for m in list {
        t.row(vec![
            m.id.to_string(),
            time(m.sent_at),
            m.from.to_string(),
            m.to.to_string(),
            m.kind.as_str().to_owned(),
            m.in_reply_to
                .map_or_else(|| "-".into(), |id| id.to_string()),
            if m.acked_at.is_some() { "yes" } else { "no" }.into(),
            m.body.clone(),
        ]);
    }
    t.render()
}

pub fn audit(list: &[AuditEntry]) -> String {
    let mut t = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "HASH", "DETAIL"]);
    for a in list {
        t.row(vec![
            a.seq.to_string(),
            time(a.at),
            a.actor.clone(),
            a.action.clone(),
            short(&a.hash),
            a.detail.clone(),
        ]);
    }
    t.render()
}

/// Pending approvals as a table; with `diffs`, each one's message, conflict
/// and diff below it. The proposer's message and diff are its own words:
/// every line is cleaned.
pub fn approvals(list: &[Approval], diffs: bool) -> String {
    let mut t = Table::new(&[
        "ID", "CREATED", "AGENT", "KIND", "PROPOSER", "CONFLICT", "MESSAGE",
    ]);
    for a in list {
        t.row(vec![
            a.id.to_string(),
            time(a.created_at),
            a.agent.to_string(),
            snake(&a.kind),
            a.proposer.to_string(),
            dash(a.conflict.as_deref()),
            a.message.lines().next().unwrap_or("").to_owned(),
        ]);
    }
    let mut out = t.render();
    if diffs {
        for a in list {
            out.push_str(&format!(
                "\n#{} {} ({}) by {}\n",
                a.id,
                a.agent,
                snake(&a.kind),
                clean(&a.proposer.to_string())
            ));
            out.push_str(&text_block(&a.message));
            if let Some(c) = &a.conflict {
                out.push_str(&format!("conflict: {}\n", clean(c)));
            }
            out.push_str(&text_block(&a.diff));
        }
    }
    out
}

/// `config log`: one commit per line, newest first.
pub fn config_log(list: &[ConfigCommit]) -> String {
    let mut t = Table::new(&["SHA", "TIME", "AUTHOR", "COMMITTER", "SUMMARY"]);
    for c in list {
        t.row(vec![
            short(&c.sha),
            time(c.time.saturating_mul(1000)),
            c.author.clone(),
            c.committer.clone(),
            c.summary.clone(),
        ]);
    }
    t.render()
}

/// `config show`: each file under a `==> path <==` header, as `tail` does
/// for several files, its lines cleaned.
pub fn config_files(sha: Option<&str>, files: &[(String, String)]) -> String {
    let mut out = format!("revision {}\n", dash(sha));
    for (path, text) in files {
        out.push_str(&format!("\n==> {} <==\n", clean(path)));
        out.push_str(&text_block(text));
    }
    out
}

/// Multi-line text (a diff, a file) with each line cleaned, so it keeps its
/// lines but no control character reaches the terminal.
pub fn text_block(text: &str) -> String {
    text.lines().map(|l| format!("{}\n", clean(l))).collect()
}

/// One event as one line: `SEQ  TIME  WHAT`. Events stream, so they cannot
/// be aligned as a table; the first two fields have fixed widths instead.
pub fn event(r: &EventRecord) -> String {
    format!(
        "{:>8}  {}  {}",
        r.seq,
        time(r.at),
        clean(&describe(&r.event))
    )
}

fn describe(e: &Event) -> String {
    match e {
        Event::AgentStatus { agent, text } => format!("{agent} status: {text}"),
        Event::AgentRunState { agent, state } => format!("{agent} is {}", snake(state)),
        Event::MessageSent { id, from, to } => format!("message {id} {from} -> {to}"),
        Event::MessageAcked { id, by } => format!("message {id} acked by {by}"),
        Event::QuestionAsked { id, asker, to } => format!("question {id} {asker} -> {to}"),
        Event::QuestionAnswered { id, by } => format!("question {id} answered by {by}"),
        Event::QuestionExpired { id } => format!("question {id} expired"),
        Event::QuestionCancelled { id } => format!("question {id} cancelled"),
        Event::ReminderSet { id, agent, due_at } => {
            format!("reminder {id} for {agent} due {}", time(*due_at))
        }
        Event::ReminderFired { id, agent } => format!("reminder {id} for {agent} fired"),
        Event::ReminderCancelled { id, agent } => {
            format!("reminder {id} for {agent} cancelled")
        }
        Event::ApprovalDecided { id, approved } => format!(
            "approval {id} {}",
            if *approved { "approved" } else { "denied" }
        ),
        Event::ApprovalOpened { id, agent } => format!("approval {id} for {agent} pending"),
        Event::AgentDeployed { agent, sha } => format!("{agent} deployed {sha}"),
        Event::AgentCrashed {
            agent,
            reason,
            restart_in_ms,
        } => match restart_in_ms {
            Some(ms) => format!("{agent} crashed: {reason}; restart in {ms} ms"),
            None => format!("{agent} crashed: {reason}; stays down"),
        },
    }
}

/// `hivectl doctor`: one line per check — the verdict word, what was
/// checked, what was found (and for a problem, how to fix it) — then a
/// summary line.
pub fn doctor(report: &hive_proto::doctor::DoctorReport) -> String {
    use hive_proto::doctor::Verdict;
    let mut out = String::new();
    for c in &report.checks {
        let found = match &c.verdict {
            Verdict::Ok { detail } => detail.clone(),
            Verdict::Wrong { what, fix } => format!("{what}; fix: {fix}"),
            Verdict::Blocked { how } | Verdict::Open { how } => how.clone(),
        };
        out.push_str(&format!(
            "{:<7}  {}: {}\n",
            c.verdict.word(),
            clean(&c.subject),
            clean(&found)
        ));
    }
    match report.problems() {
        0 => out.push_str(&format!(
            "all {} checks ok or blocked\n",
            report.checks.len()
        )),
        n => {
            let open = report
                .checks
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Open { .. }))
                .count();
            out.push_str(&format!(
                "{n} of {} checks found a problem ({open} OPEN)\n",
                report.checks.len()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use hive_proto::view::{ItemKind, Principal, RunState};
    use hive_proto::AgentName;

    fn check(got: String, want: Expect) {
        want.assert_eq(&got);
    }

    fn name(s: &str) -> AgentName {
        AgentName::new(s).unwrap()
    }

    #[test]
    fn a_doctor_report_is_one_line_per_check_with_the_fix_and_a_summary() {
        use hive_proto::doctor::{DoctorCheck, DoctorReport, Verdict};
        let line = |subject: &str, verdict| DoctorCheck {
            subject: subject.into(),
            verdict,
        };
        let mut report = DoctorReport {
            checks: vec![
                line(
                    "admin.sock /run/hyperhive/admin.sock",
                    Verdict::Ok {
                        detail: "0660 root:hive-admin".into(),
                    },
                ),
                line(
                    "probe alice -> 10.213.0.1:8080 (host address on ve-h-alice, gateway port)",
                    Verdict::Blocked {
                        how: "no answer within 1000 ms".into(),
                    },
                ),
            ],
        };
        check(
            doctor(&report),
            expect![[r#"
                ok       admin.sock /run/hyperhive/admin.sock: 0660 root:hive-admin
                blocked  probe alice -> 10.213.0.1:8080 (host address on ve-h-alice, gateway port): no answer within 1000 ms
                all 2 checks ok or blocked
            "#]],
        );
        report.checks.push(line(
            "web.sock /run/hyperhive/web.sock",
            Verdict::Wrong {
                what: "mode 0666, want 0660".into(),
                fix: "chmod 0660 /run/hyperhive/web.sock".into(),
            },
        ));
        report.checks.push(line(
            "probe alice -> [fd68:6976:6500:1::2]:8080 (agent bob)",
            Verdict::Open {
                how: "refused by the far end, so the packet got there\n\u{1b}[2J".into(),
            },
        ));
        check(
            doctor(&report),
            expect![[r#"
                ok       admin.sock /run/hyperhive/admin.sock: 0660 root:hive-admin
                blocked  probe alice -> 10.213.0.1:8080 (host address on ve-h-alice, gateway port): no answer within 1000 ms
                WRONG    web.sock /run/hyperhive/web.sock: mode 0666, want 0660; fix: chmod 0660 /run/hyperhive/web.sock
                OPEN     probe alice -> [fd68:6976:6500:1::2]:8080 (agent bob): refused by the far end, so the packet got there\n\u{1b}[2J
                2 of 4 checks found a problem (1 OPEN)
            "#]],
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        check(time(0), expect!["1970-01-01 00:00:00Z"]);
        check(time(951_782_400_000), expect!["2000-02-29 00:00:00Z"]);
        check(time(1_778_430_510_999), expect!["2026-05-10 16:28:30Z"]);
        check(time(-1), expect!["1969-12-31 23:59:59Z"]);
    }

    #[test]
    fn agent_written_control_characters_are_shown_not_obeyed() {
        check(
            clean("ok\n\u{1b}[2J\u{202e}evil\tx"),
            expect![[r#"ok\n\u{1b}[2J\u{202e}evil\tx"#]],
        );
    }

    #[test]
    fn agents_table_aligns_columns_and_marks_stale_deploys() {
        let row = |n: &str, status: Option<&str>, sha: Option<&str>, stale| AgentSummary {
            name: name(n),
            run_state: RunState::Running,
            connections: 1,
            status: status.map(Into::into),
            status_at: None,
            unread: 3,
            open_questions: 0,
            deployed_sha: sha.map(Into::into),
            main_sha: None,
            needs_update: stale,
            manager: false,
            container: None,
            uid_range: None,
            leader_pid: None,
            crash_reason: None,
            last_activity_at: None,
        };
        check(
            agents(&[
                row("alice", Some("demo: waiting\nfor you"), None, false),
                row("carol-the-long", None, Some("0123456789abcdef0123"), true),
            ]),
            expect![[r#"
                NAME            STATE    CONN  UNREAD  QUESTIONS  DEPLOYED       STATUS
                alice           running  1     3       0          -              demo: waiting\nfor you
                carol-the-long  running  1     3       0          0123456789ab*  -
            "#]],
        );
    }

    #[test]
    fn long_cells_are_cut_but_the_last_column_is_whole() {
        let m = Message {
            id: 12,
            kind: ItemKind::Answer,
            from: Principal::Operator,
            to: Principal::Agent(name("bob")),
            body: "b".repeat(70),
            in_reply_to: Some(3),
            question_id: Some(4),
            options: vec![],
            multi: false,
            sent_at: 0,
            acked_at: Some(5),
        };
        let out = messages(&[m]);
        assert!(out.contains(&"b".repeat(70)), "{out}");
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x".repeat(70), "y".into()]);
        assert!(t.render().contains(&format!("{}…  y", "x".repeat(59))));
    }

    #[test]
    fn approvals_show_conflicts_and_clean_diffs() {
        let a = Approval {
            id: 7,
            agent: name("alice"),
            kind: hive_proto::view::ApprovalKind::Config,
            proposer: Principal::Agent(name("alice")),
            message: "run fast\n\nbecause".into(),
            diff: "+env = { MODE = \"fast\" }\n+\u{1b}[2J".into(),
            created_at: 0,
            commit: "c0ffee".into(),
            state: hive_proto::view::ApprovalState::Pending,
            conflict: Some("agents/alice/agent.toml".into()),
            decided_by: None,
            decided_at: None,
            reason: None,
            merged_sha: None,
        };
        check(
            approvals(std::slice::from_ref(&a), true),
            expect![[r#"
                ID  CREATED               AGENT  KIND    PROPOSER  CONFLICT                 MESSAGE
                7   1970-01-01 00:00:00Z  alice  config  alice     agents/alice/agent.toml  run fast

                #7 alice (config) by alice
                run fast

                because
                conflict: agents/alice/agent.toml
                +env = { MODE = "fast" }
                +\u{1b}[2J
            "#]],
        );
        let log = ConfigCommit {
            sha: "0123456789abcdef".into(),
            summary: "approve #7 by operator:root (proposed by agent:alice): run fast".into(),
            author: "operator:root".into(),
            committer: "operator:root".into(),
            time: 1,
        };
        check(
            config_log(&[log]),
            expect![[r#"
                SHA           TIME                  AUTHOR         COMMITTER      SUMMARY
                0123456789ab  1970-01-01 00:00:01Z  operator:root  operator:root  approve #7 by operator:root (proposed by agent:alice): run fast
            "#]],
        );
    }

    #[test]
    fn events_render_one_line_each() {
        let r = EventRecord {
            seq: 42,
            at: 0,
            event: Event::AgentStatus {
                agent: name("alice"),
                text: "line\nbreak".into(),
            },
        };
        check(
            event(&r),
            expect![[r#"      42  1970-01-01 00:00:00Z  alice status: line\nbreak"#]],
        );
    }
}
