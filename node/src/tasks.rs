//! The task engine: validates submissions, executes them, drives each group's
//! decision round, stores the certificate chain and tells watchers.
//!
//! A task's groups run leaves first: the region group (level 1) executes the payload;
//! each parent group (continent, then global) observes its child's certificate. The
//! rounds are `polity_consensus::Round` state machines; this module only feeds them
//! answers and ticks and carries out their actions. Today every group is this node
//! alone (replication 1); the federation layer widens groups to peers.
//!
//! **Invariant:** a record reaches state DECIDED or DEGRADED only after its root
//! certificate passed `verify_chain` and was flushed to the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polity_consensus::{
    Action, Input, PublicKey, Round, RoundConfig, TaskId, encode_task, select, task_id,
    verify_chain,
};
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, GroupStats, Level, Member, Observation, RiskPolicy,
    Scope, StatementKind, SubmitTaskRequest, TaskEvent, TaskEventKind, TaskRecord, TaskSpec,
    TaskState,
};
use prost::Message;
use tokio::sync::{broadcast, watch};

use crate::config::{NodeConfig, validate_capability_name};
use crate::executor::{Executor, ExecutorSpec, RunLimits};
use crate::identity::Identity;
use crate::metrics::{LevelLabels, Metrics, OutcomeLabels};
use crate::storage::{Store, StoreError};
use crate::unix_ms;

/// Largest replication a client may ask for, per region group.
pub const REPLICATION_MAX: u32 = 64;
/// Events buffered per task for slow watchers; a watcher that falls further behind
/// skips the oldest (it always gets FINAL, which is also in the record).
const EVENTS_PER_TASK_MAX: usize = 64;
/// Rounds a group may use before it gives up.
const ROUNDS_MAX: u32 = 3;
/// How often a waiting round is ticked.
const TICK_INTERVAL: Duration = Duration::from_millis(20);

/// Why a submission was refused; maps onto gRPC status codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} tasks are already being decided on this node; retry later")]
    Overloaded(usize),
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
}

/// A validated task, ready to run.
struct Plan {
    id: TaskId,
    spec: TaskSpec,
    spec_bytes: Vec<u8>,
    top: Level,
    path: ConsensusPath,
    path_reason: String,
    executor: Executor,
}

pub struct TaskEngine {
    identity: Identity,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    executors: BTreeMap<String, Executor>,
    config: NodeConfig,
    inflight: Mutex<HashMap<TaskId, InFlight>>,
}

impl TaskEngine {
    pub fn new(
        identity: Identity,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: NodeConfig,
    ) -> anyhow::Result<Arc<TaskEngine>> {
        let mut executors = BTreeMap::new();
        for (name, spec) in &config.capabilities {
            executors.insert(name.clone(), Executor::new(ExecutorSpec::parse(spec)?));
        }
        metrics.agents.set(1);
        Ok(Arc::new(TaskEngine {
            identity,
            store,
            metrics,
            executors,
            config,
            inflight: Mutex::new(HashMap::new()),
        }))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn capabilities(&self) -> Vec<String> {
        self.executors.keys().cloned().collect()
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
    pub fn submit(self: &Arc<Self>, request: SubmitTaskRequest) -> Result<Submission, SubmitError> {
        let plan = self.plan(request)?;
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
            let finished = engine.run(plan, record, &events).await;
            engine.finish(id, finished, &events, done_tx);
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

    fn plan(&self, request: SubmitTaskRequest) -> Result<Plan, SubmitError> {
        let invalid = |reason: String| SubmitError::InvalidArgument(reason);
        if request.capability.is_empty() {
            return Err(invalid("capability is required".into()));
        }
        validate_capability_name(&request.capability)
            .map_err(|reason| invalid(format!("capability {:?}: {reason}", request.capability)))?;
        let Some(executor) = self.executors.get(&request.capability) else {
            return Err(invalid(format!(
                "unknown capability {:?}: no known node serves it (this node serves {})",
                request.capability,
                self.capabilities().join(", ")
            )));
        };
        let payload_max = self.config.api.payload_bytes_max;
        if request.payload.len() > payload_max {
            return Err(invalid(format!(
                "payload is {} bytes, the limit is {payload_max}",
                request.payload.len()
            )));
        }
        let scope = self.resolve_scope(request.scope)?;
        let top = Level::try_from(scope.level).expect("resolve_scope returns a known level");
        let replication = match request.replication {
            0 => 1,
            n if n > REPLICATION_MAX => {
                return Err(invalid(format!(
                    "replication {n} is above the limit {REPLICATION_MAX}"
                )));
            }
            n => n,
        };
        let known_capable = 1;
        if replication > known_capable {
            return Err(SubmitError::FailedPrecondition(format!(
                "replication {replication} needs {replication} nodes serving {:?} in region {:?}; \
                 this node knows {known_capable}",
                request.capability, self.config.region
            )));
        }
        let aggregation = match Aggregation::try_from(request.aggregation) {
            Ok(Aggregation::Unspecified) => Aggregation::Majority,
            Ok(aggregation) => aggregation,
            Err(_) => {
                return Err(invalid(format!(
                    "unknown aggregation {}",
                    request.aggregation
                )));
            }
        };
        let policy = validate_policy(request.policy)?;
        let choice = select(policy.as_ref());
        if choice.path == ConsensusPath::Raft {
            return Err(SubmitError::FailedPrecondition(format!(
                "the raft path was selected ({}), but this node runs no raft group yet; \
                 lower the consistency requirement or override the path",
                choice.reason
            )));
        }
        let deadline_ms = match request.deadline_ms {
            0 => self.config.tasks.deadline_ms_default,
            ms if ms > self.config.tasks.deadline_ms_max => {
                return Err(invalid(format!(
                    "deadline {ms} ms is above the limit {} ms",
                    self.config.tasks.deadline_ms_max
                )));
            }
            ms => ms,
        };
        let spec = TaskSpec {
            capability: request.capability,
            payload: request.payload,
            scope: Some(scope),
            replication,
            aggregation: aggregation as i32,
            policy,
            deadline_ms,
            nonce: request.nonce,
        };
        let spec_bytes = encode_task(&spec);
        Ok(Plan {
            id: task_id(&spec_bytes),
            spec,
            spec_bytes,
            top,
            path: choice.path,
            path_reason: choice.reason,
            executor: executor.clone(),
        })
    }

    /// Resolves a requested scope against what this node knows. An empty name means
    /// the entry node's own region or continent.
    fn resolve_scope(&self, scope: Option<Scope>) -> Result<Scope, SubmitError> {
        let scope = scope.unwrap_or(Scope {
            level: Level::Region as i32,
            name: String::new(),
        });
        let own = |name: String, mine: &str, what: &str| {
            if name.is_empty() || name == mine {
                Ok(mine.to_string())
            } else {
                Err(SubmitError::FailedPrecondition(format!(
                    "no known node in {what} {name:?} (this node is in {what} {mine:?})"
                )))
            }
        };
        let (level, name) = match Level::try_from(scope.level) {
            Ok(Level::Region) => (
                Level::Region,
                own(scope.name, &self.config.region, "region")?,
            ),
            Ok(Level::Continent) => (
                Level::Continent,
                own(scope.name, &self.config.continent, "continent")?,
            ),
            Ok(Level::Global) if scope.name.is_empty() || scope.name == "global" => {
                (Level::Global, String::new())
            }
            Ok(Level::Global) => {
                return Err(SubmitError::InvalidArgument(format!(
                    "a global scope has no name, got {:?}",
                    scope.name
                )));
            }
            Ok(Level::Unspecified) | Err(_) => {
                return Err(SubmitError::InvalidArgument(format!(
                    "scope level {} is not region, continent or global",
                    scope.level
                )));
            }
        };
        Ok(Scope {
            level: level as i32,
            name,
        })
    }

    /// The group name of this node at `level`.
    fn group_name(&self, level: Level) -> String {
        match level {
            Level::Region => self.config.region.clone(),
            Level::Continent => self.config.continent.clone(),
            _ => "global".to_string(),
        }
    }

    fn emit(&self, events: &broadcast::Sender<TaskEvent>, id: TaskId, event: TaskEvent) {
        // No subscriber is fine: events are a courtesy, the record is the truth.
        let _ = events.send(TaskEvent {
            task_id: id.as_bytes().to_vec(),
            at_ms: unix_ms(),
            ..event
        });
    }

    /// Runs every level of the task, leaves first. Returns the finished record.
    async fn run(
        &self,
        plan: Plan,
        mut record: TaskRecord,
        events: &broadcast::Sender<TaskEvent>,
    ) -> TaskRecord {
        let me = self.identity.public_key();
        let limits = RunLimits {
            timeout: Duration::from_millis(
                self.config.executor.timeout_ms.min(plan.spec.deadline_ms),
            ),
            output_bytes_max: self.config.executor.output_bytes_max,
        };
        let started_ms = unix_ms();
        let deadline_ms = started_ms.saturating_add(plan.spec.deadline_ms);
        self.emit(
            events,
            plan.id,
            TaskEvent {
                kind: TaskEventKind::Dispatched as i32,
                level: Level::Region as i32,
                group: self.config.region.clone(),
                member: me.to_string(),
                detail: format!("executing {:?}", plan.spec.capability),
                ..TaskEvent::default()
            },
        );
        let answer = plan
            .executor
            .run(&plan.spec.payload, limits)
            .await
            .map_err(|error| {
                self.metrics.executor_errors.inc();
                error.to_string()
            });
        self.emit(
            events,
            plan.id,
            TaskEvent {
                kind: TaskEventKind::Observation as i32,
                level: Level::Region as i32,
                group: self.config.region.clone(),
                member: me.to_string(),
                detail: match &answer {
                    Ok(value) => format!("answered {} bytes", value.len()),
                    Err(error) => format!("executor error: {error}"),
                },
                ..TaskEvent::default()
            },
        );

        let executor_error = answer.as_ref().err().cloned();
        let mut input = Input::LocalAnswer {
            answer,
            child_certificate: None,
        };
        let mut root: Option<Certificate> = None;
        for level_number in Level::Region as i32..=plan.top as i32 {
            let level = Level::try_from(level_number).expect("levels 1..=3 exist");
            let group = self.group_name(level);
            let group_started_ms = unix_ms();
            let outcome = self
                .decide_group(&plan, level, &group, input, deadline_ms)
                .await;
            let latency_ms = unix_ms().saturating_sub(group_started_ms);
            self.metrics
                .decision_latency_seconds
                .get_or_create(&LevelLabels {
                    level: level_name(level).into(),
                })
                .observe(latency_ms as f64 / 1000.0);
            match outcome {
                GroupOutcome::Decided {
                    certificate,
                    rounds,
                } => {
                    let stats = group_stats(&certificate, level, &group, latency_ms, rounds);
                    self.emit(
                        events,
                        plan.id,
                        TaskEvent {
                            kind: TaskEventKind::GroupDecided as i32,
                            level: level as i32,
                            group: group.clone(),
                            detail: format!(
                                "decided on the {} path in {latency_ms} ms ({} agreed)",
                                path_name(plan.path),
                                stats.agreed.len()
                            ),
                            ..TaskEvent::default()
                        },
                    );
                    record.groups.push(stats);
                    let value = match verify_chain(&certificate) {
                        Ok(summary) => summary.value,
                        Err(error) => {
                            // The round produced a certificate that does not verify: a
                            // bug, never a result. Refuse to store it.
                            tracing::error!(task = %plan.id, %error, "self-check of a certificate failed");
                            record.state = TaskState::Failed as i32;
                            record.error =
                                format!("internal: certificate failed its self-check: {error}");
                            return record;
                        }
                    };
                    let bytes = certificate.encode_to_vec();
                    input = Input::LocalAnswer {
                        answer: Ok(value.clone()),
                        child_certificate: Some(bytes),
                    };
                    record.value = value;
                    root = Some(*certificate);
                }
                GroupOutcome::Degraded(reason) => {
                    self.metrics.cascade_prevented.inc();
                    self.emit(
                        events,
                        plan.id,
                        TaskEvent {
                            kind: TaskEventKind::GroupDegraded as i32,
                            level: level as i32,
                            group: group.clone(),
                            detail: reason.clone(),
                            ..TaskEvent::default()
                        },
                    );
                    record.state = TaskState::Failed as i32;
                    record.error = format!(
                        "{} group {group:?} could not decide: {reason}",
                        level_name(level)
                    );
                    if let (Level::Region, Some(error)) = (level, &executor_error) {
                        record.error = format!("executor error: {error}; {}", record.error);
                    }
                    record.certificate = root;
                    return record;
                }
            }
        }
        record.state = TaskState::Decided as i32;
        record.certificate = root;
        record
    }

    /// Drives one group's round to a decision or to its end.
    async fn decide_group(
        &self,
        plan: &Plan,
        level: Level,
        group: &str,
        first_input: Input,
        deadline_ms: u64,
    ) -> GroupOutcome {
        let now_ms = unix_ms();
        let remaining_ms = deadline_ms.saturating_sub(now_ms).max(1);
        let config = RoundConfig {
            task: plan.spec_bytes.clone(),
            level,
            group: group.to_string(),
            members: vec![Member {
                public_key: self.identity.public_key().0.to_vec(),
                weight: self.config.stake,
            }],
            path: plan.path,
            path_reason: plan.path_reason.clone(),
            aggregation: Aggregation::try_from(plan.spec.aggregation)
                .unwrap_or(Aggregation::Majority),
            round_timeout_ms: (remaining_ms / u64::from(ROUNDS_MAX)).max(1),
            rounds_max: ROUNDS_MAX,
            started_at_ms: now_ms,
        };
        let mut round = match Round::new(config, self.identity.signing_key().clone()) {
            Ok(round) => round,
            Err(error) => {
                return GroupOutcome::Degraded(format!("round refused its configuration: {error}"));
            }
        };
        let mut input = first_input;
        // Bounded: the round ends by its own rounds_max, and the deadline ends it too.
        loop {
            let now_ms = unix_ms();
            for action in round.step(now_ms, input) {
                match action {
                    Action::Decided(certificate) => {
                        return GroupOutcome::Decided {
                            certificate,
                            rounds: round.round() + 1,
                        };
                    }
                    Action::Degraded(reason) => return GroupOutcome::Degraded(reason.to_string()),
                    Action::Evidence(_) => {
                        self.metrics.byzantine_attacks_detected.inc();
                    }
                    // Every member of today's groups is this node: there is no one else
                    // to send to, and no raft group to commit through (the raft path is
                    // refused at submission).
                    Action::Broadcast(_)
                    | Action::SendTo(..)
                    | Action::Commit { .. }
                    | Action::DegradedCertificate(_)
                    | Action::Rejected { .. } => {}
                }
            }
            if now_ms > deadline_ms.saturating_add(TICK_INTERVAL.as_millis() as u64) {
                return GroupOutcome::Degraded(format!(
                    "deadline of {} ms passed",
                    plan.spec.deadline_ms
                ));
            }
            tokio::time::sleep(TICK_INTERVAL).await;
            input = Input::Tick;
        }
    }

    fn finish(
        &self,
        id: TaskId,
        mut record: TaskRecord,
        events: &broadcast::Sender<TaskEvent>,
        done: watch::Sender<Option<TaskRecord>>,
    ) {
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
        if let Err(error) = self
            .store
            .put_task(&record)
            .and_then(|()| self.store.flush())
        {
            tracing::error!(task = %id, %error, "could not store a finished task");
            record.state = TaskState::Failed as i32;
            record.error = format!("storage: {error}");
        }
        tracing::info!(task = %id, outcome, path, "task finished");
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

enum GroupOutcome {
    Decided {
        certificate: Box<Certificate>,
        rounds: u32,
    },
    Degraded(String),
}

fn validate_policy(policy: Option<RiskPolicy>) -> Result<Option<RiskPolicy>, SubmitError> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    for (name, value) in [
        ("adversarial_risk", policy.adversarial_risk),
        ("consistency", policy.consistency),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(SubmitError::InvalidArgument(format!(
                "policy.{name} must be in [0,1], got {value}"
            )));
        }
    }
    if ConsensusPath::try_from(policy.path_override).is_err() {
        return Err(SubmitError::InvalidArgument(format!(
            "unknown consensus path {}",
            policy.path_override
        )));
    }
    Ok(Some(policy))
}

/// Who agreed, disagreed and stayed silent in one certificate.
fn group_stats(
    certificate: &Certificate,
    level: Level,
    group: &str,
    latency_ms: u64,
    rounds: u32,
) -> GroupStats {
    let value = polity_consensus::open::<polity_proto::Report>(
        certificate.report.as_ref().unwrap_or(&Default::default()),
        StatementKind::Report,
    )
    .map(|(_, report)| report.value)
    .unwrap_or_default();
    let mut stats = GroupStats {
        level: level as i32,
        group: group.to_string(),
        path: certificate.path,
        latency_ms,
        rounds,
        ..GroupStats::default()
    };
    let mut answered = Vec::new();
    for statement in &certificate.observations {
        let Ok((signer, observation)) =
            polity_consensus::open::<Observation>(statement, StatementKind::Observation)
        else {
            continue;
        };
        answered.push(signer);
        if observation.error.is_empty() && observation.answer == value {
            stats.agreed.push(signer.to_string());
        } else {
            stats.disagreed.push(signer.to_string());
        }
    }
    for member in &certificate.members {
        if let Ok(key) = <[u8; 32]>::try_from(member.public_key.as_slice()) {
            let key = PublicKey(key);
            if !answered.contains(&key) {
                stats.timed_out.push(key.to_string());
            }
        }
    }
    stats
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
