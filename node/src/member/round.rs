//! One member's round for one slot: the driver that feeds a
//! [`polity_consensus::Round`] its inputs (the executor's answer, peers' messages,
//! raft commits, ticks) and carries out its actions (send, commit, report the
//! outcome to the entry node, gossip evidence).
//!
//! A driver lives until its round decides or gives up; the round bounds that by its
//! `rounds_max`, and ticks move it there.

use std::sync::Arc;
use std::time::Duration;

use polity_consensus::{Action, DegradedReason, Input, PublicKey, Round, RoundMessage, TrustEvent};
use polity_proto::{
    GroupOutcome, RoundEnvelope, SignedStatement, StatementKind, group_outcome, task_request,
};
use polity_raft::LedgerEntry;

use crate::raft::PlaceGroup;
use prost::Message;
use tokio::sync::mpsc;

use super::executor::{Executor, RunLimits};
use super::router::{Federation, SlotKey};

/// Attempts to deliver a group outcome to the entry node.
const OUTCOME_ATTEMPTS: u32 = 3;
const OUTCOME_RETRY_DELAY: Duration = Duration::from_millis(200);

/// What a member answers with: the executor (level 1) or the child's value.
pub(super) enum Work {
    Execute {
        executor: Executor,
        payload: Vec<u8>,
        limits: RunLimits,
    },
    Represent {
        value: Vec<u8>,
        child: Vec<u8>,
    },
    /// A registry proposal, judged already: the approving digest or why not.
    Judged(Result<Vec<u8>, String>),
}

/// One member's round for one slot: feeds it inputs and carries out its actions.
pub(super) struct RoundDriver {
    federation: Arc<Federation>,
    key: SlotKey,
    entry: PublicKey,
    members: Vec<PublicKey>,
    /// Raft path: the raft group of the slot's place, which commits the report.
    raft_group: Option<PlaceGroup>,
    /// The round's own inbox, for the executor's answer and raft commits.
    inbox: mpsc::Sender<Input>,
    own_observation: Option<SignedStatement>,
    degraded_certificate: Option<polity_proto::Certificate>,
    /// This member's executor failed: said in its outcome.
    executor_error: Option<String>,
}

impl RoundDriver {
    /// A driver for `key`'s round, whose outcome goes to `entry`. `inbox` is the
    /// round's own inbox (the executor's answer and raft commits come back there).
    pub(super) fn new(
        federation: Arc<Federation>,
        key: SlotKey,
        entry: PublicKey,
        member_plan: Vec<polity_proto::Member>,
        raft_group: Option<PlaceGroup>,
        inbox: mpsc::Sender<Input>,
    ) -> RoundDriver {
        let members = member_plan
            .iter()
            .filter_map(|member| PublicKey::from_slice(&member.public_key).ok())
            .collect();
        RoundDriver {
            federation,
            key,
            entry,
            members,
            raft_group,
            inbox,
            own_observation: None,
            degraded_certificate: None,
            executor_error: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut round: Round,
        work: Work,
        mut receiver: mpsc::Receiver<Input>,
        tick: Duration,
    ) {
        if let Some(place) = self.raft_group.clone() {
            let raft = Arc::clone(&self.federation.raft);
            tokio::spawn(async move {
                if let Err(error) = raft.ensure(&place).await {
                    tracing::warn!(group = %place.name, %error, "could not start a raft group");
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
                Work::Judged(answer) => Input::LocalAnswer {
                    answer,
                    child_certificate: None,
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
            for action in round.step(crate::monotonic_ms(), input) {
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
            }
            Action::SendTo(member, message) => {
                self.note_own(&message);
                let index = self.members.iter().position(|m| *m == member).unwrap_or(0);
                self.send(index, member, &message);
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
            }
            Action::ConfirmCommit { commit } => self.confirm(commit),
            Action::Decided(certificate) => {
                self.on_decided(*certificate).await;
                return true;
            }
            Action::DegradedCertificate(certificate) => {
                self.degraded_certificate = Some(*certificate);
            }
            Action::Degraded(reason) => {
                self.on_degraded(reason).await;
                return true;
            }
            Action::Evidence(evidence) => self.on_evidence(evidence).await,
            Action::Rejected { from, reason } => self.on_rejected(from, &reason),
        }
        false
    }

    /// Reports a decision. When the entry node is a member, its own round learns the
    /// decision from the collector's broadcast, in process; then only the collector
    /// (the report's signer) reports as well, in case that broadcast is lost.
    /// Otherwise every member reports: any one is enough.
    async fn on_decided(&self, certificate: polity_proto::Certificate) {
        let me = self.federation.me();
        let entry_is_member = self.members.contains(&self.entry);
        let collected_here = certificate
            .report
            .as_ref()
            .is_some_and(|report| report.signer == me.0);
        if collected_here && self.federation.faults.withholds() {
            self.federation.metrics.fault_injected("withheld");
            return;
        }
        if !entry_is_member || collected_here || self.entry == me {
            let outcome = self.outcome(group_outcome::Outcome::Decided(certificate));
            self.report(outcome).await;
        }
    }

    async fn on_degraded(&mut self, reason: DegradedReason) {
        let reason = match &self.executor_error {
            Some(error) => format!("executor error: {error}; {reason}"),
            None => reason.to_string(),
        };
        let mut outcome = self.outcome(group_outcome::Outcome::Degraded(reason));
        outcome.degraded_certificate = self.degraded_certificate.take();
        self.report(outcome).await;
    }

    /// A member equivocated: its trust drops to zero here, and the evidence is
    /// gossiped so that every node can check it.
    async fn on_evidence(&self, evidence: polity_proto::Evidence) {
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
    }

    fn on_rejected(&self, from: PublicKey, reason: &str) {
        tracing::info!(%from, reason, "a peer sent an invalid round message");
        self.federation.violation(from, "invalid statement");
        if let Err(error) = self
            .federation
            .peers
            .record_key(&from, TrustEvent::InvalidSignature)
        {
            tracing::warn!(%error, "could not record a trust event");
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
            level: self.key.level as i32,
            group: self.key.group.clone(),
            message: Some(message.to_proto()),
        }
    }

    fn outcome(&self, outcome: group_outcome::Outcome) -> GroupOutcome {
        GroupOutcome {
            task_id: self.key.task.as_bytes().to_vec(),
            level: self.key.level as i32,
            group: self.key.group.clone(),
            outcome: Some(outcome),
            degraded_certificate: None,
            observation: self.own_observation.clone(),
        }
    }

    /// Raft path: commits the report through the group's log in the background and
    /// feeds `Committed` back into the round.
    fn commit(&self, report: SignedStatement, report_digest: [u8; 32]) {
        let Some(place) = self.raft_group.clone() else {
            return;
        };
        let Some(slot) = polity_proto::Report::decode(report.body.as_slice())
            .ok()
            .and_then(|report| report.slot)
        else {
            return;
        };
        let key = crate::raft::ledger_key(&slot);
        let entry = match LedgerEntry::new(key, report.encode_to_vec(), None) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "report does not fit the ledger");
                return;
            }
        };
        let raft = Arc::clone(&self.federation.raft);
        let inbox = self.inbox.clone();
        let budget = Duration::from_secs(10);
        tokio::spawn(async move {
            if let Err(error) = raft.ensure(&place).await {
                tracing::warn!(group = %place.name, %error, "raft group unavailable");
                return;
            }
            match raft.commit(&place.name, entry, budget).await {
                Ok(committed) => {
                    debug_assert_eq!(
                        polity_consensus::statement::open::<polity_proto::RaftCommit>(
                            &committed.commit,
                            polity_proto::StatementKind::RaftCommit
                        )
                        .map(|(_, commit)| commit.report_digest),
                        Ok(report_digest.to_vec())
                    );
                    let _ = inbox
                        .send(Input::Committed {
                            commit: committed.commit,
                        })
                        .await;
                }
                Err(error) => tracing::info!(group = %place.name, %error, "report not committed"),
            }
        });
    }

    /// Raft path: checks a commit the collector relayed against this member's own copy
    /// of the place's log in the background, and feeds `Committed` back when it holds.
    fn confirm(&self, commit: SignedStatement) {
        let Some(place) = self.raft_group.clone() else {
            return;
        };
        let raft = Arc::clone(&self.federation.raft);
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let confirmed = match raft.ensure(&place).await {
                Ok(()) => raft.confirm(&place.name, commit.clone()).await,
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(_) => {
                    let _ = inbox.send(Input::Committed { commit }).await;
                }
                Err(error) => {
                    tracing::info!(group = %place.name, %error, "relayed raft commit not confirmed");
                    let _ = inbox.send(Input::NotConfirmed { commit }).await;
                }
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
