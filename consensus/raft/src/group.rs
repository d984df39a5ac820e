//! [`RaftGroup`]: one running raft group on this node (its openraft instance, its sled
//! storage and its ledger), with the few calls the node makes; and [`raft_config`],
//! openraft's config with Polity's bounds.

use std::sync::Arc;

use openraft::error::RaftError;
use std::collections::{BTreeMap, BTreeSet};

use openraft::{ChangeMembers, Config, Raft, SnapshotPolicy};

use crate::network::{RaftTransport, SNAPSHOT_CHUNK_BYTES_MAX, TransportNetworkFactory};
use crate::store::{ENTRIES_PER_APPEND_MAX, LedgerReader, SledLogStore, StoreError, open_group};
use crate::types::{
    GroupName, LedgerEntry, LedgerEntryError, LedgerResponse, Members, NodeId, RaftMember,
    TypeConfig, node_id,
};
use polity_consensus::ids::{PublicKey, TaskId};

/// How often a leader heartbeats its followers.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// A follower that hears no leader for a random time in
/// `[ELECTION_TIMEOUT_MS_MIN, ELECTION_TIMEOUT_MS_MAX)` starts an election.
pub const ELECTION_TIMEOUT_MS_MIN: u64 = 500;
/// See [`ELECTION_TIMEOUT_MS_MIN`].
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 1_000;
/// Time allowed for one snapshot chunk to be delivered and installed.
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 5_000;
/// A snapshot is built once this many entries were applied since the last one.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 1_024;
/// A learner within this many entries of the leader's log counts as caught up: it may
/// become a voter ([`RaftGroup::reconfigure`]).
pub const LEARNER_LAG_MAX: u64 = 64;
/// Entries kept in the log behind a snapshot, so slow followers catch up from the log.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 256;

/// openraft's config for a Polity group: the timeouts above and the storage and
/// transport bounds ([`ENTRIES_PER_APPEND_MAX`], [`SNAPSHOT_CHUNK_BYTES_MAX`]).
#[allow(clippy::result_large_err, reason = "openraft's own ConfigError")]
pub fn raft_config(cluster_name: &str) -> Result<Config, openraft::ConfigError> {
    Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS_MIN,
        election_timeout_max: ELECTION_TIMEOUT_MS_MAX,
        install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
        max_payload_entries: ENTRIES_PER_APPEND_MAX as u64,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_LOGS_SINCE_LAST),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        ..Config::default()
    }
    .validate()
}

/// Why a raft group call failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftGroupError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("invalid ledger entry: {0}")]
    InvalidEntry(#[from] LedgerEntryError),
    /// This member is not the leader: send the request to `leader` (if known) instead.
    #[error("not the leader; the leader is {leader_id:?}")]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader: Option<RaftMember>,
    },
    /// The group cannot serve the call right now (no quorum, membership change).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The raft has stopped (shut down, or a storage error stopped it).
    #[error("raft stopped: {0}")]
    Stopped(String),
}

impl<E> From<RaftError<NodeId, E>> for RaftGroupError
where
    E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, RaftMember>>,
{
    fn from(error: RaftError<NodeId, E>) -> RaftGroupError {
        if let Some(forward) = error.forward_to_leader() {
            return RaftGroupError::ForwardToLeader {
                leader_id: forward.leader_id,
                leader: forward.leader_node.clone(),
            };
        }
        match error {
            RaftError::Fatal(fatal) => RaftGroupError::Stopped(fatal.to_string()),
            RaftError::APIError(api) => RaftGroupError::Unavailable(api.to_string()),
        }
    }
}

/// A committed proposal: what the ledger did with it, and where it sits in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// The state machine's answer (`response.applied_index == index`).
    pub response: LedgerResponse,
    /// The term of the leader that appended the entry.
    pub term: u64,
    /// The raft id of that leader (this member: only the leader accepts proposals).
    pub leader: NodeId,
    /// The log (commit) index of the entry.
    pub index: u64,
}

/// Who appended a log entry: the leader's term and raft id (openraft's committed leader
/// id, which names the node), and what the entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedBy {
    pub term: u64,
    pub leader: NodeId,
    /// The ledger entry, or `None` for a blank or membership entry.
    pub entry: Option<LedgerEntry>,
}

/// One raft group this node is a member of. The node owns it (one owner per raft
/// instance); clone the [`Raft`] handle from [`RaftGroup::raft`] for the receiving side of
/// the transport ([`crate::serve`]).
pub struct RaftGroup {
    node_id: NodeId,
    group: GroupName,
    raft: Raft<TypeConfig>,
    ledger: LedgerReader,
    /// A reader of this member's log (the store itself is the raft's).
    log: SledLogStore,
}

impl RaftGroup {
    /// Opens the group's trees on `db` (restoring vote, log and ledger from an earlier
    /// run) and starts this member's raft, whose id is `node_id(public_key)`.
    pub async fn start<T: RaftTransport>(
        public_key: &PublicKey,
        group: GroupName,
        config: Arc<Config>,
        db: &sled::Db,
        transport: T,
    ) -> Result<RaftGroup, RaftGroupError> {
        let node_id = node_id(public_key);
        let (log_store, state_machine) = open_group(db, &group)?;
        let ledger = state_machine.ledger();
        let log = log_store.clone();
        let network = TransportNetworkFactory::new(node_id, transport);
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|fatal| RaftGroupError::Stopped(fatal.to_string()))?;
        Ok(RaftGroup {
            node_id,
            group,
            raft,
            ledger,
            log,
        })
    }

    /// Makes a new group with these members. Call on one member (any); the others learn
    /// the membership from it. Fails if this raft already has a log.
    pub async fn initialize(&self, members: Members) -> Result<(), RaftGroupError> {
        debug_assert!(!members.as_map().is_empty());
        self.raft
            .initialize(members.into_map())
            .await
            .map_err(|error| match error {
                RaftError::Fatal(fatal) => RaftGroupError::Stopped(fatal.to_string()),
                RaftError::APIError(api) => RaftGroupError::Unavailable(api.to_string()),
            })
    }

    /// Commits `entry` through the group and returns what the ledger did with it, with
    /// the term and index of the log entry that carried it. Only the leader accepts
    /// proposals; elsewhere this is [`RaftGroupError::ForwardToLeader`].
    pub async fn propose(&self, entry: LedgerEntry) -> Result<Proposed, RaftGroupError> {
        entry.check()?;
        let written = self
            .raft
            .client_write(entry)
            .await
            .map_err(RaftGroupError::from)?;
        debug_assert_eq!(written.data.applied_index, written.log_id.index);
        Ok(Proposed {
            term: written.log_id.leader_id.term,
            leader: written.log_id.leader_id.node_id,
            index: written.log_id.index,
            response: written.data,
        })
    }

    /// A linearizable read of the decision for `task_id`: confirms leadership with a
    /// quorum, waits until this member applied everything committed before, then reads.
    /// Only the leader answers; for a possibly stale local read use [`Self::ledger`].
    pub async fn read(&self, task_id: &TaskId) -> Result<Option<LedgerEntry>, RaftGroupError> {
        self.raft
            .ensure_linearizable()
            .await
            .map_err(RaftGroupError::from)?;
        Ok(self.ledger.get(task_id)?)
    }

    /// Who appended the entry at `index` of this member's log, once this member has
    /// applied it (waiting up to `wait`); `None` when it did not apply it in time or the
    /// entry was purged behind a snapshot. Members check a leader's word against it.
    pub async fn appended_by(
        &self,
        index: u64,
        wait: std::time::Duration,
    ) -> Result<Option<AppendedBy>, RaftGroupError> {
        let applied = self
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "the entry to check")
            .await;
        if applied.is_err() {
            return Ok(None);
        }
        self.entry_by(index)
    }

    /// Who appended the entry at `index` of this member's log, once this member's log
    /// holds it, applied or not (waiting up to `wait`); `None` when it did not arrive in
    /// time or was purged behind a snapshot.
    pub async fn logged_by(
        &self,
        index: u64,
        wait: std::time::Duration,
    ) -> Result<Option<AppendedBy>, RaftGroupError> {
        let logged = self
            .raft
            .wait(Some(wait))
            .log_index_at_least(Some(index), "the entry to check")
            .await;
        if logged.is_err() {
            return Ok(None);
        }
        self.entry_by(index)
    }

    fn entry_by(&self, index: u64) -> Result<Option<AppendedBy>, RaftGroupError> {
        Ok(self.log.entry_at(index)?.map(|entry| AppendedBy {
            term: entry.log_id.leader_id.term,
            leader: entry.log_id.leader_id.node_id,
            entry: match entry.payload {
                openraft::EntryPayload::Normal(entry) => Some(entry),
                openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => None,
            },
        }))
    }

    /// On the leader: moves the group's voters towards `members`. Members not yet in
    /// the group are added as learners first, and become voters only once they have
    /// caught up (within [`LEARNER_LAG_MAX`] entries of the leader's log), so a member
    /// that never runs the group cannot stall a joint configuration; voters not in
    /// `members` are removed (the leader's own removal included: it steps down once the
    /// change commits), then nodes not in `members` are dropped from the membership.
    /// Returns whether it changed anything. Call it again later for learners still
    /// catching up. Elsewhere this is [`RaftGroupError::ForwardToLeader`].
    pub async fn reconfigure(&self, members: &Members) -> Result<bool, RaftGroupError> {
        let wanted: BTreeSet<NodeId> = members.as_map().keys().copied().collect();
        let (voters, known, caught_up, joint) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let last = metrics.last_log_index.unwrap_or(0);
            let caught_up: BTreeSet<NodeId> = metrics
                .replication
                .iter()
                .flatten()
                .filter(|(_, matched)| {
                    matched.is_some_and(|log_id| log_id.index + LEARNER_LAG_MAX >= last)
                })
                .map(|(id, _)| *id)
                .collect();
            (
                membership.voter_ids().collect::<BTreeSet<NodeId>>(),
                membership
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect::<BTreeSet<NodeId>>(),
                caught_up,
                membership.get_joint_config().len() > 1,
            )
        };
        let missing: BTreeMap<NodeId, RaftMember> = members
            .as_map()
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        let mut changed = false;
        if !missing.is_empty() {
            self.change(ChangeMembers::AddNodes(missing)).await?;
            changed = true;
        }
        // The next voters: the wanted ones that vote already or have caught up.
        let next: BTreeSet<NodeId> = wanted
            .iter()
            .filter(|id| voters.contains(id) || caught_up.contains(id))
            .copied()
            .collect();
        if !next.is_empty() && (next != voters || joint) {
            self.change(ChangeMembers::ReplaceAllVoters(next.clone()))
                .await?;
            changed = true;
        }
        // Learners no longer wanted (a voter removed above is already gone: retain is
        // off).
        let stale: BTreeSet<NodeId> = known
            .iter()
            .filter(|id| !wanted.contains(id) && !voters.contains(id))
            .copied()
            .collect();
        if !stale.is_empty() && !next.is_empty() {
            self.change(ChangeMembers::RemoveNodes(stale)).await?;
            changed = true;
        }
        Ok(changed)
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, RaftMember>,
    ) -> Result<(), RaftGroupError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(RaftGroupError::from)
    }

    /// The local ledger (what this member has applied; may lag the group).
    pub fn ledger(&self) -> &LedgerReader {
        &self.ledger
    }

    /// The openraft handle: metrics, membership changes, and the receiving side of the
    /// transport.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This member's raft id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The group's name.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The member believed to lead the group, if any.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Stops the raft. Everything acknowledged is already durable.
    pub async fn shutdown(self) -> Result<(), RaftGroupError> {
        self.raft
            .shutdown()
            .await
            .map_err(|error| RaftGroupError::Stopped(error.to_string()))
    }
}
