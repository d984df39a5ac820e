//! The entry node's orchestration of one task: region groups, then continent groups,
//! then the global group; each level dispatched, collected and judged here (see the
//! [`crate::tasks`] module doc for the shape, and [`crate::federation`] for the member
//! side).
//!
//! A level runs all its groups at once: `Assign` to every member, then outcomes are
//! collected until each group is *resolved* — decided (the first certificate that
//! verifies and names the slot and members asked for), or degraded (every member
//! refused, failed or gave up, or the level's time ran out). Nothing here waits
//! without a bound: every wait ends at the level's deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use polity_consensus::{PublicKey, TrustEvent, verify_chain};
use polity_proto::{
    Assign, Certificate, GroupOutcome, GroupPlan, GroupStats, Level, Member, TaskEvent,
    TaskEventKind, TaskRecord, TaskState, group_outcome, task_request,
};
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use crate::federation::OutcomeMessage;
use crate::metrics::LevelLabels;
use crate::recovery::GROUP_DEGRADED;
use crate::tasks::{Plan, Seat, TaskEngine, group_stats, level_name, path_name, unverified};
use crate::unix_ms;

/// Rounds a group may use before it gives up (the collector rotates each round).
pub const ROUNDS_MAX: u32 = 3;
/// Extra time the entry waits past a level's budget for the members' last word.
const OUTCOME_GRACE_MS: u64 = 500;

/// One group of one level, as planned.
struct GroupRun {
    level: Level,
    /// The slot's group name: region, continent or "global", plus "~k" for an extra
    /// replica attempt.
    name: String,
    /// The region or continent it stands for.
    place: String,
    /// The continent it belongs to (regions) or is (continents).
    continent: String,
    members: Vec<Seat>,
    /// Levels 2 and 3: each member's child certificate (exact bytes).
    children: HashMap<PublicKey, Vec<u8>>,
    /// Attempt number: 0, then 1.. for extra replicas and replacements.
    attempt: u32,
    /// Region seats that could not be reached in an earlier attempt: never chosen
    /// again for this task.
    unreachable: BTreeSet<PublicKey>,
}

impl GroupRun {
    /// Seats of this region that could join the group: not in it, not `lost` now,
    /// not unreachable before, in the plan's order (trust, then RTT). None above the
    /// region level: a parent's members are its children's representatives.
    fn spare_seats(&self, plan: &Plan, lost: &BTreeSet<PublicKey>) -> Vec<Seat> {
        if self.level != Level::Region {
            return Vec::new();
        }
        let Some(seats) = plan.regions.get(&self.place) else {
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

/// A decided group and its certificate: a child of the next level's group.
type Child = (GroupRun, Box<Certificate>);

/// How a group ended.
enum Resolution {
    Decided(Box<Certificate>),
    Degraded(String),
}

/// A group's end, with who did what.
struct Resolved {
    group: GroupRun,
    resolution: Resolution,
    /// Members that sent any outcome (alive and talking).
    answered: BTreeSet<PublicKey>,
    /// Members that could not be reached or refused the assignment.
    lost: BTreeSet<PublicKey>,
    /// The group was given up to replace its lost members.
    replace: bool,
}

impl TaskEngine {
    /// Runs every level of the task, leaves first. Returns the finished record.
    pub(crate) async fn orchestrate(
        &self,
        plan: Plan,
        mut record: TaskRecord,
        events: &broadcast::Sender<TaskEvent>,
    ) -> TaskRecord {
        let mut inbox = self.federation.open_outcomes(plan.id);
        let result = self.levels(&plan, &mut record, events, &mut inbox).await;
        self.federation.close_outcomes(&plan.id);
        if let Err(error) = result {
            record.state = TaskState::Failed as i32;
            record.error = error;
        }
        self.federation
            .workers()
            .task_finished(record.state == TaskState::Decided as i32);
        record
    }

    async fn levels(
        &self,
        plan: &Plan,
        record: &mut TaskRecord,
        events: &broadcast::Sender<TaskEvent>,
        inbox: &mut mpsc::Receiver<OutcomeMessage>,
    ) -> Result<(), String> {
        let deadline_ms = unix_ms().saturating_add(plan.spec.deadline_ms);
        let replication = plan.spec.replication as usize;
        let mut degraded: Vec<String> = Vec::new();

        // Level 1: region groups, with extra replicas where members disagreed.
        let mut groups: Vec<GroupRun> = plan
            .regions
            .iter()
            .map(|(region, seats)| GroupRun {
                level: Level::Region,
                name: region.clone(),
                place: region.clone(),
                continent: seats[0].continent.clone(),
                members: seats[..replication].to_vec(),
                children: HashMap::new(),
                attempt: 0,
                unreachable: BTreeSet::new(),
            })
            .collect();
        let mut decided: Vec<Child> = Vec::new();
        let extra_max = self.config.tasks.extra_replicas_max;
        // Bounded: each pass either ends a group or grows it by one replica, at most
        // `extra_max` times.
        while !groups.is_empty() {
            let resolved = self
                .run_level(plan, groups, deadline_ms, events, inbox, record)
                .await;
            groups = Vec::new();
            for done in resolved {
                match done.resolution {
                    Resolution::Decided(certificate) => decided.push((done.group, certificate)),
                    Resolution::Degraded(ref reason) => {
                        let time_left = unix_ms() + 1_000 < deadline_ms;
                        let next = time_left
                            .then(|| next_attempt(plan, &done, extra_max))
                            .flatten();
                        let Some((members, why)) = next else {
                            degraded.push(format!("region {}: {reason}", done.group.name));
                            continue;
                        };
                        self.emit(
                            events,
                            plan.id,
                            TaskEvent {
                                kind: TaskEventKind::GroupDegraded as i32,
                                level: Level::Region as i32,
                                group: done.group.name.clone(),
                                detail: format!("{reason}; {why}"),
                                ..TaskEvent::default()
                            },
                        );
                        let attempt = done.group.attempt + 1;
                        let mut unreachable = done.group.unreachable.clone();
                        unreachable.extend(done.lost.iter().copied());
                        groups.push(GroupRun {
                            name: format!("{}~{attempt}", done.group.place),
                            members,
                            attempt,
                            unreachable,
                            ..done.group
                        });
                    }
                }
            }
        }
        let mut top = self.conclude(plan.top, Level::Region, &decided, &degraded)?;
        if plan.top == Level::Region {
            return self.finish_record(record, top, &degraded);
        }

        // Level 2: continent groups of the decided regions' representatives.
        let continents = parents(&decided, |group| group.continent.clone());
        let groups = continents
            .into_iter()
            .map(|(continent, children)| {
                self.parent_group(Level::Continent, continent.clone(), continent, children)
            })
            .collect();
        let resolved = self
            .run_level(plan, groups, deadline_ms, events, inbox, record)
            .await;
        let (decided, newly_degraded) = split(resolved);
        degraded.extend(
            newly_degraded
                .into_iter()
                .map(|(name, reason)| format!("continent {name}: {reason}")),
        );
        top = self.conclude(plan.top, Level::Continent, &decided, &degraded)?;
        if plan.top == Level::Continent {
            return self.finish_record(record, top, &degraded);
        }

        // Level 3: the global group of the decided continents' representatives.
        let children: Vec<Child> = decided;
        let global = self.parent_group(
            Level::Global,
            "global".into(),
            String::new(),
            children.iter().collect(),
        );
        let resolved = self
            .run_level(plan, vec![global], deadline_ms, events, inbox, record)
            .await;
        let (decided, newly_degraded) = split(resolved);
        degraded.extend(
            newly_degraded
                .into_iter()
                .map(|(_, reason)| format!("global: {reason}")),
        );
        top = self.conclude(plan.top, Level::Global, &decided, &degraded)?;
        self.finish_record(record, top, &degraded)
    }

    /// The certificate a level passes up (the only one, for the top level), or why
    /// the task cannot go on.
    fn conclude(
        &self,
        top: Level,
        level: Level,
        decided: &[Child],
        degraded: &[String],
    ) -> Result<Option<Certificate>, String> {
        if decided.is_empty() {
            return Err(format!(
                "no {} group could decide: {}",
                level_name(level),
                degraded.join("; ")
            ));
        }
        Ok((level == top).then(|| *decided[0].1.clone()))
    }

    fn finish_record(
        &self,
        record: &mut TaskRecord,
        root: Option<Certificate>,
        degraded: &[String],
    ) -> Result<(), String> {
        let root = root.ok_or("internal: no root certificate")?;
        // `check_certificate` ran `verify_chain` on this certificate when its group's
        // outcome arrived: only verified certificates get here.
        let (_, report) = root
            .report
            .as_ref()
            .and_then(|statement| {
                unverified::<polity_proto::Report>(statement, polity_proto::StatementKind::Report)
            })
            .ok_or("internal: root without a readable report")?;
        record.value = report.value;
        record.certificate = Some(root);
        if degraded.is_empty() {
            record.state = TaskState::Decided as i32;
        } else {
            record.state = TaskState::Degraded as i32;
            record.degraded_reason = degraded.join("; ");
        }
        Ok(())
    }

    /// A parent group: `representatives` agreeing members of each decided child,
    /// best trust first, each observing its own child's certificate.
    fn parent_group(
        &self,
        level: Level,
        name: String,
        continent: String,
        children: Vec<&Child>,
    ) -> GroupRun {
        let per_child = self.config.tasks.representatives;
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
        GroupRun {
            level,
            place: name.clone(),
            name,
            continent,
            members,
            children: child_bytes,
            attempt: 0,
            unreachable: BTreeSet::new(),
        }
    }

    /// Runs one level's groups at once until each is resolved or the level's time
    /// is up.
    async fn run_level(
        &self,
        plan: &Plan,
        groups: Vec<GroupRun>,
        deadline_ms: u64,
        events: &broadcast::Sender<TaskEvent>,
        inbox: &mut mpsc::Receiver<OutcomeMessage>,
        record: &mut TaskRecord,
    ) -> Vec<Resolved> {
        let Some(level) = groups.first().map(|group| group.level) else {
            return Vec::new();
        };
        let started_ms = unix_ms();
        let replacements_max = self.config.tasks.extra_replicas_max;
        let level_timeout_ms = match level {
            Level::Region => self.config.tasks.region_timeout_ms,
            Level::Continent => self.config.tasks.continent_timeout_ms,
            _ => self.config.tasks.global_timeout_ms,
        };
        let budget_ms = level_timeout_ms
            .min(deadline_ms.saturating_sub(started_ms))
            .max(ROUNDS_MAX as u64);
        let level_deadline_ms = started_ms + budget_ms + OUTCOME_GRACE_MS;
        let mut states: Vec<GroupState> = groups
            .into_iter()
            .map(|group| GroupState::new(group, started_ms))
            .collect();

        // Dispatch: every member of every group, at once.
        let total: usize = states.iter().map(|state| state.group.members.len()).sum();
        let (acks_tx, mut acks) = mpsc::channel(total.max(1));
        for (index, state) in states.iter().enumerate() {
            let group_plan = GroupPlan {
                level: level as i32,
                group: state.group.name.clone(),
                members: state.group.member_protos(),
                path: plan.path as i32,
                path_reason: plan.path_reason.clone(),
                aggregation: plan.spec.aggregation,
                round_timeout_ms: (budget_ms / ROUNDS_MAX as u64).max(1),
                rounds_max: ROUNDS_MAX,
            };
            for seat in &state.group.members {
                let assign = Assign {
                    task: plan.spec_bytes.clone(),
                    plan: Some(group_plan.clone()),
                    child_certificate: state
                        .group
                        .children
                        .get(&seat.key)
                        .cloned()
                        .unwrap_or_default(),
                };
                let federation = Arc::clone(&self.federation);
                let acks_tx = acks_tx.clone();
                let member = seat.key;
                tokio::spawn(async move {
                    let ack = federation
                        .send_task(member, task_request::Request::Assign(assign))
                        .await
                        .and_then(|ack| {
                            if ack.accepted {
                                Ok(())
                            } else {
                                Err(ack.reason)
                            }
                        });
                    let _ = acks_tx.send((index, member, ack)).await;
                });
            }
            self.emit(
                events,
                plan.id,
                TaskEvent {
                    kind: TaskEventKind::Dispatched as i32,
                    level: level as i32,
                    group: state.group.name.clone(),
                    detail: format!(
                        "asked {} members on the {} path: {}",
                        state.group.members.len(),
                        path_name(plan.path),
                        state
                            .group
                            .members
                            .iter()
                            .map(|seat| short(&seat.key))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    ..TaskEvent::default()
                },
            );
        }
        drop(acks_tx);

        let mut acks_open = true;
        let sleep = tokio::time::sleep(Duration::from_millis(
            level_deadline_ms.saturating_sub(unix_ms()),
        ));
        tokio::pin!(sleep);
        // A live member acknowledges an assignment at once; one that has not within
        // a round's time is as good as gone (crashed, or its connection is dead).
        let ack_grace_ms =
            (budget_ms / ROUNDS_MAX as u64).max(MEMBER_PROBE_INTERVAL.as_millis() as u64);
        let mut probe = tokio::time::interval_at(
            tokio::time::Instant::now() + MEMBER_PROBE_INTERVAL,
            MEMBER_PROBE_INTERVAL,
        );
        while states.iter().any(|state| state.resolution.is_none()) {
            tokio::select! {
                ack = acks.recv(), if acks_open => match ack {
                    Some((index, member, Err(reason))) => {
                        tracing::info!(%member, reason, "member did not take the assignment");
                        let state = &mut states[index];
                        state.lost.insert(member, reason);
                        state.replace_if_possible(plan, replacements_max);
                        state.check_all_out();
                    }
                    Some((index, member, Ok(()))) => {
                        states[index].acked.insert(member);
                    }
                    None => acks_open = false,
                },
                outcome = inbox.recv() => {
                    let Some((from, outcome)) = outcome else { break };
                    self.on_outcome(plan, &mut states, from, outcome, events);
                }
                _ = probe.tick(), if level == Level::Region => {
                    let ack_overdue = unix_ms() > started_ms + ack_grace_ms;
                    self.probe_members(plan, &mut states, replacements_max, ack_overdue).await;
                }
                _ = &mut sleep => break,
            }
        }

        let mut resolved = Vec::with_capacity(states.len());
        for state in states {
            resolved.push(self.resolve(plan, state, events, record));
        }
        let siblings_decided = resolved
            .iter()
            .any(|done| matches!(done.resolution, Resolution::Decided(_)));
        for done in &resolved {
            if matches!(done.resolution, Resolution::Degraded(_)) && siblings_decided {
                // Its siblings go on without it.
                self.metrics.cascade_prevented.inc();
            }
        }
        resolved
    }

    /// Region members that have not answered and whose connection to this node is
    /// gone (a crashed node), or that have not acknowledged their assignment when
    /// `ack_overdue`, are lost; their group is re-formed with spare seats when there
    /// are any, instead of waiting out the level.
    async fn probe_members(
        &self,
        plan: &Plan,
        states: &mut [GroupState],
        replacements_max: u32,
        ack_overdue: bool,
    ) {
        let me = self.identity.public_key();
        let waiting = |state: &GroupState| {
            state.resolution.is_none()
                && state.group.attempt < replacements_max
                && state.group.members.iter().any(|seat| {
                    seat.key != me
                        && !state.answered.contains(&seat.key)
                        && !state.lost.contains_key(&seat.key)
                })
        };
        if !states.iter().any(waiting) {
            return;
        }
        let Ok(views) = self.federation.peers().net().peers().await else {
            return;
        };
        let connected: BTreeSet<PublicKey> = views
            .iter()
            .filter(|view| view.connected)
            .filter_map(|view| polity_net::public_key_of(&view.peer_id).ok().map(PublicKey))
            .collect();
        for state in states.iter_mut().filter(|state| waiting(state)) {
            let gone: Vec<PublicKey> = state
                .group
                .members
                .iter()
                .map(|seat| seat.key)
                .filter(|key| *key != me && !state.answered.contains(key))
                .filter(|key| !connected.contains(key))
                .collect();
            for key in gone {
                state.lost.insert(key, "its connection closed".to_string());
            }
            if ack_overdue {
                let unacknowledged: Vec<PublicKey> = state
                    .group
                    .members
                    .iter()
                    .map(|seat| seat.key)
                    .filter(|key| !state.acked.contains(key) && !state.lost.contains_key(key))
                    .collect();
                for key in unacknowledged {
                    state
                        .lost
                        .insert(key, "it did not acknowledge its assignment".to_string());
                }
            }
            state.replace_if_possible(plan, replacements_max);
        }
    }

    /// One member's outcome: routed to its group, checked, and noted.
    fn on_outcome(
        &self,
        plan: &Plan,
        states: &mut [GroupState],
        from: PublicKey,
        outcome: GroupOutcome,
        events: &broadcast::Sender<TaskEvent>,
    ) {
        let Some(state) = states.iter_mut().find(|state| {
            state.group.level as i32 == outcome.level && state.group.name == outcome.group
        }) else {
            return; // a late outcome of an earlier level or attempt
        };
        if !state.group.members.iter().any(|seat| seat.key == from) {
            tracing::info!(%from, "an outcome from a non-member; dropped");
            return;
        }
        state.answered.insert(from);
        let detail = match &outcome.outcome {
            Some(group_outcome::Outcome::Decided(_)) => "reports the group decided".to_string(),
            Some(group_outcome::Outcome::Degraded(reason)) => format!("gave up: {reason}"),
            None => "sent an empty outcome".to_string(),
        };
        self.emit(
            events,
            plan.id,
            TaskEvent {
                kind: TaskEventKind::Observation as i32,
                level: state.group.level as i32,
                group: state.group.name.clone(),
                member: from.to_string(),
                detail,
                ..TaskEvent::default()
            },
        );
        if state.resolution.is_some() {
            return;
        }
        match outcome.outcome {
            Some(group_outcome::Outcome::Decided(certificate)) => {
                match check_certificate(plan, &state.group, &certificate) {
                    Ok(()) => state.resolution = Some(Resolution::Decided(Box::new(certificate))),
                    Err(reason) => {
                        tracing::warn!(%from, reason, "a member sent a certificate that does not hold");
                        self.metrics.peer_message_dropped("invalid certificate");
                        if let Err(error) = self
                            .federation
                            .peers()
                            .record_key(&from, TrustEvent::InvalidSignature)
                        {
                            tracing::warn!(%error, "could not record a trust event");
                        }
                    }
                }
            }
            Some(group_outcome::Outcome::Degraded(reason)) => {
                state.gave_up.insert(from, reason);
                state.check_all_out();
            }
            None => {}
        }
    }

    /// Ends a group: statistics, trust, metrics and events.
    fn resolve(
        &self,
        plan: &Plan,
        state: GroupState,
        events: &broadcast::Sender<TaskEvent>,
        record: &mut TaskRecord,
    ) -> Resolved {
        let latency_ms = unix_ms().saturating_sub(state.started_ms);
        let level = state.group.level;
        self.metrics
            .decision_latency_seconds
            .get_or_create(&LevelLabels {
                level: level_name(level).into(),
            })
            .observe(latency_ms as f64 / 1000.0);
        self.metrics
            .group_members
            .get_or_create(&LevelLabels {
                level: level_name(level).into(),
            })
            .set(state.group.members.len() as i64);
        let summary = state.summary();
        let resolution = state.resolution.unwrap_or(Resolution::Degraded(summary));
        let mut stats = match &resolution {
            Resolution::Decided(certificate) => {
                group_stats(certificate, level, &state.group.name, latency_ms, 0)
            }
            Resolution::Degraded(reason) => GroupStats {
                level: level as i32,
                group: state.group.name.clone(),
                path: plan.path as i32,
                latency_ms,
                degraded_reason: reason.clone(),
                timed_out: state
                    .group
                    .members
                    .iter()
                    .filter(|seat| !state.answered.contains(&seat.key))
                    // Given up early to replace a lost member: only the lost one
                    // is to blame; the others had no chance to answer.
                    .filter(|seat| !state.replace || state.lost.contains_key(&seat.key))
                    .map(|seat| seat.key.to_string())
                    .collect(),
                ..GroupStats::default()
            },
        };
        stats.members = state
            .group
            .members
            .iter()
            .map(|seat| seat.key.to_string())
            .collect();
        if let Resolution::Decided(certificate) = &resolution {
            stats.rounds = decided_round(certificate) + 1;
        }
        self.move_trust(&stats);
        // Recovery learning: a group (by level and name, extra replicas included)
        // that degraded has recovered when a group of that name decides again.
        let group_key = format!(
            "{}/{}",
            level_name(level),
            state.group.name.split('~').next().unwrap_or_default()
        );
        match &resolution {
            Resolution::Decided(_) => self.metrics.recovery.recovered(GROUP_DEGRADED, &group_key),
            Resolution::Degraded(_) => self.metrics.recovery.failed(GROUP_DEGRADED, &group_key),
        }
        self.metrics
            .disagreements
            .inc_by(stats.disagreed.len() as u64);
        let (kind, detail) = match &resolution {
            Resolution::Decided(_) => (
                TaskEventKind::GroupDecided,
                format!(
                    "decided on the {} path in {latency_ms} ms ({} of {} agreed)",
                    path_name(plan.path),
                    stats.agreed.len(),
                    state.group.members.len()
                ),
            ),
            Resolution::Degraded(reason) => (TaskEventKind::GroupDegraded, reason.clone()),
        };
        self.emit(
            events,
            plan.id,
            TaskEvent {
                kind: kind as i32,
                level: level as i32,
                group: state.group.name.clone(),
                detail,
                ..TaskEvent::default()
            },
        );
        record.groups.push(stats.clone());
        Resolved {
            group: state.group,
            resolution,
            answered: state.answered,
            lost: state.lost.keys().copied().collect(),
            replace: state.replace,
        }
    }

    /// Trust follows outcomes: agreeing with the decision, disagreeing, or silence.
    /// A member left out of a decided certificate is not blamed: the fast path
    /// decides on the first quorum, and the rest may simply have been slower. Only
    /// silence in a group that could not decide counts as a timeout.
    fn move_trust(&self, stats: &GroupStats) {
        let me = self.identity.public_key().to_string();
        let silent = if stats.degraded_reason.is_empty() {
            &Vec::new()
        } else {
            &stats.timed_out
        };
        let moves = [
            (&stats.agreed, TrustEvent::Agreement),
            (&stats.disagreed, TrustEvent::Disagreement),
            (silent, TrustEvent::Timeout),
        ];
        for (keys, event) in moves {
            for key in keys.iter().filter(|key| **key != me) {
                let Ok(key) = key.parse::<PublicKey>() else {
                    continue;
                };
                if let Err(error) = self.federation.peers().record_key(&key, event) {
                    tracing::warn!(%error, "could not record a trust event");
                }
            }
        }
    }
}

/// The members of the next attempt of a region group that did not decide, and why,
/// if it gets one: its lost members replaced by spare seats of the region, or, when
/// every member answered but they disagreed, one more replica (at most `extra_max`
/// attempts in all).
fn next_attempt(plan: &Plan, done: &Resolved, extra_max: u32) -> Option<(Vec<Seat>, String)> {
    let spares = done.group.spare_seats(plan, &done.lost);
    let first_spare = spares.first()?.clone();
    if done.replace {
        let mut spares = spares.into_iter();
        let members = done
            .group
            .members
            .iter()
            .map(|seat| match done.lost.contains(&seat.key) {
                true => spares.next().unwrap_or_else(|| seat.clone()),
                false => seat.clone(),
            })
            .collect();
        let why = format!(
            "replacing {} unreachable member(s) with spare seats",
            done.lost.len()
        );
        return Some((members, why));
    }
    let disagreed = done.answered.len() == done.group.members.len();
    if !disagreed || done.group.attempt >= extra_max {
        return None;
    }
    let mut members = done.group.members.clone();
    members.push(first_spare);
    let why = format!(
        "members answered but disagreed: asking one more replica ({} members)",
        members.len()
    );
    Some((members, why))
}

/// How often the members of unresolved region groups are checked for a closed
/// connection.
const MEMBER_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// What the orchestrator knows about one group while its level runs.
struct GroupState {
    group: GroupRun,
    started_ms: u64,
    resolution: Option<Resolution>,
    /// Members that refused the assignment or could not be reached, and why.
    lost: BTreeMap<PublicKey, String>,
    /// Members whose round gave up, and why.
    gave_up: BTreeMap<PublicKey, String>,
    answered: BTreeSet<PublicKey>,
    /// Members that accepted the assignment.
    acked: BTreeSet<PublicKey>,
    /// Given up at once because a member could not be reached and a spare seat can
    /// take its place: the others are not blamed for silence.
    replace: bool,
}

impl GroupState {
    fn new(group: GroupRun, started_ms: u64) -> GroupState {
        GroupState {
            group,
            started_ms,
            resolution: None,
            lost: BTreeMap::new(),
            gave_up: BTreeMap::new(),
            answered: BTreeSet::new(),
            acked: BTreeSet::new(),
            replace: false,
        }
    }

    /// Gives the group up at once when it has lost members and a spare seat can take
    /// their place (waiting out the level for a member that is gone wastes it); the
    /// task engine then re-forms it under a new slot name.
    fn replace_if_possible(&mut self, plan: &Plan, replacements_max: u32) {
        if self.resolution.is_some() || self.lost.is_empty() {
            return;
        }
        let lost: BTreeSet<PublicKey> = self.lost.keys().copied().collect();
        if self.group.attempt < replacements_max && !self.group.spare_seats(plan, &lost).is_empty()
        {
            self.replace = true;
            self.resolution = Some(Resolution::Degraded(self.summary()));
        }
    }

    /// Degrades the group once no member can still decide it.
    fn check_all_out(&mut self) {
        if self.resolution.is_some() {
            return;
        }
        let out =
            self.group.members.iter().all(|seat| {
                self.lost.contains_key(&seat.key) || self.gave_up.contains_key(&seat.key)
            });
        if out {
            self.resolution = Some(Resolution::Degraded(self.summary()));
        }
    }

    fn summary(&self) -> String {
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
        if silent > 0 && self.replace {
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

/// Checks a certificate a member sent: it verifies, and it decides exactly the slot
/// and member list this node asked for.
fn check_certificate(
    plan: &Plan,
    group: &GroupRun,
    certificate: &Certificate,
) -> Result<(), String> {
    let slot = certificate.slot.as_ref().ok_or("no slot")?;
    if slot.task_id != plan.id.as_bytes()
        || slot.level != group.level as i32
        || slot.group != group.name
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
    Ok(())
}

/// The members whose observation matched the certificate's value.
fn agreed_keys(certificate: &Certificate) -> BTreeSet<PublicKey> {
    group_stats(certificate, Level::Unspecified, "", 0, 0)
        .agreed
        .iter()
        .filter_map(|key| key.parse().ok())
        .collect()
}

/// The round a certificate was decided in.
fn decided_round(certificate: &Certificate) -> u32 {
    certificate
        .slot
        .as_ref()
        .map(|slot| slot.round)
        .unwrap_or(0)
}

/// Groups decided children by their parent's name.
fn parents(
    decided: &[Child],
    parent_of: impl Fn(&GroupRun) -> String,
) -> BTreeMap<String, Vec<&Child>> {
    let mut parents: BTreeMap<String, Vec<&Child>> = BTreeMap::new();
    for child in decided {
        parents.entry(parent_of(&child.0)).or_default().push(child);
    }
    parents
}

/// Splits a level's results into decided groups and (name, reason) of the degraded.
fn split(resolved: Vec<Resolved>) -> (Vec<Child>, Vec<(String, String)>) {
    let mut decided = Vec::new();
    let mut degraded = Vec::new();
    for done in resolved {
        match done.resolution {
            Resolution::Decided(certificate) => decided.push((done.group, certificate)),
            Resolution::Degraded(reason) => degraded.push((done.group.name, reason)),
        }
    }
    (decided, degraded)
}

/// The first 8 hex digits of a key, for event details.
fn short(key: &PublicKey) -> String {
    key.to_string().chars().take(8).collect()
}
