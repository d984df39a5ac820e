//! Fault injection: a node that misbehaves on purpose, for chaos runs and tests.
//!
//! The faults in force are a `polity.v1.Faults` message (see `admin.proto`): set at
//! start from the `[faults]` config section and `--fault-*` flags, replaced at run
//! time by the token-guarded `Admin/SetFaults`. A zero message is a healthy node,
//! and every hook here costs one atomic load when nothing is injected.
//!
//! Where each fault acts:
//! - **executor** ([`Faults::execute`]): added latency, a hang until the executor
//!   timeout, a wrong answer with probability ε;
//! - **round messages** ([`Faults::outgoing`], per recipient): forged signatures,
//!   equivocation (two different signed observations to every recipient, in an order
//!   that alternates by recipient, so each half of the group first sees a different
//!   one), replays of this node's statements of earlier tasks, a collector
//!   withholding its reports and certificates;
//! - **network** (in `polity-net`): outbound requests dropped or delayed, blocked
//!   peers (connections refused and closed) for partitions.
//!
//! Random choices are `sha256(seed, this node's key, task, what)`: the same seed gives
//! the same choices for the same tasks, whichever order they arrive in.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use polity_consensus::{PublicKey, RoundMessage, TaskId, sign_statement};
use polity_net::{NetHandle, peer_id_of};
use polity_proto::{Faults as FaultPlan, Observation, SignedStatement, StatementKind};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::member::executor::{ExecError, RunLimits};
use crate::runtime::identity::Identity;
use crate::telemetry::metrics::Metrics;

/// Own statements kept for replay at most.
const REPLAY_MEMORY: usize = 32;
/// Blocked peers at most.
pub const BLOCKED_PEERS_MAX: usize = 4_096;

/// The `[faults]` section of the node configuration (same fields as
/// `polity.v1.Faults`; blocked peers as hex public keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub error_rate: f64,
    pub distinct_wrong: bool,
    pub timeout_rate: f64,
    pub added_latency_ms: u64,
    pub equivocate: bool,
    pub forge_signatures: bool,
    pub replay_statements: bool,
    pub withhold_as_collector: bool,
    pub message_drop_rate: f64,
    pub message_delay_ms: u64,
    pub blocked_peers: Vec<String>,
    pub seed: u64,
}

impl FaultConfig {
    pub fn to_plan(&self) -> Result<FaultPlan, InvalidPlan> {
        let blocked_peers = self
            .blocked_peers
            .iter()
            .map(|key| {
                hex::decode(key)
                    .ok()
                    .filter(|bytes| bytes.len() == 32)
                    .ok_or_else(|| {
                        InvalidPlan(format!(
                            "faults.blocked_peers: {key:?} is not a 64-hex-digit key"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = FaultPlan {
            error_rate: self.error_rate,
            distinct_wrong: self.distinct_wrong,
            timeout_rate: self.timeout_rate,
            added_latency_ms: self.added_latency_ms,
            equivocate: self.equivocate,
            forge_signatures: self.forge_signatures,
            replay_statements: self.replay_statements,
            withhold_as_collector: self.withhold_as_collector,
            message_drop_rate: self.message_drop_rate,
            message_delay_ms: self.message_delay_ms,
            blocked_peers,
            seed: self.seed,
        };
        validate(&plan)?;
        Ok(plan)
    }
}

/// Added latencies and delays above this are refused (they would only wedge the
/// node's bounded queues).
pub const DELAY_MS_MAX: u64 = 60_000;

/// Why a fault plan is refused; the reason names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPlan(pub String);

/// Why a plan could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum SetFaultsError {
    #[error(transparent)]
    Invalid(#[from] InvalidPlan),
    #[error("network: {0}")]
    Network(#[from] polity_net::NetError),
}

/// Checks a plan; the reason names the field.
pub fn validate(plan: &FaultPlan) -> Result<(), InvalidPlan> {
    let invalid = |reason: String| Err(InvalidPlan(reason));
    for (name, rate) in [
        ("error_rate", plan.error_rate),
        ("timeout_rate", plan.timeout_rate),
        ("message_drop_rate", plan.message_drop_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return invalid(format!("{name} must be in [0, 1], got {rate}"));
        }
    }
    for (name, ms) in [
        ("added_latency_ms", plan.added_latency_ms),
        ("message_delay_ms", plan.message_delay_ms),
    ] {
        if ms > DELAY_MS_MAX {
            return invalid(format!("{name} is at most {DELAY_MS_MAX}, got {ms}"));
        }
    }
    if plan.blocked_peers.len() > BLOCKED_PEERS_MAX {
        return invalid(format!("at most {BLOCKED_PEERS_MAX} blocked peers"));
    }
    if let Some(bad) = plan.blocked_peers.iter().find(|key| key.len() != 32) {
        return invalid(format!(
            "blocked_peers: a key is {} bytes, not 32",
            bad.len()
        ));
    }
    Ok(())
}

/// The answer a faulty member gives instead of `answer` for `task`: the same for
/// every faulty member (colluding) unless `distinct`, and never equal to `answer`.
pub fn wrong_answer(task: &TaskId, answer: &[u8], distinct_by: Option<&PublicKey>) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(b"polity-fault/wrong-answer");
    hash.update(task.as_bytes());
    hash.update(answer);
    if let Some(key) = distinct_by {
        hash.update(key.0);
    }
    let mut wrong = format!("wrong:{}", hex::encode(&hash.finalize()[..8])).into_bytes();
    if wrong == answer {
        wrong.push(b'!');
    }
    wrong
}

/// This node's faults in force.
pub struct Faults {
    identity: Identity,
    net: NetHandle,
    metrics: Arc<Metrics>,
    plan: RwLock<Arc<FaultPlan>>,
    /// Fast path: false while the plan is the zero message.
    active: AtomicBool,
    blocked: RwLock<HashSet<PublicKey>>,
    /// This node's recent statements (observations, reports, attestations), replayed
    /// in later tasks when `replay_statements` is on.
    sent: Mutex<VecDeque<(TaskId, SignedStatement)>>,
}

impl Faults {
    pub fn new(identity: Identity, net: NetHandle, metrics: Arc<Metrics>) -> Arc<Faults> {
        Arc::new(Faults {
            identity,
            net,
            metrics,
            plan: RwLock::new(Arc::new(FaultPlan::default())),
            active: AtomicBool::new(false),
            blocked: RwLock::new(HashSet::new()),
            sent: Mutex::new(VecDeque::new()),
        })
    }

    /// Puts `plan` in force (after [`validate`]); returns what is now in force.
    pub async fn set(&self, plan: FaultPlan) -> Result<FaultPlan, SetFaultsError> {
        validate(&plan)?;
        let blocked: HashSet<PublicKey> = plan
            .blocked_peers
            .iter()
            .filter_map(|key| <[u8; 32]>::try_from(key.as_slice()).ok().map(PublicKey))
            .collect();
        let peer_ids = blocked
            .iter()
            .filter_map(|key| peer_id_of(&key.0).ok())
            .collect();
        self.net.set_blocked(peer_ids).await?;
        self.net
            .set_link_faults(plan.message_drop_rate, plan.message_delay_ms, plan.seed);
        *self.blocked.write().expect("faults lock") = blocked;
        self.active
            .store(plan != FaultPlan::default(), Ordering::Release);
        if plan != FaultPlan::default() {
            tracing::warn!(?plan, "fault injection in force");
        } else {
            tracing::info!("fault injection off");
        }
        *self.plan.write().expect("faults lock") = Arc::new(plan.clone());
        Ok(plan)
    }

    pub fn current(&self) -> FaultPlan {
        self.plan.read().expect("faults lock").as_ref().clone()
    }

    /// Whether any fault is in force.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn plan(&self) -> Option<Arc<FaultPlan>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        Some(Arc::clone(&self.plan.read().expect("faults lock")))
    }

    /// This node refuses to talk to `key` (one side of a partition).
    pub fn is_blocked(&self, key: &PublicKey) -> bool {
        self.active.load(Ordering::Acquire)
            && self.blocked.read().expect("faults lock").contains(key)
    }

    /// A uniform draw in [0, 1) for (`task`, `what`), fixed by the seed and this node.
    fn draw(&self, plan: &FaultPlan, task: &TaskId, what: &str) -> f64 {
        let mut hash = Sha256::new();
        hash.update(plan.seed.to_le_bytes());
        hash.update(self.identity.public_key().0);
        hash.update(task.as_bytes());
        hash.update(what.as_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        // 53 random bits make an exact double in [0, 1).
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn count(&self, kind: &str) {
        self.metrics.fault_injected(kind);
    }

    /// Runs an execution for `task` under the executor faults.
    pub async fn execute<F>(
        &self,
        task: &TaskId,
        limits: RunLimits,
        run: F,
    ) -> Result<Vec<u8>, ExecError>
    where
        F: Future<Output = Result<Vec<u8>, ExecError>>,
    {
        let Some(plan) = self.plan() else {
            return run.await;
        };
        if plan.added_latency_ms > 0 {
            self.count("latency");
            tokio::time::sleep(std::time::Duration::from_millis(plan.added_latency_ms)).await;
        }
        if plan.timeout_rate > 0.0 && self.draw(&plan, task, "timeout") < plan.timeout_rate {
            self.count("timeout");
            tokio::time::sleep(limits.timeout).await;
            return Err(ExecError::Timeout(limits.timeout.as_millis() as u64));
        }
        let answer = run.await?;
        if plan.error_rate > 0.0 && self.draw(&plan, task, "error") < plan.error_rate {
            self.count("wrong_answer");
            let me = self.identity.public_key();
            return Ok(wrong_answer(
                task,
                &answer,
                plan.distinct_wrong.then_some(&me),
            ));
        }
        Ok(answer)
    }

    /// Whether this node, as a round's collector, keeps its results to itself.
    pub fn withholds(&self) -> bool {
        self.plan().is_some_and(|plan| plan.withhold_as_collector)
    }

    /// What this node actually sends for `message` to the recipient at position
    /// `recipient` (any number in a round: only its parity is used).
    pub fn outgoing(
        &self,
        task: &TaskId,
        recipient: usize,
        message: RoundMessage,
    ) -> Vec<RoundMessage> {
        let Some(plan) = self.plan() else {
            return vec![message];
        };
        let me = self.identity.public_key();
        match message {
            RoundMessage::Certificate(certificate) => {
                let mine = certificate
                    .report
                    .as_ref()
                    .is_some_and(|report| report.signer == me.0);
                if plan.withhold_as_collector && mine {
                    self.count("withheld");
                    return Vec::new();
                }
                vec![RoundMessage::Certificate(certificate)]
            }
            RoundMessage::Statement(statement) => {
                let kind = StatementKind::try_from(statement.kind).unwrap_or_default();
                if plan.withhold_as_collector && kind == StatementKind::Report {
                    self.count("withheld");
                    return Vec::new();
                }
                let mut out = vec![statement.clone()];
                if plan.equivocate
                    && kind == StatementKind::Observation
                    && let Some(other) = self.equivocation(task, &statement)
                {
                    self.count("equivocation");
                    if recipient % 2 == 1 {
                        out.insert(0, other);
                    } else {
                        out.push(other);
                    }
                }
                if plan.replay_statements {
                    let mut sent = self.sent.lock().expect("faults lock");
                    if let Some((_, old)) = sent.iter().find(|(old_task, _)| old_task != task) {
                        self.count("replay");
                        out.push(old.clone());
                    }
                    if sent.back().map(|(_, last)| last) != Some(&statement) {
                        sent.push_back((*task, statement));
                        while sent.len() > REPLAY_MEMORY {
                            sent.pop_front();
                        }
                    }
                }
                if plan.forge_signatures {
                    self.count("forged_signature");
                    for statement in &mut out {
                        if let Some(byte) = statement.signature.first_mut() {
                            *byte ^= 0x01;
                        }
                    }
                }
                out.into_iter().map(RoundMessage::Statement).collect()
            }
        }
    }

    /// The same observation with another answer, validly signed by this node.
    fn equivocation(&self, task: &TaskId, statement: &SignedStatement) -> Option<SignedStatement> {
        if statement.signer != self.identity.public_key().0 {
            return None;
        }
        let mut observation = Observation::decode(statement.body.as_slice()).ok()?;
        observation.answer =
            wrong_answer(task, &observation.answer, Some(&self.identity.public_key()));
        observation.error.clear();
        Some(sign_statement(
            self.identity.signing_key(),
            StatementKind::Observation,
            observation.encode_to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_answers_collude_unless_distinct() {
        let task = TaskId::from_slice(&[7; 32]).unwrap();
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        assert_eq!(
            wrong_answer(&task, b"42", None),
            wrong_answer(&task, b"42", None)
        );
        assert_ne!(wrong_answer(&task, b"42", None), b"42".to_vec());
        assert_ne!(
            wrong_answer(&task, b"42", Some(&a)),
            wrong_answer(&task, b"42", Some(&b))
        );
    }

    #[test]
    fn plans_are_validated() {
        assert!(validate(&FaultPlan::default()).is_ok());
        let bad = FaultPlan {
            error_rate: 1.5,
            ..FaultPlan::default()
        };
        assert!(validate(&bad).unwrap_err().0.contains("error_rate"));
        let bad = FaultPlan {
            message_drop_rate: f64::NAN,
            ..FaultPlan::default()
        };
        assert!(validate(&bad).is_err());
        let bad = FaultPlan {
            blocked_peers: vec![vec![1; 31]],
            ..FaultPlan::default()
        };
        assert!(validate(&bad).unwrap_err().0.contains("32"));
        let bad = FaultPlan {
            message_delay_ms: DELAY_MS_MAX + 1,
            ..FaultPlan::default()
        };
        assert!(validate(&bad).is_err());
        let config = FaultConfig {
            blocked_peers: vec!["zz".into()],
            ..FaultConfig::default()
        };
        assert!(config.to_plan().is_err());
    }
}
