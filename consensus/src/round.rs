//! One group's decision for one task, as a pure state machine.
//!
//! `Round::step(now_ms, input) -> Vec<Action>`: inputs are the local executor's
//! answer, verified-or-not messages from peers, raft commit notices and clock ticks;
//! actions are messages to send, a raft write to make, and the outcome (a certificate,
//! evidence, or a degraded result). The round never reads a clock, a socket or a disk.
//!
//! ## Protocol (one slot per round number `r`; collector `c = members[r % n]`)
//!
//! 1. **Observe.** Once it has its answer, a member signs an observation for the
//!    current round and sends it to the round's collector (levels 2 and 3: with the
//!    child certificate). An honest member never changes its answer; it re-signs it
//!    for each new round.
//! 2. **Fast path** (bft, stake). When a quorum of the round's observations carry one
//!    identical answer, the collector signs a report over exactly those observations
//!    and the certificate is final with no attestations.
//! 3. **Report.** Otherwise, once the collector holds all `n` observations, or a
//!    quorum of them and half the round is gone, it signs a report over all it holds
//!    (aggregation of [`crate::aggregate`](mod@crate::aggregate)) and broadcasts it with those observations.
//! 4. **Attest** (bft, stake). A member attests a report when it recomputes the same
//!    value and tally from the included observations, has not attested another report
//!    in that round, has not attested another *value* in any round (its lock), and —
//!    when the value differs from its own answer `A` — the report's dissenters already
//!    rule out a quorum for `A` ([`QuorumRule::excludes_quorum`]). The last rule is
//!    what keeps an attested certificate from contradicting a fast-path one.
//! 5. **Certify.** A quorum of attestations makes the certificate; the collector
//!    broadcasts it. Every member verifies a certificate it receives with
//!    [`crate::verify_chain`] before adopting it.
//! 6. **Raft.** On the raft path the collector, holding a majority of observations,
//!    emits [`Action::Commit`]; the node writes the report to the place's openraft log
//!    and, once it is committed, feeds [`Input::Committed`] with the `RaftCommit` the
//!    place's raft leader signed. The collector broadcasts that commit; every other
//!    member asks its node to confirm it ([`Action::ConfirmCommit`]: its own copy of
//!    the log holds the report at that index, appended in that term by the signer) and,
//!    once confirmed, attests the report with the commit's term, index and leader. A
//!    majority of such attestations and the commit make the certificate. The group's
//!    raft state machine must keep only the first report committed per (task, level,
//!    group) and feed `Committed` only for that one; a member attests one commit.
//! 7. **Time.** Round `r` runs over `[start + r·T, start + (r+1)·T)` with
//!    `T = round_timeout_ms`. At `start + rounds_max·T` an undecided round gives up:
//!    it emits [`Action::DegradedCertificate`] (a report marked degraded, signed by
//!    this member, over the largest set of observations it holds for one round —
//!    checkable with [`crate::verify_degraded`], never accepted by `verify_chain`) when
//!    it holds any observation, then [`Action::Degraded`].
//!
//! Two statements of one kind from one member for one slot that differ produce
//! [`Action::Evidence`]; the first one seen keeps counting.
//!
//! Every observation and report carries the group digest
//! ([`crate::certificate::group_digest`]: path, aggregation, members, weights).
//! **Invariant:** the node gives every member of a (task, level, group) the same
//! `members`, `path` and `aggregation`, and never changes them: statements made
//! under another group composition are rejected, and an honest member re-signing
//! its answer for one slot under another composition would be evidence against it.
//!
//! ## Driving a round (the node's side)
//!
//! Call `step` with each input and perform the actions in order: `Broadcast` /
//! `SendTo` over the network (`RoundMessage::to_proto` is the wire form; a received
//! one becomes an input with `RoundMessage::into_input`), `Commit` through the
//! group's openraft log, `Decided` / `DegradedCertificate` to the store, `Evidence` to
//! gossip and trust, `Rejected` to trust. Send `Tick` at least every
//! `round_timeout_ms / 4` or at `next_deadline_ms()`; time may only move forward.
//!
//! **Bounds:** at most one stored observation, report and attestation per (round,
//! member) — `rounds_max · n` each — and `2n` child certificates; every `step` does
//! work linear in those.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::SigningKey;
use polity_proto::{
    Aggregation, Attestation, Certificate, ConsensusPath, Evidence, Level, Member, Observation,
    RaftCommit, Report, SignedStatement, Slot, StatementKind,
};
use prost::Message;

use crate::aggregate::{AnswerVerifier, aggregate, normalize};
use crate::certificate::{
    GROUP_BYTES_MAX, MEMBERS_MAX, PATH_REASON_BYTES_MAX, ROUNDS_MAX, VerifyError, attests_commit,
    ballots, certificate_digest, check_commit_fields, check_raft_mark, group_digest, member_keys,
    report_digest, verify_chain_with,
};
use crate::evidence::evidence_from;
use crate::ids::{PublicKey, TaskId};
use crate::quorum::QuorumRule;
use crate::statement::{
    ANSWER_BYTES_MAX, STATEMENT_BODY_BYTES_MAX, decode_body, sign_message, statement_digest,
    verify_statement,
};
use crate::task::{TASK_BYTES_MAX, task_id};

/// Longest round budget accepted: one hour.
pub const ROUND_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Largest relayed `RaftCommit` body accepted (an honest one is under 200 bytes).
pub const RAFT_COMMIT_BYTES_MAX: usize = 1024;
/// Longest executor error text kept in an observation.
pub const ERROR_BYTES_MAX: usize = 1024;

/// What a round decides about, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundConfig {
    /// Canonical `TaskSpec` bytes (go into the certificate; their digest is the task id).
    pub task: Vec<u8>,
    pub level: Level,
    /// The group's name: the region, the continent, or "global".
    pub group: String,
    /// The group, in member order: the collector rotation order. Must include this
    /// node's key. On the stake path the weights must not all be zero.
    pub members: Vec<Member>,
    pub path: ConsensusPath,
    pub path_reason: String,
    pub aggregation: Aggregation,
    /// The registry epoch the members were drawn from: part of the group digest, and
    /// carried by the certificate.
    pub registry_digest: [u8; 32],
    /// One round's budget; the next round starts when it runs out.
    pub round_timeout_ms: u64,
    /// Rounds before the round gives up, `1..=ROUNDS_MAX`.
    pub rounds_max: u32,
    /// The time round 0 started, on the caller's clock.
    pub started_at_ms: u64,
}

/// Why a [`RoundConfig`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("members: {0}")]
    Members(VerifyError),
    #[error("this node's key is not a member of the group")]
    NotMember,
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
    #[error("stake path needs a positive total weight (Member::weight)")]
    ZeroTotalWeight,
}

/// A message between members of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundMessage {
    Statement(SignedStatement),
    /// A decided certificate of this slot, or a child certificate (levels 2 and 3).
    Certificate(Box<Certificate>),
}

impl RoundMessage {
    /// The wire form (`polity.v1.RoundMessage`).
    pub fn to_proto(&self) -> polity_proto::RoundMessage {
        use polity_proto::round_message::Message as Wire;
        let message = match self {
            RoundMessage::Statement(statement) => Wire::Statement(statement.clone()),
            RoundMessage::Certificate(certificate) => {
                Wire::Certificate(certificate.as_ref().clone())
            }
        };
        polity_proto::RoundMessage {
            message: Some(message),
        }
    }

    /// From the wire form; `None` when it carries nothing.
    pub fn from_proto(message: polity_proto::RoundMessage) -> Option<RoundMessage> {
        use polity_proto::round_message::Message as Wire;
        Some(match message.message? {
            Wire::Statement(statement) => RoundMessage::Statement(statement),
            Wire::Certificate(certificate) => RoundMessage::Certificate(Box::new(certificate)),
        })
    }

    /// The input a received message makes.
    pub fn into_input(self, from: PublicKey) -> Input {
        match self {
            RoundMessage::Statement(statement) => Input::Message { from, statement },
            RoundMessage::Certificate(certificate) => Input::Certificate { from, certificate },
        }
    }
}

/// What the round is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The local executor's answer. Levels 2 and 3: `answer` is the child report's
    /// value and `child_certificate` the child certificate's encoding. Only the first
    /// answer counts: an honest member never changes its answer.
    LocalAnswer {
        answer: Result<Vec<u8>, String>,
        child_certificate: Option<Vec<u8>>,
    },
    /// A signed statement from a peer (`from` is the transport peer; the signer may
    /// differ when a statement is relayed).
    Message {
        from: PublicKey,
        statement: SignedStatement,
    },
    /// A certificate from a peer: this slot's decision, or a child certificate.
    Certificate {
        from: PublicKey,
        certificate: Box<Certificate>,
    },
    /// Raft path: the place's raft leader says the report is committed in its log: a
    /// `RaftCommit` it signed. The driver feeds it only once this member's own copy of
    /// the log confirms it (the entry at its index holds its report and was appended in
    /// its term by its signer): after its own [`Action::Commit`], or when asked by
    /// [`Action::ConfirmCommit`]. The round checks the signature, the slot and the
    /// report digest.
    Committed { commit: SignedStatement },
    /// Raft path: this member's own copy of the log did not confirm a relayed commit
    /// (in time); the round forgets it, so that the collector's next relay of it is
    /// checked again.
    NotConfirmed { commit: SignedStatement },
    /// Time passes; the round compares `now_ms` to its deadlines.
    Tick,
}

/// What the round asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to every other member of the group.
    Broadcast(RoundMessage),
    /// Send to one member.
    SendTo(PublicKey, RoundMessage),
    /// Raft path: write `report` to the group's raft log; feed [`Input::Committed`]
    /// with `report_digest` once it is committed.
    Commit {
        report: SignedStatement,
        report_digest: [u8; 32],
    },
    /// Raft path: the round's collector relayed this leader-signed `RaftCommit`; feed
    /// [`Input::Committed`] with it if this member's own copy of the log confirms it,
    /// nothing otherwise.
    ConfirmCommit { commit: SignedStatement },
    /// The group decided; the certificate verifies with [`crate::verify_chain`].
    Decided(Box<Certificate>),
    /// The best effort of a round that gave up (see the module doc).
    DegradedCertificate(Box<Certificate>),
    /// The round gave up; it emits nothing afterwards.
    Degraded(DegradedReason),
    /// A member equivocated; gossip it and drop the member's trust.
    Evidence(Evidence),
    /// A peer sent something invalid (bad signature, non-member, malformed): for trust
    /// accounting. Stale and duplicate messages are dropped silently.
    Rejected { from: PublicKey, reason: String },
}

/// Why a round gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DegradedReason {
    /// All rounds ran out without a quorum.
    RoundsExhausted {
        rounds: u32,
        observations_seen: usize,
        members: usize,
    },
    /// Observations arrived, but their aggregation has no value (all errors, no strict
    /// majority, no numeric answer, no valid answer).
    NoValue {
        observations_seen: usize,
        members: usize,
    },
}

impl fmt::Display for DegradedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DegradedReason::RoundsExhausted {
                rounds,
                observations_seen,
                members,
            } => write!(
                f,
                "no quorum after {rounds} rounds ({observations_seen} of {members} observations \
                 in the best round)"
            ),
            DegradedReason::NoValue {
                observations_seen,
                members,
            } => write!(
                f,
                "{observations_seen} of {members} observations, but no value by the aggregation"
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct StoredObservation {
    member_index: usize,
    statement: SignedStatement,
    observation: Observation,
    digest: [u8; 32],
}

#[derive(Debug, Clone)]
struct StoredReport {
    statement: SignedStatement,
    report: Report,
    digest: [u8; 32],
}

#[derive(Debug, Clone)]
struct ChildCertificate {
    certificate: Certificate,
    bytes: Vec<u8>,
}

/// This node's own answer.
#[derive(Debug, Clone)]
struct LocalAnswer {
    answer: Result<Vec<u8>, String>,
    child_digest: Option<[u8; 32]>,
}

/// A report this node made as a collector and the observations behind it.
#[derive(Debug, Clone)]
struct OwnReport {
    report: StoredReport,
    observations: Vec<SignedStatement>,
    children: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One group's decision for one task. See the module doc.
pub struct Round {
    config: RoundConfig,
    key: SigningKey,
    me: PublicKey,
    my_index: usize,
    task_id: TaskId,
    index_of: BTreeMap<PublicKey, usize>,
    rule: QuorumRule,
    /// [`group_digest`] of this group: every statement of the round carries it.
    group_digest: [u8; 32],
    /// The path and aggregation the task asks for (read once from its bytes), which
    /// every child certificate must have used; why not, if the task asks nothing.
    task_rule: Result<(ConsensusPath, Aggregation), String>,
    /// A registry task: its approvals are counted from included observations, so
    /// the collector waits for every member (or half the round) even when a quorum
    /// agrees early.
    full_house: bool,
    verifier: Option<Box<dyn AnswerVerifier + Send + Sync>>,
    /// The current round number, `< rounds_max`.
    round: u32,
    answer: Option<LocalAnswer>,
    /// Rounds for which this node signed and sent its observation.
    observed_rounds: BTreeSet<u32>,
    /// First valid observation per (round, member); at most `rounds_max * n`.
    observations: BTreeMap<(u32, usize), StoredObservation>,
    observation_by_digest: BTreeMap<[u8; 32], (u32, usize)>,
    /// Verified child certificates by digest; at most `2 n`.
    children: BTreeMap<[u8; 32], ChildCertificate>,
    /// First report per round from that round's collector.
    reports: BTreeMap<u32, StoredReport>,
    /// Reports this member will never attest (they do not recompute).
    reports_refused: BTreeSet<u32>,
    /// This member's attestations: round -> report digest.
    attested: BTreeMap<u32, [u8; 32]>,
    /// The value this member attested; it attests no other value for this group.
    locked_value: Option<Vec<u8>>,
    /// First attestation per (round, member).
    attestations: BTreeMap<(u32, usize), (SignedStatement, [u8; 32])>,
    /// Reports this node made as a collector, by round.
    own_reports: BTreeMap<u32, OwnReport>,
    /// Raft path: reports proposed for commit, by digest.
    proposed: BTreeMap<[u8; 32], u32>,
    /// Raft path: the leader-signed commit of each round's report, one per round: the
    /// one this member's node confirmed (as collector), or the first the round's
    /// collector relayed (awaiting confirmation).
    commits: BTreeMap<u32, SignedStatement>,
    /// Members already caught up with the decided certificate.
    caught_up: BTreeSet<usize>,
    decided: Option<Box<Certificate>>,
    degraded: bool,
}

impl fmt::Debug for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Round")
            .field("task_id", &self.task_id)
            .field("group", &self.config.group)
            .field("me", &self.me)
            .field("round", &self.round)
            .field("decided", &self.decided.is_some())
            .field("degraded", &self.degraded)
            .finish_non_exhaustive()
    }
}

/// The limits on a round's own config fields (level, group, task, path reason, path,
/// timeout, rounds); the member list is checked by [`Round::new`].
fn check_config_fields(config: &RoundConfig) -> Result<(), ConfigError> {
    if matches!(config.level, Level::Unspecified) {
        return Err(ConfigError::Invalid {
            what: "level",
            value: "unspecified".into(),
        });
    }
    if config.group.is_empty() || config.group.len() > GROUP_BYTES_MAX {
        return Err(ConfigError::Invalid {
            what: "group",
            value: config.group.clone(),
        });
    }
    if config.task.len() > TASK_BYTES_MAX {
        return Err(ConfigError::Invalid {
            what: "task",
            value: format!("{} bytes", config.task.len()),
        });
    }
    if config.path_reason.len() > PATH_REASON_BYTES_MAX {
        return Err(ConfigError::Invalid {
            what: "path_reason",
            value: "too long".into(),
        });
    }
    if config.path == ConsensusPath::Unspecified {
        return Err(ConfigError::Invalid {
            what: "path",
            value: "unspecified".into(),
        });
    }
    if config.round_timeout_ms == 0 || config.round_timeout_ms > ROUND_TIMEOUT_MS_MAX {
        return Err(ConfigError::Invalid {
            what: "round_timeout_ms",
            value: config.round_timeout_ms.to_string(),
        });
    }
    if config.rounds_max == 0 || config.rounds_max > ROUNDS_MAX {
        return Err(ConfigError::Invalid {
            what: "rounds_max",
            value: config.rounds_max.to_string(),
        });
    }
    Ok(())
}

impl Round {
    /// Checks `config` and starts the round in round 0.
    pub fn new(config: RoundConfig, key: SigningKey) -> Result<Round, ConfigError> {
        let mut config = config;
        config.aggregation = normalize(config.aggregation);
        check_config_fields(&config)?;
        let (_, index_of) = member_keys(&config.members).map_err(ConfigError::Members)?;
        let me = PublicKey::from_verifying_key(&key.verifying_key());
        let my_index = *index_of.get(&me).ok_or(ConfigError::NotMember)?;
        let rule = QuorumRule::new(config.path, &config.members);
        if config.path == ConsensusPath::Stake
            && rule.weight_of(&(0..config.members.len()).collect::<Vec<_>>()) == 0
        {
            return Err(ConfigError::ZeroTotalWeight);
        }
        debug_assert!(config.members.len() <= MEMBERS_MAX);
        let spec = polity_proto::TaskSpec::decode(config.task.as_slice());
        let full_house = spec
            .as_ref()
            .is_ok_and(|spec| spec.capability == crate::registry::REGISTRY_CAPABILITY);
        let task_rule = spec
            .map_err(|e| format!("task: {e}"))
            .and_then(|spec| crate::binding::task_rule(&spec).map_err(|e| e.to_string()));
        Ok(Round {
            task_rule,
            full_house,
            task_id: task_id(&config.task),
            group_digest: group_digest(
                config.path,
                config.aggregation,
                &config.registry_digest,
                &config.members,
            ),
            config,
            key,
            me,
            my_index,
            index_of,
            rule,
            verifier: None,
            round: 0,
            answer: None,
            observed_rounds: BTreeSet::new(),
            observations: BTreeMap::new(),
            observation_by_digest: BTreeMap::new(),
            children: BTreeMap::new(),
            reports: BTreeMap::new(),
            reports_refused: BTreeSet::new(),
            attested: BTreeMap::new(),
            locked_value: None,
            attestations: BTreeMap::new(),
            own_reports: BTreeMap::new(),
            proposed: BTreeMap::new(),
            commits: BTreeMap::new(),
            caught_up: BTreeSet::new(),
            decided: None,
            degraded: false,
        })
    }

    /// Supplies the task's answer verifier, used by `first-valid` aggregation.
    pub fn with_verifier(mut self, verifier: Box<dyn AnswerVerifier + Send + Sync>) -> Round {
        self.verifier = Some(verifier);
        self
    }

    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    /// The current round number.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The collector of round `round`.
    pub fn collector(&self, round: u32) -> PublicKey {
        let index = round as usize % self.config.members.len();
        PublicKey::from_slice(&self.config.members[index].public_key).unwrap_or(PublicKey([0; 32]))
    }

    /// The decided certificate, once there is one.
    pub fn decided(&self) -> Option<&Certificate> {
        self.decided.as_deref()
    }

    /// True once the round decided or gave up; it then only helps laggards catch up.
    pub fn is_finished(&self) -> bool {
        self.decided.is_some() || self.degraded
    }

    /// When the round gives up, on the caller's clock.
    pub fn deadline_ms(&self) -> u64 {
        self.round_start_ms(self.config.rounds_max)
    }

    /// When the current round ends (the next tick worth sending).
    pub fn next_deadline_ms(&self) -> u64 {
        self.round_start_ms(self.round + 1)
    }

    fn round_start_ms(&self, round: u32) -> u64 {
        self.config
            .started_at_ms
            .saturating_add(u64::from(round).saturating_mul(self.config.round_timeout_ms))
    }

    /// The slot of the round that proposed the report with `digest` (tests: a leader
    /// signs a commit for it).
    #[cfg(test)]
    pub(crate) fn slot_of(&self, digest: &[u8; 32]) -> Slot {
        self.slot(self.proposed.get(digest).copied().unwrap_or(self.round))
    }

    fn slot(&self, round: u32) -> Slot {
        Slot {
            task_id: self.task_id.0.to_vec(),
            level: self.config.level as i32,
            group: self.config.group.clone(),
            round,
        }
    }

    /// Whether `slot` names this group (any round below `rounds_max`).
    fn is_my_slot(&self, slot: Option<&Slot>) -> Option<u32> {
        let slot = slot?;
        (slot.task_id == self.task_id.0
            && slot.level == self.config.level as i32
            && slot.group == self.config.group
            && slot.round < self.config.rounds_max)
            .then_some(slot.round)
    }

    /// Feeds one input; returns what to do, in order.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.is_finished() {
            self.catch_up(input, &mut actions);
            return actions;
        }
        self.advance_clock(now_ms, &mut actions);
        if self.is_finished() {
            return actions;
        }
        match input {
            Input::LocalAnswer {
                answer,
                child_certificate,
            } => self.on_local_answer(answer, child_certificate),
            Input::Message { from, statement } => self.on_statement(from, statement, &mut actions),
            Input::Certificate { from, certificate } => {
                self.on_certificate(from, *certificate, &mut actions)
            }
            Input::Committed { commit } => self.on_committed(commit, &mut actions),
            Input::NotConfirmed { commit } => self.on_not_confirmed(&commit),
            Input::Tick => {}
        }
        self.progress(now_ms, &mut actions);
        actions
    }

    /// After the decision: a member still sending valid statements gets the
    /// certificate, once, addressed to its key (not to the transport peer); a
    /// statement whose signature does not verify is still rejected.
    fn catch_up(&mut self, input: Input, actions: &mut Vec<Action>) {
        let (Some(certificate), Input::Message { from, statement }) = (&self.decided, input) else {
            return;
        };
        // A forgery is one whenever it arrives.
        let Some(signer) = signer_or_reject(from, &statement, actions) else {
            return;
        };
        let Some(&index) = self.index_of.get(&signer) else {
            return;
        };
        if index != self.my_index && self.caught_up.insert(index) {
            actions.push(Action::SendTo(
                signer,
                RoundMessage::Certificate(certificate.clone()),
            ));
        }
    }

    fn advance_clock(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if now_ms >= self.deadline_ms() {
            self.give_up(actions);
            return;
        }
        let elapsed_ms = now_ms.saturating_sub(self.config.started_at_ms);
        let round = u32::try_from(elapsed_ms / self.config.round_timeout_ms).unwrap_or(u32::MAX);
        let round = round.min(self.config.rounds_max - 1);
        if round > self.round {
            self.round = round;
            // A relay may have been lost, or a member's log was late: say it again
            // once a round while undecided.
            for (round, commit) in &self.commits {
                if self.own_reports.contains_key(round) {
                    actions.push(Action::Broadcast(RoundMessage::Statement(commit.clone())));
                }
            }
        }
        debug_assert!(self.round < self.config.rounds_max);
    }

    fn on_local_answer(&mut self, answer: Result<Vec<u8>, String>, child: Option<Vec<u8>>) {
        if self.answer.is_some() {
            return;
        }
        let mut answer = match answer {
            Ok(answer) if answer.len() > ANSWER_BYTES_MAX => Err(format!(
                "answer of {} bytes exceeds {ANSWER_BYTES_MAX}",
                answer.len()
            )),
            Err(error) if error.is_empty() => Err("executor failed".into()),
            other => other,
        };
        let mut child_digest = None;
        if self.config.level != Level::Region && answer.is_ok() {
            match self.check_own_child(answer.as_deref().unwrap_or_default(), child) {
                Ok(digest) => child_digest = Some(digest),
                Err(error) => answer = Err(error),
            }
        }
        if let Err(error) = &mut answer {
            truncate_utf8(error, ERROR_BYTES_MAX);
        }
        self.answer = Some(LocalAnswer {
            answer,
            child_digest,
        });
    }

    /// Levels 2 and 3: the child certificate must verify, be one level down, for this
    /// task, and have decided `answer`. It is stored in its canonical encoding.
    fn check_own_child(
        &mut self,
        answer: &[u8],
        child: Option<Vec<u8>>,
    ) -> Result<[u8; 32], String> {
        let bytes = child.ok_or("no child certificate")?;
        let certificate =
            Certificate::decode(bytes.as_slice()).map_err(|e| format!("child certificate: {e}"))?;
        let value = self
            .check_child(&certificate)
            .map_err(|e| format!("child certificate: {e}"))?;
        if value != answer {
            return Err("answer differs from the child certificate's value".into());
        }
        let digest = certificate_digest(&certificate);
        self.store_child(digest, certificate);
        Ok(digest)
    }

    /// Verifies a would-be child certificate and returns its value.
    fn check_child(&self, certificate: &Certificate) -> Result<Vec<u8>, String> {
        let summary =
            verify_chain_with(certificate, self.verifier_ref()).map_err(|e| e.to_string())?;
        if summary.level as i32 != self.config.level as i32 - 1 {
            return Err("not one level down".into());
        }
        if certificate.task != self.config.task {
            return Err("for another task".into());
        }
        // The task's rule at every level beneath: a child on another path or
        // aggregation would make this group's certificate no answer to the task.
        let (path, aggregation) = self.task_rule.clone()?;
        crate::binding::check_rule(certificate, path, aggregation).map_err(|e| e.to_string())?;
        Ok(summary.value)
    }

    fn store_child(&mut self, digest: [u8; 32], certificate: Certificate) {
        if self.children.len() < 2 * self.config.members.len() {
            let bytes = certificate.encode_to_vec();
            self.children
                .entry(digest)
                .or_insert(ChildCertificate { certificate, bytes });
        }
    }

    fn verifier_ref(&self) -> Option<&dyn AnswerVerifier> {
        self.verifier
            .as_deref()
            .map(|verifier| verifier as &dyn AnswerVerifier)
    }

    fn on_statement(
        &mut self,
        from: PublicKey,
        statement: SignedStatement,
        actions: &mut Vec<Action>,
    ) {
        // A forgery is one whenever it arrives.
        let Some(signer) = signer_or_reject(from, &statement, actions) else {
            return;
        };
        if statement.kind == StatementKind::RaftCommit as i32 {
            // The place's leader signs commits, and need not be a member.
            if let Err(reason) = self.on_relayed_commit(from, statement, actions) {
                actions.push(Action::Rejected { from, reason });
            }
            return;
        }
        let Some(&index) = self.index_of.get(&signer) else {
            actions.push(Action::Rejected {
                from,
                reason: format!("{signer} is not a member"),
            });
            return;
        };
        let result = match StatementKind::try_from(statement.kind) {
            Ok(StatementKind::Observation) => self.on_observation(index, statement, actions),
            Ok(StatementKind::Report) => self.on_report(index, statement, actions),
            Ok(StatementKind::Attestation) => self.on_attestation(index, statement, actions),
            // Node info is not a round's business.
            _ => Ok(()),
        };
        if let Err(reason) = result {
            actions.push(Action::Rejected { from, reason });
        }
    }

    fn on_observation(
        &mut self,
        index: usize,
        statement: SignedStatement,
        actions: &mut Vec<Action>,
    ) -> Result<(), String> {
        let observation: Observation = decode_body(&statement.body).map_err(|e| e.to_string())?;
        let Some(round) = self.is_my_slot(observation.slot.as_ref()) else {
            return Ok(()); // Another slot, or a round past rounds_max: stale, not wrong.
        };
        check_observation(&observation, self.config.level)?;
        if observation.group_digest != self.group_digest
            && !self.observations.contains_key(&(round, index))
        {
            return Err("observation signed for another group composition".into());
        }
        self.store_observation(round, index, statement, observation, actions);
        Ok(())
    }

    fn store_observation(
        &mut self,
        round: u32,
        index: usize,
        statement: SignedStatement,
        observation: Observation,
        actions: &mut Vec<Action>,
    ) {
        if let Some(first) = self.observations.get(&(round, index)) {
            if first.statement != statement {
                actions.extend(evidence_from(&first.statement, &statement).map(Action::Evidence));
            }
            return;
        }
        let digest = statement_digest(&statement);
        self.observation_by_digest.insert(digest, (round, index));
        self.observations.insert(
            (round, index),
            StoredObservation {
                member_index: index,
                statement,
                observation,
                digest,
            },
        );
        debug_assert!(
            self.observations.len() <= self.config.rounds_max as usize * self.config.members.len()
        );
    }

    fn on_report(
        &mut self,
        index: usize,
        statement: SignedStatement,
        actions: &mut Vec<Action>,
    ) -> Result<(), String> {
        let report: Report = decode_body(&statement.body).map_err(|e| e.to_string())?;
        let Some(round) = self.is_my_slot(report.slot.as_ref()) else {
            return Ok(());
        };
        if index != round as usize % self.config.members.len() {
            return Err(format!(
                "report for round {round} from a member that is not its collector"
            ));
        }
        if let Some(first) = self.reports.get(&round) {
            if first.statement != statement {
                actions.extend(evidence_from(&first.statement, &statement).map(Action::Evidence));
            }
            return Ok(());
        }
        if report.group_digest != self.group_digest {
            return Err("report signed for another group composition".into());
        }
        let digest = report_digest(&statement.body);
        self.reports.insert(
            round,
            StoredReport {
                statement,
                report,
                digest,
            },
        );
        Ok(())
    }

    fn on_attestation(
        &mut self,
        index: usize,
        statement: SignedStatement,
        actions: &mut Vec<Action>,
    ) -> Result<(), String> {
        let attestation: Attestation = decode_body(&statement.body).map_err(|e| e.to_string())?;
        let Some(round) = self.is_my_slot(attestation.slot.as_ref()) else {
            return Ok(());
        };
        let digest: [u8; 32] = attestation
            .report_digest
            .as_slice()
            .try_into()
            .map_err(|_| "attestation's report digest is not 32 bytes".to_string())?;
        check_raft_mark(&attestation, self.config.path).map_err(|e| e.to_string())?;
        if let Some((first, _)) = self.attestations.get(&(round, index)) {
            if *first != statement {
                actions.extend(evidence_from(first, &statement).map(Action::Evidence));
            }
            return Ok(());
        }
        self.attestations
            .insert((round, index), (statement, digest));
        Ok(())
    }

    fn on_certificate(
        &mut self,
        from: PublicKey,
        certificate: Certificate,
        actions: &mut Vec<Action>,
    ) {
        let Some(slot) = certificate.slot.as_ref() else {
            actions.push(Action::Rejected {
                from,
                reason: "certificate without slot".into(),
            });
            return;
        };
        if slot.task_id != self.task_id.0 {
            return;
        }
        if self.is_my_slot(Some(slot)).is_some() {
            // A certificate proves its own members decided; only this group's members,
            // path and aggregation (its group digest) make it this group's decision.
            let result = verify_chain_with(&certificate, self.verifier_ref())
                .map_err(|error| error.to_string())
                .and_then(|_| self.check_group(&certificate));
            match result {
                Ok(()) => self.decide(certificate, false, actions),
                Err(reason) => actions.push(Action::Rejected { from, reason }),
            }
        } else if slot.level == self.config.level as i32 - 1 {
            let digest = certificate_digest(&certificate);
            if self.children.contains_key(&digest) {
                return;
            }
            match self.check_child(&certificate) {
                Ok(_) => self.store_child(digest, certificate),
                Err(reason) => actions.push(Action::Rejected { from, reason }),
            }
        }
    }

    /// Whether a verified certificate of this slot was made by this group.
    fn check_group(&self, certificate: &Certificate) -> Result<(), String> {
        let report: Report = certificate
            .report
            .as_ref()
            .ok_or("certificate without report")
            .and_then(|statement| decode_body(&statement.body).map_err(|_| "undecodable report"))?;
        if report.group_digest != self.group_digest || certificate.task != self.config.task {
            return Err("certificate of another group composition or task encoding".into());
        }
        Ok(())
    }

    /// Raft path: a leader-signed commit relayed by a round's collector, for this
    /// member to confirm against its own copy of the log. Only the collector of the
    /// commit's round may relay it, and only its first commit for that round counts.
    fn on_relayed_commit(
        &mut self,
        from: PublicKey,
        statement: SignedStatement,
        actions: &mut Vec<Action>,
    ) -> Result<(), String> {
        if self.config.path != ConsensusPath::Raft {
            return Err(format!("raft commit on the {:?} path", self.config.path));
        }
        if statement.body.len() > RAFT_COMMIT_BYTES_MAX {
            return Err(format!(
                "raft commit of {} bytes, over {RAFT_COMMIT_BYTES_MAX}",
                statement.body.len()
            ));
        }
        let commit: RaftCommit = decode_body(&statement.body).map_err(|e| e.to_string())?;
        let Some(round) = self.is_my_slot(commit.slot.as_ref()) else {
            return Ok(());
        };
        if from != self.collector(round) {
            return Err(format!(
                "raft commit for round {round} relayed by a member that is not its collector"
            ));
        }
        check_commit_fields(&commit).map_err(|e| e.to_string())?;
        if self.commits.contains_key(&round) || !self.attested.is_empty() {
            return Ok(());
        }
        self.commits.insert(round, statement.clone());
        actions.push(Action::ConfirmCommit { commit: statement });
        Ok(())
    }

    /// Raft path: this member's node confirmed a commit against its own log. The
    /// collector whose report it is relays it to the group; every member attests it.
    fn on_committed(&mut self, statement: SignedStatement, actions: &mut Vec<Action>) {
        let Ok((leader, commit)) =
            crate::statement::open::<RaftCommit>(&statement, StatementKind::RaftCommit)
        else {
            return;
        };
        let Ok(digest) = <[u8; 32]>::try_from(commit.report_digest.as_slice()) else {
            return;
        };
        let Some(round) = self.is_my_slot(commit.slot.as_ref()) else {
            return;
        };
        if check_commit_fields(&commit).is_err() {
            return;
        }
        if self.proposed.get(&digest) == Some(&round) {
            debug_assert!(self.own_reports.contains_key(&round));
            if self.commits.contains_key(&round) {
                return;
            }
            self.commits.insert(round, statement.clone());
            actions.push(Action::Broadcast(RoundMessage::Statement(statement)));
        } else if self.commits.get(&round) != Some(&statement) {
            return;
        }
        self.attest_commit(round, digest, leader, &commit, actions);
    }

    /// Raft path: a relayed commit this member's log did not confirm is forgotten, so
    /// that the collector's next relay is checked again (its own commits stay).
    fn on_not_confirmed(&mut self, statement: &SignedStatement) {
        let relayed = self
            .commits
            .iter()
            .find(|(round, commit)| *commit == statement && !self.own_reports.contains_key(round))
            .map(|(round, _)| *round);
        if let Some(round) = relayed {
            self.commits.remove(&round);
        }
    }

    /// Raft path: attests the report of `round` with the commit's term, index and
    /// leader, once for the whole group (raft commits one report per group).
    fn attest_commit(
        &mut self,
        round: u32,
        digest: [u8; 32],
        leader: PublicKey,
        commit: &RaftCommit,
        actions: &mut Vec<Action>,
    ) {
        if !self.attested.is_empty() {
            return;
        }
        let attestation = Attestation {
            slot: Some(self.slot(round)),
            report_digest: digest.to_vec(),
            raft_term: commit.term,
            raft_index: commit.commit_index,
            raft_leader: leader.0.to_vec(),
        };
        self.attested.insert(round, digest);
        let statement = sign_message(&self.key, StatementKind::Attestation, &attestation);
        let collector = self.collector(round);
        if collector != self.me {
            actions.push(Action::SendTo(
                collector,
                RoundMessage::Statement(statement.clone()),
            ));
        }
        self.attestations
            .insert((round, self.my_index), (statement, digest));
    }

    /// Does whatever the state now allows: observe, build or propose a report, attest,
    /// certify.
    fn progress(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.observe(actions);
        if self.round as usize % self.config.members.len() == self.my_index
            && !self.own_reports.contains_key(&self.round)
        {
            self.collect(now_ms, actions);
        }
        if self.is_finished() {
            return;
        }
        if self.config.path != ConsensusPath::Raft {
            self.attest_reports(actions);
        }
        self.certify(actions);
    }

    /// Signs and sends this member's observation for the current round, once.
    fn observe(&mut self, actions: &mut Vec<Action>) {
        let Some(answer) = &self.answer else { return };
        if !self.observed_rounds.insert(self.round) {
            return;
        }
        let observation = Observation {
            slot: Some(self.slot(self.round)),
            answer: answer.answer.clone().unwrap_or_default(),
            error: answer.answer.clone().err().unwrap_or_default(),
            child_certificate_digest: answer.child_digest.map(|d| d.to_vec()).unwrap_or_default(),
            group_digest: self.group_digest.to_vec(),
        };
        let child = answer
            .child_digest
            .and_then(|digest| self.children.get(&digest));
        let statement = sign_message(&self.key, StatementKind::Observation, &observation);
        let collector = self.collector(self.round);
        if collector != self.me {
            if let Some(child) = child {
                actions.push(Action::SendTo(
                    collector,
                    RoundMessage::Certificate(Box::new(child.certificate.clone())),
                ));
            }
            actions.push(Action::SendTo(
                collector,
                RoundMessage::Statement(statement.clone()),
            ));
        }
        self.store_observation(self.round, self.my_index, statement, observation, actions);
    }

    /// This round's observations usable in a report: at levels 2 and 3 only those
    /// whose child certificate this node holds.
    fn usable_observations(&self, round: u32) -> Vec<&StoredObservation> {
        self.observations
            .range((round, 0)..(round, usize::MAX))
            .map(|(_, stored)| stored)
            .filter(|stored| self.child_of(&stored.observation).is_some())
            .collect()
    }

    /// The child certificate an observation needs: `Some(None)` when it needs none.
    fn child_of(&self, observation: &Observation) -> Option<Option<&ChildCertificate>> {
        if observation.child_certificate_digest.is_empty() {
            return Some(None);
        }
        let digest: [u8; 32] = observation
            .child_certificate_digest
            .as_slice()
            .try_into()
            .ok()?;
        self.children.get(&digest).map(Some)
    }

    /// Collector of the current round: fast path, or report once enough observations
    /// are in.
    fn collect(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let round = self.round;
        let usable = self.usable_observations(round);
        let indices: Vec<usize> = usable
            .iter()
            .map(|stored| self.index_of_observation(stored))
            .collect();
        let all_in = indices.len() == self.config.members.len();
        let half_gone = now_ms >= self.round_start_ms(round) + self.config.round_timeout_ms / 2;
        if self.config.path != ConsensusPath::Raft
            && (!self.full_house || all_in || half_gone)
            && let Some(included) = self.fast_quorum(&usable)
        {
            let Some(own) = self.make_report(round, &included) else {
                return;
            };
            let certificate = self.certificate(&own, Vec::new(), None);
            self.own_reports.insert(round, own);
            self.decide(certificate, true, actions);
            return;
        }
        let ready = all_in || (half_gone && self.rule.is_quorum(&indices));
        if !ready || !self.rule.is_quorum(&indices) {
            return;
        }
        let Some(own) = self.make_report(round, &usable) else {
            return;
        };
        if self.config.path == ConsensusPath::Raft {
            self.proposed.insert(own.report.digest, round);
            actions.push(Action::Commit {
                report: own.report.statement.clone(),
                report_digest: own.report.digest,
            });
        } else {
            for (bytes, _) in &own.children {
                if let Ok(child) = Certificate::decode(bytes.as_slice()) {
                    actions.push(Action::Broadcast(RoundMessage::Certificate(Box::new(
                        child,
                    ))));
                }
            }
            for statement in &own.observations {
                actions.push(Action::Broadcast(RoundMessage::Statement(
                    statement.clone(),
                )));
            }
            actions.push(Action::Broadcast(RoundMessage::Statement(
                own.report.statement.clone(),
            )));
            self.reports.insert(round, own.report.clone());
        }
        self.own_reports.insert(round, own);
    }

    fn index_of_observation(&self, stored: &StoredObservation) -> usize {
        stored.member_index
    }

    /// The observations of the largest identical-answer set, if it is a quorum and
    /// aggregates to its own answer.
    fn fast_quorum<'a>(
        &self,
        usable: &[&'a StoredObservation],
    ) -> Option<Vec<&'a StoredObservation>> {
        let mut by_answer: BTreeMap<&[u8], Vec<&'a StoredObservation>> = BTreeMap::new();
        for stored in usable {
            if stored.observation.error.is_empty() {
                by_answer
                    .entry(stored.observation.answer.as_slice())
                    .or_default()
                    .push(stored);
            }
        }
        by_answer.into_iter().find_map(|(answer, group)| {
            let indices: Vec<usize> = group.iter().map(|s| self.index_of_observation(s)).collect();
            if !self.rule.is_quorum(&indices) {
                return None;
            }
            let outcome = self.aggregate(&group);
            (outcome.value.as_deref() == Some(answer)).then_some(group)
        })
    }

    fn aggregate(&self, included: &[&StoredObservation]) -> crate::aggregate::Outcome {
        let decoded: Vec<(usize, Observation)> = included
            .iter()
            .map(|stored| {
                (
                    self.index_of_observation(stored),
                    stored.observation.clone(),
                )
            })
            .collect();
        aggregate(
            self.config.aggregation,
            &ballots(&decoded, &self.config.members),
            self.verifier_ref(),
        )
    }

    /// Signs a report over `included` (member order), or `None` when they have no
    /// value or the report would be too large.
    fn make_report(&self, round: u32, included: &[&StoredObservation]) -> Option<OwnReport> {
        let outcome = self.aggregate(included);
        let value = outcome.value?;
        self.sign_report(round, included, value, outcome.tally, None)
    }

    fn sign_report(
        &self,
        round: u32,
        included: &[&StoredObservation],
        value: Vec<u8>,
        tally: Vec<polity_proto::TallyEntry>,
        degraded_reason: Option<String>,
    ) -> Option<OwnReport> {
        debug_assert!(
            included
                .windows(2)
                .all(|pair| pair[0].member_index < pair[1].member_index)
        );
        debug_assert!(included.iter().all(|stored| {
            stored
                .observation
                .slot
                .as_ref()
                .is_some_and(|slot| slot.round == round)
        }));
        let report = Report {
            slot: Some(self.slot(round)),
            aggregation: self.config.aggregation as i32,
            value,
            tally,
            observation_digests: included
                .iter()
                .map(|stored| stored.digest.to_vec())
                .collect(),
            degraded: degraded_reason.is_some(),
            degraded_reason: degraded_reason.unwrap_or_default(),
            group_digest: self.group_digest.to_vec(),
        };
        if report.encoded_len() > STATEMENT_BODY_BYTES_MAX {
            return None;
        }
        let statement = sign_message(&self.key, StatementKind::Report, &report);
        let digest = report_digest(&statement.body);
        let children = included
            .iter()
            .filter_map(|stored| self.child_of(&stored.observation).flatten())
            .map(|child| {
                (
                    child.bytes.clone(),
                    certificate_digest(&child.certificate).to_vec(),
                )
            })
            .collect();
        Some(OwnReport {
            report: StoredReport {
                statement,
                report,
                digest,
            },
            observations: included
                .iter()
                .map(|stored| stored.statement.clone())
                .collect(),
            children,
        })
    }

    fn certificate(
        &self,
        own: &OwnReport,
        attestations: Vec<SignedStatement>,
        raft_commit: Option<SignedStatement>,
    ) -> Certificate {
        debug_assert_eq!(
            own.observations.len(),
            own.report.report.observation_digests.len()
        );
        debug_assert!(attestations.len() <= self.config.members.len());
        Certificate {
            registry_digest: self.config.registry_digest.to_vec(),
            task: self.config.task.clone(),
            slot: own.report.report.slot.clone(),
            members: self.config.members.clone(),
            path: self.config.path as i32,
            path_reason: self.config.path_reason.clone(),
            report: Some(own.report.statement.clone()),
            observations: own.observations.clone(),
            attestations,
            raft_commit,
            child_digests: own
                .children
                .iter()
                .map(|(_, digest)| digest.clone())
                .collect(),
            children: own
                .children
                .iter()
                .map(|(bytes, _)| bytes.clone())
                .collect(),
        }
    }

    /// Attests every stored report that passes the member's checks (module doc, 4).
    fn attest_reports(&mut self, actions: &mut Vec<Action>) {
        let Some(answer) = &self.answer else { return };
        let own_answer = answer.answer.clone().ok();
        let candidates: Vec<u32> = self
            .reports
            .keys()
            .copied()
            .filter(|round| {
                !self.attested.contains_key(round) && !self.reports_refused.contains(round)
            })
            .collect();
        for round in candidates {
            match self.judge_report(round, own_answer.as_deref()) {
                Judgement::Wait => {}
                Judgement::Refuse => {
                    self.reports_refused.insert(round);
                }
                Judgement::Attest => {
                    let stored = &self.reports[&round];
                    let attestation = Attestation {
                        slot: Some(self.slot(round)),
                        report_digest: stored.digest.to_vec(),
                        ..Attestation::default()
                    };
                    let digest = stored.digest;
                    self.locked_value = Some(stored.report.value.clone());
                    self.attested.insert(round, digest);
                    let statement =
                        sign_message(&self.key, StatementKind::Attestation, &attestation);
                    let collector = self.collector(round);
                    if collector != self.me {
                        actions.push(Action::SendTo(
                            collector,
                            RoundMessage::Statement(statement.clone()),
                        ));
                    }
                    self.attestations
                        .insert((round, self.my_index), (statement, digest));
                }
            }
        }
    }

    fn judge_report(&self, round: u32, own_answer: Option<&[u8]>) -> Judgement {
        let stored = &self.reports[&round];
        let report = &stored.report;
        if report.degraded || report.aggregation != self.config.aggregation as i32 {
            return Judgement::Refuse;
        }
        let mut included = Vec::with_capacity(report.observation_digests.len());
        for digest in &report.observation_digests {
            let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
                return Judgement::Refuse;
            };
            let Some(key) = self.observation_by_digest.get(&digest) else {
                return Judgement::Wait;
            };
            let stored = &self.observations[key];
            if key.0 != round {
                return Judgement::Refuse;
            }
            if self.child_of(&stored.observation).is_none() {
                return Judgement::Wait;
            }
            included.push(stored);
        }
        let indices: Vec<usize> = included
            .iter()
            .map(|s| self.index_of_observation(s))
            .collect();
        if indices.windows(2).any(|pair| pair[0] >= pair[1]) || !self.rule.is_quorum(&indices) {
            return Judgement::Refuse;
        }
        let outcome = self.aggregate(&included);
        if outcome.value.as_ref() != Some(&report.value) || outcome.tally != report.tally {
            return Judgement::Refuse;
        }
        if self
            .locked_value
            .as_ref()
            .is_some_and(|locked| *locked != report.value)
        {
            return Judgement::Refuse;
        }
        if let Some(own_answer) = own_answer
            && own_answer != report.value.as_slice()
        {
            let dissenting: Vec<usize> = included
                .iter()
                .filter(|s| !s.observation.error.is_empty() || s.observation.answer != own_answer)
                .map(|s| self.index_of_observation(s))
                .collect();
            if !self.rule.excludes_quorum(&dissenting) {
                return Judgement::Refuse;
            }
        }
        Judgement::Attest
    }

    /// Collector: a quorum of attestations on one of its reports makes the certificate
    /// (raft: attestations of the round's confirmed commit, which the certificate
    /// carries).
    fn certify(&mut self, actions: &mut Vec<Action>) {
        let mut ready = None;
        for (&round, own) in &self.own_reports {
            let commit = self.commits.get(&round);
            if self.config.path == ConsensusPath::Raft && commit.is_none() {
                continue;
            }
            let attesting: Vec<(usize, &SignedStatement)> = self
                .attestations
                .range((round, 0)..(round, usize::MAX))
                .filter(|(_, (statement, digest))| {
                    *digest == own.report.digest
                        && commit.is_none_or(|commit| attests_commit(statement, commit))
                })
                .map(|(&(_, index), (statement, _))| (index, statement))
                .collect();
            let indices: Vec<usize> = attesting.iter().map(|(index, _)| *index).collect();
            if self.rule.is_quorum(&indices) {
                let statements = attesting.into_iter().map(|(_, s)| s.clone()).collect();
                ready = Some(self.certificate(own, statements, commit.cloned()));
                break;
            }
        }
        if let Some(certificate) = ready {
            self.decide(certificate, true, actions);
        }
    }

    fn decide(&mut self, certificate: Certificate, broadcast: bool, actions: &mut Vec<Action>) {
        debug_assert!(self.decided.is_none() && !self.degraded);
        let certificate = Box::new(certificate);
        if broadcast {
            actions.push(Action::Broadcast(RoundMessage::Certificate(
                certificate.clone(),
            )));
        }
        actions.push(Action::Decided(certificate.clone()));
        self.decided = Some(certificate);
    }

    /// The rounds ran out: a degraded certificate over the best round this node saw.
    fn give_up(&mut self, actions: &mut Vec<Action>) {
        debug_assert!(!self.is_finished());
        self.degraded = true;
        let members = self.config.members.len();
        // Most usable observations; ties go to the latest round.
        let best_round = (0..self.config.rounds_max)
            .max_by_key(|&round| self.usable_observations(round).len())
            .unwrap_or(0);
        let included = self.usable_observations(best_round);
        let observations_seen = included.len();
        let outcome = self.aggregate(&included);
        let reason = match outcome.value {
            None if observations_seen > 0 => DegradedReason::NoValue {
                observations_seen,
                members,
            },
            _ => DegradedReason::RoundsExhausted {
                rounds: self.config.rounds_max,
                observations_seen,
                members,
            },
        };
        if !included.is_empty() {
            let value = outcome.value.unwrap_or_default();
            if let Some(own) = self.sign_report(
                best_round,
                &included,
                value,
                outcome.tally,
                Some(reason.to_string()),
            ) {
                let certificate = self.certificate(&own, Vec::new(), None);
                actions.push(Action::DegradedCertificate(Box::new(certificate)));
            }
        }
        actions.push(Action::Degraded(reason));
    }
}

enum Judgement {
    Attest,
    Wait,
    Refuse,
}

/// The statement's signer when its signature holds; otherwise `from` is rejected.
fn signer_or_reject(
    from: PublicKey,
    statement: &SignedStatement,
    actions: &mut Vec<Action>,
) -> Option<PublicKey> {
    match verify_statement(statement) {
        Ok(signer) => Some(signer),
        Err(error) => {
            actions.push(Action::Rejected {
                from,
                reason: error.to_string(),
            });
            None
        }
    }
}

fn check_observation(observation: &Observation, level: Level) -> Result<(), String> {
    if observation.answer.len() > ANSWER_BYTES_MAX {
        return Err("answer too large".into());
    }
    if observation.error.len() > ERROR_BYTES_MAX {
        return Err("error text too large".into());
    }
    if !observation.error.is_empty() && !observation.answer.is_empty() {
        return Err("observation carries both an answer and an error".into());
    }
    let digest_length = observation.child_certificate_digest.len();
    match (level, observation.error.is_empty()) {
        (Level::Region, _) | (_, false) if digest_length != 0 => {
            Err("observation names a child it cannot have".into())
        }
        (Level::Continent | Level::Global, true) if digest_length != 32 => {
            Err("observation lacks its child certificate digest".into())
        }
        _ => Ok(()),
    }
}

fn truncate_utf8(text: &mut String, length_bytes_max: usize) {
    if text.len() > length_bytes_max {
        let mut end = length_bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
pub(crate) mod tests;
