//! The entry node's side of a task: a client's submission becomes a [`plan::Plan`],
//! the level engine decides it group by group, and the finished record is stored
//! and told to watchers.
//!
//! - [`plan`]: validation, scope, and the seats of each region group (pure).
//! - `engine`: the levels as a pure state machine (events in, commands out): groups,
//!   attempts, replacements, degradation, representatives.
//! - `driver`: the async loop that feeds the engine and carries out its commands.
//! - this module: [`TaskEngine`], the node's task service: submit, get, watch,
//!   records, and the statistics read off a verified certificate.
//!
//! **Invariant:** a record reaches state DECIDED or DEGRADED only after its root
//! certificate passed `verify_chain` (in the engine) and was flushed to the store
//! (in `finish`); nobody hears of a result before it is durable.

mod driver;
mod engine;
pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use polity_consensus::registry::{Epoch, REGISTRY_CAPABILITY};
use polity_consensus::{PublicKey, TaskId};
use polity_proto::{
    Certificate, ConsensusPath, EpochChange, Level, Observation, StatementKind, SubmitTaskRequest,
    TaskEvent, TaskEventKind, TaskRecord, TaskState,
};
use tokio::sync::{broadcast, watch};

use crate::config::NodeConfig;
use crate::member::Federation;
use crate::runtime::identity::Identity;
use crate::runtime::storage::{GroupCommit, Store, StoreError};
use crate::telemetry::metrics::{Metrics, OutcomeLabels};
use crate::unix_ms;
pub use plan::REPLICATION_MAX;
use plan::Seat;

/// Events buffered per task for slow watchers; a watcher that falls further behind
/// skips the oldest (it always gets FINAL, which is also in the record).
const EVENTS_PER_TASK_MAX: usize = 64;

/// Why a submission was refused; maps onto gRPC status codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The registry has enough members, but too few can be reached from this node
    /// now (partitioned away, down, or behind an open circuit breaker): refused at
    /// once rather than seating members that cannot answer. UNAVAILABLE on the
    /// wire: it passes, and another node may reach them.
    #[error(
        "no quorum reachable in region {region:?}: {reachable} of the {eligible} registry \
         members that may sit can be reached from this node, and replication needs \
         {needed}; the others are partitioned away, down, or behind an open circuit \
         breaker (retry later, or at a node that reaches them)"
    )]
    NoQuorumReachable {
        region: String,
        reachable: usize,
        eligible: usize,
        needed: usize,
    },
    #[error("{0} tasks are already being decided on this node; retry later")]
    Overloaded(usize),
    #[error("this node is shutting down; submit to another node")]
    ShuttingDown,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// The outcome of `submit`.
#[derive(Debug)]
pub enum Submission {
    /// The same task (same canonical bytes) was submitted before.
    Known(Box<TaskRecord>),
    /// The task is running; the receiver yields its final record.
    Started(TaskId, watch::Receiver<Option<TaskRecord>>),
}

/// What a watcher receives.
pub enum Watch {
    /// The task is finished: only its FINAL event follows.
    Finished(Box<TaskRecord>),
    /// Live events, ending with FINAL.
    Live(
        broadcast::Receiver<TaskEvent>,
        watch::Receiver<Option<TaskRecord>>,
    ),
}

struct InFlight {
    events: broadcast::Sender<TaskEvent>,
    done: watch::Receiver<Option<TaskRecord>>,
    /// Set by whoever writes the final record: the task's own finish, or a drain
    /// that gave up waiting. The first one wins; the other writes nothing.
    claimed: Arc<AtomicBool>,
}

pub struct TaskEngine {
    pub(crate) identity: Identity,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) federation: Arc<Federation>,
    pub(crate) config: NodeConfig,
    /// Shared flushes for finished records.
    commit: GroupCommit,
    inflight: Mutex<HashMap<TaskId, InFlight>>,
    /// Set by [`TaskEngine::drain`]: new submissions are refused.
    closing: AtomicBool,
}

impl TaskEngine {
    pub fn new(
        identity: Identity,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: NodeConfig,
        federation: Arc<Federation>,
    ) -> Arc<TaskEngine> {
        metrics.agents.set(1);
        Arc::new(TaskEngine {
            identity,
            commit: GroupCommit::start(Arc::clone(&store)),
            store,
            metrics,
            federation,
            config,
            inflight: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn capabilities(&self) -> Vec<String> {
        self.federation.capabilities()
    }

    /// Marks tasks that were running when the node stopped as failed: their rounds
    /// lived in memory. Certified results are untouched.
    pub fn recover_interrupted(&self) -> Result<usize, StoreError> {
        let mut recovered = 0;
        for id in self.store.task_ids(usize::MAX)? {
            let Some(mut record) = self.store.task(&id)? else {
                continue;
            };
            if record.state == TaskState::Running as i32 {
                record.state = TaskState::Failed as i32;
                record.error = "interrupted: the entry node restarted before a decision".into();
                record.finished_at_ms = unix_ms();
                self.store.put_task(&record)?;
                recovered += 1;
            }
        }
        self.store.flush()?;
        Ok(recovered)
    }

    /// Validates and starts a task. Nothing is stored for a refused request.
    pub async fn submit(
        self: &Arc<Self>,
        request: SubmitTaskRequest,
    ) -> Result<Submission, SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let (epoch, seats, distrusted) = self.seats(&request.capability).await;
        let serves = self.capabilities();
        let plan = match plan::plan(request, &self.config, &epoch, seats, &distrusted, &serves) {
            Ok(plan) => plan,
            Err(error) => {
                // A task refused for want of nodes is a task this node could not
                // serve: it counts against its reliability (and scale signal).
                if matches!(
                    error,
                    SubmitError::FailedPrecondition(_) | SubmitError::NoQuorumReachable { .. }
                ) {
                    self.federation.workers().task_finished(false);
                }
                return Err(error);
            }
        };
        if let Some(record) = self.store.task(&plan.id)? {
            return Ok(Submission::Known(Box::new(record)));
        }
        let (events, done_tx, done_rx) = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            if let Some(running) = inflight.get(&plan.id) {
                return Ok(Submission::Started(plan.id, running.done.clone()));
            }
            if inflight.len() >= self.config.tasks.inflight_max {
                return Err(SubmitError::Overloaded(inflight.len()));
            }
            let (events, _) = broadcast::channel(EVENTS_PER_TASK_MAX);
            let (done_tx, done_rx) = watch::channel(None);
            inflight.insert(
                plan.id,
                InFlight {
                    events: events.clone(),
                    done: done_rx.clone(),
                    claimed: Arc::new(AtomicBool::new(false)),
                },
            );
            (events, done_tx, done_rx)
        };
        let record = TaskRecord {
            task_id: plan.id.as_bytes().to_vec(),
            spec: Some(plan.spec.clone()),
            state: TaskState::Running as i32,
            entry_node: self.identity.public_key().to_string(),
            submitted_at_ms: unix_ms(),
            ..TaskRecord::default()
        };
        if let Err(error) = self.store.put_task(&record) {
            self.inflight
                .lock()
                .expect("inflight lock")
                .remove(&plan.id);
            return Err(error.into());
        }
        self.metrics.tasks_inflight.inc();
        let id = plan.id;
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let finished = driver::orchestrate(&engine, plan, record, &events).await;
            engine.finish(id, finished, &events, done_tx).await;
        });
        Ok(Submission::Started(id, done_rx))
    }

    pub fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.store.task(id)
    }

    /// Subscribes to a task's events.
    pub fn watch(&self, id: &TaskId) -> Result<Option<Watch>, StoreError> {
        // Subscribe before reading the store, so no event falls between the two.
        let live = {
            let inflight = self.inflight.lock().expect("inflight lock");
            inflight
                .get(id)
                .map(|running| (running.events.subscribe(), running.done.clone()))
        };
        if let Some((events, done)) = live {
            return Ok(Some(Watch::Live(events, done)));
        }
        Ok(self
            .store
            .task(id)?
            .map(|record| Watch::Finished(Box::new(record))))
    }

    /// The current registry epoch and its members that may sit for `capability`
    /// and can be reached: this node when it serves it, and the peers that pass the
    /// compatibility rule, whose circuit is closed and that are not blocked (an
    /// injected partition). Region, continent and stake come from the registry,
    /// never from what a peer announces; a peer outside the registry gets no seat.
    /// Also the peers left out for their trust alone (for the refusal's wording).
    async fn seats(&self, capability: &str) -> (Arc<Epoch>, Vec<Seat>, BTreeSet<PublicKey>) {
        let epoch = self.federation.registry().current();
        let mut reachable: HashMap<PublicKey, f64> = HashMap::new();
        if self.federation.serves(capability) {
            reachable.insert(self.identity.public_key(), 1.0);
        }
        // Every member judges registry proposals; peers need not announce it.
        let wanted = if capability == REGISTRY_CAPABILITY {
            ""
        } else {
            capability
        };
        let mut distrusted = BTreeSet::new();
        match self.federation.peers().seat_candidates(wanted).await {
            Ok((candidates, untrusted)) => {
                distrusted.extend(untrusted.into_iter().filter_map(|candidate| {
                    PublicKey::from_slice(&candidate.view.info?.public_key).ok()
                }));
                for candidate in candidates {
                    let Some(info) = candidate.view.info else {
                        continue;
                    };
                    let Ok(key) = PublicKey::from_slice(&info.public_key) else {
                        continue;
                    };
                    if self.federation.faults().is_blocked(&key) {
                        continue; // on the other side of an injected partition
                    }
                    reachable.insert(key, candidate.trust);
                }
            }
            Err(error) => tracing::warn!(%error, "could not list peers"),
        }
        let seats = epoch
            .members()
            .iter()
            .filter(|member| Epoch::serves(member, capability))
            .filter_map(|member| {
                let key = PublicKey::from_slice(&member.public_key).ok()?;
                let trust = *reachable.get(&key)?;
                Some(Seat {
                    key,
                    region: member.region.clone(),
                    continent: member.continent.clone(),
                    stake: member.stake,
                    trust,
                })
            })
            .collect();
        (epoch, seats, distrusted)
    }

    pub(crate) fn emit(&self, events: &broadcast::Sender<TaskEvent>, id: TaskId, event: TaskEvent) {
        // No subscriber is fine: events are a courtesy, the record is the truth.
        let _ = events.send(TaskEvent {
            task_id: id.as_bytes().to_vec(),
            at_ms: unix_ms(),
            ..event
        });
    }

    /// Claims the right to write task `id`'s final record; `false` when someone
    /// else (its finish, or a drain) has.
    fn claim(&self, id: &TaskId) -> bool {
        self.inflight
            .lock()
            .expect("inflight lock")
            .get(id)
            .is_some_and(|running| !running.claimed.swap(true, Ordering::AcqRel))
    }

    /// Drain before stop: refuses new submissions, waits up to `grace` for the tasks
    /// in flight to finish (and store their records), then records each one still
    /// running as FAILED ("interrupted by shutdown") so that none is left RUNNING.
    /// A record a task stored first is never overwritten. Returns (finished while
    /// draining, interrupted).
    pub async fn drain(&self, grace: std::time::Duration) -> (usize, usize) {
        self.closing.store(true, Ordering::Release);
        let running = self.inflight.lock().expect("inflight lock").len();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && !self.inflight.lock().expect("inflight lock").is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left: Vec<TaskId> = self
            .inflight
            .lock()
            .expect("inflight lock")
            .keys()
            .copied()
            .collect();
        let mut interrupted = 0;
        for id in left {
            if !self.claim(&id) {
                continue;
            }
            if let Ok(Some(mut record)) = self.store.task(&id)
                && record.state == TaskState::Running as i32
            {
                record.state = TaskState::Failed as i32;
                record.error = "interrupted: the entry node shut down before a decision".into();
                record.finished_at_ms = unix_ms();
                if self.store.put_task(&record).is_ok() {
                    interrupted += 1;
                }
            }
        }
        let _ = self.store.flush();
        (running.saturating_sub(interrupted), interrupted)
    }

    /// A decided registry task moves this node's registry to the next epoch, and
    /// every connected peer is told; a decision that does not prove the change (it
    /// must, by construction) says why in the record.
    fn apply_registry_change(&self, record: &mut TaskRecord) {
        let Some(spec) = record.spec.as_ref() else {
            return;
        };
        if spec.capability != REGISTRY_CAPABILITY {
            return;
        }
        let change = EpochChange {
            proposal: spec.payload.clone(),
            certificate: record.certificate.clone(),
        };
        match self.federation.registry().apply(vec![change]) {
            Ok(_) => {
                let federation = Arc::clone(&self.federation);
                tokio::spawn(async move { federation.push_epochs().await });
            }
            Err(error) => {
                tracing::warn!(%error, "a decided registry task did not move the registry");
                record.error = format!("decided, but the registry did not move: {error:#}");
            }
        }
    }

    async fn finish(
        &self,
        id: TaskId,
        mut record: TaskRecord,
        events: &broadcast::Sender<TaskEvent>,
        done: watch::Sender<Option<TaskRecord>>,
    ) {
        if !self.claim(&id) {
            return; // a drain gave up on it and recorded it already
        }
        record.finished_at_ms = unix_ms();
        let path = record
            .certificate
            .as_ref()
            .and_then(|c| ConsensusPath::try_from(c.path).ok())
            .map(path_name)
            .unwrap_or("none");
        let outcome = match TaskState::try_from(record.state) {
            Ok(TaskState::Decided) => "decided",
            Ok(TaskState::Degraded) => "degraded",
            _ => "failed",
        };
        self.metrics
            .tasks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
                path: path.into(),
            })
            .inc();
        if outcome == "decided" {
            self.apply_registry_change(&mut record);
        }
        let stored = match self.store.put_task(&record) {
            Ok(()) => self.commit.flush().await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = stored {
            tracing::error!(task = %id, %error, "could not store a finished task");
            record.state = TaskState::Failed as i32;
            record.error = format!("storage: {error}");
        }
        tracing::debug!(task = %id, outcome, path, "task finished");
        self.emit(
            events,
            id,
            TaskEvent {
                kind: TaskEventKind::Final as i32,
                record: Some(record.clone()),
                ..TaskEvent::default()
            },
        );
        let _ = done.send(Some(record));
        self.inflight.lock().expect("inflight lock").remove(&id);
        self.metrics.tasks_inflight.dec();
    }
}

/// A statement's signer and body, read without checking the signature: only for
/// certificates that already passed `verify_chain`.
pub(crate) fn unverified<M: prost::Message + Default>(
    statement: &polity_proto::SignedStatement,
    kind: StatementKind,
) -> Option<(PublicKey, M)> {
    if statement.kind != kind as i32 {
        return None;
    }
    let signer = PublicKey::from_slice(&statement.signer).ok()?;
    let body = M::decode(statement.body.as_slice()).ok()?;
    Some((signer, body))
}

/// Who agreed, disagreed and stayed silent in one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Votes {
    pub agreed: Vec<PublicKey>,
    pub disagreed: Vec<PublicKey>,
    pub timed_out: Vec<PublicKey>,
}

/// The votes of one certificate (which must have passed `verify_chain`: signatures
/// are not checked again here): members whose answer is the report's value agreed,
/// the others that observed disagreed, and members without an observation were
/// silent.
pub(crate) fn votes(certificate: &Certificate) -> Votes {
    let value = certificate
        .report
        .as_ref()
        .and_then(|statement| unverified::<polity_proto::Report>(statement, StatementKind::Report))
        .map(|(_, report)| report.value)
        .unwrap_or_default();
    let mut votes = Votes::default();
    let mut answered = Vec::new();
    for statement in &certificate.observations {
        let Some((signer, observation)) =
            unverified::<Observation>(statement, StatementKind::Observation)
        else {
            continue;
        };
        answered.push(signer);
        if observation.error.is_empty() && observation.answer == value {
            votes.agreed.push(signer);
        } else {
            votes.disagreed.push(signer);
        }
    }
    for member in &certificate.members {
        if let Ok(key) = PublicKey::from_slice(&member.public_key)
            && !answered.contains(&key)
        {
            votes.timed_out.push(key);
        }
    }
    votes
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Region => "region",
        Level::Continent => "continent",
        Level::Global => "global",
        Level::Unspecified => "unspecified",
    }
}

pub fn path_name(path: ConsensusPath) -> &'static str {
    match path {
        ConsensusPath::Bft => "bft",
        ConsensusPath::Raft => "raft",
        ConsensusPath::Stake => "stake",
        ConsensusPath::Unspecified => "unspecified",
    }
}
