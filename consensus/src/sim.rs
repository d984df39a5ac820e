//! A seeded, deterministic simulator of one group's rounds over a faulty network:
//! lost, delayed (so reordered), duplicated and forged messages, and members that
//! crash, lie, equivocate or withhold. Safety invariants are checked after every step;
//! a failure names the step, and the caller prints the seed.
//!
//! The simulator is pure like the rounds it drives: the caller hands it an RNG, and
//! the same RNG state gives the same run, event for event.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use ed25519_dalek::SigningKey;
use polity_proto::{
    Aggregation, Attestation, Certificate, ConsensusPath, Evidence, Level, Member, Observation,
    RaftCommit, Report, SignedStatement, StatementKind,
};
use prost::Message;
use rand::Rng;

use crate::certificate::verify_chain;
use crate::evidence::verify_evidence;
use crate::ids::PublicKey;
use crate::quorum::{QuorumRule, faults_max};
use crate::round::{Action, Input, Round, RoundConfig, RoundMessage};
use crate::statement::{decode_body, sign_message};

/// Events (deliveries, ticks, commits) one simulation may process.
pub const EVENTS_MAX: usize = 200_000;
/// Messages in flight at once; more are dropped, as a full network buffer would.
pub const IN_FLIGHT_MAX: usize = 20_000;

/// How a member behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Crashed from the start: never answers, never sends.
    Silent,
    /// Runs the protocol with a wrong answer.
    Liar,
    /// Lies, sends conflicting observations to different members, and attests every
    /// report it sees, whatever its lock.
    Equivocator,
    /// Runs the protocol but never sends a report or a certificate (a withholding
    /// collector).
    Withholder,
}

/// How the network misbehaves. Percentages are per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub loss_percent: u32,
    pub duplicate_percent: u32,
    /// Each delivery is delayed uniformly in `[0, delay_ms_max]`, so messages reorder.
    pub delay_ms_max: u64,
    /// Chance that a corrupted copy (one flipped bit) is also delivered.
    pub forge_percent: u32,
    /// Extra loss for certificates only: members then move on to later rounds
    /// although some collector decided, which is where rounds can disagree.
    pub certificate_loss_percent: u32,
}

impl Network {
    /// No loss, no duplicates, 1 ms latency, no forgeries.
    pub const PERFECT: Network = Network {
        loss_percent: 0,
        duplicate_percent: 0,
        delay_ms_max: 1,
        forge_percent: 0,
        certificate_loss_percent: 0,
    };
}

/// One simulated group decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Per member: behaviour, weight, and the answer an honest execution gives.
    pub members: Vec<(Behaviour, u64, Result<Vec<u8>, String>)>,
    pub path: ConsensusPath,
    pub aggregation: Aggregation,
    pub network: Network,
    pub round_timeout_ms: u64,
    pub rounds_max: u32,
    pub tick_ms: u64,
}

impl Scenario {
    /// Whether the faulty members stay within what the path tolerates (bft: at most
    /// `f`; stake: less than a third of the weight; raft: no liars or equivocators).
    pub fn faults_tolerated(&self) -> bool {
        let faulty: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, (behaviour, _, _))| *behaviour != Behaviour::Honest)
            .map(|(index, _)| index)
            .collect();
        let members: Vec<Member> = self
            .members
            .iter()
            .map(|(_, weight, _)| Member {
                public_key: Vec::new(),
                weight: *weight,
            })
            .collect();
        match self.path {
            ConsensusPath::Bft => faulty.len() <= faults_max(self.members.len()),
            ConsensusPath::Stake => {
                let rule = QuorumRule::new(ConsensusPath::Stake, &members);
                let all: Vec<usize> = (0..members.len()).collect();
                3 * rule.weight_of(&faulty) < rule.weight_of(&all)
            }
            ConsensusPath::Raft | ConsensusPath::Unspecified => self.members.iter().all(|m| {
                matches!(
                    m.0,
                    Behaviour::Honest | Behaviour::Silent | Behaviour::Withholder
                )
            }),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Per member: the value it decided, if any.
    pub decided: Vec<Option<Vec<u8>>>,
    /// Per member: whether it gave up.
    pub degraded: Vec<bool>,
    /// Distinct verified certificates seen anywhere.
    pub certificates: usize,
    /// Members some evidence named.
    pub accused: BTreeSet<usize>,
    pub rejected: usize,
    pub delivered: usize,
    pub events: usize,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant broken at event {event} (t = {now_ms} ms): {what}")]
pub struct SimError {
    pub event: usize,
    pub now_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick {
        to: usize,
    },
    Deliver {
        to: usize,
        from: PublicKey,
        message_index: usize,
    },
    Committed {
        to: usize,
        /// The leader's signed `RaftCommit`, encoded (events are ordered).
        commit: Vec<u8>,
    },
}

struct World<'a> {
    scenario: &'a Scenario,
    keys: Vec<SigningKey>,
    publics: Vec<PublicKey>,
    rounds: Vec<Round>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    messages: Vec<Option<RoundMessage>>,
    sequence: u64,
    outcome: Outcome,
    /// Value of the first verified certificate, and all certificate digests seen.
    value: Option<Vec<u8>>,
    seen_certificates: BTreeSet<[u8; 32]>,
    /// Raft: the first committed report (the group's ledger keeps only it).
    committed: Option<[u8; 32]>,
    commit_index: u64,
    outsider: SigningKey,
}

const STARTED_AT_MS: u64 = 1_000;

/// Runs `scenario` with randomness from `rng`; returns what happened, or the first
/// broken invariant.
pub fn simulate<R: Rng>(scenario: &Scenario, rng: &mut R) -> Result<Outcome, SimError> {
    // The draws from `rng` happen in a fixed order (keys, task nonce, outsider key,
    // first ticks, answer times, then events), so a seed replays the same run.
    let mut world = World::new(scenario, rng)?;
    let n = scenario.members.len();
    let end_ms = STARTED_AT_MS
        + scenario.round_timeout_ms * u64::from(scenario.rounds_max)
        + scenario.tick_ms;
    for to in 0..n {
        world.push(
            STARTED_AT_MS + rng.random_range(0..=scenario.tick_ms),
            Event::Tick { to },
        );
    }
    // Answers arrive at random times within the first round.
    let mut answers: Vec<(u64, usize)> = (0..n)
        .map(|to| {
            (
                STARTED_AT_MS + rng.random_range(0..scenario.round_timeout_ms / 2 + 1),
                to,
            )
        })
        .collect();
    answers.sort();
    let mut answer_cursor = 0;
    while let Some(Reverse((now_ms, _, event))) = world.queue.pop() {
        if now_ms > end_ms {
            break;
        }
        while answer_cursor < answers.len() && answers[answer_cursor].0 <= now_ms {
            let (at_ms, to) = answers[answer_cursor];
            answer_cursor += 1;
            world.answer(at_ms, to, rng)?;
        }
        world.outcome.events += 1;
        if world.outcome.events > EVENTS_MAX {
            return Err(world.error(now_ms, "event budget exhausted".into()));
        }
        world.handle(now_ms, event, rng)?;
    }
    Ok(world.outcome)
}

/// `n` member keys from `rng`.
fn signing_keys<R: Rng>(n: usize, rng: &mut R) -> Vec<SigningKey> {
    (0..n)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            SigningKey::from_bytes(&seed)
        })
        .collect()
}

/// The registry epoch simulated groups name (the simulator checks quorums, not
/// membership).
pub const SIM_REGISTRY: [u8; 32] = [0x51; 32];

/// The config every member's round runs: a fresh task (its nonce from `rng`) for the
/// scenario's group of `keys`.
fn round_config<R: Rng>(scenario: &Scenario, keys: &[SigningKey], rng: &mut R) -> RoundConfig {
    let members: Vec<Member> = keys
        .iter()
        .zip(&scenario.members)
        .map(|(key, (_, weight, _))| Member {
            public_key: key.verifying_key().to_bytes().to_vec(),
            weight: *weight,
        })
        .collect();
    RoundConfig {
        task: crate::task::encode_task(&polity_proto::TaskSpec {
            capability: "sim".into(),
            nonce: rng.random(),
            ..Default::default()
        }),
        level: Level::Region,
        group: "sim".into(),
        members,
        registry_digest: SIM_REGISTRY,
        path: scenario.path,
        path_reason: "simulation".into(),
        aggregation: scenario.aggregation,
        round_timeout_ms: scenario.round_timeout_ms,
        rounds_max: scenario.rounds_max,
        started_at_ms: STARTED_AT_MS,
    }
}

impl<'a> World<'a> {
    /// Keys, one round per member and an outsider key, drawn from `rng`; nothing queued.
    fn new<R: Rng>(scenario: &'a Scenario, rng: &mut R) -> Result<World<'a>, SimError> {
        let n = scenario.members.len();
        let keys = signing_keys(n, rng);
        let publics: Vec<PublicKey> = keys
            .iter()
            .map(|k| PublicKey::from_verifying_key(&k.verifying_key()))
            .collect();
        let config = round_config(scenario, &keys, rng);
        let rounds = keys
            .iter()
            .map(|key| Round::new(config.clone(), key.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| SimError {
                event: 0,
                now_ms: 0,
                what: format!("config: {error}"),
            })?;
        let mut outsider_seed = [0u8; 32];
        rng.fill(&mut outsider_seed);
        Ok(World {
            scenario,
            keys,
            publics,
            rounds,
            queue: BinaryHeap::new(),
            messages: Vec::new(),
            sequence: 0,
            outcome: Outcome {
                decided: vec![None; n],
                degraded: vec![false; n],
                ..Outcome::default()
            },
            value: None,
            seen_certificates: BTreeSet::new(),
            committed: None,
            commit_index: 0,
            outsider: SigningKey::from_bytes(&outsider_seed),
        })
    }

    /// One event off the queue: a tick (re-armed while the round runs), a delivery,
    /// or a raft commit.
    fn handle<R: Rng>(&mut self, now_ms: u64, event: Event, rng: &mut R) -> Result<(), SimError> {
        match event {
            Event::Tick { to } => {
                if !self.rounds[to].is_finished() {
                    self.push(now_ms + self.scenario.tick_ms, Event::Tick { to });
                }
                self.step(now_ms, to, Input::Tick, rng)
            }
            Event::Deliver {
                to,
                from,
                message_index,
            } => {
                let Some(message) = self.messages[message_index].clone() else {
                    return Ok(());
                };
                self.outcome.delivered += 1;
                self.deliver(now_ms, to, from, message, rng)
            }
            Event::Committed { to, commit } => {
                let commit = SignedStatement::decode(commit.as_slice())
                    .map_err(|error| self.error(now_ms, format!("commit: {error}")))?;
                self.step(now_ms, to, Input::Committed { commit }, rng)
            }
        }
    }
}

impl World<'_> {
    fn push(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at_ms, self.sequence, event)));
    }

    fn error(&self, now_ms: u64, what: String) -> SimError {
        SimError {
            event: self.outcome.events,
            now_ms,
            what,
        }
    }

    fn behaviour(&self, index: usize) -> Behaviour {
        self.scenario.members[index].0
    }

    fn answer<R: Rng>(&mut self, now_ms: u64, to: usize, rng: &mut R) -> Result<(), SimError> {
        let answer = match self.behaviour(to) {
            Behaviour::Silent => return Ok(()),
            Behaviour::Liar | Behaviour::Equivocator => Ok(self.lie(to, rng)),
            Behaviour::Honest | Behaviour::Withholder => self.scenario.members[to].2.clone(),
        };
        self.step(
            now_ms,
            to,
            Input::LocalAnswer {
                answer,
                child_certificate: None,
            },
            rng,
        )
    }

    /// Sends `message` from `from` to `to` through the faulty network.
    fn send<R: Rng>(
        &mut self,
        now_ms: u64,
        from: usize,
        to: usize,
        message: RoundMessage,
        rng: &mut R,
    ) {
        let network = self.scenario.network;
        if from == to || self.behaviour(from) == Behaviour::Silent {
            return;
        }
        if self.behaviour(from) == Behaviour::Withholder {
            let withheld = match &message {
                RoundMessage::Certificate(_) => true,
                RoundMessage::Statement(s) => s.kind == StatementKind::Report as i32,
            };
            if withheld {
                return;
            }
        }
        if rng.random_range(0..100) < network.forge_percent {
            let forged = forge(&message, rng);
            self.enqueue(now_ms, self.outsider_key(), to, forged, rng);
        }
        if rng.random_range(0..100) < network.loss_percent {
            return;
        }
        if matches!(message, RoundMessage::Certificate(_))
            && rng.random_range(0..100) < network.certificate_loss_percent
        {
            return;
        }
        let copies = if rng.random_range(0..100) < network.duplicate_percent {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.enqueue(now_ms, self.publics[from], to, message.clone(), rng);
        }
    }

    /// A byzantine answer: some honest member's answer (to side with a minority), a
    /// neighbour of it, or a plain lie.
    fn lie<R: Rng>(&self, liar: usize, rng: &mut R) -> Vec<u8> {
        let pick = rng.random_range(0..self.scenario.members.len() + 2);
        match self.scenario.members.get(pick).map(|member| &member.2) {
            Some(Ok(answer)) => answer.clone(),
            _ if pick % 2 == 0 => format!("{}", 38 + liar % 7).into_bytes(),
            _ => format!("9{liar}9").into_bytes(),
        }
    }

    fn outsider_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(&self.outsider.verifying_key())
    }

    fn enqueue<R: Rng>(
        &mut self,
        now_ms: u64,
        from: PublicKey,
        to: usize,
        message: RoundMessage,
        rng: &mut R,
    ) {
        if self.queue.len() >= IN_FLIGHT_MAX {
            return;
        }
        let delay_ms = rng.random_range(0..=self.scenario.network.delay_ms_max);
        self.messages.push(Some(message));
        let message_index = self.messages.len() - 1;
        self.push(
            now_ms + delay_ms,
            Event::Deliver {
                to,
                from,
                message_index,
            },
        );
    }

    fn deliver<R: Rng>(
        &mut self,
        now_ms: u64,
        to: usize,
        from: PublicKey,
        message: RoundMessage,
        rng: &mut R,
    ) -> Result<(), SimError> {
        if self.behaviour(to) == Behaviour::Silent {
            return Ok(());
        }
        if self.behaviour(to) == Behaviour::Equivocator {
            self.attest_anything(now_ms, to, &message, rng);
        }
        let input = match message {
            RoundMessage::Statement(statement) => Input::Message { from, statement },
            RoundMessage::Certificate(certificate) => Input::Certificate { from, certificate },
        };
        self.step(now_ms, to, input, rng)
    }

    /// An equivocator attests every report it sees, ignoring its lock.
    fn attest_anything<R: Rng>(
        &mut self,
        now_ms: u64,
        me: usize,
        message: &RoundMessage,
        rng: &mut R,
    ) {
        let RoundMessage::Statement(statement) = message else {
            return;
        };
        if statement.kind != StatementKind::Report as i32 {
            return;
        }
        let Ok(report) = decode_body::<Report>(&statement.body) else {
            return;
        };
        let Some(slot) = report.slot else { return };
        let collector = slot.round as usize % self.keys.len();
        let attestation = Attestation {
            slot: Some(slot),
            report_digest: crate::certificate::report_digest(&statement.body).to_vec(),
            ..Attestation::default()
        };
        let signed = sign_message(&self.keys[me], StatementKind::Attestation, &attestation);
        self.send(now_ms, me, collector, RoundMessage::Statement(signed), rng);
    }

    fn step<R: Rng>(
        &mut self,
        now_ms: u64,
        index: usize,
        input: Input,
        rng: &mut R,
    ) -> Result<(), SimError> {
        let actions = self.rounds[index].step(now_ms, input);
        for action in actions {
            self.act(now_ms, index, action, rng)?;
        }
        Ok(())
    }

    fn act<R: Rng>(
        &mut self,
        now_ms: u64,
        index: usize,
        action: Action,
        rng: &mut R,
    ) -> Result<(), SimError> {
        let n = self.keys.len();
        match action {
            Action::Broadcast(message) => {
                for to in 0..n {
                    self.send_as(now_ms, index, to, message.clone(), rng);
                }
            }
            Action::SendTo(key, message) => {
                let to = self
                    .publics
                    .iter()
                    .position(|public| *public == key)
                    .ok_or_else(|| self.error(now_ms, format!("send to non-member {key}")))?;
                self.send_as(now_ms, index, to, message, rng);
            }
            Action::Commit {
                report,
                report_digest,
            } => {
                self.commit(now_ms, index, &report, report_digest, rng);
            }
            Action::ConfirmCommit { commit } => self.confirm(now_ms, index, commit, rng),
            Action::Decided(certificate) => {
                let value = self.check_certificate(now_ms, &certificate)?;
                self.outcome.decided[index] = Some(value);
            }
            Action::DegradedCertificate(certificate) => {
                crate::certificate::verify_degraded(&certificate).map_err(|error| {
                    self.error(
                        now_ms,
                        format!("member {index}'s degraded certificate: {error}"),
                    )
                })?;
            }
            Action::Degraded(_) => self.outcome.degraded[index] = true,
            Action::Evidence(evidence) => self.accuse(now_ms, &evidence)?,
            Action::Rejected { from, reason } => {
                self.outcome.rejected += 1;
                if let Some(sender) = self.publics.iter().position(|public| *public == from)
                    && self.behaviour(sender) == Behaviour::Honest
                    && self.behaviour(index) == Behaviour::Honest
                {
                    return Err(self.error(
                        now_ms,
                        format!("member {index} rejected honest member {sender}: {reason}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A raft commit of `report` (digest `report_digest`) proposed by member `index`:
    /// the group's raft ledger keeps the first committed report only, and its leader
    /// (member 0 here) tells the proposer after a network delay, with a signed commit.
    fn commit<R: Rng>(
        &mut self,
        now_ms: u64,
        index: usize,
        report: &SignedStatement,
        report_digest: [u8; 32],
        rng: &mut R,
    ) {
        if self.committed.is_some() {
            return;
        }
        let Ok(slot) = decode_body::<Report>(&report.body).map(|report| report.slot) else {
            return;
        };
        self.committed = Some(report_digest);
        self.commit_index += 1;
        let commit = RaftCommit {
            slot,
            report_digest: report_digest.to_vec(),
            term: 1,
            commit_index: self.commit_index,
        };
        let commit =
            sign_message(&self.keys[0], StatementKind::RaftCommit, &commit).encode_to_vec();
        let delay_ms = rng.random_range(1..=self.scenario.network.delay_ms_max.max(1));
        self.push(now_ms + delay_ms, Event::Committed { to: index, commit });
    }

    /// Member `index` checks a relayed commit against its own copy of the log: the
    /// log holds the one committed report, so a commit of it is confirmed after a
    /// replication delay, and any other is not.
    fn confirm<R: Rng>(&mut self, now_ms: u64, index: usize, commit: SignedStatement, rng: &mut R) {
        let committed = crate::statement::open::<RaftCommit>(&commit, StatementKind::RaftCommit)
            .ok()
            .filter(|(signer, body)| {
                *signer == self.publics[0]
                    && self
                        .committed
                        .is_some_and(|digest| body.report_digest == digest)
            });
        if committed.is_none() {
            return;
        }
        let delay_ms = rng.random_range(1..=self.scenario.network.delay_ms_max.max(1));
        let commit = commit.encode_to_vec();
        self.push(now_ms + delay_ms, Event::Committed { to: index, commit });
    }

    /// Evidence must verify and name a member who really equivocated.
    fn accuse(&mut self, now_ms: u64, evidence: &Evidence) -> Result<(), SimError> {
        let culprit = verify_evidence(evidence)
            .map_err(|error| self.error(now_ms, format!("bad evidence: {error}")))?;
        let accused = self.publics.iter().position(|public| *public == culprit);
        match accused {
            Some(accused) if self.behaviour(accused) == Behaviour::Equivocator => {
                self.outcome.accused.insert(accused);
                Ok(())
            }
            _ => Err(self.error(
                now_ms,
                format!("evidence against {culprit}, who did not equivocate"),
            )),
        }
    }

    /// Sends as member `from` would: an equivocator also sends a conflicting twin of
    /// each observation.
    fn send_as<R: Rng>(
        &mut self,
        now_ms: u64,
        from: usize,
        to: usize,
        message: RoundMessage,
        rng: &mut R,
    ) {
        if let (Behaviour::Equivocator, RoundMessage::Statement(statement)) =
            (self.behaviour(from), &message)
            && statement.kind == StatementKind::Observation as i32
            && let Ok(mut observation) = decode_body::<Observation>(&statement.body)
            && rng.random_bool(0.5)
        {
            observation.answer = self.lie(from, rng);
            let twin = sign_message(&self.keys[from], StatementKind::Observation, &observation);
            self.send(now_ms, from, to, RoundMessage::Statement(twin), rng);
            return;
        }
        self.send(now_ms, from, to, message, rng);
    }

    /// Every decided certificate verifies, and all of them carry one value.
    fn check_certificate(
        &mut self,
        now_ms: u64,
        certificate: &Certificate,
    ) -> Result<Vec<u8>, SimError> {
        let summary = verify_chain(certificate).map_err(|error| {
            self.error(
                now_ms,
                format!("decided certificate does not verify: {error}"),
            )
        })?;
        if self.seen_certificates.insert(summary.root_digest) {
            self.outcome.certificates += 1;
        }
        match &self.value {
            None => self.value = Some(summary.value.clone()),
            Some(value) if *value != summary.value && self.scenario.faults_tolerated() => {
                return Err(self.error(
                    now_ms,
                    format!(
                        "two certificates disagree: {:?} vs {:?}",
                        String::from_utf8_lossy(value),
                        String::from_utf8_lossy(&summary.value)
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(summary.value)
    }
}

/// A copy of `message` with one bit flipped somewhere that a signature covers.
fn forge<R: Rng>(message: &RoundMessage, rng: &mut R) -> RoundMessage {
    match message {
        RoundMessage::Statement(statement) => RoundMessage::Statement(flip_bit(statement, rng)),
        RoundMessage::Certificate(certificate) => {
            let mut forged = certificate.clone();
            if let Some(report) = &forged.report {
                forged.report = Some(flip_bit(report, rng));
            }
            RoundMessage::Certificate(forged)
        }
    }
}

fn flip_bit<R: Rng>(statement: &SignedStatement, rng: &mut R) -> SignedStatement {
    let mut forged = statement.clone();
    let field = match rng.random_range(0..3) {
        0 if !forged.body.is_empty() => &mut forged.body,
        1 => &mut forged.signature,
        _ => &mut forged.signer,
    };
    if !field.is_empty() {
        let bit = rng.random_range(0..field.len() * 8);
        field[bit / 8] ^= 1 << (bit % 8);
    }
    forged
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A random scenario within the fault budget of its path.
    fn scenario(rng: &mut ChaCha8Rng) -> Scenario {
        let n = rng.random_range(1..=7usize);
        let path = [
            ConsensusPath::Bft,
            ConsensusPath::Stake,
            ConsensusPath::Raft,
        ][rng.random_range(0..3)];
        let aggregation = [
            Aggregation::Majority,
            Aggregation::Tally,
            Aggregation::Median,
            Aggregation::FirstValid,
        ][rng.random_range(0..4)];
        let identical = rng.random_bool(0.6);
        let mut members: Vec<(Behaviour, u64, Result<Vec<u8>, String>)> = (0..n)
            .map(|index| {
                let answer = if rng.random_bool(0.05) {
                    Err("executor failed".to_string())
                } else if identical {
                    Ok(b"42".to_vec())
                } else {
                    Ok(format!("{}", 40 + index % 3).into_bytes())
                };
                (Behaviour::Honest, rng.random_range(1..=3), answer)
            })
            .collect();
        let faulty_max =
            n.saturating_sub(1) / 3 + usize::from(path == ConsensusPath::Raft && n > 2);
        for _ in 0..rng.random_range(0..=faulty_max) {
            let index = rng.random_range(0..n);
            members[index].0 = match path {
                ConsensusPath::Raft => {
                    [Behaviour::Silent, Behaviour::Withholder][rng.random_range(0..2)]
                }
                _ => [
                    Behaviour::Silent,
                    Behaviour::Liar,
                    Behaviour::Equivocator,
                    Behaviour::Withholder,
                ][rng.random_range(0..4)],
            };
        }
        let network = Network {
            loss_percent: rng.random_range(0..=20),
            duplicate_percent: rng.random_range(0..=20),
            delay_ms_max: rng.random_range(1..=400),
            forge_percent: rng.random_range(0..=10),
            certificate_loss_percent: rng.random_range(0..=30),
        };
        let mut scenario = Scenario {
            members,
            path,
            aggregation,
            network,
            round_timeout_ms: 1_000,
            rounds_max: rng.random_range(1..=4),
            tick_ms: 50,
        };
        if !scenario.faults_tolerated() {
            for member in &mut scenario.members {
                member.0 = Behaviour::Honest;
            }
        }
        scenario
    }

    /// A scenario aimed at quorum intersection: varied honest answers, `f`
    /// equivocators that side with minorities, lossy links, several rounds.
    fn attack(rng: &mut ChaCha8Rng) -> Scenario {
        let n = [4usize, 5, 7][rng.random_range(0..3)];
        let path = [ConsensusPath::Bft, ConsensusPath::Stake][rng.random_range(0..2)];
        let aggregation = [
            Aggregation::Median,
            Aggregation::Tally,
            Aggregation::FirstValid,
        ][rng.random_range(0..3)];
        let mut members: Vec<(Behaviour, u64, Result<Vec<u8>, String>)> = (0..n)
            .map(|_| {
                (
                    Behaviour::Honest,
                    1,
                    Ok(format!("{}", 40 + rng.random_range(0..3)).into_bytes()),
                )
            })
            .collect();
        for index in 0..faults_max(n) {
            members[(index * 2 + 1) % n].0 = Behaviour::Equivocator;
        }
        Scenario {
            members,
            path,
            aggregation,
            network: Network {
                loss_percent: rng.random_range(5..=35),
                duplicate_percent: 10,
                delay_ms_max: rng.random_range(50..=900),
                forge_percent: 2,
                certificate_loss_percent: rng.random_range(0..=100),
            },
            round_timeout_ms: 1_000,
            rounds_max: rng.random_range(2..=6),
            tick_ms: 50,
        }
    }

    fn check(seed: u64) -> Outcome {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scenario = if seed % 3 == 2 {
            attack(&mut rng)
        } else {
            scenario(&mut rng)
        };
        match simulate(&scenario, &mut rng) {
            Ok(outcome) => outcome,
            Err(error) => panic!("seed {seed}: {error}\nscenario: {scenario:#?}"),
        }
    }

    /// 1000 seeds by default; `POLITY_SIM_SEEDS=N` runs more (a gated slow test),
    /// `POLITY_SIM_SEED=S` replays one.
    #[test]
    fn safety_holds_for_many_seeds() {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let (first, seeds) = match (env("POLITY_SIM_SEED"), env("POLITY_SIM_SEEDS")) {
            (Some(seed), _) => (seed, 1),
            (None, seeds) => (0, seeds.unwrap_or(1_000)),
        };
        let mut decided = 0;
        let (mut certificates, mut degraded, mut accused, mut rejected) = (0, 0, 0, 0);
        for seed in first..first + seeds {
            let outcome = check(seed);
            decided += usize::from(outcome.decided.iter().any(Option::is_some));
            certificates += outcome.certificates;
            degraded += outcome.degraded.iter().filter(|d| **d).count();
            accused += outcome.accused.len();
            rejected += outcome.rejected;
        }
        println!(
            "{seeds} seeds: {decided} decided, {certificates} certificates, {degraded} members \
             degraded, {accused} equivocators caught, {rejected} messages rejected"
        );
        // Most runs decide despite the faults; safety is checked inside every step.
        assert!(
            decided * 2 > seeds as usize,
            "only {decided} of {seeds} runs decided"
        );
    }

    #[test]
    fn a_perfect_network_decides_everywhere() {
        for (path, aggregation, answers) in [
            (
                ConsensusPath::Bft,
                Aggregation::Majority,
                vec!["1", "1", "1", "1"],
            ),
            (
                ConsensusPath::Stake,
                Aggregation::Median,
                vec!["1", "5", "3", "2", "4"],
            ),
            (
                ConsensusPath::Bft,
                Aggregation::Tally,
                vec!["a", "b", "b", "c"],
            ),
            (
                ConsensusPath::Raft,
                Aggregation::Majority,
                vec!["x", "x", "y"],
            ),
        ] {
            let scenario = Scenario {
                members: answers
                    .iter()
                    .map(|answer| (Behaviour::Honest, 1, Ok(answer.as_bytes().to_vec())))
                    .collect(),
                path,
                aggregation,
                network: Network::PERFECT,
                round_timeout_ms: 1_000,
                rounds_max: 3,
                tick_ms: 50,
            };
            let outcome = simulate(&scenario, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
            assert!(
                outcome.decided.iter().all(Option::is_some),
                "{path:?} {aggregation:?}: {outcome:?}"
            );
            assert_eq!(outcome.certificates, 1, "{path:?}");
        }
    }

    #[test]
    fn equivocators_are_caught_and_do_not_break_safety() {
        let mut caught = 0;
        for seed in 0..20 {
            let scenario = Scenario {
                members: (0..4)
                    .map(|index| {
                        let behaviour = if index == 1 {
                            Behaviour::Equivocator
                        } else {
                            Behaviour::Honest
                        };
                        (behaviour, 1, Ok(b"v".to_vec()))
                    })
                    .collect(),
                path: ConsensusPath::Bft,
                aggregation: Aggregation::Majority,
                network: Network {
                    loss_percent: 5,
                    duplicate_percent: 10,
                    delay_ms_max: 200,
                    forge_percent: 5,
                    certificate_loss_percent: 20,
                },
                round_timeout_ms: 1_000,
                rounds_max: 3,
                tick_ms: 50,
            };
            let outcome = simulate(&scenario, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
            caught += outcome.accused.len();
        }
        assert!(caught > 0, "no equivocation was ever caught");
    }
}
