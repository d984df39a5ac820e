//! The entry node's levels as a pure state machine, in the manner of openraft's
//! engine: [`LevelEngine::step`] takes an [`Event`] (a member's acknowledgement or
//! outcome, the connected peers, a tick, the level's deadline) and returns the
//! [`Command`]s the driver carries out (send an assignment, emit a watcher event,
//! move trust, count a metric, finish). It owns the task's record while the task
//! runs and never touches a socket, a clock or a store: time comes in as `now_ms`.
//!
//! A task runs leaves first:
//!
//! 1. **Region groups**: in every region of the plan, the `replication` best seats.
//!    A group is *resolved* when one member's certificate verifies and names exactly
//!    the slot, members and path it was asked for (decided), or when no member can
//!    still decide it or the level's time runs out (degraded). A region group that
//!    did not decide is re-formed under its next attempt when it can be: its lost
//!    members replaced by spare seats, or, when every member answered yet none
//!    agreed, one more replica (BOINC), up to `extra_replicas_max` attempts.
//! 2. **Continent groups**: `representatives` agreeing members of each decided region
//!    group of the continent, each observing its region's certificate.
//! 3. **The global group**: representatives of each decided continent group.
//!
//! A group that cannot decide does not hold back its siblings: its parent is formed
//! from the children that did decide, and the task ends DEGRADED. FAILED only when a
//! whole level decided nothing.
//!
//! **Invariant:** the record's root certificate is one that passed `verify_chain`
//! here and names the slot, members and path this engine asked for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use polity_consensus::binding::ATTEMPTS_MAX;
use polity_consensus::quorum::QuorumRule;
use polity_consensus::{PublicKey, TrustEvent, check_binding, check_task_policy, verify_chain};
use polity_proto::{
    Assign, Certificate, ConsensusPath, GroupOutcome, GroupPlan, GroupStats, Level, Member, Report,
    StatementKind, TaskEvent, TaskEventKind, TaskRecord, TaskState, group_outcome,
};
use prost::Message;

use super::plan::{GroupName, Plan, Seat};
use super::{Votes, level_name, path_name, unverified, votes};
use crate::config::TaskLimits;

/// Rounds a group may use before it gives up (the collector rotates each round).
pub const ROUNDS_MAX: u32 = 3;
/// Extra time the entry waits past a level's budget for the members' last word.
pub const OUTCOME_GRACE_MS: u64 = 500;
/// How often the driver ticks while region groups run: each tick may ask which
/// members are still connected.
pub const MEMBER_PROBE_INTERVAL_MS: u64 = 250;
/// Longest reason a member's refusal or give-up may put into events and the record;
/// the rest is cut (peer-supplied text gets a byte budget like everything else).
pub const REASON_BYTES_MAX: usize = 256;
/// Unseated regions named one by one in the record; the rest are counted.
const UNSEATED_NAMED_MAX: usize = 16;
/// A re-formed group is only worth it with this much of the task's deadline left.
const RETRY_TIME_LEFT_MS_MIN: u64 = 1_000;

/// A group of one level, named as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SlotRef {
    pub level: Level,
    pub group: GroupName,
}

/// Why a member did not take its assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AckError {
    /// The request failed: the member could not be reached. Not held against it.
    #[error("{0}")]
    Unreachable(String),
    /// The member answered and refused. Held against it (as silence) when its group
    /// then does not decide: a member that takes seats only to refuse them costs
    /// every group it is drawn into a replacement.
    #[error("refused: {0}")]
    Refused(String),
}

/// What the engine is told.
#[derive(Debug)]
pub(crate) enum Event {
    /// The task starts: the region groups are dispatched.
    Start,
    /// A member's answer to its assignment: `Err` when it refused or could not be
    /// reached.
    Acked {
        slot: SlotRef,
        member: PublicKey,
        result: Result<(), AckError>,
    },
    /// A member's outcome for its group.
    Outcome {
        from: PublicKey,
        outcome: Box<GroupOutcome>,
    },
    /// The peers this node is connected to now (an answer to
    /// [`Command::ProbeConnections`]).
    Connections { connected: BTreeSet<PublicKey> },
    /// Time passes (every [`MEMBER_PROBE_INTERVAL_MS`] while the task runs).
    Tick,
}

/// What the engine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Send `assign` to `member` and feed its answer back as [`Event::Acked`].
    Assign {
        slot: SlotRef,
        member: PublicKey,
        assign: Box<Assign>,
    },
    /// Tell watchers (the driver stamps task id and time).
    Emit(Box<TaskEvent>),
    /// Move a peer's trust.
    Trust { key: PublicKey, event: TrustEvent },
    /// A peer sent something that does not hold: count it as dropped under
    /// `label` (a fixed metric label) and log `detail`.
    Dropped {
        from: PublicKey,
        label: &'static str,
        detail: String,
    },
    /// Answer with [`Event::Connections`].
    ProbeConnections,
    /// A group ended: for the latency, size, disagreement and recovery metrics.
    GroupEnded(GroupEnd),
    /// A group degraded while a sibling decided: its parent goes on without it.
    CascadePrevented,
    /// The task is over; the record is final (state DECIDED, DEGRADED or FAILED).
    Finish(Box<TaskRecord>),
}

/// One ended group, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupEnd {
    pub level: Level,
    /// The place the group stands for, whatever its attempt: recovery is learned
    /// per place.
    pub place: String,
    pub decided: bool,
    pub latency_ms: u64,
    pub members: usize,
    pub disagreed: usize,
}

/// One group of one level, as planned.
#[derive(Debug, Clone)]
struct Group {
    level: Level,
    name: GroupName,
    /// The continent it belongs to (regions) or is (continents).
    continent: String,
    members: Vec<Seat>,
    /// Levels 2 and 3: each member's child certificate (exact bytes).
    children: HashMap<PublicKey, Vec<u8>>,
    /// Region seats that could not be reached in an earlier attempt: never chosen
    /// again for this task.
    unreachable: BTreeSet<PublicKey>,
}

impl Group {
    fn slot(&self) -> SlotRef {
        SlotRef {
            level: self.level,
            group: self.name.clone(),
        }
    }

    /// Seats of this region that could join the group: not in it, not `lost` now,
    /// not unreachable before, in the plan's order (trust, then RTT). None above the
    /// region level: a parent's members are its children's representatives.
    fn spare_seats(&self, plan: &Plan, lost: &BTreeSet<PublicKey>) -> Vec<Seat> {
        if self.level != Level::Region {
            return Vec::new();
        }
        let Some(seats) = plan.regions.get(&self.name.place) else {
            return Vec::new();
        };
        seats
            .iter()
            .filter(|seat| !self.members.iter().any(|member| member.key == seat.key))
            .filter(|seat| !lost.contains(&seat.key) && !self.unreachable.contains(&seat.key))
            .cloned()
            .collect()
    }

    fn member_protos(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|seat| Member {
                public_key: seat.key.0.to_vec(),
                weight: seat.stake.max(1),
            })
            .collect()
    }
}

/// How a group ended.
#[derive(Debug)]
enum Resolution {
    Decided(Box<Certificate>),
    Degraded(String),
}

/// What the engine knows about one group while its level runs.
#[derive(Debug)]
struct GroupState {
    group: Group,
    resolution: Option<Resolution>,
    /// Members that refused the assignment or could not be reached, and why.
    lost: BTreeMap<PublicKey, String>,
    /// The lost members that were unreachable (a failed request, a closed
    /// connection, no acknowledgement in time): not blamed. A member that answered
    /// and refused is lost but not excused.
    excused: BTreeSet<PublicKey>,
    /// Members whose round gave up, and why.
    gave_up: BTreeMap<PublicKey, String>,
    /// Members that sent any outcome (alive and talking).
    answered: BTreeSet<PublicKey>,
    /// Members that accepted the assignment.
    acked: BTreeSet<PublicKey>,
    /// Given up at once because a member was lost and a spare seat can take its
    /// place: the others are not blamed for silence.
    replace: bool,
    /// Given up at once because the members not lost cannot form a quorum and no
    /// spare seat can take their place: the others are not blamed for silence.
    cut_short: bool,
}

/// A decided group and its certificate: a child of the next level's group.
type Child = (Group, Box<Certificate>);

/// One pass of one level: its groups, dispatched together, and their clock.
#[derive(Debug)]
struct LevelRun {
    level: Level,
    started_ms: u64,
    budget_ms: u64,
    /// When the driver must stop waiting: the budget plus a grace for last words.
    deadline_ms: u64,
    states: Vec<GroupState>,
}

/// The entry node's state machine for one task (see the module doc).
#[derive(Debug)]
pub(crate) struct LevelEngine {
    plan: Plan,
    limits: TaskLimits,
    /// This node: never probed, never moved in trust.
    me: PublicKey,
    record: TaskRecord,
    /// The task's own deadline, set at [`Event::Start`].
    deadline_ms: u64,
    run: Option<LevelRun>,
    /// Decided groups of the level running (region attempts accumulate here).
    decided: Vec<Child>,
    /// "level place: reason" of every degraded group so far.
    degraded: Vec<String>,
    finished: bool,
}

impl LevelEngine {
    pub fn new(plan: Plan, limits: TaskLimits, me: PublicKey, record: TaskRecord) -> LevelEngine {
        LevelEngine {
            plan,
            limits,
            me,
            record,
            deadline_ms: 0,
            run: None,
            decided: Vec::new(),
            degraded: Vec::new(),
            finished: false,
        }
    }

    /// When the driver must feed [`Event::Tick`] at the latest: the running level's
    /// deadline. `None` once finished.
    pub fn wake_at_ms(&self) -> Option<u64> {
        self.run.as_ref().map(|run| run.deadline_ms)
    }

    /// Ends the task as FAILED with `error` (the driver lost what it needs to go on).
    pub fn fail(&mut self, error: String) -> Vec<Command> {
        let mut commands = Vec::new();
        if !self.finished {
            self.finish(Err(error), &mut commands);
        }
        commands
    }

    /// Feeds one event; returns what to do, in order.
    pub fn step(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut commands = Vec::new();
        if self.finished {
            return commands;
        }
        match event {
            Event::Start => self.start(now_ms, &mut commands),
            Event::Acked {
                slot,
                member,
                result,
            } => self.on_ack(&slot, member, result),
            Event::Outcome { from, outcome } => self.on_outcome(from, *outcome, &mut commands),
            Event::Connections { connected } => self.on_connections(now_ms, &connected),
            Event::Tick => self.on_tick(now_ms, &mut commands),
        }
        self.advance(now_ms, &mut commands);
        commands
    }

    fn start(&mut self, now_ms: u64, commands: &mut Vec<Command>) {
        if self.run.is_some() {
            return;
        }
        self.deadline_ms = now_ms.saturating_add(self.plan.spec.deadline_ms);
        let unseated = self.plan.unseated.len();
        for (named, (region, reason)) in self.plan.unseated.iter().enumerate() {
            if named == UNSEATED_NAMED_MAX {
                let rest = unseated - UNSEATED_NAMED_MAX;
                self.degraded
                    .push(format!("{rest} more regions not seated"));
                break;
            }
            let line = format!("region {region}: {reason}");
            commands.push(Command::Emit(Box::new(TaskEvent {
                kind: TaskEventKind::GroupDegraded as i32,
                level: Level::Region as i32,
                group: region.clone(),
                detail: reason.clone(),
                ..TaskEvent::default()
            })));
            self.degraded.push(line);
        }
        let replication = self.plan.spec.replication as usize;
        let groups = self
            .plan
            .regions
            .iter()
            .map(|(region, seats)| Group {
                level: Level::Region,
                name: GroupName::first(region.clone()),
                continent: seats[0].continent.clone(),
                members: seats[..replication.min(seats.len())].to_vec(),
                children: HashMap::new(),
                unreachable: BTreeSet::new(),
            })
            .collect();
        self.dispatch(now_ms, groups, commands);
    }

    /// Starts a pass of one level: every member of every group is assigned at once.
    fn dispatch(&mut self, now_ms: u64, groups: Vec<Group>, commands: &mut Vec<Command>) {
        let level = groups.first().map_or(Level::Region, |group| group.level);
        let level_timeout_ms = match level {
            Level::Region => self.limits.region_timeout_ms,
            Level::Continent => self.limits.continent_timeout_ms,
            _ => self.limits.global_timeout_ms,
        };
        let budget_ms = level_timeout_ms
            .min(self.deadline_ms.saturating_sub(now_ms))
            .max(ROUNDS_MAX as u64);
        let mut states = Vec::with_capacity(groups.len());
        for group in groups {
            self.assign_group(&group, budget_ms, commands);
            states.push(GroupState {
                group,
                resolution: None,
                lost: BTreeMap::new(),
                excused: BTreeSet::new(),
                gave_up: BTreeMap::new(),
                answered: BTreeSet::new(),
                acked: BTreeSet::new(),
                replace: false,
                cut_short: false,
            });
        }
        self.run = Some(LevelRun {
            level,
            started_ms: now_ms,
            budget_ms,
            deadline_ms: now_ms + budget_ms + OUTCOME_GRACE_MS,
            states,
        });
    }

    fn assign_group(&self, group: &Group, budget_ms: u64, commands: &mut Vec<Command>) {
        let plan = &self.plan;
        let group_plan = GroupPlan {
            level: group.level as i32,
            group: group.name.to_string(),
            members: group.member_protos(),
            path: plan.path as i32,
            path_reason: plan.path_reason.clone(),
            aggregation: plan.spec.aggregation,
            round_timeout_ms: (budget_ms / ROUNDS_MAX as u64).max(1),
            rounds_max: ROUNDS_MAX,
            registry_digest: plan.registry_digest.to_vec(),
        };
        for seat in &group.members {
            commands.push(Command::Assign {
                slot: group.slot(),
                member: seat.key,
                assign: Box::new(Assign {
                    task: plan.spec_bytes.clone(),
                    plan: Some(group_plan.clone()),
                    child_certificate: group.children.get(&seat.key).cloned().unwrap_or_default(),
                }),
            });
        }
        let members: Vec<String> = group.members.iter().map(|seat| short(&seat.key)).collect();
        commands.push(group_event(
            group,
            TaskEventKind::Dispatched,
            format!(
                "asked {} members on the {} path: {}",
                group.members.len(),
                path_name(plan.path),
                members.join(", ")
            ),
        ));
    }

    fn on_ack(&mut self, slot: &SlotRef, member: PublicKey, result: Result<(), AckError>) {
        let (plan, replacements_max) = (&self.plan, self.limits.extra_replicas_max);
        let Some(state) = self.run.as_mut().and_then(|run| run.state_mut(slot)) else {
            return; // an earlier level or attempt
        };
        if !state.group.members.iter().any(|seat| seat.key == member) {
            return;
        }
        match result {
            Ok(()) => {
                state.acked.insert(member);
            }
            Err(error) => {
                if matches!(error, AckError::Unreachable(_)) {
                    state.excused.insert(member);
                }
                state.lost.insert(member, bounded(error.to_string()));
                state.replace_if_possible(plan, replacements_max);
                state.check_all_out(plan.path);
            }
        }
    }

    /// One member's outcome: routed to its group, checked, and noted.
    fn on_outcome(&mut self, from: PublicKey, outcome: GroupOutcome, commands: &mut Vec<Command>) {
        let plan = &self.plan;
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let Some(state) = run.states.iter_mut().find(|state| {
            state.group.level as i32 == outcome.level
                && state.group.name.to_string() == outcome.group
        }) else {
            return; // a late outcome of an earlier level or attempt
        };
        if !state.group.members.iter().any(|seat| seat.key == from) {
            commands.push(Command::Dropped {
                from,
                label: "outcome from a non-member",
                detail: format!("for group {}", state.group.name),
            });
            return;
        }
        if state.answered.contains(&from) || outcome.outcome.is_none() {
            // One outcome per member and group: a repeat costs no verification, and
            // an empty one proves nothing about the member.
            commands.push(Command::Dropped {
                from,
                label: "repeated or empty outcome",
                detail: format!("for group {}", state.group.name),
            });
            return;
        }
        state.answered.insert(from);
        let detail = match &outcome.outcome {
            Some(group_outcome::Outcome::Decided(_)) => "reports the group decided".to_string(),
            Some(group_outcome::Outcome::Degraded(reason)) => {
                format!("gave up: {}", bounded(reason.clone()))
            }
            None => unreachable!("refused above"),
        };
        let mut event = group_event(&state.group, TaskEventKind::Observation, detail);
        if let Command::Emit(event) = &mut event {
            event.member = from.to_string();
        }
        commands.push(event);
        if state.resolution.is_some() {
            return;
        }
        match outcome.outcome {
            Some(group_outcome::Outcome::Decided(certificate)) => {
                match check_certificate(plan, &state.group, &certificate) {
                    Ok(()) => state.resolution = Some(Resolution::Decided(Box::new(certificate))),
                    Err(reason) => {
                        commands.push(Command::Dropped {
                            from,
                            label: "invalid certificate",
                            detail: reason,
                        });
                        commands.push(Command::Trust {
                            key: from,
                            event: TrustEvent::InvalidSignature,
                        });
                    }
                }
            }
            Some(group_outcome::Outcome::Degraded(reason)) => {
                state.gave_up.insert(from, bounded(reason));
                state.check_all_out(plan.path);
            }
            None => {}
        }
    }

    /// Region members that have not answered and are no longer connected (a crashed
    /// node), or that have not acknowledged their assignment within a round's time,
    /// are lost; their group is re-formed with spare seats when there are any,
    /// instead of waiting out the level.
    fn on_connections(&mut self, now_ms: u64, connected: &BTreeSet<PublicKey>) {
        let (plan, me, replacements_max) = (&self.plan, self.me, self.limits.extra_replicas_max);
        let Some(run) = self.run.as_mut() else {
            return;
        };
        // A pass's members get a probe interval to connect (a spare seat may still be
        // being dialled), and nothing is judged once the level's time is up.
        let settling = now_ms < run.started_ms + MEMBER_PROBE_INTERVAL_MS;
        if run.level != Level::Region || settling || now_ms >= run.deadline_ms {
            return;
        }
        // A live member acknowledges at once; one that has not within a round's time
        // is as good as gone (crashed, or its connection is dead).
        let ack_grace_ms = (run.budget_ms / ROUNDS_MAX as u64).max(MEMBER_PROBE_INTERVAL_MS);
        let ack_overdue = now_ms > run.started_ms + ack_grace_ms;
        for state in run.states.iter_mut() {
            if !state.is_waiting(me, replacements_max) {
                continue;
            }
            let silent: Vec<PublicKey> = state
                .group
                .members
                .iter()
                .map(|seat| seat.key)
                .filter(|key| *key != me && !state.answered.contains(key))
                .collect();
            for key in silent {
                if !connected.contains(&key) {
                    state.lost.insert(key, "its connection closed".into());
                    state.excused.insert(key);
                } else if ack_overdue && !state.acked.contains(&key) {
                    // As good as gone: a dead peer's QUIC connection looks open until
                    // its idle timeout, and a member that wanted to dodge blame could
                    // as well close its connection. Not held against it.
                    state
                        .lost
                        .entry(key)
                        .or_insert_with(|| "it did not acknowledge its assignment".into());
                    state.excused.insert(key);
                }
            }
            state.replace_if_possible(plan, replacements_max);
            state.check_all_out(plan.path);
        }
    }

    fn on_tick(&mut self, now_ms: u64, commands: &mut Vec<Command>) {
        let (me, replacements_max) = (self.me, self.limits.extra_replicas_max);
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if now_ms >= run.deadline_ms {
            // Out of time: every unresolved group degrades in `advance`.
            for state in &mut run.states {
                if state.resolution.is_none() {
                    state.resolution = Some(Resolution::Degraded(state.summary(false)));
                }
            }
            return;
        }
        let waiting = run
            .states
            .iter()
            .any(|state| state.is_waiting(me, replacements_max));
        if run.level == Level::Region && waiting {
            commands.push(Command::ProbeConnections);
        }
    }

    /// Ends the running level once every group is resolved, and starts what comes
    /// next: another attempt, the next level, or the end of the task. Each call ends
    /// at most one pass; a pass always dispatches at least one group or finishes.
    fn advance(&mut self, now_ms: u64, commands: &mut Vec<Command>) {
        let resolved_all = self
            .run
            .as_ref()
            .is_some_and(|run| run.states.iter().all(|state| state.resolution.is_some()));
        if !resolved_all {
            return;
        }
        let run = self.run.take().expect("checked above");
        let level = run.level;
        let mut retries = Vec::new();
        let mut any_decided = false;
        let mut ended = Vec::with_capacity(run.states.len());
        for state in run.states {
            ended.push(self.resolve(now_ms, run.started_ms, state, commands));
        }
        for (state, _) in &ended {
            any_decided |= matches!(state.resolution, Some(Resolution::Decided(_)));
        }
        for (state, reason) in ended {
            match state.resolution {
                Some(Resolution::Decided(certificate)) => {
                    self.decided.push((state.group, certificate));
                    continue;
                }
                _ if any_decided => commands.push(Command::CascadePrevented),
                _ => {}
            }
            let time_left = now_ms + RETRY_TIME_LEFT_MS_MIN < self.deadline_ms;
            let next = match level == Level::Region && time_left {
                true => next_attempt(&self.plan, &state, self.limits.extra_replicas_max),
                false => None,
            };
            match next {
                Some((group, why)) => {
                    let detail = format!("{reason}; {why}");
                    commands.push(group_event(
                        &state.group,
                        TaskEventKind::GroupDegraded,
                        detail,
                    ));
                    retries.push(group);
                }
                None => self.degraded.push(degraded_line(&state.group, &reason)),
            }
        }
        if !retries.is_empty() {
            self.dispatch(now_ms, retries, commands);
            return;
        }
        self.conclude(now_ms, level, commands);
    }

    /// A level is over: the task fails if nothing decided, finishes at its top level,
    /// or goes on with the parents of what decided.
    fn conclude(&mut self, now_ms: u64, level: Level, commands: &mut Vec<Command>) {
        let decided = std::mem::take(&mut self.decided);
        if decided.is_empty() {
            let error = format!(
                "no {} group could decide: {}",
                level_name(level),
                self.degraded.join("; ")
            );
            return self.finish(Err(error), commands);
        }
        if level == self.plan.top {
            let root = decided.into_iter().next().expect("not empty").1;
            return self.finish(Ok(*root), commands);
        }
        let parents = match level {
            Level::Region => {
                let mut continents: BTreeMap<String, Vec<&Child>> = BTreeMap::new();
                for child in &decided {
                    continents
                        .entry(child.0.continent.clone())
                        .or_default()
                        .push(child);
                }
                continents
                    .into_iter()
                    .map(|(continent, children)| {
                        self.parent_group(Level::Continent, &continent, &continent, children)
                    })
                    .collect()
            }
            _ => vec![self.parent_group(Level::Global, "global", "", decided.iter().collect())],
        };
        self.dispatch(now_ms, parents, commands);
    }

    /// A parent group: `representatives` agreeing members of each decided child,
    /// best trust first, each observing its own child's certificate.
    fn parent_group(
        &self,
        level: Level,
        place: &str,
        continent: &str,
        children: Vec<&Child>,
    ) -> Group {
        let per_child = self.limits.representatives;
        let mut members = Vec::new();
        let mut child_bytes = HashMap::new();
        for (child, certificate) in children {
            let agreed = agreed_keys(certificate);
            let bytes = certificate.encode_to_vec();
            let mut representatives: Vec<&Seat> = child
                .members
                .iter()
                .filter(|seat| agreed.contains(&seat.key))
                .filter(|seat| !child_bytes.contains_key(&seat.key))
                .collect();
            representatives.sort_by(|a, b| b.trust.total_cmp(&a.trust).then(a.key.cmp(&b.key)));
            for seat in representatives.into_iter().take(per_child) {
                child_bytes.insert(seat.key, bytes.clone());
                members.push(seat.clone());
            }
        }
        Group {
            level,
            name: GroupName::first(place),
            continent: continent.to_string(),
            members,
            children: child_bytes,
            unreachable: BTreeSet::new(),
        }
    }

    /// Ends a group: statistics into the record, trust, metrics and events. Returns
    /// the state with its resolution set, and the reason when it degraded.
    fn resolve(
        &mut self,
        now_ms: u64,
        started_ms: u64,
        mut state: GroupState,
        commands: &mut Vec<Command>,
    ) -> (GroupState, String) {
        let latency_ms = now_ms.saturating_sub(started_ms);
        let level = state.group.level;
        let summary = state.summary(false);
        let resolution = state
            .resolution
            .take()
            .unwrap_or(Resolution::Degraded(summary));
        let votes = self.votes(&state, &resolution);
        let stats = self.group_stats(&state, &resolution, &votes, latency_ms);
        let decided = matches!(resolution, Resolution::Decided(_));
        self.move_trust(&votes, decided, &state.excused, commands);
        commands.push(Command::GroupEnded(GroupEnd {
            level,
            place: state.group.name.place.clone(),
            decided,
            latency_ms,
            members: state.group.members.len(),
            disagreed: votes.disagreed.len(),
        }));
        let (kind, detail) = match &resolution {
            Resolution::Decided(_) => (
                TaskEventKind::GroupDecided,
                format!(
                    "decided on the {} path in {latency_ms} ms ({} of {} agreed)",
                    path_name(self.plan.path),
                    votes.agreed.len(),
                    state.group.members.len()
                ),
            ),
            Resolution::Degraded(reason) => (TaskEventKind::GroupDegraded, reason.clone()),
        };
        commands.push(group_event(&state.group, kind, detail));
        self.record.groups.push(stats);
        let reason = match &resolution {
            Resolution::Degraded(reason) => reason.clone(),
            Resolution::Decided(_) => String::new(),
        };
        state.resolution = Some(resolution);
        (state, reason)
    }

    /// Who agreed, disagreed and stayed silent in a group that ended.
    fn votes(&self, state: &GroupState, resolution: &Resolution) -> Votes {
        match resolution {
            Resolution::Decided(certificate) => votes(certificate),
            Resolution::Degraded(_) => Votes {
                timed_out: state
                    .group
                    .members
                    .iter()
                    .filter(|seat| !state.answered.contains(&seat.key))
                    // Given up early to replace a lost member: the lost one did not
                    // answer; the others had no chance to.
                    .filter(|seat| {
                        !(state.replace || state.cut_short) || state.lost.contains_key(&seat.key)
                    })
                    .map(|seat| seat.key)
                    .collect(),
                ..Votes::default()
            },
        }
    }

    /// The record's statistics of a group that ended (keys as hex, for people).
    fn group_stats(
        &self,
        state: &GroupState,
        resolution: &Resolution,
        votes: &Votes,
        latency_ms: u64,
    ) -> GroupStats {
        let hex = |keys: &[PublicKey]| keys.iter().map(ToString::to_string).collect();
        let (rounds, degraded_reason, path) = match resolution {
            Resolution::Decided(certificate) => {
                let round = certificate.slot.as_ref().map_or(0, |slot| slot.round);
                (round + 1, String::new(), certificate.path)
            }
            Resolution::Degraded(reason) => (0, reason.clone(), self.plan.path as i32),
        };
        let members: Vec<PublicKey> = state.group.members.iter().map(|seat| seat.key).collect();
        GroupStats {
            level: state.group.level as i32,
            group: state.group.name.to_string(),
            path,
            latency_ms,
            rounds,
            degraded_reason,
            members: hex(&members),
            agreed: hex(&votes.agreed),
            disagreed: hex(&votes.disagreed),
            timed_out: hex(&votes.timed_out),
        }
    }

    /// Trust follows outcomes: agreeing with the decision, disagreeing, or silence.
    /// A member left out of a decided certificate is not blamed: the fast path
    /// decides on the first quorum, and the rest may simply have been slower. Only
    /// silence in a group that could not decide counts as a timeout, and only from
    /// a member that was there to answer: an *excused* member (a failed request, its
    /// connection closed, no acknowledgement in time: it may be dead behind a
    /// connection that still looks open) is not blamed, but one that answered and
    /// refused its seat is (a hostile member could otherwise take seats only to
    /// refuse them, free; one that goes quiet instead is treated as gone, as a
    /// crashed member must be). Being cut off by a partition or a crash is
    /// not lying; the breaker keeps an unreachable peer
    /// out of seats while it lasts, and trust would otherwise keep it out (below
    /// the floor after two timeouts from the prior) for over half an hour after the heal.
    fn move_trust(
        &self,
        votes: &Votes,
        decided: bool,
        excused: &BTreeSet<PublicKey>,
        commands: &mut Vec<Command>,
    ) {
        let silent: Vec<PublicKey> = match decided {
            true => Vec::new(),
            false => votes
                .timed_out
                .iter()
                .filter(|key| !excused.contains(key))
                .copied()
                .collect(),
        };
        let moves = [
            (votes.agreed.as_slice(), TrustEvent::Agreement),
            (votes.disagreed.as_slice(), TrustEvent::Disagreement),
            (silent.as_slice(), TrustEvent::Timeout),
        ];
        for (keys, event) in moves {
            for key in keys.iter().filter(|key| **key != self.me) {
                commands.push(Command::Trust { key: *key, event });
            }
        }
    }

    /// The record's last word: the root certificate and value, or the error.
    fn finish(&mut self, root: Result<Certificate, String>, commands: &mut Vec<Command>) {
        self.finished = true;
        self.run = None;
        let record = &mut self.record;
        let readable = root.and_then(|root| {
            // Only a certificate that passed `check_certificate` (its chain verified)
            // gets here; as the root, it must also be at the task's scope.
            check_binding(&root)
                .map_err(|error| format!("the root does not answer the task: {error}"))?;
            let (_, report) = root
                .report
                .as_ref()
                .and_then(|statement| unverified::<Report>(statement, StatementKind::Report))
                .ok_or("internal: root without a readable report")?;
            Ok((root, report.value))
        });
        match readable {
            Ok((root, value)) => {
                record.value = value;
                record.certificate = Some(root);
                if self.degraded.is_empty() {
                    record.state = TaskState::Decided as i32;
                } else {
                    record.state = TaskState::Degraded as i32;
                    record.degraded_reason = self.degraded.join("; ");
                }
            }
            Err(error) => {
                record.state = TaskState::Failed as i32;
                record.error = error;
            }
        }
        commands.push(Command::Finish(Box::new(record.clone())));
    }
}

impl LevelRun {
    fn state_mut(&mut self, slot: &SlotRef) -> Option<&mut GroupState> {
        self.states
            .iter_mut()
            .find(|state| state.group.level == slot.level && state.group.name == slot.group)
    }
}

impl GroupState {
    /// Unresolved, still re-formable, with a member other than `me` yet to answer or
    /// be found lost: worth probing.
    fn is_waiting(&self, me: PublicKey, replacements_max: u32) -> bool {
        self.resolution.is_none()
            && self.group.name.attempt < replacements_max
            && self.group.members.iter().any(|seat| {
                seat.key != me
                    && !self.answered.contains(&seat.key)
                    && !self.lost.contains_key(&seat.key)
            })
    }

    /// Gives the group up at once when it has lost members and a spare seat can take
    /// their place (waiting out the level for a member that is gone wastes it).
    fn replace_if_possible(&mut self, plan: &Plan, replacements_max: u32) {
        if self.resolution.is_some() || self.lost.is_empty() {
            return;
        }
        let lost: BTreeSet<PublicKey> = self.lost.keys().copied().collect();
        let spare = !self.group.spare_seats(plan, &lost).is_empty();
        if self.group.name.attempt < replacements_max && spare {
            self.replace = true;
            self.resolution = Some(Resolution::Degraded(self.summary(true)));
        }
    }

    /// Degrades the group once no member can still decide it: every member lost or
    /// given up, or the members not lost cannot form a quorum of the path. Waiting
    /// out the level for a decision that cannot come holds the client to its
    /// deadline (a bft group of three that lost a member during a partition, with
    /// no spare seat on its side). Members that gave up are not counted out early:
    /// when all of them answered, disagreement earns the group one more replica.
    fn check_all_out(&mut self, path: ConsensusPath) {
        if self.resolution.is_some() {
            return;
        }
        let all_out =
            self.group.members.iter().all(|seat| {
                self.lost.contains_key(&seat.key) || self.gave_up.contains_key(&seat.key)
            });
        let reachable: Vec<usize> = (self.group.members.iter().enumerate())
            .filter(|(_, seat)| !self.lost.contains_key(&seat.key))
            .map(|(index, _)| index)
            .collect();
        let rule = QuorumRule::new(path, &self.group.member_protos());
        if all_out {
            self.resolution = Some(Resolution::Degraded(self.summary(true)));
        } else if !rule.is_quorum(&reachable) {
            let reason = format!(
                "{}; the {} not lost cannot form a quorum of {}",
                self.summary(true),
                reachable.len(),
                self.group.members.len()
            );
            self.cut_short = true;
            self.resolution = Some(Resolution::Degraded(reason));
        }
    }

    /// Why the group did not decide; `early` when it is given up before the level's
    /// time is up (its silent members had not answered *yet*).
    fn summary(&self, early: bool) -> String {
        let mut parts = Vec::new();
        if let Some((_, reason)) = self.gave_up.iter().next() {
            parts.push(format!(
                "{} of {} members gave up ({reason})",
                self.gave_up.len(),
                self.group.members.len()
            ));
        }
        if let Some((_, reason)) = self.lost.iter().next() {
            parts.push(format!(
                "{} unreachable or refused ({reason})",
                self.lost.len()
            ));
        }
        let silent = self
            .group
            .members
            .iter()
            .filter(|seat| !self.answered.contains(&seat.key) && !self.lost.contains_key(&seat.key))
            .count();
        if silent > 0 && early {
            parts.push(format!("{silent} had not answered yet"));
        } else if silent > 0 {
            parts.push(format!("{silent} silent until the level's time ran out"));
        }
        if parts.is_empty() {
            "no decision".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// The next attempt of a region group that did not decide, and why, if it gets one:
/// its lost members replaced by spare seats of the region, or, when every member
/// answered but they disagreed, one more replica (at most `extra_max` attempts).
fn next_attempt(plan: &Plan, done: &GroupState, extra_max: u32) -> Option<(Group, String)> {
    if done.group.name.attempt >= ATTEMPTS_MAX {
        return None; // a verifier refuses attempts past this
    }
    let lost: BTreeSet<PublicKey> = done.lost.keys().copied().collect();
    let spares = done.group.spare_seats(plan, &lost);
    let first_spare = spares.first()?.clone();
    let (members, why) = if done.replace {
        let mut spares = spares.into_iter();
        let members = done
            .group
            .members
            .iter()
            .map(|seat| match lost.contains(&seat.key) {
                true => spares.next().unwrap_or_else(|| seat.clone()),
                false => seat.clone(),
            })
            .collect();
        let why = format!(
            "replacing {} unreachable member(s) with spare seats",
            lost.len()
        );
        (members, why)
    } else {
        let disagreed = done.answered.len() == done.group.members.len();
        if !disagreed || done.group.name.attempt >= extra_max {
            return None;
        }
        let mut members = done.group.members.clone();
        members.push(first_spare);
        let why = format!(
            "members answered but disagreed: asking one more replica ({} members)",
            members.len()
        );
        (members, why)
    };
    let mut unreachable = done.group.unreachable.clone();
    unreachable.extend(lost);
    let group = Group {
        name: done.group.name.next(),
        members,
        unreachable,
        ..done.group.clone()
    };
    Some((group, why))
}

/// Checks a certificate a member sent: it verifies, and it decides exactly the slot
/// and member list this node asked for, on the plan's path.
fn check_certificate(plan: &Plan, group: &Group, certificate: &Certificate) -> Result<(), String> {
    let slot = certificate.slot.as_ref().ok_or("no slot")?;
    if slot.task_id != plan.id.as_bytes()
        || slot.level != group.level as i32
        || slot.group != group.name.to_string()
    {
        return Err("the certificate is for another slot".into());
    }
    if certificate.members != group.member_protos() {
        return Err("the certificate names other members".into());
    }
    if certificate.path != plan.path as i32 {
        return Err("the certificate used another path".into());
    }
    verify_chain(certificate).map_err(|error| error.to_string())?;
    // The task's rule at every level beneath: a child on another path or
    // aggregation would only fail the whole task at its root.
    check_task_policy(certificate, &plan.spec).map_err(|error| error.to_string())?;
    Ok(())
}

/// The members whose observation matched the certificate's value.
fn agreed_keys(certificate: &Certificate) -> BTreeSet<PublicKey> {
    votes(certificate).agreed.into_iter().collect()
}

/// A watcher event about one group.
fn group_event(group: &Group, kind: TaskEventKind, detail: String) -> Command {
    Command::Emit(Box::new(TaskEvent {
        kind: kind as i32,
        level: group.level as i32,
        group: group.name.to_string(),
        detail,
        ..TaskEvent::default()
    }))
}

/// "region eu: reason", "continent europe: reason", "global: reason".
fn degraded_line(group: &Group, reason: &str) -> String {
    match group.level {
        Level::Global => format!("global: {reason}"),
        level => format!("{} {}: {reason}", level_name(level), group.name),
    }
}

/// `reason` cut to [`REASON_BYTES_MAX`] bytes, on a character boundary.
fn bounded(mut reason: String) -> String {
    if reason.len() > REASON_BYTES_MAX {
        let mut end = REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// The first 8 hex digits of a key, for event details.
fn short(key: &PublicKey) -> String {
    key.to_string().chars().take(8).collect()
}

#[cfg(test)]
mod tests;
