//! The level engine, tested without a network: unit tests per handler, and a seeded
//! simulation of whole tasks in which members run real `polity_consensus::Round`s
//! (real signatures, real certificates) and are silent, slow, wrong, hung or crashed.
//! `POLITY_ENGINE_SEED=S` replays one simulation seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use ed25519_dalek::SigningKey;
use polity_consensus::{
    Action, Input, PublicKey, Round, RoundConfig, TrustEvent, encode_task, task_id, verify_chain,
};
use polity_consensus::{VerifyError, verify_task_chain};
use polity_proto::{
    Aggregation, Assign, ConsensusPath, GroupOutcome, Level, RiskPolicy, Scope, TaskEventKind,
    TaskRecord, TaskSpec, TaskState, group_outcome,
};

use super::*;
use crate::config::TaskLimits;
use crate::entry::plan::{GroupName, Plan, Seat};

// ---- the world: members, their behaviour, and a clock --------------------------

/// How a simulated member acts in every group it is seated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Answers wrong (all wrong members agree on the same wrong answer).
    Wrong,
    /// Acknowledges, then never says anything.
    Silent,
    /// Answers, but its outcome arrives this much later.
    Slow(u64),
    /// Never acknowledges nor answers, and stays connected.
    Hung,
    /// Its assignment fails at once and it is not connected.
    Crashed,
    /// Connected, but refuses every assignment.
    Refuses,
}

const HONEST_ANSWER: &[u8] = b"right";
const WRONG_ANSWER: &[u8] = b"wrong";
/// Time for a message or acknowledgement to arrive.
const HOP_MS: u64 = 2;

struct Member {
    key: SigningKey,
    region: String,
    continent: String,
    behaviour: Behaviour,
}

fn signing_key(n: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

fn limits() -> TaskLimits {
    TaskLimits {
        region_timeout_ms: 600,
        continent_timeout_ms: 600,
        global_timeout_ms: 600,
        extra_replicas_max: 2,
        representatives: 2,
        ..TaskLimits::default()
    }
}

/// A plan over `members` (all serving the capability, in this order of preference).
fn plan_for(members: &[Member], top: Level, replication: u32, path: ConsensusPath) -> Plan {
    let spec = TaskSpec {
        capability: "sha256".into(),
        payload: b"payload".to_vec(),
        scope: Some(Scope {
            level: top as i32,
            name: match top {
                Level::Region => members[0].region.clone(),
                Level::Continent => members[0].continent.clone(),
                _ => String::new(),
            },
        }),
        replication,
        aggregation: Aggregation::Majority as i32,
        policy: Some(RiskPolicy {
            path_override: path as i32,
            ..RiskPolicy::default()
        }),
        deadline_ms: 5_000,
        nonce: 7,
    };
    let mut regions: BTreeMap<String, Vec<Seat>> = BTreeMap::new();
    for member in members {
        regions
            .entry(member.region.clone())
            .or_default()
            .push(Seat {
                key: public(&member.key),
                region: member.region.clone(),
                continent: member.continent.clone(),
                stake: 1,
                trust: 0.8,
            });
    }
    let spec_bytes = encode_task(&spec);
    Plan {
        id: task_id(&spec_bytes),
        spec,
        spec_bytes,
        top,
        path,
        path_reason: "test".into(),
        regions,
        unseated: BTreeMap::new(),
        registry_digest: [0x5e; 32],
    }
}

/// Something due to reach the engine.
#[derive(Debug)]
enum Due {
    Event(Event),
    /// A group whose members were all assigned: its round runs now.
    Round(SlotRef),
}

struct World {
    members: BTreeMap<PublicKey, Member>,
    engine: LevelEngine,
    now_ms: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    due: BTreeMap<u64, Due>,
    seq: u64,
    /// Assignments per slot, in the order the engine sent them.
    assigned: BTreeMap<(i32, String), Vec<(PublicKey, Assign)>>,
    /// Every command the engine gave, in order.
    log: Vec<Command>,
    finished: Option<TaskRecord>,
}

impl World {
    fn new(members: Vec<Member>, plan: Plan, limits: TaskLimits) -> World {
        let record = TaskRecord {
            task_id: plan.id.as_bytes().to_vec(),
            state: TaskState::Running as i32,
            ..TaskRecord::default()
        };
        let me = PublicKey([0xee; 32]); // the entry node is not a member here
        World {
            members: members
                .into_iter()
                .map(|member| (public(&member.key), member))
                .collect(),
            engine: LevelEngine::new(plan, limits, me, record),
            now_ms: 0,
            queue: BinaryHeap::new(),
            due: BTreeMap::new(),
            seq: 0,
            assigned: BTreeMap::new(),
            log: Vec::new(),
            finished: None,
        }
    }

    fn at(&mut self, at_ms: u64, due: Due) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq)));
        self.due.insert(self.seq, due);
    }

    /// Runs until the engine finishes; the loop is bounded by the task's deadline,
    /// which the engine enforces on itself with `Tick`.
    fn run(mut self) -> World {
        let commands = self.engine.step(0, Event::Start);
        self.carry_out(commands);
        for _ in 0..100_000 {
            if self.finished.is_some() {
                return self;
            }
            let next_tick = (self.now_ms / MEMBER_PROBE_INTERVAL_MS + 1) * MEMBER_PROBE_INTERVAL_MS;
            let wake = self.engine.wake_at_ms().unwrap_or(u64::MAX).min(next_tick);
            let next_due = self.queue.peek().map(|Reverse((at, _))| *at);
            match next_due {
                Some(at) if at <= wake => {
                    let Reverse((at, seq)) = self.queue.pop().expect("peeked");
                    self.now_ms = self.now_ms.max(at);
                    match self.due.remove(&seq).expect("queued") {
                        Due::Event(event) => self.step(event),
                        Due::Round(slot) => self.run_round(&slot),
                    }
                }
                _ => {
                    self.now_ms = wake;
                    self.step(Event::Tick);
                }
            }
        }
        panic!("the engine did not finish within 100,000 events");
    }

    fn step(&mut self, event: Event) {
        let commands = self.engine.step(self.now_ms, event);
        self.carry_out(commands);
    }

    fn carry_out(&mut self, commands: Vec<Command>) {
        for command in commands {
            self.log.push(command.clone());
            match command {
                Command::Assign {
                    slot,
                    member,
                    assign,
                } => self.on_assign(slot, member, *assign),
                Command::ProbeConnections => {
                    let connected = self
                        .members
                        .iter()
                        .filter(|(_, member)| member.behaviour != Behaviour::Crashed)
                        .map(|(key, _)| *key)
                        .collect();
                    self.step(Event::Connections { connected });
                }
                Command::Finish(record) => self.finished = Some(*record),
                _ => {}
            }
        }
    }

    fn on_assign(&mut self, slot: SlotRef, member: PublicKey, assign: Assign) {
        let behaviour = self.members[&member].behaviour;
        let result = match behaviour {
            Behaviour::Crashed => Some(Err(AckError::Unreachable("connection closed".into()))),
            Behaviour::Refuses => Some(Err(AckError::Refused("busy".into()))),
            Behaviour::Hung => None,
            _ => Some(Ok(())),
        };
        if let Some(result) = result {
            let event = Event::Acked {
                slot: slot.clone(),
                member,
                result,
            };
            self.at(self.now_ms + HOP_MS, Due::Event(event));
        }
        let key = (slot.level as i32, slot.group.to_string());
        let assigned = self.assigned.entry(key).or_default();
        assigned.push((member, assign));
        let plan_size = assigned[0]
            .1
            .plan
            .as_ref()
            .map_or(0, |plan| plan.members.len());
        if assigned.len() == plan_size {
            self.at(self.now_ms + HOP_MS, Due::Round(slot));
        }
    }

    /// The members of one group run their real rounds with each other (perfect
    /// network; silent, hung and crashed members take no part); each outcome reaches
    /// the engine when its member would send it.
    fn run_round(&mut self, slot: &SlotRef) {
        let assigned = self.assigned[&(slot.level as i32, slot.group.to_string())].clone();
        let mut rounds = BTreeMap::new();
        for (key, assign) in &assigned {
            let member = &self.members[key];
            let answer = match (member.behaviour, slot.level) {
                (
                    Behaviour::Silent | Behaviour::Hung | Behaviour::Crashed | Behaviour::Refuses,
                    _,
                ) => continue,
                (Behaviour::Wrong, Level::Region) => WRONG_ANSWER.to_vec(),
                (_, Level::Region) => HONEST_ANSWER.to_vec(),
                (_, _) => {
                    let child =
                        polity_proto::Certificate::decode(assign.child_certificate.as_slice())
                            .expect("the engine sends child certificates");
                    verify_chain(&child).expect("children verify").value
                }
            };
            let plan = assign.plan.clone().expect("assign carries a plan");
            let config = RoundConfig {
                task: assign.task.clone(),
                level: slot.level,
                group: plan.group,
                members: plan.members,
                registry_digest: plan.registry_digest.try_into().expect("32 bytes"),
                path: ConsensusPath::try_from(plan.path).expect("known path"),
                path_reason: plan.path_reason,
                aggregation: Aggregation::try_from(plan.aggregation).expect("known"),
                round_timeout_ms: plan.round_timeout_ms,
                rounds_max: plan.rounds_max,
                started_at_ms: 0,
            };
            let mut round = Round::new(config, member.key.clone()).expect("valid round");
            let child = (slot.level != Level::Region).then(|| assign.child_certificate.clone());
            let input = Input::LocalAnswer {
                answer: Ok(answer),
                child_certificate: child,
            };
            let actions = round.step(0, input);
            rounds.insert(*key, (round, actions));
        }
        for (key, (elapsed_ms, outcome)) in simulate_rounds(rounds, slot) {
            let delay_ms = match self.members[&key].behaviour {
                Behaviour::Slow(ms) => ms,
                _ => 0,
            };
            let event = Event::Outcome {
                from: key,
                outcome: Box::new(outcome),
            };
            self.at(
                self.now_ms + elapsed_ms + delay_ms + HOP_MS,
                Due::Event(event),
            );
        }
    }

    fn events(&self, kind: TaskEventKind) -> Vec<(i32, String, String)> {
        self.log
            .iter()
            .filter_map(|command| match command {
                Command::Emit(event) if event.kind == kind as i32 => {
                    Some((event.level, event.group.clone(), event.detail.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn trust_moves(&self, event: TrustEvent) -> BTreeSet<PublicKey> {
        self.log
            .iter()
            .filter_map(|command| match command {
                Command::Trust { key, event: moved } if *moved == event => Some(*key),
                _ => None,
            })
            .collect()
    }

    fn record(&self) -> &TaskRecord {
        self.finished.as_ref().expect("finished")
    }

    fn key_of(&self, behaviour: Behaviour) -> PublicKey {
        *self
            .members
            .iter()
            .find(|(_, member)| member.behaviour == behaviour)
            .expect("a member with that behaviour")
            .0
    }
}

/// Runs rounds to their end on a perfect network in virtual time; returns each
/// member's outcome and when (ms after the round started) it would be sent.
fn simulate_rounds(
    mut rounds: BTreeMap<PublicKey, (Round, Vec<Action>)>,
    slot: &SlotRef,
) -> BTreeMap<PublicKey, (u64, GroupOutcome)> {
    let mut outcomes = BTreeMap::new();
    let mut now_ms = 0;
    let mut pending: Vec<(PublicKey, Vec<Action>)> = rounds
        .iter_mut()
        .map(|(key, (_, actions))| (*key, std::mem::take(actions)))
        .collect();
    for _ in 0..10_000 {
        while let Some((from, actions)) = pending.pop() {
            for action in actions {
                let (targets, message) = match action {
                    Action::Broadcast(message) => (rounds.keys().copied().collect(), message),
                    Action::SendTo(to, message) => (vec![to], message),
                    Action::Decided(certificate) => {
                        let outcome = group_outcome::Outcome::Decided(*certificate);
                        outcomes
                            .entry(from)
                            .or_insert((now_ms, outcome_of(slot, outcome)));
                        continue;
                    }
                    Action::Degraded(reason) => {
                        let outcome = group_outcome::Outcome::Degraded(reason.to_string());
                        outcomes
                            .entry(from)
                            .or_insert((now_ms, outcome_of(slot, outcome)));
                        continue;
                    }
                    _ => continue,
                };
                for to in targets.into_iter().filter(|to| *to != from) {
                    if let Some((round, _)) = rounds.get_mut(&to) {
                        let actions = round.step(now_ms, message.clone().into_input(from));
                        pending.push((to, actions));
                    }
                }
            }
        }
        let running: Vec<u64> = rounds
            .values()
            .filter(|(round, _)| !round.is_finished())
            .map(|(round, _)| round.next_deadline_ms())
            .collect();
        let Some(next_ms) = running.into_iter().min() else {
            return outcomes;
        };
        now_ms = next_ms.max(now_ms + 1);
        for (key, (round, _)) in rounds.iter_mut() {
            if !round.is_finished() {
                pending.push((*key, round.step(now_ms, Input::Tick)));
            }
        }
    }
    panic!("rounds did not finish");
}

fn outcome_of(slot: &SlotRef, outcome: group_outcome::Outcome) -> GroupOutcome {
    GroupOutcome {
        level: slot.level as i32,
        group: slot.group.to_string(),
        outcome: Some(outcome),
        ..GroupOutcome::default()
    }
}

fn members(spec: &[(&str, &str, Behaviour)]) -> Vec<Member> {
    spec.iter()
        .enumerate()
        .map(|(n, (region, continent, behaviour))| Member {
            key: signing_key(n),
            region: region.to_string(),
            continent: continent.to_string(),
            behaviour: *behaviour,
        })
        .collect()
}

/// Runs one task over `spec` and returns the finished world.
fn check(spec: &[(&str, &str, Behaviour)], top: Level, replication: u32) -> World {
    let members = members(spec);
    let plan = plan_for(&members, top, replication, ConsensusPath::Bft);
    World::new(members, plan, limits()).run()
}

use Behaviour::*;
use prost::Message;

// ---- whole tasks -----------------------------------------------------------------

#[test]
fn an_honest_region_decides_and_everyone_gains_trust() {
    let world = check(&[("r1", "c1", Honest); 3], Level::Region, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
    assert_eq!(record.value, HONEST_ANSWER);
    assert_eq!(world.trust_moves(TrustEvent::Agreement).len(), 3);
    assert_eq!(record.groups.len(), 1);
    let certificate = record.certificate.as_ref().expect("a root");
    assert!(verify_chain(certificate).is_ok());
}

#[test]
fn a_global_task_climbs_three_levels_and_the_root_verifies() {
    let spec = [
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r2", "c1", Honest),
        ("r2", "c1", Honest),
        ("r2", "c1", Honest),
        ("r3", "c2", Honest),
        ("r3", "c2", Honest),
        ("r3", "c2", Honest),
    ];
    let world = check(&spec, Level::Global, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
    let root = record.certificate.as_ref().unwrap();
    let summary = verify_task_chain(root, None).unwrap();
    assert_eq!(summary.value, HONEST_ANSWER);
    // A region certificate cut out of the chain verifies on its own, but it is no
    // answer to the global task it names.
    let continent = polity_proto::Certificate::decode(root.children[0].as_slice()).unwrap();
    let region = polity_proto::Certificate::decode(continent.children[0].as_slice()).unwrap();
    assert!(verify_chain(&region).is_ok());
    assert!(matches!(
        verify_task_chain(&region, None),
        Err(VerifyError::WrongScope { .. })
    ));
    let decided = world.events(TaskEventKind::GroupDecided);
    let levels: Vec<i32> = decided.iter().map(|(level, _, _)| *level).collect();
    assert_eq!(
        levels,
        [1, 1, 1, 2, 2, 3],
        "three regions, two continents, one global group"
    );
    // A continent of two regions seats two representatives of each.
    let dispatched = world.events(TaskEventKind::Dispatched);
    let c1 = dispatched
        .iter()
        .find(|(_, group, _)| group == "c1")
        .unwrap();
    assert!(c1.2.starts_with("asked 4 members"), "{}", c1.2);
}

#[test]
fn a_chain_on_another_path_than_the_policy_selects_is_no_answer() {
    // An entry node that runs a task whose policy selects stake on the bft path gets
    // honest bft signatures, but no certificate of it answers the task: each is
    // dropped where it arrives, and the task fails rather than store one.
    let members = members(&[("r1", "c1", Honest); 3]);
    let mut plan = plan_for(&members, Level::Region, 3, ConsensusPath::Bft);
    plan.spec.policy = None; // selects stake
    plan.spec_bytes = encode_task(&plan.spec);
    plan.id = task_id(&plan.spec_bytes);
    let world = World::new(members, plan, limits()).run();
    let record = world.record();
    assert_eq!(record.state, TaskState::Failed as i32);
    let refused = world.log.iter().any(|command| {
        matches!(command,
        Command::Dropped { label: "invalid certificate", detail, .. }
            if detail.contains("used path bft, but the task's policy selects stake"))
    });
    assert!(refused, "{:?}", world.log);
    assert!(world.events(TaskEventKind::GroupDecided).is_empty());
}

#[test]
fn a_silent_region_degrades_without_holding_back_its_siblings() {
    let spec = [
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r2", "c1", Silent),
        ("r2", "c1", Silent),
        ("r2", "c1", Silent),
    ];
    let world = check(&spec, Level::Continent, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Degraded as i32, "{}", record.error);
    assert!(
        record.degraded_reason.starts_with("region r2: "),
        "{}",
        record.degraded_reason
    );
    assert!(world.log.contains(&Command::CascadePrevented));
    // Silence in a group that did not decide is a timeout for each silent member.
    assert_eq!(world.trust_moves(TrustEvent::Timeout).len(), 3);
}

#[test]
fn a_region_that_could_not_be_seated_degrades_the_task_by_name() {
    // Only r1 could be seated; the plan names r2 as out of reach (behind a NAT, say).
    let members = members(&[("r1", "c1", Honest); 3]);
    let mut plan = plan_for(&members, Level::Continent, 3, ConsensusPath::Bft);
    plan.unseated
        .insert("r2".into(), "not seated: fewer than 3 reachable".into());
    let world = World::new(members, plan, limits()).run();
    let record = world.record();
    assert_eq!(record.state, TaskState::Degraded as i32, "{}", record.error);
    assert_eq!(
        record.degraded_reason,
        "region r2: not seated: fewer than 3 reachable"
    );
    let degraded = world.events(TaskEventKind::GroupDegraded);
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert_eq!((degraded[0].0, degraded[0].1.as_str()), (1, "r2"));
    // What could be seated still decided, and its chain verifies.
    assert!(verify_chain(record.certificate.as_ref().unwrap()).is_ok());
}

#[test]
fn a_disagreeing_group_gets_one_more_replica_then_decides() {
    // Two members, one wrong: no strict majority, both give up having answered. The
    // third seat, honest, makes a majority of 2 of 3.
    let spec = [
        ("r1", "c1", Honest),
        ("r1", "c1", Wrong),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 2);
    let record = world.record();
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
    assert_eq!(record.value, HONEST_ANSWER);
    let root = record.certificate.as_ref().unwrap();
    assert_eq!(root.slot.as_ref().unwrap().group, "r1~1");
    assert_eq!(root.members.len(), 3);
    let degraded = world.events(TaskEventKind::GroupDegraded);
    assert!(
        degraded
            .iter()
            .any(|(_, _, detail)| detail.contains("one more replica"))
    );
    assert!(
        world
            .trust_moves(TrustEvent::Disagreement)
            .contains(&world.key_of(Wrong))
    );
}

#[test]
fn a_crashed_member_is_replaced_by_a_spare_and_nobody_is_blamed() {
    let spec = [
        ("r1", "c1", Crashed),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
    let root = record.certificate.as_ref().unwrap();
    assert_eq!(root.slot.as_ref().unwrap().group, "r1~1");
    let crashed = world.key_of(Crashed);
    assert!(!root.members.iter().any(|m| m.public_key == crashed.0));
    // Unreachable is not lying: the crashed member's trust does not move, and the
    // others had no chance to answer before the group was re-formed.
    assert_eq!(world.trust_moves(TrustEvent::Timeout), BTreeSet::new());
    assert!(
        !world
            .trust_moves(TrustEvent::Disagreement)
            .contains(&crashed)
    );
}

#[test]
fn a_group_that_lost_its_quorum_with_no_spare_gives_up_at_once_and_blames_nobody() {
    // A bft group of three needs all three; the crashed one has no spare to replace
    // it (as on the majority side of a partition with one node down).
    let spec = [
        ("r1", "c1", Crashed),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Failed as i32);
    assert!(
        record.error.contains("1 unreachable or refused")
            && record
                .error
                .contains("the 2 not lost cannot form a quorum of 3"),
        "{}",
        record.error
    );
    assert!(
        !record.error.contains("level's time ran out"),
        "given up before the deadline: {}",
        record.error
    );
    assert_eq!(world.trust_moves(TrustEvent::Timeout), BTreeSet::new());
}

/// A member that takes seats only to refuse them is not excused as an unreachable
/// one is: when its group cannot decide, its refusal costs it as silence would.
#[test]
fn a_member_that_refuses_its_seat_is_blamed_when_the_group_fails() {
    let spec = [
        ("r1", "c1", Refuses),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 3);
    assert_eq!(world.record().state, TaskState::Failed as i32);
    let refuser = world.key_of(Refuses);
    assert_eq!(
        world.trust_moves(TrustEvent::Timeout),
        BTreeSet::from([refuser])
    );
}

#[test]
fn a_hung_member_is_found_by_its_missing_acknowledgement() {
    let spec = [
        ("r1", "c1", Hung),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
    let first = &record.groups[0];
    assert!(
        first.degraded_reason.contains("did not acknowledge"),
        "{}",
        first.degraded_reason
    );
}

#[test]
fn a_member_that_never_acknowledges_is_not_blamed_when_the_group_fails() {
    // It may be dead behind a connection that still looks open (QUIC until its idle
    // timeout): treated as gone, as a crashed member is.
    let spec = [
        ("r1", "c1", Hung),
        ("r1", "c1", Honest),
        ("r1", "c1", Honest),
    ];
    let world = check(&spec, Level::Region, 3);
    assert_eq!(world.record().state, TaskState::Failed as i32);
    let hung = world.key_of(Hung);
    assert!(!world.trust_moves(TrustEvent::Timeout).contains(&hung));
}

#[test]
fn a_level_that_decides_nothing_fails_the_task() {
    let world = check(&[("r1", "c1", Silent); 3], Level::Region, 3);
    let record = world.record();
    assert_eq!(record.state, TaskState::Failed as i32);
    assert!(
        record.error.starts_with("no region group could decide"),
        "{}",
        record.error
    );
    assert!(record.certificate.is_none());
}

// ---- handlers ----------------------------------------------------------------------

/// An engine that has dispatched one region group of three honest members.
fn started() -> (LevelEngine, Vec<Member>, Vec<Command>) {
    let members = members(&[("r1", "c1", Honest); 3]);
    let plan = plan_for(&members, Level::Region, 3, ConsensusPath::Bft);
    let record = TaskRecord::default();
    let mut engine = LevelEngine::new(plan, limits(), PublicKey([0xee; 32]), record);
    let commands = engine.step(0, Event::Start);
    (engine, members, commands)
}

fn slot() -> SlotRef {
    SlotRef {
        level: Level::Region,
        group: GroupName::first("r1"),
    }
}

#[test]
fn start_assigns_every_member_then_tells_watchers() {
    let (engine, members, commands) = started();
    let assigned: Vec<PublicKey> = commands
        .iter()
        .filter_map(|command| match command {
            Command::Assign { member, .. } => Some(*member),
            _ => None,
        })
        .collect();
    let expected: Vec<PublicKey> = members.iter().map(|member| public(&member.key)).collect();
    assert_eq!(assigned, expected);
    assert!(
        matches!(commands.last(), Some(Command::Emit(event)) if event.kind == TaskEventKind::Dispatched as i32)
    );
    // 600 ms budget, 3 rounds of 200 ms, plus the grace for last words.
    assert_eq!(engine.wake_at_ms(), Some(600 + OUTCOME_GRACE_MS));
    let Command::Assign { assign, .. } = &commands[0] else {
        unreachable!()
    };
    assert_eq!(assign.plan.as_ref().unwrap().round_timeout_ms, 200);
}

#[test]
fn a_certificate_for_another_slot_is_dropped_and_costs_trust() {
    let (mut engine, members, _) = started();
    let from = public(&members[0].key);
    let forged = polity_proto::Certificate {
        slot: Some(polity_proto::Slot {
            task_id: vec![9; 32],
            level: Level::Region as i32,
            group: "r1".into(),
            round: 0,
        }),
        ..polity_proto::Certificate::default()
    };
    let outcome = outcome_of(&slot(), group_outcome::Outcome::Decided(forged));
    let commands = engine.step(
        10,
        Event::Outcome {
            from,
            outcome: Box::new(outcome),
        },
    );
    assert!(commands.iter().any(|command| matches!(command,
        Command::Dropped { label: "invalid certificate", detail, .. } if detail.contains("another slot"))));
    assert!(commands.contains(&Command::Trust {
        key: from,
        event: TrustEvent::InvalidSignature
    }));
    assert!(engine.wake_at_ms().is_some());
}

#[test]
fn a_certificate_of_the_right_slot_with_a_bad_signature_is_dropped_once() {
    // A real decision of the very slot `started()` dispatches (same members, same
    // task), one observation signature flipped: only verify_chain can tell.
    let honest = check(&[("r1", "c1", Honest); 3], Level::Region, 3);
    let genuine = honest.record().certificate.clone().unwrap();
    let mut forged = genuine.clone();
    forged.observations[0].signature[0] ^= 1;
    let (mut engine, members, _) = started();
    let from = public(&members[0].key);
    let outcome = |certificate| {
        Box::new(outcome_of(
            &slot(),
            group_outcome::Outcome::Decided(certificate),
        ))
    };
    let commands = engine.step(
        10,
        Event::Outcome {
            from,
            outcome: outcome(forged),
        },
    );
    assert!(
        commands.iter().any(|command| matches!(command,
        Command::Dropped { label: "invalid certificate", detail, .. } if !detail.contains("slot")))
    );
    // The same member again, now with the genuine certificate: one outcome per member.
    let commands = engine.step(
        11,
        Event::Outcome {
            from,
            outcome: outcome(genuine.clone()),
        },
    );
    assert!(matches!(
        &commands[..],
        [Command::Dropped {
            label: "repeated or empty outcome",
            ..
        }]
    ));
    // Another member's genuine certificate decides the task.
    let commands = engine.step(
        12,
        Event::Outcome {
            from: public(&members[1].key),
            outcome: outcome(genuine),
        },
    );
    let Some(Command::Finish(record)) = commands.last() else {
        panic!("no finish: {commands:?}")
    };
    assert_eq!(record.state, TaskState::Decided as i32, "{}", record.error);
}

#[test]
fn a_retried_group_gets_a_probe_interval_before_connections_judge_it() {
    let members = members(&[("r1", "c1", Honest); 5]);
    let plan = plan_for(&members, Level::Region, 3, ConsensusPath::Bft);
    let mut engine = LevelEngine::new(plan, limits(), PublicKey([0xee; 32]), TaskRecord::default());
    engine.step(0, Event::Start);
    // The first member refuses: the group is re-formed at once with the spare.
    let commands = engine.step(
        100,
        Event::Acked {
            slot: slot(),
            member: public(&members[0].key),
            result: Err(AckError::Refused("busy".into())),
        },
    );
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::Assign { slot, .. } if slot.group.attempt == 1))
    );
    // 1 ms into the new pass nobody is connected yet (the spare is being dialled):
    // no judgement. A probe interval later, the closed connections count.
    let nobody = BTreeSet::new();
    assert!(
        engine
            .step(
                101,
                Event::Connections {
                    connected: nobody.clone()
                }
            )
            .is_empty()
    );
    let later = engine.step(
        100 + MEMBER_PROBE_INTERVAL_MS,
        Event::Connections { connected: nobody },
    );
    assert!(
        later.iter().any(
            |c| matches!(c, Command::Emit(event) if event.detail.contains("its connection closed"))
        ),
        "{later:?}"
    );
}

#[test]
fn peer_supplied_reasons_are_cut_to_a_byte_budget() {
    let (mut engine, members, _) = started();
    let huge = "x".repeat(1 << 20);
    let mut last = Vec::new();
    for member in &members {
        let outcome = outcome_of(&slot(), group_outcome::Outcome::Degraded(huge.clone()));
        last = engine.step(
            5,
            Event::Outcome {
                from: public(&member.key),
                outcome: Box::new(outcome),
            },
        );
    }
    let Some(Command::Finish(record)) = last.last() else {
        panic!("no finish")
    };
    assert!(
        record.error.len() < 4 * REASON_BYTES_MAX,
        "{}",
        record.error.len()
    );
}

#[test]
fn an_outcome_from_a_stranger_is_counted_and_changes_nothing() {
    let (mut engine, _, _) = started();
    let stranger = public(&signing_key(99));
    let outcome = outcome_of(&slot(), group_outcome::Outcome::Degraded("bored".into()));
    let commands = engine.step(
        10,
        Event::Outcome {
            from: stranger,
            outcome: Box::new(outcome),
        },
    );
    assert_eq!(commands.len(), 1);
    assert!(matches!(
        &commands[0],
        Command::Dropped {
            label: "outcome from a non-member",
            ..
        }
    ));
}

#[test]
fn members_that_all_give_up_degrade_the_group_before_the_deadline() {
    let (mut engine, members, _) = started();
    let mut last = Vec::new();
    for member in &members {
        let outcome = outcome_of(
            &slot(),
            group_outcome::Outcome::Degraded("no quorum".into()),
        );
        last = engine.step(
            50,
            Event::Outcome {
                from: public(&member.key),
                outcome: Box::new(outcome),
            },
        );
    }
    // All three answered and disagreed on nothing decidable: no spare seat exists, so
    // the task fails at once, long before the level's deadline.
    assert!(engine.wake_at_ms().is_none());
    let Some(Command::Finish(record)) = last.last() else {
        panic!("no finish: {last:?}")
    };
    assert_eq!(record.state, TaskState::Failed as i32);
    assert!(
        record.error.contains("3 of 3 members gave up (no quorum)"),
        "{}",
        record.error
    );
}

#[test]
fn the_deadline_degrades_what_is_still_open() {
    let (mut engine, _, _) = started();
    let wake = engine.wake_at_ms().unwrap();
    assert!(
        engine
            .step(wake - 1, Event::Tick)
            .iter()
            .all(|c| !matches!(c, Command::Finish(_)))
    );
    let commands = engine.step(wake, Event::Tick);
    let Some(Command::Finish(record)) = commands.last() else {
        panic!("no finish: {commands:?}")
    };
    assert!(
        record
            .error
            .contains("3 silent until the level's time ran out"),
        "{}",
        record.error
    );
}

#[test]
fn a_stale_acknowledgement_is_ignored() {
    let (mut engine, members, _) = started();
    let stale = SlotRef {
        level: Level::Region,
        group: GroupName::first("r1").next(),
    };
    let commands = engine.step(
        5,
        Event::Acked {
            slot: stale,
            member: public(&members[0].key),
            result: Err(AckError::Refused("gone".into())),
        },
    );
    assert!(commands.is_empty());
    assert!(engine.wake_at_ms().is_some());
}

#[test]
fn ticks_ask_for_connections_only_while_region_members_are_silent() {
    let (mut engine, _, _) = started();
    assert_eq!(
        engine.step(250, Event::Tick),
        vec![Command::ProbeConnections]
    );
    let connected = BTreeSet::new(); // everyone's connection closed
    let commands = engine.step(260, Event::Connections { connected });
    // No spare seat, and no quorum left: the group gives up at once instead of
    // holding the client to the level's deadline; nobody is blamed.
    let Some(Command::Finish(record)) = commands.last() else {
        panic!("no finish: {commands:?}")
    };
    assert_eq!(record.state, TaskState::Failed as i32);
    assert!(
        record.error.contains("3 unreachable or refused"),
        "{}",
        record.error
    );
    assert!(!commands.iter().any(|c| matches!(c, Command::Trust { .. })));
}

// ---- seeded simulation ---------------------------------------------------------------

/// A small deterministic generator (SplitMix64): the simulation needs no more.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random federations (1–3 regions on 1–2 continents, 3–5 seats each, a random top
/// level) with random faulty members. Whatever happens, the engine finishes within
/// the task's deadline plus the levels' grace, a DECIDED or DEGRADED record carries
/// a root that verifies and is of the task, a FAILED one carries none, and an honest
/// member is accused of disagreeing only in a group that a wrong member swayed.
#[test]
fn simulated_tasks_end_well_whatever_the_members_do() {
    let seeds: Vec<u64> = match std::env::var("POLITY_ENGINE_SEED") {
        Ok(seed) => vec![seed.parse().expect("POLITY_ENGINE_SEED is a number")],
        Err(_) => (0..60).collect(),
    };
    let mut states = BTreeMap::new();
    for seed in &seeds {
        *states.entry(simulate_one(*seed)).or_insert(0) += 1;
    }
    if seeds.len() > 1 {
        // The federations drawn exercise every ending, or the test proves little.
        let ended: BTreeSet<i32> = states.keys().copied().collect();
        let all = [TaskState::Decided, TaskState::Degraded, TaskState::Failed];
        assert_eq!(ended, all.map(|state| state as i32).into(), "{states:?}");
    }
}

/// Runs one simulated task; returns its final state.
fn simulate_one(seed: u64) -> i32 {
    let mut rng = SplitMix(seed);
    let continents = 1 + rng.below(2) as usize;
    let regions = continents + rng.below(2) as usize;
    let mut spec = Vec::new();
    for region in 0..regions {
        let seats = 3 + rng.below(3);
        for _ in 0..seats {
            let behaviour = match rng.below(10) {
                0 => Wrong,
                1 => Silent,
                2 => Slow(50 + rng.below(300)),
                3 => Crashed,
                4 => Hung,
                _ => Honest,
            };
            let region_name = ["r0", "r1", "r2"][region];
            let continent_name = ["c0", "c1"][region % continents];
            spec.push((region_name, continent_name, behaviour));
        }
    }
    let top = [Level::Region, Level::Continent, Level::Global][rng.below(3) as usize];
    let members = members(&spec);
    let plan = plan_for(&members, top, 3, ConsensusPath::Bft);
    let id = plan.id;
    let deadline_ms = plan.spec.deadline_ms;
    let world = World::new(members, plan, limits()).run();
    let record = world.record();
    let context = format!("seed {seed}: {spec:?} top {top:?}: {record:?}");
    assert!(
        world.now_ms <= deadline_ms + 3 * OUTCOME_GRACE_MS,
        "{context}"
    );
    match TaskState::try_from(record.state) {
        Ok(TaskState::Decided | TaskState::Degraded) => {
            let root = record.certificate.as_ref().expect(&context);
            let summary = verify_task_chain(root, None).expect(&context);
            let slot = root.slot.as_ref().expect(&context);
            assert_eq!(slot.task_id, id.as_bytes(), "{context}");
            assert_eq!(slot.level, top as i32, "{context}");
            assert_eq!(record.value, summary.value, "{context}");
        }
        Ok(TaskState::Failed) => assert!(record.certificate.is_none(), "{context}"),
        other => panic!("unexpected state {other:?}: {context}"),
    }
    let wrong: BTreeSet<String> = world
        .members
        .iter()
        .filter(|(_, member)| member.behaviour == Wrong)
        .map(|(key, _)| key.to_string())
        .collect();
    for group in &record.groups {
        let honest_accused = group.disagreed.iter().any(|key| !wrong.contains(key));
        let swayed = group.agreed.iter().any(|key| wrong.contains(key));
        assert!(!honest_accused || swayed, "{context}: {group:?}");
    }
    record.state
}
