//! The wire contract, end to end through the codecs.
//!
//! - `every_*_round_trips`: property tests that encode every variant of every
//!   frame type with the sender's codec and decode it with the receiver's,
//!   and get the same value back.
//! - `strategies_cover_every_variant`: proves the generators below reach every
//!   variant; the `kind` functions match without a wildcard, so a new variant
//!   does not compile until it is generated here too.
//! - `encoded_bytes_*`: expect-test snapshots of a few frames and lines, so a
//!   change to the bytes on the wire shows up in review. Update them with
//!   `UPDATE_EXPECT=1 cargo test -p hive-proto --test wire` only when the
//!   change is meant (and `PROTO_VERSION` says so).

use std::collections::BTreeSet;

use bytes::BytesMut;
use expect_test::{expect, Expect};
use hive_proto::agent::ProposalResult;
use hive_proto::agent::{self, AgentRequest, CancelKind, Push, RequestLine, ServerLine};
use hive_proto::codec::{decode_frame, FrameCodec};
use hive_proto::doctor::{DoctorCheck, DoctorReport, Verdict};
use hive_proto::event::{Event, EventRecord};
use hive_proto::operator::{
    AdminRequest, Approval, ClientFrame, ConfigCommit, ConfigRev, DirEntry, Health, Hello,
    HelloReply, LifecycleAction, NetworkIsolation, OperatorRequest, OperatorResponse, RpcError,
    SecretValue, ServerFrame, Version, WebCall, WebRequest,
};
use hive_proto::variants::variant_names;
use hive_proto::view::{
    AgentDetail, AgentSummary, ApprovalKind, ApprovalState, AuditEntry, ErrorCode, ItemKind,
    Message, Question, QuestionState, Reminder, RunState, UidRange,
};
use hive_proto::{AgentName, Principal, Recipient, RelPath, SecretKey, PROTO_VERSION};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Encoder;

// ---------------------------------------------------------------- codecs --

/// Encodes `frame` as its sender does and decodes it as its receiver does.
fn through_codec<T: Serialize + DeserializeOwned + Clone>(frame: &T) -> (BytesMut, T) {
    let mut buf = BytesMut::new();
    FrameCodec::<(), T>::new()
        .encode(frame.clone(), &mut buf)
        .expect("every generated frame is under MAX_FRAME and encodes");
    let back = decode_frame::<T>(&buf)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    (buf, back)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------ strategies --

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including control characters and quotes.
    "\\PC{0,12}|.{0,6}"
}

fn secret_key() -> impl Strategy<Value = SecretKey> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}".prop_map(|s| SecretKey::new(&s).expect("valid key"))
}

fn name() -> impl Strategy<Value = AgentName> {
    "[a-z][a-z0-9-]{0,30}".prop_filter_map("reserved", |s| AgentName::new(&s).ok())
}

fn rel_path() -> impl Strategy<Value = RelPath> {
    "[a-z0-9._-]{1,8}(/[a-z0-9._-]{1,8}){0,3}".prop_filter_map("dotdot", |s| RelPath::new(&s).ok())
}

fn files() -> impl Strategy<Value = std::collections::BTreeMap<RelPath, String>> {
    prop::collection::btree_map(rel_path(), text(), 0..3)
}

fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        Just(Principal::Operator),
        Just(Principal::Hive),
        name().prop_map(Principal::Agent),
    ]
}

fn recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        Just(Recipient::Operator),
        Just(Recipient::All),
        name().prop_map(Recipient::Agent),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::UnknownOp),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::Limit),
        Just(ErrorCode::Conflict),
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
        Just(ErrorCode::QuotaExceeded),
    ]
}

fn run_state() -> impl Strategy<Value = RunState> {
    prop_oneof![
        Just(RunState::Unknown),
        Just(RunState::Stopped),
        Just(RunState::Starting),
        Just(RunState::Running),
        Just(RunState::Paused),
        Just(RunState::Crashed),
        Just(RunState::Stopping),
        Just(RunState::Idle),
    ]
}

fn item_kind() -> impl Strategy<Value = ItemKind> {
    prop_oneof![
        Just(ItemKind::Message),
        Just(ItemKind::Question),
        Just(ItemKind::Answer),
        Just(ItemKind::QuestionExpired),
        Just(ItemKind::QuestionCancelled),
        Just(ItemKind::Reminder),
        Just(ItemKind::ApprovalDecided),
        Just(ItemKind::AgentCrashed),
    ]
}

fn question_state() -> impl Strategy<Value = QuestionState> {
    prop_oneof![
        Just(QuestionState::Open),
        Just(QuestionState::Answered),
        Just(QuestionState::Expired),
        Just(QuestionState::Cancelled),
    ]
}

fn lifecycle() -> impl Strategy<Value = LifecycleAction> {
    prop_oneof![
        Just(LifecycleAction::Start),
        Just(LifecycleAction::Stop),
        Just(LifecycleAction::Restart),
        Just(LifecycleAction::Pause),
        Just(LifecycleAction::Resume),
        Just(LifecycleAction::Rebuild),
        Just(LifecycleAction::Destroy),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        (any::<u64>(), item_kind(), principal(), principal(), text()),
        (
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            prop::collection::vec(text(), 0..3),
            any::<bool>(),
            any::<i64>(),
            any::<Option<i64>>(),
        ),
    )
        .prop_map(
            |(
                (id, kind, from, to, body),
                (in_reply_to, question_id, options, multi, sent_at, acked_at),
            )| {
                Message {
                    id,
                    kind,
                    from,
                    to,
                    body,
                    in_reply_to,
                    question_id,
                    options,
                    multi,
                    sent_at,
                    acked_at,
                }
            },
        )
}

fn question() -> impl Strategy<Value = Question> {
    (
        (any::<u64>(), principal(), principal(), text()),
        (
            prop::collection::vec(text(), 0..3),
            any::<bool>(),
            any::<i64>(),
            any::<Option<i64>>(),
        ),
        (
            question_state(),
            prop::option::of(text()),
            prop::option::of(principal()),
            any::<Option<i64>>(),
        ),
    )
        .prop_map(
            |(
                (id, asker, to, question),
                (options, multi, asked_at, expires_at),
                (state, answer, answered_by, answered_at),
            )| Question {
                id,
                asker,
                to,
                question,
                options,
                multi,
                asked_at,
                expires_at,
                state,
                answer,
                answered_by,
                answered_at,
            },
        )
}

fn reminder() -> impl Strategy<Value = Reminder> {
    (any::<u64>(), name(), text(), any::<i64>()).prop_map(|(id, agent, body, due_at)| Reminder {
        id,
        agent,
        body,
        due_at,
    })
}

fn summary() -> impl Strategy<Value = AgentSummary> {
    (
        (name(), run_state(), any::<u32>(), prop::option::of(text())),
        (
            any::<Option<i64>>(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of("[0-9a-f]{40}"),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, run_state, connections, status),
                (status_at, unread, open_questions, deployed_sha, needs_update),
            )| {
                AgentSummary {
                    name,
                    run_state,
                    connections,
                    status,
                    status_at,
                    unread,
                    open_questions,
                    main_sha: deployed_sha.clone(),
                    deployed_sha,
                    needs_update,
                    manager: needs_update,
                    container: Some("h-x".into()),
                    uid_range: Some(UidRange {
                        base: 1_048_576,
                        count: 65_536,
                    }),
                    leader_pid: connections.checked_sub(1),
                    crash_reason: None,
                    last_activity_at: status_at,
                }
            },
        )
}

fn detail() -> impl Strategy<Value = AgentDetail> {
    (
        summary(),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(question(), 0..2),
        prop::collection::vec(reminder(), 0..2),
    )
        .prop_map(
            |(summary, allowed_recipients, questions, reminders)| AgentDetail {
                summary,
                allowed_recipients,
                questions,
                reminders,
            },
        )
}

fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    (
        any::<u64>(),
        any::<i64>(),
        text(),
        text(),
        text(),
        "[0-9a-f]{64}",
    )
        .prop_map(|(seq, at, actor, action, detail, hash)| AuditEntry {
            seq,
            at,
            actor,
            action,
            detail,
            hash,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (name(), text()).prop_map(|(agent, text)| Event::AgentStatus { agent, text }),
        (name(), run_state()).prop_map(|(agent, state)| Event::AgentRunState { agent, state }),
        (any::<u64>(), principal(), principal()).prop_map(|(id, from, to)| Event::MessageSent {
            id,
            from,
            to
        }),
        (any::<u64>(), principal()).prop_map(|(id, by)| Event::MessageAcked { id, by }),
        (any::<u64>(), principal(), principal()).prop_map(|(id, asker, to)| Event::QuestionAsked {
            id,
            asker,
            to
        }),
        (any::<u64>(), principal()).prop_map(|(id, by)| Event::QuestionAnswered { id, by }),
        any::<u64>().prop_map(|id| Event::QuestionExpired { id }),
        any::<u64>().prop_map(|id| Event::QuestionCancelled { id }),
        (any::<u64>(), name(), any::<i64>()).prop_map(|(id, agent, due_at)| Event::ReminderSet {
            id,
            agent,
            due_at
        }),
        (any::<u64>(), name()).prop_map(|(id, agent)| Event::ReminderFired { id, agent }),
        (any::<u64>(), name()).prop_map(|(id, agent)| Event::ReminderCancelled { id, agent }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(id, approved)| Event::ApprovalDecided { id, approved }),
        (any::<u64>(), name()).prop_map(|(id, agent)| Event::ApprovalOpened { id, agent }),
        (name(), "[0-9a-f]{40}").prop_map(|(agent, sha)| Event::AgentDeployed { agent, sha }),
        (name(), text(), proptest::option::of(any::<u64>())).prop_map(
            |(agent, reason, restart_in_ms)| Event::AgentCrashed {
                agent,
                reason,
                restart_in_ms
            }
        ),
    ]
}

fn event_record() -> impl Strategy<Value = EventRecord> {
    (any::<u64>(), any::<i64>(), event()).prop_map(|(seq, at, event)| EventRecord {
        seq,
        at,
        event,
    })
}

fn operator_request() -> impl Strategy<Value = OperatorRequest> {
    use OperatorRequest as R;
    prop_oneof![
        Just(R::ListAgents),
        name().prop_map(|name| R::AgentDetail { name }),
        (name(), lifecycle()).prop_map(|(name, action)| R::Lifecycle { name, action }),
        Just(R::Pending),
        any::<u64>().prop_map(|id| R::Approve { id }),
        (any::<u64>(), text()).prop_map(|(id, reason)| R::Deny { id, reason }),
        Just(R::Questions),
        (any::<u64>(), text()).prop_map(|(id, answer)| R::AnswerQuestion { id, answer }),
        (name(), text()).prop_map(|(to, body)| R::SendMessage { to, body }),
        (principal(), any::<Option<u64>>(), any::<u32>()).prop_map(|(mailbox, before, limit)| {
            R::Messages {
                mailbox,
                before,
                limit,
            }
        }),
        (name(), rel_path()).prop_map(|(agent, rel_path)| R::ReadStateFile { agent, rel_path }),
        (name(), prop::option::of(rel_path()))
            .prop_map(|(agent, rel_path)| R::ListStateDir { agent, rel_path }),
        (name(), any::<u32>()).prop_map(|(agent, lines)| R::Journal { agent, lines }),
        (
            name(),
            prop_oneof![Just(ConfigRev::Deployed), Just(ConfigRev::Main)]
        )
            .prop_map(|(agent, rev)| R::AgentConfig { agent, rev }),
        name().prop_map(|agent| R::SecretNames { agent }),
        any::<u64>().prop_map(|id| R::ApprovalDiff { id }),
        (any::<u64>(), any::<u32>()).prop_map(|(since, limit)| R::Audit { since, limit }),
        Just(R::Health),
    ]
}

fn admin_request() -> impl Strategy<Value = AdminRequest> {
    prop_oneof![
        operator_request().prop_map(AdminRequest::Operator),
        Just(AdminRequest::AuditVerify),
        name().prop_map(|name| AdminRequest::Purge { name }),
        (
            name(),
            secret_key(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(agent, key, value)| AdminRequest::SecretSet {
                agent,
                key,
                value: SecretValue(value)
            }),
        (name(), secret_key()).prop_map(|(agent, key)| AdminRequest::SecretRemove { agent, key }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(since, limit)| AdminRequest::AuditExport { since, limit }),
        (name(), files(), text()).prop_map(|(agent, files, message)| AdminRequest::ConfigPropose {
            agent,
            files,
            message
        }),
        text().prop_map(|rev| AdminRequest::ConfigRevert { rev }),
        (prop::option::of(name()), any::<u32>())
            .prop_map(|(agent, limit)| AdminRequest::ConfigLog { agent, limit }),
        (name(), text()).prop_map(|(agent, rev)| AdminRequest::ConfigShow { agent, rev }),
        name().prop_map(|agent| AdminRequest::ConfigDiff { agent }),
        Just(AdminRequest::Doctor),
    ]
}

/// The web verbs: the operator verbs of the same name (the ones web.sock
/// lacks are dropped), converted through their shared serde form.
fn web_request() -> impl Strategy<Value = WebRequest> {
    operator_request().prop_filter_map("a verb web.sock serves", |r| {
        serde_json::from_value(serde_json::to_value(r).ok()?).ok()
    })
}

fn web_call() -> impl Strategy<Value = WebCall> {
    (text(), web_request()).prop_map(|(operator, req)| WebCall { operator, req })
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| Version { major, minor })
}

fn client_frame<R: std::fmt::Debug + Clone>(
    req: impl Strategy<Value = R>,
) -> impl Strategy<Value = ClientFrame<R>> {
    prop_oneof![
        (version(), text())
            .prop_map(|(version, client)| ClientFrame::Hello(Hello { version, client })),
        (any::<u64>(), req).prop_map(|(id, req)| ClientFrame::Call { id, req }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, since)| ClientFrame::Subscribe { id, since }),
    ]
}

fn approval() -> impl Strategy<Value = Approval> {
    (
        (
            any::<u64>(),
            name(),
            prop_oneof![Just(ApprovalKind::Config), Just(ApprovalKind::Spawn)],
            principal(),
            text(),
            text(),
            any::<i64>(),
        ),
        (
            "[0-9a-f]{40}",
            prop_oneof![
                Just(ApprovalState::Pending),
                Just(ApprovalState::Approved),
                Just(ApprovalState::Denied)
            ],
            prop::option::of(text()),
            prop::option::of(text()),
            any::<Option<i64>>(),
            prop::option::of(text()),
            prop::option::of("[0-9a-f]{40}"),
        ),
    )
        .prop_map(
            |(
                (id, agent, kind, proposer, message, diff, created_at),
                (commit, state, conflict, decided_by, decided_at, reason, merged_sha),
            )| Approval {
                id,
                agent,
                kind,
                proposer,
                message,
                diff,
                created_at,
                commit,
                state,
                conflict,
                decided_by,
                decided_at,
                reason,
                merged_sha,
            },
        )
}

fn health() -> impl Strategy<Value = Health> {
    (
        text(),
        text(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        prop_oneof![
            Just(NetworkIsolation::NotUsed),
            any::<u64>().prop_map(|repairs| NetworkIsolation::Enforced { repairs }),
            text().prop_map(|reason| NetworkIsolation::Failed { reason }),
        ],
        any::<bool>(),
    )
        .prop_map(
            |(
                version,
                runtime,
                uptime_ms,
                agents,
                connected_agents,
                last_event_seq,
                network,
                unsandboxed,
            )| {
                Health {
                    version,
                    runtime,
                    uptime_ms,
                    agents,
                    connected_agents,
                    last_event_seq,
                    network,
                    unsandboxed,
                }
            },
        )
}

fn operator_response() -> impl Strategy<Value = OperatorResponse> {
    use OperatorResponse as O;
    let few = 0..3;
    prop_oneof![
        Just(O::Done),
        prop::collection::vec(summary(), few.clone()).prop_map(O::Agents),
        detail().prop_map(|d| O::Agent(Box::new(d))),
        prop::collection::vec(approval(), few.clone()).prop_map(O::Approvals),
        prop::collection::vec(question(), few.clone()).prop_map(O::Questions),
        prop::collection::vec(message(), few.clone()).prop_map(O::Messages),
        any::<u64>().prop_map(|id| O::MessageSent { id }),
        (prop::collection::vec(any::<u8>(), 0..32), any::<bool>())
            .prop_map(|(bytes, truncated)| O::File { bytes, truncated }),
        prop::collection::vec(
            (text(), any::<bool>(), any::<u64>()).prop_map(|(name, is_dir, size)| DirEntry {
                name,
                is_dir,
                size
            }),
            few.clone()
        )
        .prop_map(O::Dir),
        prop::collection::vec(text(), few.clone()).prop_map(O::Journal),
        (
            prop::option::of("[0-9a-f]{40}"),
            prop::collection::vec((text(), text()), few.clone())
        )
            .prop_map(|(sha, files)| O::Config { sha, files }),
        text().prop_map(O::Diff),
        prop::collection::vec(audit_entry(), few.clone()).prop_map(O::Audit),
        (any::<u64>(), "[0-9a-f]{64}").prop_map(|(rows, head)| O::AuditVerified { rows, head }),
        health().prop_map(O::Health),
        prop::collection::vec(secret_key(), few.clone()).prop_map(O::Secrets),
        (any::<u64>(), text(), "[0-9a-f]{40}").prop_map(|(approval_id, branch, commit)| {
            O::Proposed(ProposalResult {
                approval_id,
                branch,
                commit,
            })
        }),
        prop::collection::vec(
            ("[0-9a-f]{40}", text(), text(), text(), any::<i64>()).prop_map(
                |(sha, summary, author, committer, time)| ConfigCommit {
                    sha,
                    summary,
                    author,
                    committer,
                    time
                }
            ),
            0..3
        )
        .prop_map(O::ConfigLog),
        "[0-9a-f]{40}".prop_map(|main| O::Reverted { main }),
        prop::collection::vec((text(), verdict()), 0..4).prop_map(|checks| {
            O::Doctor(DoctorReport {
                checks: checks
                    .into_iter()
                    .map(|(subject, verdict)| DoctorCheck { subject, verdict })
                    .collect(),
            })
        }),
    ]
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        text().prop_map(|detail| Verdict::Ok { detail }),
        (text(), text()).prop_map(|(what, fix)| Verdict::Wrong { what, fix }),
        text().prop_map(|how| Verdict::Blocked { how }),
        text().prop_map(|how| Verdict::Open { how }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (version(), text())
            .prop_map(|(version, peer)| ServerFrame::Hello(HelloReply::Welcome { version, peer })),
        text().prop_map(|reason| ServerFrame::Hello(HelloReply::Refused { reason })),
        (any::<u64>(), operator_response())
            .prop_map(|(id, r)| ServerFrame::Reply { id, result: Ok(r) }),
        (any::<u64>(), error_code(), text()).prop_map(|(id, code, message)| ServerFrame::Reply {
            id,
            result: Err(RpcError::new(code, message)),
        }),
        (any::<u64>(), event_record()).prop_map(|(id, record)| ServerFrame::Event { id, record }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, resume_from)| ServerFrame::Lagged { id, resume_from }),
    ]
}

fn agent_request() -> impl Strategy<Value = AgentRequest> {
    use AgentRequest as A;
    prop_oneof![
        Just(A::Whoami),
        (recipient(), text(), any::<Option<u64>>()).prop_map(|(to, body, in_reply_to)| A::Send {
            to,
            body,
            in_reply_to
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(wait_ms, max)| A::Recv { wait_ms, max }),
        any::<u64>().prop_map(|msg_id| A::Ack { msg_id }),
        (
            recipient(),
            text(),
            prop::collection::vec(text(), 0..3),
            any::<bool>(),
            any::<Option<u64>>()
        )
            .prop_map(|(to, question, options, multi, ttl_s)| A::Ask {
                to,
                question,
                options,
                multi,
                ttl_s
            }),
        (any::<u64>(), text()).prop_map(|(question_id, answer)| A::Answer {
            question_id,
            answer
        }),
        Just(A::LooseEnds),
        (
            prop_oneof![Just(CancelKind::Question), Just(CancelKind::Reminder)],
            any::<u64>()
        )
            .prop_map(|(kind, item_id)| A::Cancel { kind, item_id }),
        text().prop_map(|text| A::Status { text }),
        (any::<Option<u64>>(), any::<Option<i64>>(), text())
            .prop_map(|(in_s, at, body)| A::Remind { in_s, at, body }),
        (name(), files(), text()).prop_map(|(agent, files, message)| A::ProposeConfig {
            agent,
            files,
            message
        }),
        (name(), files(), text()).prop_map(|(name, files, message)| A::RequestSpawn {
            name,
            files,
            message
        }),
    ]
}

// ------------------------------------------------------------ round trips --

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_admin_frame_round_trips(frame in client_frame(admin_request())) {
        let (_, back) = through_codec(&frame);
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn every_web_frame_round_trips(frame in client_frame(web_call())) {
        let (_, back) = through_codec(&frame);
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn every_server_frame_round_trips(frame in server_frame()) {
        let (_, back) = through_codec(&frame);
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn every_agent_request_round_trips_through_the_core_parser(
        id in any::<u64>(),
        req in agent_request(),
    ) {
        let line = RequestLine { id, req };
        let json = serde_json::to_vec(&line).unwrap();
        prop_assert_eq!(agent::parse_request(&json).unwrap(), line);
    }

    #[test]
    fn every_push_round_trips_through_the_client_parser(message in message()) {
        let push = Push::Message { message };
        let back = ServerLine::parse(push.to_line().as_bytes()).unwrap();
        prop_assert_eq!(back, ServerLine::Push(push));
    }
}

// --------------------------------------------------------------- coverage --

fn request_kind(r: &OperatorRequest) -> &'static str {
    // `verb` matches without a wildcard in the library itself.
    r.verb()
}

fn admin_kind(r: &AdminRequest) -> &'static str {
    match r {
        AdminRequest::Operator(_) => "operator",
        AdminRequest::AuditVerify => "audit_verify",
        AdminRequest::Purge { .. } => "purge",
        AdminRequest::SecretSet { .. } => "secret_set",
        AdminRequest::SecretRemove { .. } => "secret_remove",
        AdminRequest::AuditExport { .. } => "audit_export",
        AdminRequest::ConfigPropose { .. } => "config_propose",
        AdminRequest::ConfigRevert { .. } => "config_revert",
        AdminRequest::ConfigLog { .. } => "config_log",
        AdminRequest::ConfigShow { .. } => "config_show",
        AdminRequest::ConfigDiff { .. } => "config_diff",
        AdminRequest::Doctor => "doctor",
    }
}

fn response_kind(r: &OperatorResponse) -> &'static str {
    use OperatorResponse as O;
    match r {
        O::Done => "done",
        O::Agents(_) => "agents",
        O::Agent(_) => "agent",
        O::Approvals(_) => "approvals",
        O::Questions(_) => "questions",
        O::Messages(_) => "messages",
        O::MessageSent { .. } => "message_sent",
        O::File { .. } => "file",
        O::Dir(_) => "dir",
        O::Journal(_) => "journal",
        O::Config { .. } => "config",
        O::Diff(_) => "diff",
        O::Audit(_) => "audit",
        O::AuditVerified { .. } => "audit_verified",
        O::Health(_) => "health",
        O::Secrets(_) => "secrets",
        O::Proposed(_) => "proposed",
        O::ConfigLog(_) => "config_log",
        O::Reverted { .. } => "reverted",
        O::Doctor(_) => "doctor",
    }
}

fn server_kind(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Hello(HelloReply::Welcome { .. }) => "welcome",
        ServerFrame::Hello(HelloReply::Refused { .. }) => "refused",
        ServerFrame::Reply { result: Ok(_), .. } => "reply_ok",
        ServerFrame::Reply { result: Err(_), .. } => "reply_err",
        ServerFrame::Event { .. } => "event",
        ServerFrame::Lagged { .. } => "lagged",
    }
}

fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::AgentStatus { .. } => "agent_status",
        Event::AgentRunState { .. } => "agent_run_state",
        Event::MessageSent { .. } => "message_sent",
        Event::MessageAcked { .. } => "message_acked",
        Event::QuestionAsked { .. } => "question_asked",
        Event::QuestionAnswered { .. } => "question_answered",
        Event::QuestionExpired { .. } => "question_expired",
        Event::QuestionCancelled { .. } => "question_cancelled",
        Event::ReminderSet { .. } => "reminder_set",
        Event::ReminderFired { .. } => "reminder_fired",
        Event::ReminderCancelled { .. } => "reminder_cancelled",
        Event::ApprovalDecided { .. } => "approval_decided",
        Event::ApprovalOpened { .. } => "approval_opened",
        Event::AgentDeployed { .. } => "agent_deployed",
        Event::AgentCrashed { .. } => "agent_crashed",
    }
}

fn agent_kind(r: &AgentRequest) -> &'static str {
    use AgentRequest as A;
    match r {
        A::Whoami => "whoami",
        A::Send { .. } => "send",
        A::Recv { .. } => "recv",
        A::Ack { .. } => "ack",
        A::Ask { .. } => "ask",
        A::Answer { .. } => "answer",
        A::LooseEnds => "loose_ends",
        A::Cancel { .. } => "cancel",
        A::Status { .. } => "status",
        A::Remind { .. } => "remind",
        A::ProposeConfig { .. } => "propose_config",
        A::RequestSpawn { .. } => "request_spawn",
    }
}

/// The kinds `strategy` produces over many samples.
fn kinds<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    kind: impl Fn(&T) -> &'static str,
) -> BTreeSet<&'static str> {
    let mut runner = TestRunner::deterministic();
    (0..3000)
        .map(|_| kind(&strategy.new_tree(&mut runner).unwrap().current()))
        .collect()
}

#[test]
fn strategies_cover_every_variant() {
    let count = |names: Option<&[&str]>| names.expect("an enum").len();
    assert_eq!(
        kinds(operator_request(), request_kind).len(),
        count(variant_names::<OperatorRequest>())
    );
    assert_eq!(
        kinds(admin_request(), admin_kind).len(),
        count(variant_names::<AdminRequest>())
    );
    assert_eq!(
        kinds(operator_response(), response_kind).len(),
        count(variant_names::<OperatorResponse>())
    );
    assert_eq!(kinds(server_frame(), server_kind).len(), 6);
    assert_eq!(kinds(event(), event_kind).len(), 15);
    // Every op the core serves is generated, and nothing else.
    let ops = kinds(agent_request(), agent_kind);
    assert_eq!(ops, agent::KNOWN_OPS.iter().copied().collect());
}

// -------------------------------------------------------------- snapshots --

fn check_frame<T: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug>(
    frame: T,
    want: Expect,
) {
    let (bytes, back) = through_codec(&frame);
    assert_eq!(back, frame);
    want.assert_eq(&hex(&bytes));
}

#[test]
fn encoded_bytes_of_the_hello_exchange() {
    check_frame(
        ClientFrame::<AdminRequest>::Hello(Hello {
            version: PROTO_VERSION,
            client: "hivectl".into(),
        }),
        expect!["00 00 00 0b 00 01 00 07 68 69 76 65 63 74 6c"],
    );
    check_frame(
        ServerFrame::Hello(HelloReply::Welcome {
            version: PROTO_VERSION,
            peer: "root".into(),
        }),
        expect!["00 00 00 09 00 00 01 00 04 72 6f 6f 74"],
    );
}

#[test]
fn encoded_bytes_of_calls_and_replies() {
    check_frame(
        ClientFrame::Call {
            id: 300,
            req: AdminRequest::Operator(OperatorRequest::SendMessage {
                to: AgentName::new("bob").unwrap(),
                body: "hi".into(),
            }),
        },
        expect!["00 00 00 0c 01 ac 02 00 08 03 62 6f 62 02 68 69"],
    );
    check_frame(
        ClientFrame::<AdminRequest>::Call {
            id: 1,
            req: AdminRequest::AuditVerify,
        },
        expect!["00 00 00 03 01 01 01"],
    );
    check_frame(
        ClientFrame::Call {
            id: 2,
            req: WebCall {
                operator: "ops".into(),
                req: WebRequest::Approve { id: 7 },
            },
        },
        expect!["00 00 00 08 01 02 03 6f 70 73 04 07"],
    );
    check_frame(
        ClientFrame::<WebCall>::Subscribe { id: 1, since: 128 },
        expect!["00 00 00 04 02 01 80 01"],
    );
    check_frame(
        ServerFrame::Reply {
            id: 300,
            result: Err(RpcError::new(ErrorCode::Forbidden, "no")),
        },
        expect!["00 00 00 08 01 ac 02 01 02 02 6e 6f"],
    );
    check_frame(
        ServerFrame::Event {
            id: 1,
            record: EventRecord {
                seq: 5,
                at: 1,
                event: Event::AgentStatus {
                    agent: AgentName::new("alice").unwrap(),
                    text: "ok".into(),
                },
            },
        },
        expect!["00 00 00 0e 02 01 05 02 00 05 61 6c 69 63 65 02 6f 6b"],
    );
}

#[test]
fn encoded_agent_lines() {
    let line = |req| serde_json::to_string(&RequestLine { id: 1, req }).unwrap();
    expect![[r#"{"id":1,"op":"send","to":"bob","body":"hi","in_reply_to":null}"#]].assert_eq(
        &line(AgentRequest::Send {
            to: Recipient::parse("bob").unwrap(),
            body: "hi".into(),
            in_reply_to: None,
        }),
    );
    expect![[r#"{"id":1,"op":"cancel","kind":"reminder","item_id":4}"#]].assert_eq(&line(
        AgentRequest::Cancel {
            kind: CancelKind::Reminder,
            item_id: 4,
        },
    ));
}
