//! The thin async driver of the [`LevelEngine`]: it feeds the engine what happens
//! (members' acknowledgements and outcomes, ticks, the level's deadline, the
//! connected peers) and carries out its commands, in order. All decisions are the
//! engine's; everything here is I/O.
//!
//! Nothing here waits without a bound: the engine's level deadline wakes the loop,
//! and every assignment is a request with the network's own timeout.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use polity_consensus::{PublicKey, TaskId};
use polity_proto::{TaskEvent, TaskRecord, TaskState, task_request};
use tokio::sync::{broadcast, mpsc};

use super::TaskEngine;
use super::engine::{
    AckError, Command, Event, GroupEnd, LevelEngine, MEMBER_PROBE_INTERVAL_MS, SlotRef,
};
use super::level_name;
use super::plan::Plan;
use crate::telemetry::metrics::LevelLabels;
use crate::telemetry::recovery::GROUP_DEGRADED;

/// Acknowledgements queued for the driver at most; the tasks that send assignments
/// wait for room, so none is lost.
const ACKS_QUEUED_MAX: usize = 256;

type AckMessage = (SlotRef, PublicKey, Result<(), AckError>);

/// Runs every level of the task, leaves first, and returns the finished record.
pub(super) async fn orchestrate(
    node: &TaskEngine,
    plan: Plan,
    record: TaskRecord,
    events: &broadcast::Sender<TaskEvent>,
) -> TaskRecord {
    let id = plan.id;
    let mut inbox = node.federation.open_outcomes(id);
    let mut driver = Driver {
        node,
        events,
        id,
        next_tick_ms: crate::monotonic_ms() + MEMBER_PROBE_INTERVAL_MS,
        acks: mpsc::channel(ACKS_QUEUED_MAX),
    };
    let mut engine = LevelEngine::new(
        plan,
        node.config.tasks.clone(),
        node.identity.public_key(),
        record,
    );
    let mut commands = engine.step(driver.now_ms(), Event::Start);
    let record = loop {
        if let Some(record) = driver.execute(&mut engine, commands).await {
            break record;
        }
        let event = driver.next_event(&engine, &mut inbox).await;
        commands = match event {
            Some(event) => engine.step(driver.now_ms(), event),
            None => engine.fail("internal: the task's outcome inbox closed".into()),
        };
    };
    node.federation.close_outcomes(&id);
    node.federation
        .workers()
        .task_finished(record.state == TaskState::Decided as i32);
    record
}

struct Driver<'a> {
    node: &'a TaskEngine,
    events: &'a broadcast::Sender<TaskEvent>,
    id: TaskId,
    /// When the next [`Event::Tick`] is due, on the monotonic clock.
    next_tick_ms: u64,
    acks: (mpsc::Sender<AckMessage>, mpsc::Receiver<AckMessage>),
}

impl Driver<'_> {
    /// The engine's clock: monotonic, so a wall-clock step cannot cut a level short.
    fn now_ms(&self) -> u64 {
        crate::monotonic_ms()
    }

    /// Waits for what happens next: an acknowledgement, an outcome, a probe tick or
    /// the level's deadline. `None` when the outcome inbox closed.
    async fn next_event(
        &mut self,
        engine: &LevelEngine,
        inbox: &mut mpsc::Receiver<crate::member::OutcomeMessage>,
    ) -> Option<Event> {
        let wake_ms = engine.wake_at_ms().unwrap_or(u64::MAX);
        let until_tick_ms = self.next_tick_ms.min(wake_ms).saturating_sub(self.now_ms());
        tokio::select! {
            ack = self.acks.1.recv() => {
                let (slot, member, result) = ack.expect("the driver holds a sender");
                Some(Event::Acked { slot, member, result })
            }
            outcome = inbox.recv() => {
                outcome.map(|(from, outcome)| Event::Outcome { from, outcome: Box::new(outcome) })
            }
            _ = tokio::time::sleep(Duration::from_millis(until_tick_ms)) => {
                self.next_tick_ms = self.now_ms() + MEMBER_PROBE_INTERVAL_MS;
                Some(Event::Tick)
            }
        }
    }

    /// Carries out commands in order; a probe's answer is fed back at once and its
    /// commands queued behind. Returns the record once the engine finished.
    async fn execute(
        &mut self,
        engine: &mut LevelEngine,
        commands: Vec<Command>,
    ) -> Option<TaskRecord> {
        let mut queue = VecDeque::from(commands);
        while let Some(command) = queue.pop_front() {
            match command {
                Command::Finish(record) => return Some(*record),
                Command::ProbeConnections => {
                    // Without an answer from the network, nobody is judged lost.
                    if let Some(connected) = self.connected().await {
                        let event = Event::Connections { connected };
                        queue.extend(engine.step(self.now_ms(), event));
                    }
                }
                command => self.carry_out(command),
            }
        }
        None
    }

    fn carry_out(&self, command: Command) {
        let node = self.node;
        match command {
            Command::Assign {
                slot,
                member,
                assign,
            } => {
                let federation = std::sync::Arc::clone(&node.federation);
                let acks = self.acks.0.clone();
                tokio::spawn(async move {
                    let result = federation
                        .send_task(member, task_request::Request::Assign(*assign))
                        .await
                        .map_err(|error| AckError::Unreachable(error.to_string()))
                        .and_then(|ack| {
                            if ack.accepted {
                                Ok(())
                            } else {
                                Err(AckError::Refused(ack.reason))
                            }
                        });
                    if let Err(reason) = &result {
                        tracing::info!(%member, %reason, "member did not take the assignment");
                    }
                    let _ = acks.send((slot, member, result)).await;
                });
            }
            Command::Emit(event) => node.emit(self.events, self.id, *event),
            Command::Trust { key, event } => {
                if let Err(error) = node.federation.peers().record_key(&key, event) {
                    tracing::warn!(%error, "could not record a trust event");
                }
            }
            Command::Dropped {
                from,
                label,
                detail,
            } => {
                tracing::warn!(%from, label, detail, "dropped a member's outcome");
                node.metrics.peer_message_dropped(label);
            }
            Command::GroupEnded(end) => self.note_group(&end),
            Command::CascadePrevented => {
                node.metrics.cascade_prevented.inc();
            }
            Command::ProbeConnections | Command::Finish(_) => {
                unreachable!("handled by execute")
            }
        }
    }

    fn note_group(&self, end: &GroupEnd) {
        let metrics = &self.node.metrics;
        let labels = LevelLabels {
            level: level_name(end.level).into(),
        };
        metrics
            .decision_latency_seconds
            .get_or_create(&labels)
            .observe(end.latency_ms as f64 / 1000.0);
        metrics
            .group_members
            .get_or_create(&labels)
            .set(end.members as i64);
        metrics.disagreements.inc_by(end.disagreed as u64);
        // Recovery learning: a place whose group degraded has recovered when a group
        // of that place (any attempt) decides again.
        let place = format!("{}/{}", level_name(end.level), end.place);
        match end.decided {
            true => metrics.recovery.recovered(GROUP_DEGRADED, &place),
            false => metrics.recovery.failed(GROUP_DEGRADED, &place),
        }
    }

    /// The peers this node has a connection to now; `None` if the network loop did
    /// not answer within a probe interval.
    async fn connected(&self) -> Option<BTreeSet<PublicKey>> {
        let bound = Duration::from_millis(MEMBER_PROBE_INTERVAL_MS);
        let peers = self.node.federation.peers().net().peers();
        let views = tokio::time::timeout(bound, peers).await.ok()?.ok()?;
        let connected = views
            .iter()
            .filter(|view| view.connected)
            .filter_map(|view| polity_net::public_key_of(&view.peer_id).ok().map(PublicKey))
            .collect();
        Some(connected)
    }
}
