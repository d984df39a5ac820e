//! The node's side of deciding tasks with peers: the peer protocols
//! (`/polity/task/1`, `/polity/consensus/1`, messages of `polity/v1/peer.proto`) and
//! the member role.
//!
//! - **Entry → member** (`Assign`): "take part in this group's decision". The member
//!   checks the plan, answers at once (`Ack`), and runs its own
//!   [`polity_consensus::Round`] for the slot in a driver task.
//! - **Member ↔ member** (`RoundEnvelope`): the round's messages, routed by slot to
//!   the driver's bounded inbox. Messages that arrive before their `Assign` wait in a
//!   small bounded buffer; messages for finished slots are dropped quietly.
//! - **Member → entry** (`GroupOutcome`): the certificate, or why the round gave up,
//!   routed to the orchestrator of the task ([`crate::tasks`]).
//! - **Raft** (`RaftEnvelope`, `RaftPropose`): handed to [`crate::raftnet`].
//!
//! Every request is answered at once, so no stream stays open for a decision, and
//! every message to this node itself is delivered in process, not over the network.
//!
//! **Invariants:** nothing a peer sends can panic the node or grow memory without
//! bound: each map and queue here has a limit, and what does not fit is dropped and
//! counted (`federation_peer_messages_dropped_total{reason}`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polity_consensus::{
    Action, Input, PublicKey, Round, RoundConfig, RoundMessage, TaskId, TrustEvent, task_id,
    verify_chain,
};
use polity_net::{AppProtocol, NetHandle, PeerId, peer_id_of, public_key_of};
use polity_proto::{
    Ack, Aggregation, Assign, ConsensusPath, ConsensusRequest, GroupOutcome, Level, RoundEnvelope,
    SignedStatement, StatementKind, TaskRequest, TaskSpec, consensus_request, group_outcome,
    task_request,
};
use polity_raft::LedgerEntry;
use prost::Message;
use tokio::sync::{Semaphore, mpsc};

use crate::executor::{Executor, RunLimits};
use crate::faults::Faults;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::raftnet::RaftGroups;
use crate::recovery::{BREAKER_OPEN, PEER_UNREACHABLE};
use crate::unix_ms;
use crate::workers::Workers;

/// Inputs queued for one round at most; more are dropped (the round re-asks by
/// rotating its collector).
const ROUND_INBOX_MAX: usize = 256;
/// Slots with messages that arrived before their `Assign`, and messages per slot.
const EARLY_SLOTS_MAX: usize = 1_024;
const EARLY_MESSAGES_PER_SLOT_MAX: usize = 64;
/// Finished slots remembered, so their late messages are dropped quietly.
const FINISHED_SLOTS_MAX: usize = 16_384;
/// Orchestrator inboxes: outcomes queued per task at most.
pub const OUTCOME_INBOX_MAX: usize = 512;
/// Messages being sent at once; more are dropped and counted.
const SENDS_INFLIGHT_MAX: usize = 8_192;
/// Attempts to deliver a group outcome to the entry node.
const OUTCOME_ATTEMPTS: u32 = 3;
const OUTCOME_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Ticks: a quarter of a round, within these bounds.
const TICK_MIN: Duration = Duration::from_millis(5);
const TICK_MAX: Duration = Duration::from_millis(250);

/// A group's decision for one task: (task, level, group name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub task: TaskId,
    pub level: i32,
    pub group: String,
}

/// An outcome as the orchestrator receives it: who sent it, and what.
pub type OutcomeMessage = (PublicKey, GroupOutcome);

#[derive(Default)]
struct Slots {
    active: HashMap<SlotKey, mpsc::Sender<Input>>,
    early: HashMap<SlotKey, Vec<Input>>,
    early_order: VecDeque<SlotKey>,
    finished: HashSet<SlotKey>,
    finished_order: VecDeque<SlotKey>,
}

impl Slots {
    fn finish(&mut self, key: SlotKey) {
        self.active.remove(&key);
        if self.finished.insert(key.clone()) {
            self.finished_order.push_back(key);
            while self.finished_order.len() > FINISHED_SLOTS_MAX {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    /// Buffers an input for a slot whose `Assign` has not arrived. `false` when it
    /// did not fit.
    fn buffer(&mut self, key: SlotKey, input: Input) -> bool {
        if let Some(queue) = self.early.get_mut(&key) {
            if queue.len() >= EARLY_MESSAGES_PER_SLOT_MAX {
                return false;
            }
            queue.push(input);
            return true;
        }
        while self.early.len() >= EARLY_SLOTS_MAX {
            let Some(old) = self.early_order.pop_front() else {
                break;
            };
            self.early.remove(&old);
        }
        self.early_order.push_back(key.clone());
        self.early.insert(key, vec![input]);
        true
    }
}

/// What a member answers with: the executor (level 1) or the child's value.
enum Work {
    Execute {
        executor: Executor,
        payload: Vec<u8>,
        limits: RunLimits,
    },
    Represent {
        value: Vec<u8>,
        child: Vec<u8>,
    },
}

/// The federation side of a node: peer protocols and the member role.
pub struct Federation {
    identity: Identity,
    net: NetHandle,
    peers: Peers,
    metrics: Arc<Metrics>,
    raft: Arc<RaftGroups>,
    executors: BTreeMap<String, Executor>,
    executor_limits: crate::config::ExecutorLimits,
    member_rounds_max: usize,
    slots: Mutex<Slots>,
    outcomes: Mutex<HashMap<TaskId, mpsc::Sender<OutcomeMessage>>>,
    sends: Arc<Semaphore>,
    faults: Arc<Faults>,
    workers: Arc<Workers>,
}

impl Federation {
    #[allow(
        clippy::too_many_arguments,
        reason = "the node's parts, wired once at start"
    )]
    pub fn new(
        identity: Identity,
        net: NetHandle,
        peers: Peers,
        metrics: Arc<Metrics>,
        raft: Arc<RaftGroups>,
        executors: BTreeMap<String, Executor>,
        executor_limits: crate::config::ExecutorLimits,
        member_rounds_max: usize,
        faults: Arc<Faults>,
        workers: Arc<Workers>,
    ) -> Arc<Federation> {
        Arc::new(Federation {
            identity,
            net,
            peers,
            metrics,
            raft,
            executors,
            executor_limits,
            member_rounds_max,
            slots: Mutex::new(Slots::default()),
            outcomes: Mutex::new(HashMap::new()),
            sends: Arc::new(Semaphore::new(SENDS_INFLIGHT_MAX)),
            faults,
            workers,
        })
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    pub fn me(&self) -> PublicKey {
        self.identity.public_key()
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The capabilities this node serves as a member.
    pub fn capabilities(&self) -> Vec<String> {
        self.executors.keys().cloned().collect()
    }

    pub fn serves(&self, capability: &str) -> bool {
        self.executors.contains_key(capability)
    }

    pub fn raft(&self) -> &Arc<RaftGroups> {
        &self.raft
    }

    /// Answers one inbound request of the task or consensus protocol.
    pub async fn handle_request(
        self: &Arc<Self>,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
    ) -> Vec<u8> {
        let Ok(key) = public_key_of(&peer) else {
            return self.refuse("sender key", "the sender's peer id carries no ed25519 key");
        };
        let from = PublicKey(key);
        match protocol {
            AppProtocol::Task => match TaskRequest::decode(bytes.as_slice()) {
                Ok(TaskRequest {
                    request: Some(request),
                }) => self.handle_task(from, request).encode_to_vec(),
                Ok(_) => self.refuse("empty", "empty task request"),
                Err(error) => self.refuse("undecodable", &format!("task request: {error}")),
            },
            AppProtocol::Consensus => match ConsensusRequest::decode(bytes.as_slice()) {
                Ok(ConsensusRequest {
                    request: Some(consensus_request::Request::Round(envelope)),
                }) => self.on_round(from, envelope).encode_to_vec(),
                // Raft and propose requests: raftnet's own dispatch.
                Ok(request) => match self.raft.handle_consensus(peer, request).await {
                    Some(reply) => reply,
                    None => self.refuse("empty", "empty consensus request"),
                },
                Err(error) => self.refuse("undecodable", &format!("consensus request: {error}")),
            },
        }
    }

    fn refuse(&self, reason: &str, detail: &str) -> Vec<u8> {
        self.count_dropped(reason);
        Ack {
            accepted: false,
            reason: detail.to_string(),
        }
        .encode_to_vec()
    }

    fn count_dropped(&self, reason: &str) {
        self.metrics.peer_message_dropped(reason);
    }

    fn handle_task(self: &Arc<Self>, from: PublicKey, request: task_request::Request) -> Ack {
        match request {
            task_request::Request::Assign(assign) => self.on_assign(from, assign),
            task_request::Request::Outcome(outcome) => self.on_outcome(from, outcome),
        }
    }

    /// Sends a task-protocol request (in process when `to` is this node) and returns
    /// the member's answer.
    pub async fn send_task(
        self: &Arc<Self>,
        to: PublicKey,
        request: task_request::Request,
    ) -> Result<Ack, String> {
        if to == self.me() {
            return Ok(self.handle_task(to, request));
        }
        if self.faults.is_blocked(&to) {
            return Err(format!("{to} is blocked (fault injection)"));
        }
        let peer = peer_id_of(&to.0).map_err(|e| e.to_string())?;
        let bytes = TaskRequest {
            request: Some(request),
        }
        .encode_to_vec();
        let reply = self.net.request(peer, AppProtocol::Task, bytes).await;
        note_delivery(&self.metrics, &peer, &reply);
        Ack::decode(reply.map_err(|e| e.to_string())?.as_slice())
            .map_err(|e| format!("undecodable answer: {e}"))
    }

    /// Sends a round message to a member without waiting for it (bounded by
    /// [`SENDS_INFLIGHT_MAX`]; over it, the message is dropped and counted).
    fn send_round(self: &Arc<Self>, to: PublicKey, envelope: RoundEnvelope) {
        if to == self.me() {
            self.on_round(to, envelope);
            return;
        }
        if self.faults.is_blocked(&to) {
            return;
        }
        let Ok(permit) = Arc::clone(&self.sends).try_acquire_owned() else {
            self.count_dropped("send backlog");
            return;
        };
        let Ok(peer) = peer_id_of(&to.0) else {
            return;
        };
        let net = self.net.clone();
        let metrics = Arc::clone(&self.metrics);
        let bytes = ConsensusRequest {
            request: Some(consensus_request::Request::Round(envelope)),
        }
        .encode_to_vec();
        tokio::spawn(async move {
            let reply = net.request(peer, AppProtocol::Consensus, bytes).await;
            note_delivery(&metrics, &peer, &reply);
            if let Err(error) = reply {
                tracing::debug!(%peer, %error, "round message not delivered");
            }
            drop(permit);
        });
    }

    // ---- entry side: outcome routing -------------------------------------------

    /// Opens the inbox of a task this node orchestrates.
    pub fn open_outcomes(&self, task: TaskId) -> mpsc::Receiver<OutcomeMessage> {
        let (sender, receiver) = mpsc::channel(OUTCOME_INBOX_MAX);
        self.outcomes
            .lock()
            .expect("outcomes lock")
            .insert(task, sender);
        receiver
    }

    pub fn close_outcomes(&self, task: &TaskId) {
        self.outcomes.lock().expect("outcomes lock").remove(task);
    }

    fn on_outcome(&self, from: PublicKey, outcome: GroupOutcome) -> Ack {
        let Ok(task) = TaskId::from_slice(outcome.task_id.as_slice()) else {
            self.count_dropped("invalid outcome");
            return refused("task_id must be 32 bytes");
        };
        let sender = self
            .outcomes
            .lock()
            .expect("outcomes lock")
            .get(&task)
            .cloned();
        let Some(sender) = sender else {
            self.count_dropped("unknown task");
            return refused("this node orchestrates no such task (finished or never known)");
        };
        match sender.try_send((from, outcome)) {
            Ok(()) => accepted(),
            Err(_) => {
                self.count_dropped("outcome backlog");
                refused("the task's outcome queue is full")
            }
        }
    }

    // ---- member side ------------------------------------------------------------

    fn on_assign(self: &Arc<Self>, entry: PublicKey, assign: Assign) -> Ack {
        match self.start_round(entry, assign) {
            Ok(()) => accepted(),
            Err(reason) => {
                self.count_dropped("assign refused");
                tracing::info!(%entry, reason, "refused an assignment");
                refused(&reason)
            }
        }
    }

    fn start_round(self: &Arc<Self>, entry: PublicKey, assign: Assign) -> Result<(), String> {
        let plan = assign.plan.ok_or("assign carries no group plan")?;
        let task = task_id(&assign.task);
        let spec = TaskSpec::decode(assign.task.as_slice())
            .map_err(|e| format!("task is not a TaskSpec: {e}"))?;
        let level = Level::try_from(plan.level)
            .ok()
            .filter(|level| *level != Level::Unspecified)
            .ok_or_else(|| format!("unknown level {}", plan.level))?;
        let path = ConsensusPath::try_from(plan.path).map_err(|_| "unknown path")?;
        let aggregation =
            Aggregation::try_from(plan.aggregation).map_err(|_| "unknown aggregation")?;
        let key = SlotKey {
            task,
            level: level as i32,
            group: plan.group.clone(),
        };
        let work = if level == Level::Region {
            let executor = self
                .executors
                .get(&spec.capability)
                .ok_or_else(|| format!("this node does not serve {:?}", spec.capability))?
                .clone();
            let limits = RunLimits {
                timeout: Duration::from_millis(
                    self.executor_limits.timeout_ms.min(spec.deadline_ms.max(1)),
                ),
                output_bytes_max: self.executor_limits.output_bytes_max,
            };
            Work::Execute {
                executor,
                payload: spec.payload,
                limits,
            }
        } else {
            let child = polity_proto::Certificate::decode(assign.child_certificate.as_slice())
                .map_err(|e| format!("child certificate: {e}"))?;
            let summary = verify_chain(&child).map_err(|e| format!("child certificate: {e}"))?;
            let slot = child.slot.as_ref().ok_or("child certificate has no slot")?;
            if slot.task_id != task.as_bytes() || slot.level != level as i32 - 1 {
                return Err("child certificate is for another task or level".into());
            }
            Work::Represent {
                value: summary.value,
                child: assign.child_certificate,
            }
        };
        let members: Vec<PublicKey> = plan
            .members
            .iter()
            .filter_map(|m| {
                <[u8; 32]>::try_from(m.public_key.as_slice())
                    .ok()
                    .map(PublicKey)
            })
            .collect();
        let raft_group = if path == ConsensusPath::Raft {
            Some(RaftGroups::name_for(level, &plan.group, &plan.members))
        } else {
            None
        };
        let config = RoundConfig {
            task: assign.task,
            level,
            group: plan.group,
            members: plan.members.clone(),
            path,
            path_reason: plan.path_reason,
            aggregation,
            round_timeout_ms: plan.round_timeout_ms,
            rounds_max: plan.rounds_max,
            started_at_ms: unix_ms(),
        };
        let tick = Duration::from_millis(plan.round_timeout_ms / 4).clamp(TICK_MIN, TICK_MAX);
        let round = Round::new(config, self.identity.signing_key().clone())
            .map_err(|e| format!("round configuration: {e}"))?;
        let (inbox, receiver) = mpsc::channel(ROUND_INBOX_MAX);
        {
            let mut slots = self.slots.lock().expect("slots lock");
            if slots.active.contains_key(&key) || slots.finished.contains(&key) {
                return Ok(()); // a repeated assignment: already running or done
            }
            if slots.active.len() >= self.member_rounds_max {
                return Err(format!(
                    "this node is in {} rounds already; retry later",
                    slots.active.len()
                ));
            }
            if let Some(early) = slots.early.remove(&key) {
                for input in early {
                    let _ = inbox.try_send(input);
                }
            }
            slots.active.insert(key.clone(), inbox.clone());
        }
        self.metrics.member_rounds.inc();
        let federation = Arc::clone(self);
        tokio::spawn(async move {
            let driver = Driver {
                federation: Arc::clone(&federation),
                key: key.clone(),
                entry,
                members,
                member_plan: plan.members,
                raft_group,
                inbox,
                own_observation: None,
                degraded_certificate: None,
                executor_error: None,
            };
            driver.run(round, work, receiver, tick).await;
            federation.slots.lock().expect("slots lock").finish(key);
            federation.metrics.member_rounds.dec();
        });
        Ok(())
    }

    fn on_round(self: &Arc<Self>, from: PublicKey, envelope: RoundEnvelope) -> Ack {
        let Ok(task) = TaskId::from_slice(envelope.task_id.as_slice()) else {
            self.count_dropped("invalid round message");
            return refused("task_id must be 32 bytes");
        };
        let Some(message) = envelope.message.and_then(RoundMessage::from_proto) else {
            self.count_dropped("invalid round message");
            return refused("empty round message");
        };
        let key = SlotKey {
            task,
            level: envelope.level,
            group: envelope.group,
        };
        let input = message.into_input(from);
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(inbox) = slots.active.get(&key) {
            if inbox.try_send(input).is_err() {
                drop(slots);
                self.count_dropped("round backlog");
                return refused("the round's inbox is full");
            }
            return accepted();
        }
        if slots.finished.contains(&key) {
            return accepted(); // late: the slot is decided here
        }
        if !slots.buffer(key, input) {
            drop(slots);
            self.count_dropped("early backlog");
            return refused("too many messages before the assignment");
        }
        accepted()
    }
}

/// One member's round for one slot: feeds it inputs and carries out its actions.
struct Driver {
    federation: Arc<Federation>,
    key: SlotKey,
    entry: PublicKey,
    members: Vec<PublicKey>,
    member_plan: Vec<polity_proto::Member>,
    raft_group: Option<polity_raft::GroupName>,
    /// The round's own inbox, for the executor's answer and raft commits.
    inbox: mpsc::Sender<Input>,
    own_observation: Option<SignedStatement>,
    degraded_certificate: Option<polity_proto::Certificate>,
    /// This member's executor failed: said in its outcome.
    executor_error: Option<String>,
}

impl Driver {
    async fn run(
        mut self,
        mut round: Round,
        work: Work,
        mut receiver: mpsc::Receiver<Input>,
        tick: Duration,
    ) {
        if let Some(name) = self.raft_group.clone() {
            let raft = Arc::clone(&self.federation.raft);
            let members = self.member_plan.clone();
            tokio::spawn(async move {
                if let Err(error) = raft.ensure(&name, &members).await {
                    tracing::warn!(group = %name, %error, "could not start a raft group");
                }
            });
        }
        let answer_inbox = self.inbox.clone();
        let federation = Arc::clone(&self.federation);
        let task = self.key.task;
        tokio::spawn(async move {
            let input = match work {
                Work::Execute {
                    executor,
                    payload,
                    limits,
                } => {
                    let run = executor.run(&payload, limits);
                    let run = federation.faults.execute(&task, limits, run);
                    let answer = federation.workers.run(run).await;
                    Input::LocalAnswer {
                        answer: answer.map_err(|error| {
                            federation.metrics.executor_errors.inc();
                            error.to_string()
                        }),
                        child_certificate: None,
                    }
                }
                Work::Represent { value, child } => Input::LocalAnswer {
                    answer: Ok(value),
                    child_certificate: Some(child),
                },
            };
            // The round may have ended already; then nobody needs the answer.
            let _ = answer_inbox.send(input).await;
        });
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded: the round gives up after rounds_max rounds, and ticks move it there.
        loop {
            let input = tokio::select! {
                input = receiver.recv() => match input {
                    Some(input) => input,
                    None => return,
                },
                _ = ticker.tick() => Input::Tick,
            };
            if let Input::LocalAnswer {
                answer: Err(error), ..
            } = &input
            {
                self.executor_error = Some(error.clone());
            }
            for action in round.step(unix_ms(), input) {
                if self.act(action).await {
                    return;
                }
            }
        }
    }

    /// Carries out one action; `true` when the round is over.
    async fn act(&mut self, action: Action) -> bool {
        match action {
            Action::Broadcast(message) => {
                self.note_own(&message);
                for (index, member) in self.members.clone().into_iter().enumerate() {
                    if member != self.federation.me() {
                        self.send(index, member, &message);
                    }
                }
                false
            }
            Action::SendTo(member, message) => {
                self.note_own(&message);
                let index = self.members.iter().position(|m| *m == member).unwrap_or(0);
                self.send(index, member, &message);
                false
            }
            Action::Commit {
                report,
                report_digest,
            } => {
                if self.federation.faults.withholds() {
                    self.federation.metrics.fault_injected("withheld");
                } else {
                    self.commit(report, report_digest);
                }
                false
            }
            Action::Decided(certificate) => {
                // When the entry node is a member, its own round learns the decision
                // from the collector's broadcast, in process; then only the collector
                // (the report's signer) reports as well, in case that broadcast is
                // lost. Otherwise every member reports: any one is enough.
                let me = self.federation.me();
                let entry_is_member = self.members.contains(&self.entry);
                let collected_here = certificate
                    .report
                    .as_ref()
                    .is_some_and(|report| report.signer == me.0);
                if collected_here && self.federation.faults.withholds() {
                    self.federation.metrics.fault_injected("withheld");
                    return true;
                }
                if !entry_is_member || collected_here || self.entry == me {
                    let outcome = self.outcome(group_outcome::Outcome::Decided(*certificate));
                    self.report(outcome).await;
                }
                true
            }
            Action::DegradedCertificate(certificate) => {
                self.degraded_certificate = Some(*certificate);
                false
            }
            Action::Degraded(reason) => {
                let reason = match &self.executor_error {
                    Some(error) => format!("executor error: {error}; {reason}"),
                    None => reason.to_string(),
                };
                let mut outcome = self.outcome(group_outcome::Outcome::Degraded(reason));
                outcome.degraded_certificate = self.degraded_certificate.take();
                self.report(outcome).await;
                true
            }
            Action::Evidence(evidence) => {
                let federation = &self.federation;
                federation.metrics.byzantine_attacks_detected.inc();
                if let Ok(culprit) = polity_consensus::verify_evidence(&evidence) {
                    tracing::warn!(%culprit, "a member equivocated");
                    if let Err(error) = federation
                        .peers
                        .record_key(&culprit, TrustEvent::Equivocation)
                    {
                        tracing::warn!(%error, "could not record equivocation");
                    }
                }
                if let Err(error) = federation
                    .net
                    .publish_evidence(evidence.encode_to_vec())
                    .await
                {
                    tracing::debug!(%error, "could not gossip evidence");
                }
                false
            }
            Action::Rejected { from, reason } => {
                tracing::info!(%from, reason, "a peer sent an invalid round message");
                self.federation.count_dropped("invalid statement");
                if let Err(error) = self
                    .federation
                    .peers
                    .record_key(&from, TrustEvent::InvalidSignature)
                {
                    tracing::warn!(%error, "could not record a trust event");
                }
                false
            }
        }
    }

    /// Sends `message` to the member at `index`, as the injected faults have it.
    fn send(&self, index: usize, member: PublicKey, message: &RoundMessage) {
        if !self.federation.faults.active() {
            self.federation.send_round(member, self.envelope(message));
            return;
        }
        for message in self
            .federation
            .faults
            .outgoing(&self.key.task, index, message.clone())
        {
            self.federation.send_round(member, self.envelope(&message));
        }
    }

    fn note_own(&mut self, message: &RoundMessage) {
        if self.own_observation.is_some() {
            return;
        }
        if let RoundMessage::Statement(statement) = message
            && statement.kind == StatementKind::Observation as i32
            && statement.signer == self.federation.me().0
        {
            self.own_observation = Some(statement.clone());
        }
    }

    fn envelope(&self, message: &RoundMessage) -> RoundEnvelope {
        RoundEnvelope {
            task_id: self.key.task.as_bytes().to_vec(),
            level: self.key.level,
            group: self.key.group.clone(),
            message: Some(message.to_proto()),
        }
    }

    fn outcome(&self, outcome: group_outcome::Outcome) -> GroupOutcome {
        GroupOutcome {
            task_id: self.key.task.as_bytes().to_vec(),
            level: self.key.level,
            group: self.key.group.clone(),
            outcome: Some(outcome),
            degraded_certificate: None,
            observation: self.own_observation.clone(),
        }
    }

    /// Raft path: commits the report through the group's log in the background and
    /// feeds `Committed` back into the round.
    fn commit(&self, report: SignedStatement, report_digest: [u8; 32]) {
        let Some(name) = self.raft_group.clone() else {
            return;
        };
        let entry = match LedgerEntry::new(self.key.task, report.encode_to_vec(), None) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "report does not fit the ledger");
                return;
            }
        };
        let raft = Arc::clone(&self.federation.raft);
        let members = self.member_plan.clone();
        let inbox = self.inbox.clone();
        let budget = Duration::from_secs(10);
        tokio::spawn(async move {
            if let Err(error) = raft.ensure(&name, &members).await {
                tracing::warn!(group = %name, %error, "raft group unavailable");
                return;
            }
            match raft.commit(&name, entry, budget).await {
                Ok(committed) => {
                    let _ = inbox
                        .send(Input::Committed {
                            report_digest,
                            term: committed.term,
                            commit_index: committed.commit_index,
                        })
                        .await;
                }
                Err(error) => tracing::info!(group = %name, %error, "report not committed"),
            }
        });
    }

    /// Tells the entry node how the round ended (a few attempts, then gives up: the
    /// entry node's level timeout covers a lost outcome).
    async fn report(&self, outcome: GroupOutcome) {
        for attempt in 1..=OUTCOME_ATTEMPTS {
            match self
                .federation
                .send_task(self.entry, task_request::Request::Outcome(outcome.clone()))
                .await
            {
                Ok(_) => return,
                Err(error) if attempt == OUTCOME_ATTEMPTS => {
                    tracing::info!(entry = %self.entry, %error, "could not report a group outcome");
                }
                Err(_) => tokio::time::sleep(OUTCOME_RETRY_DELAY).await,
            }
        }
    }
}

/// Recovery learning for requests to peers: a failure opens `peer_unreachable` (or
/// `breaker_open`), the next delivered request closes both.
fn note_delivery(metrics: &Metrics, peer: &PeerId, reply: &Result<Vec<u8>, polity_net::NetError>) {
    if reply.is_ok() && !metrics.recovery.any_open() {
        return; // the hot path: nothing to recover from
    }
    let key = peer.to_string();
    match reply {
        Ok(_) => {
            metrics.recovery.recovered(PEER_UNREACHABLE, &key);
            metrics.recovery.recovered(BREAKER_OPEN, &key);
        }
        Err(polity_net::NetError::CircuitOpen(_)) => metrics.recovery.failed(BREAKER_OPEN, &key),
        Err(polity_net::NetError::Request { .. }) => {
            metrics.recovery.failed(PEER_UNREACHABLE, &key)
        }
        Err(_) => {}
    }
}

fn accepted() -> Ack {
    Ack {
        accepted: true,
        reason: String::new(),
    }
}

fn refused(reason: &str) -> Ack {
    Ack {
        accepted: false,
        reason: reason.to_string(),
    }
}
