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
//!   routed to the task's level engine ([`crate::entry`]).
//! - **Raft** (`RaftEnvelope`, `RaftPropose`): handed to [`crate::raft`].
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

use polity_consensus::aggregate::normalize;
use polity_consensus::binding::place_of;
use polity_consensus::certificate::GROUP_BYTES_MAX;
use polity_consensus::registry::{REGISTRY_CAPABILITY, check_membership, check_seats};
use polity_consensus::{
    Input, PublicKey, Round, RoundConfig, RoundMessage, TaskId, check_task_policy, task_id,
    task_rule, verify_chain,
};
use polity_net::{AppProtocol, NetHandle, PeerId, peer_id_of, public_key_of};
use polity_proto::{
    Ack, Aggregation, Assign, ConsensusPath, ConsensusRequest, EpochChain, GroupOutcome, Level,
    RoundEnvelope, TaskRequest, TaskSpec, consensus_request, task_request,
};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};

use super::round::{RoundDriver, Work};
use crate::chaos::Faults;
use crate::member::executor::{Executor, RunLimits};
use crate::member::workers::Workers;
use crate::peers::Peers;
use crate::raft::{PlaceGroup, RaftGroups};
use crate::registry::RegistryState;
use crate::runtime::identity::Identity;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::recovery::{BREAKER_OPEN, PEER_UNREACHABLE};

/// Inputs queued for one round at most; more are dropped (the round re-asks by
/// rotating its collector).
const ROUND_INBOX_MAX: usize = 256;
/// Slots with messages that arrived before their `Assign`, and messages per slot.
const EARLY_SLOTS_MAX: usize = 1_024;
const EARLY_MESSAGES_PER_SLOT_MAX: usize = 64;
/// Bytes of early messages held for one slot, from one sending peer (across
/// slots), and in all. Anyone connected can send round messages for slots that do not
/// exist (yet): these are what such a peer can make the node hold.
const EARLY_BYTES_PER_SLOT_MAX: usize = 16 << 20;
const EARLY_BYTES_PER_PEER_MAX: usize = 16 << 20;
const EARLY_BYTES_MAX: usize = 64 << 20;
/// Early messages one sending peer may have buffered, across slots: one peer alone
/// cannot push every other slot out of the buffer.
const EARLY_MESSAGES_PER_PEER_MAX: usize = 256;
/// Finished slots remembered, so their late messages are dropped quietly.
const FINISHED_SLOTS_MAX: usize = 16_384;
/// Outcomes one sender may deliver for one task: a member sends one per group it
/// sits in (three levels, a few attempts), so one peer cannot fill a task's inbox
/// and crowd out the honest members' outcomes.
const OUTCOMES_PER_SENDER_MAX: u32 = 16;
/// Orchestrator inboxes: outcomes queued per task at most.
pub const OUTCOME_INBOX_MAX: usize = 512;
/// Messages being sent at once; more are dropped and counted.
const SENDS_INFLIGHT_MAX: usize = 8_192;
/// Ticks: a quarter of a round, within these bounds.
const TICK_MIN: Duration = Duration::from_millis(5);
const TICK_MAX: Duration = Duration::from_millis(250);

/// A group's decision for one task: (task, level, group name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub task: TaskId,
    pub level: Level,
    /// The group's name as on the wire (`place` or `place~attempt`).
    pub group: String,
}

/// Why a request to a peer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is blocked (fault injection)")]
    Blocked(PublicKey),
    #[error("{0} is not a valid ed25519 key")]
    NotAKey(PublicKey),
    #[error(transparent)]
    Net(#[from] polity_net::NetError),
    #[error("undecodable answer: {0}")]
    Undecodable(#[from] prost::DecodeError),
}

/// Distinct senders an inbox keeps count of; more are refused.
const OUTCOME_SENDERS_MAX: usize = 4_096;

/// A task's outcome inbox at its entry node, and what each sender delivered to it.
struct Inbox {
    sender: mpsc::Sender<OutcomeMessage>,
    delivered: HashMap<PublicKey, u32>,
}

impl Inbox {
    /// Counts one more outcome from `from`, or says why it is refused.
    fn admit(&mut self, from: PublicKey) -> Result<(), &'static str> {
        if !self.delivered.contains_key(&from) && self.delivered.len() >= OUTCOME_SENDERS_MAX {
            return Err("too many senders of outcomes for the task");
        }
        let delivered = self.delivered.entry(from).or_insert(0);
        if *delivered >= OUTCOMES_PER_SENDER_MAX {
            return Err("this peer sent its share of outcomes for the task");
        }
        *delivered += 1;
        Ok(())
    }
}

/// An outcome as the level engine receives it: who sent it, and what.
pub type OutcomeMessage = (PublicKey, GroupOutcome);

/// Round messages that arrived before their slot's `Assign`, kept as the bytes they
/// came in (decoded only when the slot is claimed: a decoded message can take many
/// times its wire size), each with its sender.
#[derive(Default)]
struct Early {
    messages: Vec<(PublicKey, Vec<u8>)>,
    bytes: usize,
}

/// What one sending peer holds in the early buffer, across slots.
#[derive(Default, Clone, Copy)]
struct Held {
    bytes: usize,
    messages: usize,
}

/// Why an early message was not buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyRefusal {
    /// The slot holds [`EARLY_MESSAGES_PER_SLOT_MAX`] messages or
    /// [`EARLY_BYTES_PER_SLOT_MAX`] bytes.
    SlotFull,
    /// The sender holds [`EARLY_BYTES_PER_PEER_MAX`] bytes or
    /// [`EARLY_MESSAGES_PER_PEER_MAX`] messages across slots.
    PeerOverBudget,
}

#[derive(Default)]
struct Slots {
    active: HashMap<SlotKey, mpsc::Sender<Input>>,
    early: HashMap<SlotKey, Early>,
    early_order: VecDeque<SlotKey>,
    /// Bytes held in `early`, in all and per sender.
    early_bytes: usize,
    early_held: HashMap<PublicKey, Held>,
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

    /// Buffers `message` (a `RoundMessage` as it came, from `from`) for a slot whose
    /// `Assign` has not arrived. A new slot evicts the oldest ones while the slot
    /// count or the total byte budget is exceeded; returns how many it evicted.
    fn buffer(
        &mut self,
        key: SlotKey,
        from: PublicKey,
        message: Vec<u8>,
    ) -> Result<usize, EarlyRefusal> {
        let bytes = message.len();
        self.fits(&key, from, bytes)?;
        let evicted = self.make_room(&key, bytes);
        let over = self.early_bytes + bytes > EARLY_BYTES_MAX
            || (!self.early.contains_key(&key) && self.early.len() >= EARLY_SLOTS_MAX);
        if over {
            return Err(EarlyRefusal::SlotFull);
        }
        if !self.early.contains_key(&key) {
            self.early_order.push_back(key.clone());
        }
        let slot = self.early.entry(key).or_default();
        slot.messages.push((from, message));
        slot.bytes += bytes;
        self.early_bytes += bytes;
        let held = self.early_held.entry(from).or_default();
        held.bytes += bytes;
        held.messages += 1;
        Ok(evicted)
    }

    /// Whether `from` and `key` have room for a message of `bytes` (the total budget is
    /// made room for by eviction, in [`Slots::buffer`]). Cheap: callers ask before
    /// they encode the message.
    fn fits(&self, key: &SlotKey, from: PublicKey, bytes: usize) -> Result<(), EarlyRefusal> {
        let held = self.early_held.get(&from).copied().unwrap_or_default();
        if held.bytes + bytes > EARLY_BYTES_PER_PEER_MAX
            || held.messages >= EARLY_MESSAGES_PER_PEER_MAX
        {
            return Err(EarlyRefusal::PeerOverBudget);
        }
        if let Some(slot) = self.early.get(key)
            && (slot.messages.len() >= EARLY_MESSAGES_PER_SLOT_MAX
                || slot.bytes + bytes > EARLY_BYTES_PER_SLOT_MAX)
        {
            return Err(EarlyRefusal::SlotFull);
        }
        Ok(())
    }

    /// Evicts the oldest slots (never `key`) while a message of `bytes` for `key`
    /// would break the slot count or the total byte budget; returns how many.
    fn make_room(&mut self, key: &SlotKey, bytes: usize) -> usize {
        let new_slot = !self.early.contains_key(key);
        let mut evicted = 0;
        // Bounded: each pass looks at one slot of the queue, oldest first.
        for _ in 0..self.early_order.len() {
            let over = (new_slot && self.early.len() >= EARLY_SLOTS_MAX)
                || self.early_bytes + bytes > EARLY_BYTES_MAX;
            if !over {
                break;
            }
            let Some(oldest) = self.early_order.pop_front() else {
                break;
            };
            if oldest == *key {
                self.early_order.push_back(oldest); // never evict the slot being fed
            } else {
                self.take_early(&oldest);
                evicted += 1;
            }
        }
        evicted
    }

    /// Removes a slot's early messages, releasing their bytes; in arrival order,
    /// with their senders.
    fn take_early(&mut self, key: &SlotKey) -> Vec<(PublicKey, Vec<u8>)> {
        let Some(slot) = self.early.remove(key) else {
            return Vec::new();
        };
        self.early_bytes -= slot.bytes;
        for (from, message) in &slot.messages {
            if let Some(held) = self.early_held.get_mut(from) {
                held.bytes -= message.len();
                held.messages -= 1;
                if held.messages == 0 {
                    self.early_held.remove(from);
                }
            }
        }
        slot.messages
    }
}

/// The federation side of a node: peer protocols and the member role.
pub struct Federation {
    identity: Identity,
    pub(super) net: NetHandle,
    pub(super) peers: Peers,
    pub(super) metrics: Arc<Metrics>,
    pub(super) raft: Arc<RaftGroups>,
    executors: BTreeMap<String, Executor>,
    executor_limits: crate::config::ExecutorLimits,
    member_rounds_max: usize,
    slots: Mutex<Slots>,
    outcomes: Mutex<HashMap<TaskId, Inbox>>,
    sends: Arc<Semaphore>,
    pub(super) faults: Arc<Faults>,
    pub(super) workers: Arc<Workers>,
    registry: Arc<RegistryState>,
    /// One pushed epoch chain is checked at a time; more are dropped and counted.
    epoch_push: Arc<Semaphore>,
    /// Protocol violations per peer in the current window (see [`Federation::violation`]).
    strikes: Mutex<HashMap<PublicKey, Strikes>>,
}

/// Violations a peer may commit within [`STRIKE_WINDOW`] before it is banned.
pub const STRIKES_MAX: u32 = 32;
/// The window violations are counted in.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// How long a banned peer stays disconnected.
pub const BAN_DURATION: Duration = Duration::from_secs(60);
/// Peers whose strikes are tracked at once; past it the table is cleared.
const STRIKERS_MAX: usize = 4_096;

/// One peer's violations in its current window.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    window_started_ms: u64,
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
        registry: Arc<RegistryState>,
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
            registry,
            epoch_push: Arc::new(Semaphore::new(1)),
            strikes: Mutex::new(HashMap::new()),
        })
    }

    /// A peer broke the protocol (undecodable requests, malformed round messages,
    /// forged or invalid statements, epoch pushes that do not verify): counted as a
    /// dropped message under `reason`, and a strike. [`STRIKES_MAX`] strikes within
    /// [`STRIKE_WINDOW`] ban the peer for [`BAN_DURATION`]: disconnected, its
    /// connections refused. Budget refusals are not violations (an honest peer under
    /// load meets them).
    pub(crate) fn violation(&self, from: PublicKey, reason: &str) {
        self.count_dropped(reason);
        let now_ms = crate::monotonic_ms();
        let ban = {
            let mut strikes = self.strikes.lock().expect("strikes lock");
            if strikes.len() >= STRIKERS_MAX && !strikes.contains_key(&from) {
                strikes.clear();
            }
            let entry = strikes.entry(from).or_insert(Strikes {
                count: 0,
                window_started_ms: now_ms,
            });
            if now_ms.saturating_sub(entry.window_started_ms) > STRIKE_WINDOW.as_millis() as u64 {
                *entry = Strikes {
                    count: 0,
                    window_started_ms: now_ms,
                };
            }
            entry.count += 1;
            let ban = entry.count >= STRIKES_MAX;
            if ban {
                strikes.remove(&from);
            }
            ban
        };
        if ban && let Ok(peer) = peer_id_of(&from.0) {
            let net = self.net.clone();
            tokio::spawn(async move {
                if let Err(error) = net.ban(peer, BAN_DURATION).await {
                    tracing::warn!(%error, "could not ban a peer");
                }
            });
        }
    }

    /// The federation registry this node follows.
    pub fn registry(&self) -> &Arc<RegistryState> {
        &self.registry
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

    /// The capabilities this node serves as a member: its executors', and the
    /// registry's, which every member judges with its built-in rule.
    pub fn capabilities(&self) -> Vec<String> {
        let mut capabilities: Vec<String> = self.executors.keys().cloned().collect();
        capabilities.push(REGISTRY_CAPABILITY.to_string());
        capabilities
    }

    pub fn serves(&self, capability: &str) -> bool {
        capability == REGISTRY_CAPABILITY || self.executors.contains_key(capability)
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
                Err(error) => {
                    self.violation(from, "undecodable");
                    refused(&format!("task request: {error}")).encode_to_vec()
                }
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
                Err(error) => {
                    self.violation(from, "undecodable");
                    refused(&format!("consensus request: {error}")).encode_to_vec()
                }
            },
        }
    }

    /// A refusal `Ack` for a peer, counted as a dropped message with `reason`.
    pub(crate) fn refuse(&self, reason: &str, detail: &str) -> Vec<u8> {
        self.count_dropped(reason);
        Ack {
            accepted: false,
            reason: detail.to_string(),
        }
        .encode_to_vec()
    }

    pub(super) fn count_dropped(&self, reason: &str) {
        self.metrics.peer_message_dropped(reason);
    }

    fn handle_task(self: &Arc<Self>, from: PublicKey, request: task_request::Request) -> Ack {
        match request {
            task_request::Request::Assign(assign) => self.on_assign(from, assign),
            task_request::Request::Outcome(outcome) => self.on_outcome(from, outcome),
            task_request::Request::Epochs(chain) => self.on_epochs(from, chain),
            task_request::Request::EpochsAfter(epoch) => self.on_epochs_after(from, epoch),
        }
    }

    /// A peer behind us asks for the changes after its epoch: pushed back to it
    /// alone, at most [`crate::registry::PUSH_CHANGES_MAX`] of them.
    fn on_epochs_after(self: &Arc<Self>, from: PublicKey, epoch: u64) -> Ack {
        let changes = self.registry.changes_after(epoch);
        if changes.is_empty() {
            return refused("no newer registry epoch here");
        }
        let federation = Arc::clone(self);
        tokio::spawn(async move {
            let chain = EpochChain {
                genesis: None,
                changes,
            };
            let request = task_request::Request::Epochs(chain);
            if let Err(error) = federation.send_task(from, request).await {
                tracing::debug!(%error, "epoch changes not delivered");
            }
        });
        accepted()
    }

    /// Asks a peer that announces a newer registry epoch than ours for the changes;
    /// its push is checked like any other. One peer per call.
    pub async fn pull_epochs(self: &Arc<Self>) {
        let mine = self.registry.current().number();
        let Ok(candidates) = self.peers.find_local("").await else {
            return;
        };
        // A registry member that is ahead: a stranger's claim of a newer epoch
        // costs nothing to make.
        let epoch = self.registry.current();
        let ahead = candidates.into_iter().find_map(|candidate| {
            let info = candidate.view.info?;
            let key = PublicKey::from_slice(&info.public_key).ok()?;
            (info.registry_epoch > mine && epoch.member(&key).is_some()).then_some(key)
        });
        if let Some(peer) = ahead {
            let request = task_request::Request::EpochsAfter(mine);
            if let Err(error) = self.send_task(peer, request).await {
                tracing::debug!(%error, "could not ask for newer epochs");
            }
        }
    }

    /// Epoch changes a peer pushed: checked off the request path, one push at a
    /// time (a busy checker drops the push: the next one carries the same changes).
    fn on_epochs(self: &Arc<Self>, from: PublicKey, chain: EpochChain) -> Ack {
        let Ok(permit) = Arc::clone(&self.epoch_push).try_acquire_owned() else {
            self.count_dropped("epochs busy");
            return refused("busy checking another epoch push");
        };
        if chain.changes.len() > crate::registry::PUSH_CHANGES_MAX {
            self.count_dropped("epochs too many");
            return refused("too many epoch changes in one push");
        }
        let registry = Arc::clone(&self.registry);
        let federation = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(error) = registry.apply(chain.changes) {
                // Not a strike: a gap (we are more than a push behind) or a fork
                // fails here too, and the honest pusher is not to blame.
                federation.count_dropped("epochs invalid");
                tracing::warn!(%from, %error, "refused a pushed epoch change");
            }
        });
        accepted()
    }

    /// Tells every connected peer about the latest epoch changes.
    pub async fn push_epochs(self: &Arc<Self>) {
        let chain = EpochChain {
            genesis: None,
            changes: self.registry.recent_changes(),
        };
        let peers = match self.peers.find_local("").await {
            Ok(peers) => peers,
            Err(error) => {
                tracing::warn!(%error, "could not list peers for an epoch push");
                return;
            }
        };
        for candidate in peers {
            let Ok(key) = public_key_of(&candidate.view.peer_id) else {
                continue;
            };
            let request = task_request::Request::Epochs(chain.clone());
            if let Err(error) = self.send_task(PublicKey(key), request).await {
                tracing::debug!(%error, "epoch push not delivered");
            }
        }
    }

    /// Sends a task-protocol request (in process when `to` is this node) and returns
    /// the member's answer.
    pub async fn send_task(
        self: &Arc<Self>,
        to: PublicKey,
        request: task_request::Request,
    ) -> Result<Ack, SendError> {
        if to == self.me() {
            return Ok(self.handle_task(to, request));
        }
        if self.faults.is_blocked(&to) {
            return Err(SendError::Blocked(to));
        }
        let peer = peer_id_of(&to.0).map_err(|_| SendError::NotAKey(to))?;
        let bytes = TaskRequest {
            request: Some(request),
        }
        .encode_to_vec();
        let reply = self.net.request(peer, AppProtocol::Task, bytes).await;
        note_delivery(&self.metrics, &peer, &reply);
        Ok(Ack::decode(reply?.as_slice())?)
    }

    /// Sends a round message to a member without waiting for it (bounded by
    /// [`SENDS_INFLIGHT_MAX`]; over it, the message is dropped and counted).
    pub(super) fn send_round(self: &Arc<Self>, to: PublicKey, envelope: RoundEnvelope) {
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
        self.outcomes.lock().expect("outcomes lock").insert(
            task,
            Inbox {
                sender,
                delivered: HashMap::new(),
            },
        );
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
        let mut outcomes = self.outcomes.lock().expect("outcomes lock");
        let Some(inbox) = outcomes.get_mut(&task) else {
            drop(outcomes);
            self.count_dropped("unknown task");
            return refused("this node orchestrates no such task (finished or never known)");
        };
        if let Err(reason) = inbox.admit(from) {
            drop(outcomes);
            self.count_dropped("outcome quota");
            return refused(reason);
        }
        let sent = inbox.sender.try_send((from, outcome));
        drop(outcomes);
        match sent {
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

    /// On the raft path, the raft group of the group's place, which commits the report.
    fn raft_place(
        &self,
        path: ConsensusPath,
        level: Level,
        group: &str,
    ) -> Result<Option<PlaceGroup>, String> {
        if path != ConsensusPath::Raft {
            return Ok(None);
        }
        let place = place_of(group).map_err(|e| e.to_string())?;
        self.registry
            .place_group(level, place)
            .map(Some)
            .ok_or_else(|| format!("{place} has no raft group in this registry epoch"))
    }

    /// Checks an assignment and starts this member's round for its slot. A repeated
    /// assignment of a slot that runs or ran here is accepted and changes nothing.
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
        check_plan_policy(&spec, path, aggregation).map_err(|refusal| refusal.to_string())?;
        let epoch = self.registry.current();
        if epoch.member(&entry).is_none() {
            return Err(format!(
                "{entry} is not a registry member: only members may assign work"
            ));
        }
        if plan.registry_digest != epoch.digest() {
            return Err(format!(
                "the plan is drawn from registry {}, this member is at epoch {} ({})",
                hex::encode(&plan.registry_digest),
                epoch.number(),
                hex::encode(epoch.digest())
            ));
        }
        check_seats(&epoch, &assign.task, level, &plan.group, &plan.members)
            .map_err(|refusal| format!("seats: {refusal}"))?;
        let key = SlotKey {
            task,
            level,
            group: plan.group.clone(),
        };
        let work = self.work_for(&key, spec, assign.child_certificate)?;
        let raft_group = self.raft_place(path, level, &plan.group)?;
        let config = RoundConfig {
            task: assign.task,
            level,
            group: plan.group,
            members: plan.members.clone(),
            registry_digest: *epoch.digest(),
            path,
            path_reason: plan.path_reason,
            aggregation,
            round_timeout_ms: plan.round_timeout_ms,
            rounds_max: plan.rounds_max,
            started_at_ms: crate::monotonic_ms(),
        };
        let tick = Duration::from_millis(plan.round_timeout_ms / 4).clamp(TICK_MIN, TICK_MAX);
        let round = Round::new(config, self.identity.signing_key().clone())
            .map_err(|e| format!("round configuration: {e}"))?;
        let (inbox, receiver) = mpsc::channel(ROUND_INBOX_MAX);
        if !self.claim_slot(&key, &inbox)? {
            return Ok(()); // a repeated assignment: already running or done
        }
        self.metrics.member_rounds.inc();
        let driver = RoundDriver::new(
            Arc::clone(self),
            key.clone(),
            entry,
            plan.members,
            raft_group,
            inbox,
        );
        let federation = Arc::clone(self);
        tokio::spawn(async move {
            driver.run(round, work, receiver, tick).await;
            federation.slots.lock().expect("slots lock").finish(key);
            federation.metrics.member_rounds.dec();
        });
        Ok(())
    }

    /// What this member answers with: its executor's answer (level 1), or the value
    /// of the child certificate it represents, which must verify and be of this task
    /// and the level below.
    fn work_for(&self, key: &SlotKey, spec: TaskSpec, child: Vec<u8>) -> Result<Work, String> {
        if key.level == Level::Region && spec.capability == REGISTRY_CAPABILITY {
            let ballot = self.registry.judge(&spec.payload);
            return Ok(Work::Judged(ballot.map_err(|refusal| refusal.to_string())));
        }
        if key.level == Level::Region {
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
            return Ok(Work::Execute {
                executor,
                payload: spec.payload,
                limits,
            });
        }
        let certificate = polity_proto::Certificate::decode(child.as_slice())
            .map_err(|e| format!("child certificate: {e}"))?;
        let summary = verify_chain(&certificate).map_err(|e| format!("child certificate: {e}"))?;
        check_task_policy(&certificate, &spec).map_err(|e| format!("child certificate: {e}"))?;
        check_membership(&certificate, &self.registry.current())
            .map_err(|e| format!("child certificate: {e}"))?;
        // A member represents only a group it sat in (SIGNING.md, membership rule 5):
        // an entry node cannot make it vouch for someone else's child.
        let me = self.me();
        if !certificate.members.iter().any(|m| m.public_key == me.0) {
            return Err("this member did not sit in the child it is asked to represent".into());
        }
        let slot = certificate
            .slot
            .as_ref()
            .ok_or("child certificate has no slot")?;
        if slot.task_id != key.task.as_bytes() || slot.level != key.level as i32 - 1 {
            return Err("child certificate is for another task or level".into());
        }
        Ok(Work::Represent {
            value: summary.value,
            child,
        })
    }

    /// Registers a new round's inbox for its slot and hands it the messages that
    /// arrived early. `false` when the slot runs or ran here already; an error when
    /// this node is in as many rounds as it takes.
    fn claim_slot(&self, key: &SlotKey, inbox: &mpsc::Sender<Input>) -> Result<bool, String> {
        let mut slots = self.slots.lock().expect("slots lock");
        if slots.active.contains_key(key) || slots.finished.contains(key) {
            return Ok(false);
        }
        if slots.active.len() >= self.member_rounds_max {
            return Err(format!(
                "this node is in {} rounds already; retry later",
                slots.active.len()
            ));
        }
        slots.early_order.retain(|early| early != key);
        for (from, bytes) in slots.take_early(key) {
            let message = polity_proto::RoundMessage::decode(bytes.as_slice())
                .ok()
                .and_then(RoundMessage::from_proto);
            if let Some(message) = message {
                let _ = inbox.try_send(message.into_input(from));
            }
        }
        slots.active.insert(key.clone(), inbox.clone());
        Ok(true)
    }

    fn on_round(self: &Arc<Self>, from: PublicKey, envelope: RoundEnvelope) -> Ack {
        let Ok(task) = TaskId::from_slice(envelope.task_id.as_slice()) else {
            self.violation(from, "invalid round message");
            return refused("task_id must be 32 bytes");
        };
        let Ok(level) = Level::try_from(envelope.level) else {
            self.violation(from, "invalid round message");
            return refused("unknown level");
        };
        if envelope.group.len() > GROUP_BYTES_MAX {
            self.violation(from, "invalid round message");
            return refused("group name too long");
        }
        let Some(wire) = envelope.message.filter(|wire| wire.message.is_some()) else {
            self.violation(from, "invalid round message");
            return refused("empty round message");
        };
        let key = SlotKey {
            task,
            level,
            group: envelope.group,
        };
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(inbox) = slots.active.get(&key) {
            let input = RoundMessage::from_proto(wire).map(|message| message.into_input(from));
            if input.is_some_and(|input| inbox.try_send(input).is_err()) {
                drop(slots);
                self.count_dropped("round backlog");
                return refused("the round's inbox is full");
            }
            return accepted();
        }
        if slots.finished.contains(&key) {
            return accepted(); // late: the slot is decided here
        }
        // Refused before the message is copied, when it cannot fit anyway.
        let result = slots
            .fits(&key, from, wire.encoded_len())
            .and_then(|()| slots.buffer(key, from, wire.encode_to_vec()));
        drop(slots);
        match result {
            Ok(evicted) => {
                for _ in 0..evicted {
                    self.count_dropped("early slot evicted");
                }
                accepted()
            }
            Err(EarlyRefusal::SlotFull) => {
                self.count_dropped("early backlog");
                refused("too many messages before the assignment")
            }
            Err(EarlyRefusal::PeerOverBudget) => {
                self.count_dropped("early peer budget");
                refused("this peer holds too many bytes of messages before their assignment")
            }
        }
    }
}

/// Why a member refuses the rule its assignment plans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PlanRefusal {
    /// The task itself asks for no rule (values outside their enums).
    #[error(transparent)]
    Task(#[from] polity_consensus::VerifyError),
    #[error("the plan's path {planned} is not the one the task's policy selects ({selected})")]
    Path {
        planned: &'static str,
        selected: &'static str,
    },
    #[error("the plan's aggregation {planned} is not the task's ({asked})")]
    Aggregation {
        planned: &'static str,
        asked: &'static str,
    },
}

/// A member's own reading of its assignment: the path and aggregation the entry node
/// planned must be the ones the task's policy and spec select, or an honest member
/// would sign for a rule the task did not ask for (a bft task run as stake).
fn check_plan_policy(
    spec: &TaskSpec,
    path: ConsensusPath,
    aggregation: Aggregation,
) -> Result<(), PlanRefusal> {
    let (selected, asked) = task_rule(spec)?;
    if path != selected {
        return Err(PlanRefusal::Path {
            planned: path.as_str_name(),
            selected: selected.as_str_name(),
        });
    }
    if normalize(aggregation) != asked {
        return Err(PlanRefusal::Aggregation {
            planned: aggregation.as_str_name(),
            asked: asked.as_str_name(),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use polity_proto::RiskPolicy;

    use super::*;

    fn spec(policy: Option<RiskPolicy>, aggregation: Aggregation) -> TaskSpec {
        TaskSpec {
            policy,
            aggregation: aggregation as i32,
            ..TaskSpec::default()
        }
    }

    #[test]
    fn a_member_refuses_a_plan_the_task_did_not_ask_for() {
        let risky = Some(RiskPolicy {
            adversarial_risk: 0.9,
            ..RiskPolicy::default()
        });
        let bft_task = spec(risky, Aggregation::Majority);
        assert_eq!(
            check_plan_policy(&bft_task, ConsensusPath::Bft, Aggregation::Majority),
            Ok(())
        );
        let error = check_plan_policy(&bft_task, ConsensusPath::Stake, Aggregation::Majority)
            .unwrap_err()
            .to_string();
        assert!(error.contains("selects (CONSENSUS_PATH_BFT)"), "{error}");
        let error = check_plan_policy(&bft_task, ConsensusPath::Bft, Aggregation::FirstValid)
            .unwrap_err()
            .to_string();
        assert!(error.contains("aggregation"), "{error}");
        // Unspecified aggregation means majority, on both sides.
        let plain = spec(None, Aggregation::Unspecified);
        assert_eq!(
            check_plan_policy(&plain, ConsensusPath::Stake, Aggregation::Majority),
            Ok(())
        );
    }
}

#[cfg(test)]
mod early_tests {
    use super::*;

    #[test]
    fn one_sender_gets_a_share_of_a_tasks_outcome_inbox() {
        let (sender, _receiver) = mpsc::channel(OUTCOME_INBOX_MAX);
        let mut inbox = Inbox {
            sender,
            delivered: HashMap::new(),
        };
        let flooder = peer(1);
        let admitted = (0..1_000).filter(|_| inbox.admit(flooder).is_ok()).count();
        assert_eq!(admitted, OUTCOMES_PER_SENDER_MAX as usize);
        assert!(
            inbox.admit(peer(2)).is_ok(),
            "an honest member still gets in"
        );
        // Many identities: the count of senders kept is bounded too.
        for n in 0..2 * OUTCOME_SENDERS_MAX as u32 {
            let mut key = [0xaa; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            let _ = inbox.admit(PublicKey(key));
        }
        assert_eq!(inbox.delivered.len(), OUTCOME_SENDERS_MAX);
    }

    fn key(n: u32) -> SlotKey {
        SlotKey {
            task: TaskId([n as u8; 32]),
            level: Level::Region,
            group: format!("g{n}"),
        }
    }

    fn peer(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn message(bytes: usize) -> Vec<u8> {
        vec![0; bytes]
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn one_peer_cannot_hold_more_than_its_byte_budget() {
        let mut slots = Slots::default();
        let mut refused = 0;
        // A flood of 4 MiB messages for slots that do not exist, from one peer.
        for n in 0..300 {
            if slots.buffer(key(n), peer(1), message(4 * MIB)).is_err() {
                refused += 1;
            }
        }
        assert_eq!(slots.early_bytes, EARLY_BYTES_PER_PEER_MAX);
        assert_eq!(refused, 300 - EARLY_BYTES_PER_PEER_MAX / (4 * MIB));
    }

    #[test]
    fn one_peer_cannot_push_every_other_slot_out() {
        let mut slots = Slots::default();
        for n in 0..100 {
            slots.buffer(key(n), peer(n as u8), message(10)).unwrap();
        }
        // One peer, tiny messages, made-up slots: it runs out of its message budget
        // long before the slot count would evict the others.
        let mut evicted = 0;
        for n in 100..2_000 {
            if let Ok(count) = slots.buffer(key(n), peer(200), message(1)) {
                evicted += count;
            }
        }
        assert_eq!(evicted, 0);
        assert!((0..100).all(|n| slots.early.contains_key(&key(n))));
        assert_eq!(
            slots.early_held[&peer(200)].messages,
            EARLY_MESSAGES_PER_PEER_MAX
        );
    }

    #[test]
    fn many_peers_together_hold_no_more_than_the_total_and_the_oldest_go_first() {
        let mut slots = Slots::default();
        let mut evicted = 0;
        for n in 0..200u32 {
            let from = peer((n % 50) as u8);
            evicted += slots.buffer(key(n), from, message(4 * MIB)).unwrap();
        }
        assert!(
            slots.early_bytes <= EARLY_BYTES_MAX,
            "{}",
            slots.early_bytes
        );
        assert_eq!(evicted, 200 - EARLY_BYTES_MAX / (4 * MIB));
        assert!(
            !slots.early.contains_key(&key(0)),
            "the oldest slot went first"
        );
        assert!(slots.early.contains_key(&key(199)));
        let held: usize = slots.early_held.values().map(|held| held.bytes).sum();
        assert_eq!(held, slots.early_bytes);
    }

    #[test]
    fn a_slot_holds_a_bounded_number_of_bytes_and_messages() {
        let mut slots = Slots::default();
        assert!(slots.buffer(key(1), peer(1), message(10 * MIB)).is_ok());
        assert_eq!(
            slots.buffer(key(1), peer(2), message(7 * MIB)),
            Err(EarlyRefusal::SlotFull)
        );
        for n in 1..EARLY_MESSAGES_PER_SLOT_MAX {
            slots.buffer(key(3), peer(n as u8), message(10)).unwrap();
        }
        assert!(slots.buffer(key(3), peer(3), message(10)).is_ok());
        assert_eq!(
            slots.buffer(key(3), peer(4), message(10)),
            Err(EarlyRefusal::SlotFull)
        );
    }

    #[test]
    fn claiming_a_slot_hands_over_its_messages_and_frees_their_bytes() {
        let mut slots = Slots::default();
        slots.buffer(key(1), peer(1), message(MIB)).unwrap();
        slots.buffer(key(1), peer(2), message(MIB)).unwrap();
        slots.buffer(key(2), peer(1), message(MIB)).unwrap();
        let taken = slots.take_early(&key(1));
        assert_eq!(
            taken.iter().map(|(from, _)| *from).collect::<Vec<_>>(),
            [peer(1), peer(2)]
        );
        assert_eq!(slots.early_bytes, MIB);
        assert_eq!(slots.early_held[&peer(1)].bytes, MIB);
        assert!(!slots.early_held.contains_key(&peer(2)));
    }
}
