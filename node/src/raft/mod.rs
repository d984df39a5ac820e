//! Raft groups inside the node, over libp2p: [`RaftGroups`] runs this node's members of
//! the `raft` consensus path's groups (one [`RaftGroup`] each, all on the node's sled
//! database), carries their raft RPCs over `/polity/consensus/1`, and commits ledger
//! entries through them from any member (forwarding to the leader).
//!
//! # Wiring (for the node's event loop)
//!
//! - At start: `RaftGroups::new(identity.public_key(), store.db(), net_handle, metrics)`.
//! - On `NetEvent::Request { peer, protocol: AppProtocol::Consensus, bytes, responder }`:
//!   decode `bytes` as a `polity_proto::ConsensusRequest`, then
//!   - `Request::Raft(envelope)` → `responder.respond(groups.handle_raft(peer, envelope).await)`;
//!   - `Request::Propose(propose)` →
//!     `responder.respond(groups.handle_propose(peer, propose).await.encode_to_vec())`;
//!   - `Request::Round(..)` is not raft traffic (the round driver's).
//!
//!   [`RaftGroups::handle_consensus`] does this dispatch for the two raft variants.
//!   Handle each request in its own task (spawned, bounded by the caller): a propose
//!   waits for a quorum, and a raft RPC may wait on disk. **Always respond**, even with
//!   a refusal: a dropped responder counts as a failure in the sender's circuit breaker.
//! - Every second, and so soon after each registry epoch change: `groups.follow(&own)`
//!   with this node's place groups (`RegistryState::own_place_groups`): starts them, and the
//!   leader of each moves its voters to the place's current registry members.
//! - Before committing a task group's decision: `groups.ensure(&place)` with the task
//!   group's place ([`place::place_group`]), then `groups.commit(&place.name, entry,
//!   timeout)` on whichever member wants the decision committed. What comes back is the
//!   leader's signed `RaftCommit`, checked against this member's own log.
//! - At shutdown: `groups.shutdown().await`.
//!
//! Every call may run concurrently with every other: starting or stopping one group
//! never delays the inbound RPCs, commits or `ensure` calls of another (see Locking).
//! Inbound RPCs for a group that is still starting are refused ("does not run here");
//! the sender's raft retries.
//!
//! # Formation
//!
//! One group per place (a region, a continent, the global level), named and founded
//! as [`place`] says. Every member calls [`RaftGroups::ensure`] with the same
//! [`PlaceGroup`]. The founder with the smallest raft node id initializes the group
//! with the founders (once: only when its raft has never been initialized); the others
//! start empty and learn the membership from the leader's first `AppendEntries`. Until
//! then, their current membership is empty, so inbound traffic is checked against the
//! founders and current members they were given. Later epochs change the voters with
//! openraft's joint consensus, run by whoever leads ([`RaftGroups::follow`]).
//!
//! # The leader's word
//!
//! The leader that appends a report signs a `RaftCommit` (slot, report digest, term,
//! index) and returns it with the commit; a member that forwarded the entry accepts it
//! only when its own log holds the entry at that index, appended in that term by the
//! signer (openraft's committed leader id names the node). The certificate carries it;
//! verifiers with the registry check that the signer is a registry member of the place.
//!
//! # Frame size (why the node lowers the raft config)
//!
//! The node's request-response frames are at most [`FRAME_BYTES_MAX`] (4 MiB), less
//! than [`polity_raft::RAFT_MESSAGE_BYTES_MAX`] (32 MiB) which the consensus
//! crate's own bounds allow: a ledger entry may carry up to 5 MiB (hex doubles it in
//! JSON), an append up to 4 MiB of entries plus one, a snapshot chunk 1 MiB (up to 4 MiB
//! as a JSON number array). Rather than raise the consensus protocol's frame limit
//! (an inbound frame is allocated before its sender is known to be a member, on up to
//! 128 streams per connection, so a larger frame is 8x more memory a stranger can make
//! the node hold), the node keeps 4 MiB frames and narrows raft instead:
//!
//! - a ledger entry committed through the node carries at most
//!   [`NODE_LEDGER_ENTRY_BYTES_MAX`] (report + certificate), checked in [`commit`] and
//!   in [`handle_propose`], so one entry always fits a frame (Polity's entries are a
//!   signed report and a certificate: kilobytes);
//! - snapshot chunks are at most [`NODE_SNAPSHOT_CHUNK_BYTES_MAX`];
//! - an `AppendEntries` that still encodes over a frame (many entries) is not sent: the
//!   transport answers openraft with `PayloadTooLarge` and a smaller entry count, and
//!   openraft retries at once with fewer entries.
//!
//! The compile-time assertions below check that these bounds fit a frame.
//!
//! # Bounds
//!
//! At most [`RAFT_GROUPS_MAX`] groups run or are starting at once (a start reserves
//! its slot before it begins, so concurrent starts cannot overshoot); when full,
//! [`RaftGroups::ensure`] shuts down the least recently used idle group (idle: nothing
//! but the map holds it, `Arc::strong_count == 1`, and nobody holds its gate; its state
//! stays in sled and a later `ensure` restarts it). When none is idle but starts are in
//! flight, `ensure` waits for one to end and looks again; when none is idle and none is
//! in flight, it fails with [`RaftNetError::TooManyGroups`]. Inbound proposals in flight
//! are limited to [`INBOUND_PROPOSALS_MAX`]; a commit makes at most
//! [`COMMIT_ATTEMPTS_MAX`] attempts within its timeout. One metrics watcher task runs
//! per running group. One gate exists per group being started, stopped or waited for,
//! and is dropped with its last user.
//!
//! # Locking
//!
//! - **`inner`** (a `std::sync::Mutex`: the map of running groups, the gates, the
//!   `starting` count, the clock) is locked for map operations only and **never held
//!   across an `.await`** (clippy's `await_holding_lock` denies it, and the futures
//!   would not be `Send`). Raft I/O (start, initialize, shutdown) happens outside it.
//! - **A group's gate** (a `tokio::sync::Mutex<()>`) is held by whoever starts or stops
//!   that group, so its sled trees are never reopened by a new raft before the old one
//!   stopped. `ensure` takes the gate of the group it starts and re-checks the map under
//!   it (another caller may have started the group meanwhile); eviction takes the
//!   victim out of the map under `inner`, with the victim's gate (only if free, so no
//!   caller ever waits for a gate while holding one), and stops it after releasing
//!   `inner`. A gate is only waited for with `inner` released.
//! - **Shutdown** drains the map under `inner`, stops the groups after releasing it,
//!   then waits for the gates in use: a start that ends after shutdown stops the group
//!   it started instead of adding it, so no raft runs once `shutdown` returns.
//!
//! # Layout
//!
//! This file holds the groups' life cycle, commits and inbound handling;
//! [`transport`] holds the libp2p transport each group's raft sends its RPCs through.
//!
//! [`commit`]: RaftGroups::commit
//! [`handle_propose`]: RaftGroups::handle_propose

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openraft::Config;
use polity_consensus::PublicKey;
use polity_net::codec::FRAME_BYTES_MAX;
use polity_net::{AppProtocol, NetHandle, PeerId};
use polity_proto::consensus_request::Request as ConsensusRequestKind;
use polity_proto::{ConsensusRequest, ProposeReply, RaftEnvelope, RaftPropose};
use polity_proto::{RaftCommit, Report, SignedStatement, StatementKind};
use polity_raft::network::check_rpc;
use polity_raft::{
    GroupName, LedgerEntry, LedgerOutcome, NodeId, RaftGroup, RaftGroupError, RaftMember,
    RaftReply, RaftRpc, node_id, raft_config, serve,
};
use prost::Message;
use tokio::sync::{Notify, OwnedMutexGuard, Semaphore};
use tokio::task::JoinHandle;

use crate::telemetry::metrics::{Metrics, RaftGroupLabels};
use crate::telemetry::recovery::RAFT_LEADER;

pub mod place;
mod transport;
pub use place::PlaceGroup;
use transport::Libp2pTransport;

/// Most raft groups running on one node at once.
pub const RAFT_GROUPS_MAX: usize = 64;
/// Largest ledger entry (report plus certificate bytes) the node commits; see the module
/// doc. Far above a real entry, far below the consensus crate's own limits.
pub const NODE_LEDGER_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Largest snapshot chunk the node's rafts send (openraft's `snapshot_max_chunk_size`).
pub const NODE_SNAPSHOT_CHUNK_BYTES_MAX: usize = 512 << 10;
/// Inbound proposals being served at once; more are answered "busy" (retryable).
pub const INBOUND_PROPOSALS_MAX: usize = 64;
/// Attempts one [`RaftGroups::commit`] makes (proposing or forwarding) before it gives up.
pub const COMMIT_ATTEMPTS_MAX: u32 = 20;
/// Backoff between commit attempts: doubles from the first value up to the second.
const COMMIT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const COMMIT_BACKOFF_MAX: Duration = Duration::from_millis(800);
/// How long the leader serves one forwarded proposal before answering "unavailable" (the
/// network's request timeout is 10 s).
const PROPOSE_SERVE_TIMEOUT: Duration = Duration::from_secs(8);
/// Allowance for everything in a raft message besides entry payloads and chunk bytes:
/// log ids, a membership of up to 64 members (~200 bytes each), JSON and protobuf framing.
const MESSAGE_OVERHEAD_BYTES: usize = 64 << 10;
/// Prefix of a `ProposeReply::error` that retrying cannot fix (not a member, unknown
/// group, invalid entry, or the ledger refused the committed entry).
pub const PROPOSE_REFUSED: &str = "refused: ";
/// How long a member that forwarded an entry waits to apply it itself before it checks
/// the leader's word against its own log (and retries the commit when it has not).
const LEADER_CHECK_WAIT: Duration = Duration::from_secs(2);
/// How long a member waits for the entry of a relayed commit to reach its log before
/// it refuses to attest it ([`RaftGroups::confirm`]).
const CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// How [`RaftNetError::LeaderWord`] starts when this member has not applied the entry
/// yet (retryable).
const NOT_APPLIED: &str = "this member has not applied";
/// Domain separation of [`ledger_key`].
const LEDGER_KEY_DOMAIN: &[u8] = b"polity/raft-ledger-key/1";

// One entry as JSON (hex doubles its bytes) fits a frame, as an append or a proposal.
const _: () = assert!(2 * NODE_LEDGER_ENTRY_BYTES_MAX + MESSAGE_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
// A snapshot chunk as a JSON number array (up to 4 bytes per byte) fits a frame.
const _: () =
    assert!(4 * NODE_SNAPSHOT_CHUNK_BYTES_MAX + MESSAGE_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(NODE_SNAPSHOT_CHUNK_BYTES_MAX <= polity_raft::SNAPSHOT_CHUNK_BYTES_MAX);

/// Why a raft call of the node failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftNetError {
    /// The members do not form a raft membership (bad key, duplicate, collision, empty).
    #[error("invalid members: {0}")]
    InvalidMembers(String),
    /// This node is not among the group's members.
    #[error("this node is not a member of raft group {0}")]
    NotAMember(GroupName),
    /// [`RAFT_GROUPS_MAX`] groups run and every one is in use.
    #[error("{RAFT_GROUPS_MAX} raft groups run and none is idle")]
    TooManyGroups,
    /// The group does not run here: call [`RaftGroups::ensure`] first.
    #[error("raft group {0} does not run on this node")]
    NotRunning(GroupName),
    /// The entry is over a limit or malformed, or not one this group commits; nothing
    /// was proposed.
    #[error("invalid ledger entry: {0}")]
    InvalidEntry(#[from] EntryError),
    /// Another report for the task was committed first: the decision is final and it is
    /// not this one. `stored` is the committed entry when this node has it.
    #[error("another report for the task was committed first (term {term}, index {commit_index})")]
    Conflict {
        term: u64,
        commit_index: u64,
        stored: Option<Box<LedgerEntry>>,
    },
    /// The entry was committed but the ledger did not store it (ledger full, too large).
    #[error("committed at index {commit_index} but the ledger refused it: {reason}")]
    Rejected { commit_index: u64, reason: String },
    /// The leader refused the proposal for good (see [`PROPOSE_REFUSED`]).
    #[error("the leader refused the proposal: {0}")]
    Refused(String),
    /// The commit did not complete within its timeout or attempts; `last` says why the
    /// last attempt failed.
    #[error("no commit after {attempts} attempts: {last}")]
    Timeout { attempts: u32, last: String },
    /// The local raft failed (storage, stopped).
    #[error("raft: {0}")]
    Raft(#[from] RaftGroupError),
    /// The leader's signed commit does not match this member's own log (not signed by
    /// the leader that appended the entry, or not for this entry): not used.
    #[error("the leader's commit does not hold: {0}")]
    LeaderWord(String),
    /// [`RaftGroups::shutdown`] was called.
    #[error("raft groups are shut down")]
    ShutDown,
}

/// Why a ledger entry is not one a group commits ([`check_entry_for`]).
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{0}")]
    Ledger(#[from] polity_raft::types::LedgerEntryError),
    #[error("entry of {bytes} bytes exceeds the node's {NODE_LEDGER_ENTRY_BYTES_MAX}")]
    TooLarge { bytes: usize },
    #[error("encoding the entry: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("report statement: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("report: {0}")]
    Report(#[from] polity_consensus::StatementError),
    #[error("report without a slot")]
    NoSlot,
    #[error("a report for {group:?} at level {level} is not for this group's place {place:?}")]
    OtherPlace {
        group: String,
        level: i32,
        place: String,
    },
    #[error("the entry's key is not its report's slot")]
    WrongKey,
    #[error("the report is signed by {0}, not a member of the group")]
    NotMember(PublicKey),
    #[error("raft group {0} does not run here")]
    NotRunning(GroupName),
}

/// Where a committed entry sits in the group's log, in the word of the leader that
/// appended it.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The term of the leader that appended the entry.
    pub term: u64,
    /// The log index of the entry (the raft commit index of the decision).
    pub commit_index: u64,
    /// The leader's signed `RaftCommit` for the entry's report.
    pub commit: SignedStatement,
}

/// One running group.
struct Running {
    group: Arc<RaftGroup>,
    /// The place the group stands for: only its reports are committed through it.
    level: polity_proto::Level,
    place: String,
    /// The founders and current members `ensure` was last given, by node id; used to
    /// check senders until the raft knows its membership.
    members: HashMap<NodeId, RaftMember>,
    /// Logical time of the last use, for least-recently-used eviction.
    last_used: u64,
    /// Keeps `federation_raft_{leader,term}{group}` in step with the raft's metrics.
    watcher: JoinHandle<()>,
}

/// The groups' map and counters, behind a synchronous lock that is never held across
/// an `.await` (module doc, Locking).
struct Inner {
    running: HashMap<GroupName, Running>,
    /// One gate per group being started, stopped or waited for; pruned when unused.
    gates: HashMap<GroupName, GateEntry>,
    /// Start slots reserved by starts in flight: `running.len() + starting` is at most
    /// `RaftGroups::groups_max`.
    starting: usize,
    clock: u64,
    shut_down: bool,
}

/// A group's gate and how many callers hold it or wait for it.
#[derive(Default)]
struct GateEntry {
    lock: Arc<tokio::sync::Mutex<()>>,
    users: usize,
}

/// One group's gate, held (or waited for, while `guard` is `None`): while it is held,
/// nobody else starts or stops the group. Dropping it releases the gate and the start
/// slot its holder reserved, and wakes callers waiting for a slot. Its drop locks
/// `inner`, so it is never dropped (nor made) while `inner` is locked.
struct Gate<'a> {
    groups: &'a RaftGroups,
    name: GroupName,
    guard: Option<OwnedMutexGuard<()>>,
    /// Whether the holder reserved a start slot (counted in `Inner::starting`).
    reserved: bool,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.groups.lock();
            drop(self.guard.take());
            if self.reserved {
                inner.starting -= 1;
            }
            if let Some(entry) = inner.gates.get_mut(&self.name) {
                entry.users -= 1;
                if entry.users == 0 {
                    inner.gates.remove(&self.name);
                }
            }
        }
        self.groups.changed.notify_waiters();
    }
}

/// What [`Inner::take_slot`] found.
enum Slot {
    /// A slot was free; it is reserved.
    Free,
    /// The least recently used idle group was taken out of `running` (its gate held) to
    /// free a slot, which is reserved; it is to be stopped before the start.
    Evicted(GroupName, Running, OwnedMutexGuard<()>),
    /// No slot now, but starts or stops are in flight: one may free one.
    Wait,
    /// Every slot is taken by a group in use.
    Full,
}

/// What [`RaftGroups::reserve`] found.
enum Reserved<'a> {
    /// The group runs (another caller started it).
    Running,
    /// A start slot is reserved; the evicted group, if any, is to be stopped first.
    Slot(Option<Evicted<'a>>),
}

/// A group evicted for a start: out of the map, not yet stopped, its gate held.
struct Evicted<'a> {
    name: GroupName,
    running: Running,
    gate: Gate<'a>,
}

impl Inner {
    /// Whether `name` runs (then marked used, and its known members set to `known`).
    /// Fails after a shutdown.
    fn touch(
        &mut self,
        name: &GroupName,
        known: &HashMap<NodeId, RaftMember>,
    ) -> Result<bool, RaftNetError> {
        if self.shut_down {
            return Err(RaftNetError::ShutDown);
        }
        self.clock += 1;
        let now = self.clock;
        let Some(running) = self.running.get_mut(name) else {
            return Ok(false);
        };
        if running.members.len() != known.len()
            || known.keys().any(|id| !running.members.contains_key(id))
        {
            running.members = known.clone();
        }
        running.last_used = now;
        Ok(true)
    }

    /// Reserves a start slot, evicting the least recently used idle group (idle: only
    /// the map holds it, and nobody holds its gate) when `groups_max` are running or
    /// starting.
    fn take_slot(&mut self, groups_max: usize) -> Slot {
        if self.running.len() + self.starting < groups_max {
            self.starting += 1;
            return Slot::Free;
        }
        let mut idle: Vec<(u64, GroupName)> = self
            .running
            .iter()
            .filter(|(_, running)| Arc::strong_count(&running.group) == 1)
            .map(|(name, running)| (running.last_used, name.clone()))
            .collect();
        idle.sort_unstable();
        let mut wait = self.starting > 0;
        for (_, name) in idle {
            let lock = self
                .gates
                .get(&name)
                .map(|entry| Arc::clone(&entry.lock))
                .unwrap_or_default();
            let Ok(guard) = Arc::clone(&lock).try_lock_owned() else {
                // Its gate is held for a moment (a caller finding it running).
                wait = true;
                continue;
            };
            let Some(running) = self.running.remove(&name) else {
                continue;
            };
            self.gates
                .entry(name.clone())
                .or_insert(GateEntry { lock, users: 0 })
                .users += 1;
            self.starting += 1;
            return Slot::Evicted(name, running, guard);
        }
        if wait { Slot::Wait } else { Slot::Full }
    }
}

/// This node's raft groups. One per node, shared behind an `Arc`.
pub struct RaftGroups {
    key: PublicKey,
    /// Signs the `RaftCommit`s of the entries this node appends as leader.
    signing_key: SigningKey,
    node_id: NodeId,
    db: sled::Db,
    net: NetHandle,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    /// [`RAFT_GROUPS_MAX`] but in tests.
    groups_max: usize,
    inner: Mutex<Inner>,
    /// Notified when a gate is released or the groups shut down (a slot may be free).
    changed: Notify,
    inbound_proposals: Semaphore,
    /// Test seam: when set, each raft start waits here first.
    #[cfg(test)]
    start_pause: Mutex<Option<Arc<tests::StartPause>>>,
}

impl std::fmt::Debug for RaftGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGroups")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The node's raft config: the consensus crate's, with the smaller snapshot chunks the
/// node's frames need (module doc).
#[allow(clippy::result_large_err, reason = "openraft's own ConfigError")]
pub fn node_raft_config() -> Result<Config, openraft::ConfigError> {
    let mut config = raft_config("polity")?;
    config.snapshot_max_chunk_size = NODE_SNAPSHOT_CHUNK_BYTES_MAX as u64;
    config.validate()
}

impl RaftGroups {
    /// This node's raft groups: `signing_key` is the node's identity key (its raft id
    /// derives from it; it signs the commits this node appends as leader), `db` the
    /// node's sled database (groups use trees `raft/<group>/…`).
    pub fn new(
        signing_key: SigningKey,
        db: sled::Db,
        net: NetHandle,
        metrics: Arc<Metrics>,
    ) -> Arc<RaftGroups> {
        RaftGroups::with_limit(signing_key, db, net, metrics, RAFT_GROUPS_MAX)
    }

    /// [`Self::new`] with at most `groups_max` groups running at once.
    fn with_limit(
        signing_key: SigningKey,
        db: sled::Db,
        net: NetHandle,
        metrics: Arc<Metrics>,
        groups_max: usize,
    ) -> Arc<RaftGroups> {
        #[allow(clippy::expect_used, reason = "constant config, checked by tests")]
        let config = node_raft_config().expect("the node's raft config is valid");
        let key = PublicKey(signing_key.verifying_key().to_bytes());
        Arc::new(RaftGroups {
            key,
            signing_key,
            node_id: node_id(&key),
            db,
            net,
            metrics,
            config: Arc::new(config),
            groups_max,
            inner: Mutex::new(Inner {
                running: HashMap::new(),
                gates: HashMap::new(),
                starting: 0,
                clock: 0,
                shut_down: false,
            }),
            changed: Notify::new(),
            inbound_proposals: Semaphore::new(INBOUND_PROPOSALS_MAX),
            #[cfg(test)]
            start_pause: Mutex::new(None),
        })
    }

    /// Gets or starts this node's member of the place group `place` (this node must be
    /// a founder or a current member). On a fresh group, the founder with the smallest
    /// raft node id initializes it with the founders; the others wait to hear from the
    /// leader. Restarts a group that was evicted (its state is in sled). When
    /// [`RAFT_GROUPS_MAX`] groups run or are starting, shuts down the least recently
    /// used idle one first (when none is idle but a start is in flight, waits for it).
    /// Holds no lock that other groups need while it starts or stops a group (module
    /// doc, Locking).
    pub async fn ensure(&self, place: &PlaceGroup) -> Result<(), RaftNetError> {
        let name = &place.name;
        let founders = raft_members(&place.founders)?;
        let current = raft_members(&place.members)?;
        let known: HashMap<NodeId, RaftMember> = founders
            .as_map()
            .iter()
            .chain(current.as_map())
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        if !known.contains_key(&self.node_id) {
            return Err(RaftNetError::NotAMember(name.clone()));
        }
        if self.lock().touch(name, &known)? {
            return Ok(());
        }
        let mut gate = self.gate(name).await;
        let evicted = match self.reserve(name, &known, &mut gate).await? {
            // Another caller started the group while this one waited for the gate.
            Reserved::Running => return Ok(()),
            Reserved::Slot(evicted) => evicted,
        };
        if let Some(evicted) = evicted {
            // Under the victim's gate: its trees are not reopened before it stopped.
            self.stop(&evicted.name, evicted.running).await;
            drop(evicted.gate);
        }
        let (group, initialized) = self.start_group(name, founders).await?;
        self.insert(place, group, known, &mut gate).await?;
        tracing::info!(group = %name, initialized, "raft group started");
        Ok(())
    }

    /// Keeps this node's place groups in step with the registry: starts each of
    /// `places` that does not run, and where this node leads one whose voters are not
    /// the place's current members, changes them (joint consensus: the new members are
    /// added as learners, then the voter set is replaced). Returns how many groups it
    /// reconfigured. Called periodically, so a leader elected halfway through a change
    /// finishes it.
    /// A group that does not run here yet is started only once a majority of the
    /// place's members (this node counted) are connected: a raft that starts before
    /// its peers are reachable only fails dials, and every failure counts against the
    /// peer in the network's circuit breaker. (A raft task's `Assign` starts the group
    /// whatever the connections.)
    pub async fn follow(&self, places: &[PlaceGroup]) -> usize {
        let connected: std::collections::HashSet<PeerId> = match self.net.peers().await {
            Ok(peers) => peers
                .into_iter()
                .filter(|peer| peer.connected)
                .map(|peer| peer.peer_id)
                .collect(),
            Err(_) => return 0,
        };
        let mut changed = 0;
        for place in places {
            let running = self.lock().running.contains_key(&place.name);
            if !running {
                let reachable = place
                    .members
                    .iter()
                    .filter(|key| {
                        **key == self.key
                            || polity_net::peer_id_of(key.as_bytes())
                                .is_ok_and(|peer| connected.contains(&peer))
                    })
                    .count();
                if reachable * 2 <= place.members.len() {
                    continue;
                }
                if let Err(error) = self.ensure(place).await {
                    tracing::warn!(group = %place.name, %error, "could not start a place's raft group");
                    continue;
                }
            }
            if self.reconfigure_if_leading(place).await {
                changed += 1;
            }
        }
        changed
    }

    /// Where this node leads `place`'s group, moves its voters to the place's members
    /// (this node's own removal included: a leader that left the place hands over).
    async fn reconfigure_if_leading(&self, place: &PlaceGroup) -> bool {
        let Ok(group) = self.group(&place.name) else {
            return false;
        };
        if group.current_leader() != Some(self.node_id) {
            return false;
        }
        let members = match raft_members(&place.members) {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(group = %place.name, %error, "place members make no raft membership");
                return false;
            }
        };
        match group.reconfigure(&members).await {
            Ok(true) => {
                tracing::info!(group = %place.name, voters = place.members.len(), "raft group follows the registry");
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::info!(group = %place.name, %error, "raft membership change not done yet");
                false
            }
        }
    }

    /// The places of the groups running here.
    pub fn running_places(&self) -> Vec<(polity_proto::Level, String)> {
        self.lock()
            .running
            .values()
            .map(|running| (running.level, running.place.clone()))
            .collect()
    }

    /// Under `name`'s gate (`gate`): re-checks that the group does not run, then reserves
    /// a start slot, evicting the least recently used idle group when every slot is
    /// taken. When none is idle but starts or stops are in flight, waits for one to end.
    async fn reserve<'a>(
        &'a self,
        name: &GroupName,
        known: &HashMap<NodeId, RaftMember>,
        gate: &mut Gate<'a>,
    ) -> Result<Reserved<'a>, RaftNetError> {
        loop {
            // Registered before the check, so that no change after it goes unnoticed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let slot = {
                let mut inner = self.lock();
                if inner.touch(name, known)? {
                    return Ok(Reserved::Running);
                }
                let slot = inner.take_slot(self.groups_max);
                debug_assert!(inner.running.len() + inner.starting <= self.groups_max);
                slot
            };
            match slot {
                Slot::Free => {
                    gate.reserved = true;
                    return Ok(Reserved::Slot(None));
                }
                Slot::Evicted(victim, running, guard) => {
                    gate.reserved = true;
                    let victim_gate = Gate {
                        groups: self,
                        name: victim.clone(),
                        guard: Some(guard),
                        reserved: false,
                    };
                    return Ok(Reserved::Slot(Some(Evicted {
                        name: victim,
                        running,
                        gate: victim_gate,
                    })));
                }
                Slot::Wait => changed.await,
                Slot::Full => return Err(RaftNetError::TooManyGroups),
            }
        }
    }

    /// Starts this member's raft of `name` and initializes the group with `founders`
    /// when this node is the founder with the smallest raft id and the raft never was;
    /// whether it did is the `bool`.
    async fn start_group(
        &self,
        name: &GroupName,
        founders: polity_raft::Members,
    ) -> Result<(RaftGroup, bool), RaftNetError> {
        #[cfg(test)]
        self.pause_start().await;
        let transport = Libp2pTransport {
            group: name.clone(),
            net: self.net.clone(),
        };
        let group = RaftGroup::start(
            &self.key,
            name.clone(),
            self.config.clone(),
            &self.db,
            transport,
        )
        .await?;
        let smallest = founders.as_map().keys().min().copied();
        let initialize = smallest == Some(self.node_id)
            && !group
                .raft()
                .is_initialized()
                .await
                .map_err(|fatal| RaftGroupError::Stopped(fatal.to_string()))?;
        if initialize && let Err(error) = group.initialize(founders).await {
            let _ = group.shutdown().await;
            return Err(error.into());
        }
        Ok((group, initialize))
    }

    /// Adds the started `group` to the running ones, in place of the start slot `gate`
    /// reserved; after [`Self::shutdown`], stops it instead.
    async fn insert(
        &self,
        place: &PlaceGroup,
        group: RaftGroup,
        members: HashMap<NodeId, RaftMember>,
        gate: &mut Gate<'_>,
    ) -> Result<(), RaftNetError> {
        let name = &place.name;
        let refused = {
            let mut inner = self.lock();
            if inner.shut_down {
                Some(group)
            } else {
                inner.clock += 1;
                let running = Running {
                    watcher: self.watch_metrics(name, &group),
                    group: Arc::new(group),
                    level: place.level,
                    place: place.place.clone(),
                    members,
                    last_used: inner.clock,
                };
                inner.running.insert(name.clone(), running);
                inner.starting -= 1;
                gate.reserved = false;
                None
            }
        };
        let Some(group) = refused else {
            return Ok(());
        };
        if let Err(error) = group.shutdown().await {
            tracing::warn!(group = %name, %error, "raft group did not shut down cleanly");
        }
        Err(RaftNetError::ShutDown)
    }

    /// Waits for `name`'s gate (module doc, Locking).
    async fn gate(&self, name: &GroupName) -> Gate<'_> {
        let lock = {
            let mut inner = self.lock();
            let entry = inner.gates.entry(name.clone()).or_default();
            entry.users += 1;
            Arc::clone(&entry.lock)
        };
        // Counted as a user from here on: dropped while waiting, it is uncounted.
        let mut gate = Gate {
            groups: self,
            name: name.clone(),
            guard: None,
            reserved: false,
        };
        gate.guard = Some(lock.lock_owned().await);
        gate
    }

    /// The map and counters, for a map operation: never held across an `.await`.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    async fn pause_start(&self) {
        let pause = self.lock_pause().clone();
        if let Some(pause) = pause {
            pause.entered.add_permits(1);
            if let Ok(permit) = pause.release.acquire().await {
                permit.forget();
            }
        }
    }

    #[cfg(test)]
    fn lock_pause(&self) -> MutexGuard<'_, Option<Arc<tests::StartPause>>> {
        self.start_pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `entry` through group `name`: proposes it here when this node leads, else
    /// forwards it to the leader as a `RaftPropose`, retrying (with a short backoff,
    /// [`COMMIT_ATTEMPTS_MAX`] times at most) while there is no leader or it moved; the
    /// whole call is bounded by `timeout`. Succeeds when the ledger holds the entry's
    /// report for the task ([`LedgerOutcome::is_accepted`]); a different report committed
    /// first is [`RaftNetError::Conflict`].
    pub async fn commit(
        &self,
        name: &GroupName,
        entry: LedgerEntry,
        timeout: Duration,
    ) -> Result<Committed, RaftNetError> {
        self.check_entry_here(name, &entry)?;
        let mut attempts = 0;
        let mut last = String::from("timed out before the first attempt");
        let attempt_loop = async {
            let mut backoff = COMMIT_BACKOFF_MIN;
            while attempts < COMMIT_ATTEMPTS_MAX {
                attempts += 1;
                match self.commit_once(name, &entry).await {
                    Attempt::Done(result) => return result,
                    Attempt::Retry(reason) => {
                        tracing::debug!(group = %name, attempt = attempts, %reason, "commit retry");
                        last = reason;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(COMMIT_BACKOFF_MAX);
            }
            Err(RaftNetError::Timeout {
                attempts,
                last: last.clone(),
            })
        };
        match tokio::time::timeout(timeout, attempt_loop).await {
            Ok(result) => result,
            Err(_elapsed) => Err(RaftNetError::Timeout {
                attempts,
                last: format!("{last} (deadline of {timeout:?} passed)"),
            }),
        }
    }

    /// Whether this member's own copy of `name`'s log confirms a `RaftCommit` another
    /// member relayed ([`confirm_commit`]): the entry is in its log (applied or not),
    /// waiting up to [`CONFIRM_WAIT`] for it.
    pub async fn confirm(
        &self,
        name: &GroupName,
        commit: SignedStatement,
    ) -> Result<Committed, RaftNetError> {
        let group = self.group(name)?;
        confirm_commit(&group, commit, CONFIRM_WAIT, Settled::Logged).await
    }

    /// One attempt of [`Self::commit`].
    async fn commit_once(&self, name: &GroupName, entry: &LedgerEntry) -> Attempt {
        let group = match self.group(name) {
            Ok(group) => group,
            Err(error) => return Attempt::Done(Err(error)),
        };
        let leader = match group.propose(entry.clone()).await {
            Ok(proposed) => {
                let outcome = proposed.response.outcome;
                if outcome.is_accepted() {
                    return Attempt::Done(self.sign_commit(entry, proposed.term, proposed.index));
                }
                if outcome == LedgerOutcome::Conflict {
                    return Attempt::Done(Err(RaftNetError::Conflict {
                        term: proposed.term,
                        commit_index: proposed.index,
                        stored: proposed.response.previous.map(Box::new),
                    }));
                }
                return Attempt::Done(Err(RaftNetError::Rejected {
                    commit_index: proposed.index,
                    reason: format!("{outcome:?}"),
                }));
            }
            Err(RaftGroupError::ForwardToLeader {
                leader: Some(leader),
                ..
            }) if leader.node_id() != self.node_id => leader,
            Err(RaftGroupError::ForwardToLeader { .. }) => {
                return Attempt::Retry("no leader yet".to_string());
            }
            Err(RaftGroupError::Unavailable(reason)) => return Attempt::Retry(reason),
            Err(error) => return Attempt::Done(Err(error.into())),
        };
        self.forward(&group, name, entry, &leader).await
    }

    /// Sends `entry` to the `leader` of `name` and interprets its [`ProposeReply`].
    async fn forward(
        &self,
        group: &RaftGroup,
        name: &GroupName,
        entry: &LedgerEntry,
        leader: &RaftMember,
    ) -> Attempt {
        let peer = match polity_net::peer_id_of(leader.public_key.as_bytes()) {
            Ok(peer) => peer,
            Err(_) => {
                return Attempt::Retry(format!("leader key {} is not ed25519", leader.public_key));
            }
        };
        let entry_json = match serde_json::to_vec(entry) {
            Ok(json) => json,
            Err(error) => return Attempt::Done(Err(EntryError::from(error).into())),
        };
        let request = ConsensusRequest {
            request: Some(ConsensusRequestKind::Propose(RaftPropose {
                raft_group: name.to_string(),
                entry: entry_json,
            })),
        };
        let bytes = match self
            .net
            .request(peer, AppProtocol::Consensus, request.encode_to_vec())
            .await
        {
            Ok(bytes) => bytes,
            Err(error) => return Attempt::Retry(format!("forwarding to the leader: {error}")),
        };
        let reply = match ProposeReply::decode(bytes.as_slice()) {
            Ok(reply) => reply,
            Err(error) => return Attempt::Retry(format!("undecodable propose reply: {error}")),
        };
        if reply.accepted {
            return match check_leader_word(group, entry, &reply).await {
                Err(RaftNetError::LeaderWord(reason)) if reason.starts_with(NOT_APPLIED) => {
                    Attempt::Retry(reason)
                }
                result => Attempt::Done(result),
            };
        }
        if reply.commit_index > 0 {
            // Committed but not accepted: the ledger kept another report, or refused.
            // This member applies the same log, so read what it stored.
            return Attempt::Done(Err(self.committed_refusal(group, entry, reply).await));
        }
        match reply.error.strip_prefix(PROPOSE_REFUSED) {
            Some(reason) => Attempt::Done(Err(RaftNetError::Refused(reason.to_string()))),
            None => Attempt::Retry(format!("leader {}: {}", leader.public_key, reply.error)),
        }
    }

    /// The error for an entry the leader committed but the ledger did not accept:
    /// [`RaftNetError::Conflict`] with the stored entry if this member's ledger catches up
    /// to the commit index soon, else [`RaftNetError::Rejected`].
    async fn committed_refusal(
        &self,
        group: &RaftGroup,
        entry: &LedgerEntry,
        reply: ProposeReply,
    ) -> RaftNetError {
        let applied = group
            .raft()
            .wait(Some(COMMIT_BACKOFF_MAX * 4))
            .applied_index_at_least(Some(reply.commit_index), "the forwarded commit")
            .await;
        let stored = match applied {
            Ok(_) => group.ledger().get(&entry.task_id).ok().flatten(),
            Err(_) => None,
        };
        match stored {
            Some(stored) if stored.report != entry.report => RaftNetError::Conflict {
                term: reply.term,
                commit_index: reply.commit_index,
                stored: Some(Box::new(stored)),
            },
            None if reply.error.contains("Conflict") => RaftNetError::Conflict {
                term: reply.term,
                commit_index: reply.commit_index,
                stored: None,
            },
            _ => RaftNetError::Rejected {
                commit_index: reply.commit_index,
                reason: reply.error,
            },
        }
    }

    /// Inbound raft RPC (`ConsensusRequest::Raft`) from `from`: the encoded
    /// [`RaftReply`] (JSON) to send back. Refused when the group does not run here, the
    /// sender is not a member, the RPC does not decode or is over a bound.
    pub async fn handle_raft(&self, from: PeerId, envelope: RaftEnvelope) -> Vec<u8> {
        let reply = self.serve_raft(from, envelope).await;
        serde_json::to_vec(&reply).unwrap_or_else(|error| {
            // A reply that cannot be encoded: say so in a reply that can.
            let refused = RaftReply::Refused(format!("reply encoding failed: {error}"));
            serde_json::to_vec(&refused).unwrap_or_default()
        })
    }

    async fn serve_raft(&self, from: PeerId, envelope: RaftEnvelope) -> RaftReply {
        let name = match GroupName::new(envelope.raft_group) {
            Ok(name) => name,
            Err(error) => return RaftReply::Refused(format!("bad group name: {error}")),
        };
        let group = match self.member_group(&name, &from) {
            Ok(group) => group,
            Err(reason) => return RaftReply::Refused(reason),
        };
        let rpc: RaftRpc = match serde_json::from_slice(&envelope.rpc) {
            Ok(rpc) => rpc,
            Err(error) => return RaftReply::Refused(format!("undecodable raft rpc: {error}")),
        };
        if let Err(reason) = check_rpc(&rpc) {
            return RaftReply::Refused(reason.to_string());
        }
        serve(group.raft(), rpc).await
    }

    /// Inbound proposal (`ConsensusRequest::Propose`) from member `from`: commits the
    /// entry when this node leads the group, else names the leader (hex key) in
    /// `leader`. `error` starting with [`PROPOSE_REFUSED`] is final; `commit_index > 0`
    /// means the entry was committed (`accepted` says whether the ledger holds it).
    pub async fn handle_propose(&self, from: PeerId, propose: RaftPropose) -> ProposeReply {
        let refused = |reason: String| ProposeReply {
            error: format!("{PROPOSE_REFUSED}{reason}"),
            ..ProposeReply::default()
        };
        let name = match GroupName::new(propose.raft_group) {
            Ok(name) => name,
            Err(error) => return refused(format!("bad group name: {error}")),
        };
        let group = match self.member_group(&name, &from) {
            Ok(group) => group,
            Err(reason) => return refused(reason),
        };
        let entry: LedgerEntry = match serde_json::from_slice(&propose.entry) {
            Ok(entry) => entry,
            Err(error) => return refused(format!("undecodable ledger entry: {error}")),
        };
        if let Err(reason) = self.check_entry_here(&name, &entry) {
            return refused(reason.to_string());
        }
        let leader_reply = |leader: Option<NodeId>| ProposeReply {
            error: "not the leader".to_string(),
            leader: leader
                .and_then(|id| member_of(&group, id))
                .map(|member| member.public_key.to_string())
                .unwrap_or_default(),
            ..ProposeReply::default()
        };
        let current = group.current_leader();
        if current != Some(self.node_id) {
            return leader_reply(current);
        }
        let Ok(_permit) = self.inbound_proposals.try_acquire() else {
            return ProposeReply {
                error: "busy: too many proposals in flight".to_string(),
                ..ProposeReply::default()
            };
        };
        match tokio::time::timeout(PROPOSE_SERVE_TIMEOUT, group.propose(entry.clone())).await {
            Err(_elapsed) => ProposeReply {
                error: "unavailable: no commit in time".to_string(),
                ..ProposeReply::default()
            },
            Ok(Ok(proposed)) => {
                let outcome = proposed.response.outcome;
                let signed = outcome
                    .is_accepted()
                    .then(|| self.sign_commit(&entry, proposed.term, proposed.index));
                match signed {
                    Some(Err(error)) => ProposeReply {
                        term: proposed.term,
                        commit_index: proposed.index,
                        error: format!("{PROPOSE_REFUSED}{error}"),
                        ..ProposeReply::default()
                    },
                    Some(Ok(committed)) => ProposeReply {
                        accepted: true,
                        term: proposed.term,
                        commit_index: proposed.index,
                        commit: committed.commit.encode_to_vec(),
                        ..ProposeReply::default()
                    },
                    None => ProposeReply {
                        term: proposed.term,
                        commit_index: proposed.index,
                        error: format!("{PROPOSE_REFUSED}ledger outcome {outcome:?}"),
                        ..ProposeReply::default()
                    },
                }
            }
            Ok(Err(RaftGroupError::ForwardToLeader { leader_id, .. })) => leader_reply(leader_id),
            Ok(Err(RaftGroupError::Unavailable(reason))) => ProposeReply {
                error: format!("unavailable: {reason}"),
                ..ProposeReply::default()
            },
            Ok(Err(error)) => refused(error.to_string()),
        }
    }

    /// Dispatches the raft variants of an inbound `/polity/consensus/1` request to
    /// [`Self::handle_raft`] and [`Self::handle_propose`] and returns the reply bytes;
    /// `None` for a request that is not raft traffic (a round envelope, or empty).
    pub async fn handle_consensus(
        &self,
        from: PeerId,
        request: ConsensusRequest,
    ) -> Option<Vec<u8>> {
        match request.request? {
            ConsensusRequestKind::Raft(envelope) => Some(self.handle_raft(from, envelope).await),
            ConsensusRequestKind::Propose(propose) => {
                Some(self.handle_propose(from, propose).await.encode_to_vec())
            }
            ConsensusRequestKind::Round(_) => None,
        }
    }

    /// [`check_entry_for`] against group `name` as it runs here: its place, its
    /// members (the raft's membership, or the ones `ensure` was given).
    fn check_entry_here(&self, name: &GroupName, entry: &LedgerEntry) -> Result<(), EntryError> {
        let (group, level, place, known) = {
            let inner = self.lock();
            let running = inner
                .running
                .get(name)
                .ok_or_else(|| EntryError::NotRunning(name.clone()))?;
            (
                Arc::clone(&running.group),
                running.level,
                running.place.clone(),
                running.members.clone(),
            )
        };
        check_entry_for(entry, level, &place, |key| {
            let id = node_id(key);
            member_of(&group, id).is_some_and(|member| member.public_key == *key)
                || known
                    .get(&id)
                    .is_some_and(|member| member.public_key == *key)
        })
    }

    /// As the leader that appended `entry` at (`term`, `index`): its signed
    /// `RaftCommit`. The entry's report is a signed report statement; its slot and
    /// digest are what the commit names.
    fn sign_commit(
        &self,
        entry: &LedgerEntry,
        term: u64,
        index: u64,
    ) -> Result<Committed, RaftNetError> {
        let (slot, digest) = report_of(entry)?;
        let commit = RaftCommit {
            slot: Some(slot),
            report_digest: digest.to_vec(),
            term,
            commit_index: index,
        };
        Ok(Committed {
            term,
            commit_index: index,
            commit: polity_consensus::sign_message(
                &self.signing_key,
                StatementKind::RaftCommit,
                &commit,
            ),
        })
    }

    /// The key of the member this node believes leads `name`, if the group runs here and
    /// has a leader.
    pub async fn leader(&self, name: &GroupName) -> Option<PublicKey> {
        let group = self.group(name).ok()?;
        let leader = group.current_leader()?;
        member_of(&group, leader).map(|member| member.public_key)
    }

    /// This node's applied ledger entry for `task_id` in group `name` (a local read: it
    /// may lag the group).
    pub async fn ledger_get(
        &self,
        name: &GroupName,
        task_id: &polity_consensus::TaskId,
    ) -> Result<Option<LedgerEntry>, RaftNetError> {
        let group = self.group(name)?;
        Ok(group.ledger().get(task_id).map_err(RaftGroupError::from)?)
    }

    /// The names of the groups running here.
    pub async fn running(&self) -> Vec<GroupName> {
        self.lock().running.keys().cloned().collect()
    }

    /// Shuts every group down (their state stays in sled); later calls to
    /// [`Self::ensure`] fail with [`RaftNetError::ShutDown`]. Returns once no raft of
    /// this node runs: a start in flight stops the group it started.
    pub async fn shutdown(&self) {
        let (running, gates) = {
            let mut inner = self.lock();
            inner.shut_down = true;
            let running: Vec<(GroupName, Running)> = inner.running.drain().collect();
            let gates: Vec<GroupName> = inner.gates.keys().cloned().collect();
            (running, gates)
        };
        self.changed.notify_waiters();
        for (name, group) in running {
            self.stop(&name, group).await;
        }
        // Starts and evictions in flight hold their groups' gates; wait for them to end.
        for name in gates {
            drop(self.gate(&name).await);
        }
    }

    /// Stops one group: its raft, its metrics watcher and its metric series.
    async fn stop(&self, name: &GroupName, running: Running) {
        running.watcher.abort();
        if let Err(error) = running.group.raft().shutdown().await {
            tracing::warn!(group = %name, %error, "raft group did not shut down cleanly");
        }
        let labels = RaftGroupLabels {
            group: name.to_string(),
        };
        self.metrics.raft_leader.remove(&labels);
        self.metrics.raft_term.remove(&labels);
        self.metrics.raft_voters.remove(&labels);
        tracing::info!(group = %name, "raft group stopped");
    }

    /// The running group `name`, marked used.
    fn group(&self, name: &GroupName) -> Result<Arc<RaftGroup>, RaftNetError> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let running = inner
            .running
            .get_mut(name)
            .ok_or_else(|| RaftNetError::NotRunning(name.clone()))?;
        running.last_used = now;
        Ok(running.group.clone())
    }

    /// The running group `name`, if `from` is one of its members: in the raft's current
    /// membership, or (while the raft has none yet) among the members `ensure` was given.
    fn member_group(&self, name: &GroupName, from: &PeerId) -> Result<Arc<RaftGroup>, String> {
        let key = polity_net::public_key_of(from)
            .map_err(|_| format!("sender {from} has no ed25519 key"))?;
        let key = PublicKey(key);
        let id = node_id(&key);
        let inner = self.lock();
        let running = inner
            .running
            .get(name)
            .ok_or_else(|| format!("raft group {name} does not run here"))?;
        let is_member = {
            let metrics = running.group.raft().metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            if membership.nodes().next().is_some() {
                membership
                    .get_node(&id)
                    .is_some_and(|member| member.public_key == key)
            } else {
                running
                    .members
                    .get(&id)
                    .is_some_and(|member| member.public_key == key)
            }
        };
        if !is_member {
            return Err(format!(
                "sender {from} is not a member of raft group {name}"
            ));
        }
        Ok(running.group.clone())
    }

    /// Spawns the task that mirrors the raft's leadership and term into the metrics; it
    /// ends when the raft stops (or is aborted by [`Self::stop`]).
    fn watch_metrics(&self, name: &GroupName, group: &RaftGroup) -> JoinHandle<()> {
        let labels = RaftGroupLabels {
            group: name.to_string(),
        };
        let leader_gauge = self.metrics.raft_leader.get_or_create(&labels).clone();
        let term_gauge = self.metrics.raft_term.get_or_create(&labels).clone();
        let voters_gauge = self.metrics.raft_voters.get_or_create(&labels).clone();
        let mut receiver = group.raft().metrics();
        let own = self.node_id;
        let node_metrics = Arc::clone(&self.metrics);
        let group_key = name.to_string();
        let mut had_leader = false;
        tokio::spawn(async move {
            loop {
                let has_leader = {
                    let metrics = receiver.borrow_and_update();
                    leader_gauge.set(i64::from(metrics.current_leader == Some(own)));
                    term_gauge.set(i64::try_from(metrics.current_term).unwrap_or(i64::MAX));
                    let voters = metrics.membership_config.membership().voter_ids().count();
                    voters_gauge.set(i64::try_from(voters).unwrap_or(i64::MAX));
                    metrics.current_leader.is_some()
                };
                // Recovery learning: a group that had a leader and lost it has
                // recovered when it has one again (re-election).
                if had_leader && !has_leader {
                    node_metrics.recovery.failed(RAFT_LEADER, &group_key);
                } else if has_leader {
                    node_metrics.recovery.recovered(RAFT_LEADER, &group_key);
                }
                had_leader |= has_leader;
                if receiver.changed().await.is_err() {
                    leader_gauge.set(0);
                    return;
                }
            }
        })
    }
}

/// The slot and digest of the report an entry carries (a signed report statement).
fn report_of(entry: &LedgerEntry) -> Result<(polity_proto::Slot, [u8; 32]), EntryError> {
    let statement = SignedStatement::decode(entry.report.as_slice())?;
    let report = Report::decode(statement.body.as_slice())?;
    let slot = report.slot.ok_or(EntryError::NoSlot)?;
    Ok((slot, polity_consensus::report_digest(&statement.body)))
}

/// A forwarded entry's commit, as the leader's `reply` tells it, checked against this
/// member's own copy of the log: the signed `RaftCommit` is for this entry's report at
/// the reply's term and index, and [`confirm_commit`] holds. Anything else is
/// [`RaftNetError::LeaderWord`].
async fn check_leader_word(
    group: &RaftGroup,
    entry: &LedgerEntry,
    reply: &ProposeReply,
) -> Result<Committed, RaftNetError> {
    let statement = SignedStatement::decode(reply.commit.as_slice())
        .map_err(|error| RaftNetError::LeaderWord(format!("undecodable commit: {error}")))?;
    let (_, commit) = open_commit(&statement)?;
    let (slot, digest) = report_of(entry)?;
    if commit.slot.as_ref() != Some(&slot)
        || commit.report_digest != digest
        || commit.term != reply.term
        || commit.commit_index != reply.commit_index
    {
        return Err(RaftNetError::LeaderWord(
            "the commit names another report, term or index".into(),
        ));
    }
    confirm_commit(group, statement, LEADER_CHECK_WAIT, Settled::Applied).await
}

/// The signer and body of a signed `RaftCommit`.
fn open_commit(statement: &SignedStatement) -> Result<(PublicKey, RaftCommit), RaftNetError> {
    polity_consensus::statement::open::<RaftCommit>(statement, StatementKind::RaftCommit)
        .map_err(|error| RaftNetError::LeaderWord(format!("bad commit statement: {error}")))
}

/// How far a commit must have settled in this member's own log for
/// [`confirm_commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// The entry is in the log: enough to attest who appended it in which term (raft
    /// commits rest on the leader's signed word; an attester vouches for its
    /// leadership).
    Logged,
    /// The entry is applied, and the ledger kept its report: the forwarding member
    /// builds its certificate on it.
    Applied,
}

/// Whether this member's own copy of the log confirms a leader's signed `RaftCommit`:
/// the entry at the commit's index (once logged or applied here, waiting up to `wait`)
/// carries the commit's report, for the commit's slot, and was appended in the
/// commit's term by the commit's signer; when `Applied`, the ledger also kept that
/// report under the slot's key (the first committed for it). Anything else is
/// [`RaftNetError::LeaderWord`] (starting with [`NOT_APPLIED`] when the entry has not
/// reached this member yet).
async fn confirm_commit(
    group: &RaftGroup,
    statement: SignedStatement,
    wait: Duration,
    settled: Settled,
) -> Result<Committed, RaftNetError> {
    let refuse = |reason: String| Err(RaftNetError::LeaderWord(reason));
    let (signer, commit) = open_commit(&statement)?;
    let Some(slot) = commit.slot.as_ref() else {
        return refuse("the commit names no slot".into());
    };
    let appended = match settled {
        Settled::Logged => group.logged_by(commit.commit_index, wait).await?,
        Settled::Applied => group.appended_by(commit.commit_index, wait).await?,
    };
    let Some(appended) = appended else {
        return refuse(format!("{NOT_APPLIED} index {}", commit.commit_index));
    };
    let appender = member_of(group, appended.leader).map(|member| member.public_key);
    if appended.term != commit.term || appender != Some(signer) {
        return refuse(format!(
            "index {} was appended in term {} by raft node {}, the commit is signed by {signer} for term {}",
            commit.commit_index, appended.term, appended.leader, commit.term
        ));
    }
    let names_commit = |report: Option<(polity_proto::Slot, [u8; 32])>| {
        report.is_some_and(|(at, digest)| at == *slot && digest[..] == commit.report_digest[..])
    };
    if !names_commit(appended.entry.as_ref().map(report_of).transpose()?) {
        return refuse(format!(
            "index {} of this member's log holds another report or slot, or none",
            commit.commit_index
        ));
    }
    if settled == Settled::Applied {
        let stored = group
            .ledger()
            .get(&ledger_key(slot))
            .map_err(RaftGroupError::from)?;
        if !names_commit(stored.as_ref().map(report_of).transpose()?) {
            return refuse("this member's ledger holds another report for the slot".into());
        }
    }
    Ok(Committed {
        term: commit.term,
        commit_index: commit.commit_index,
        commit: statement,
    })
}

/// How often a node brings its place groups in step with the registry
/// ([`RaftGroups::follow`]).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Runs [`RaftGroups::follow`] for `key`'s place groups every [`FOLLOW_INTERVAL`] (the
/// first at once) until `stop` changes: the groups start with the node, and an epoch
/// change reaches the raft groups within a second of reaching the registry.
pub async fn follow_registry(
    groups: Arc<RaftGroups>,
    registry: Arc<crate::registry::RegistryState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(FOLLOW_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        // This node's places, and the places of groups it still runs but may have
        // left (as their leader it hands over by moving the voters without itself).
        let mut places = registry.own_place_groups(&groups.key);
        for (level, place) in groups.running_places() {
            if let Some(group) = registry.place_group(level, &place)
                && !places.iter().any(|known| known.name == group.name)
            {
                places.push(group);
            }
        }
        tokio::select! {
            _ = groups.follow(&places) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What one commit attempt came to.
enum Attempt {
    Done(Result<Committed, RaftNetError>),
    Retry(String),
}

/// The member record of `id` in the group's current membership.
fn member_of(group: &RaftGroup, id: NodeId) -> Option<RaftMember> {
    let metrics = group.raft().metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .membership()
        .get_node(&id)
        .cloned()
}

/// The raft membership of these keys: each key's peer id, collision-checked.
fn raft_members(keys: &[PublicKey]) -> Result<polity_raft::Members, RaftNetError> {
    let records = keys
        .iter()
        .map(|&key| {
            let peer = polity_net::peer_id_of(key.as_bytes())
                .map_err(|error| RaftNetError::InvalidMembers(format!("{key}: {error}")))?;
            RaftMember::new(key, peer.to_string())
                .map_err(|error| RaftNetError::InvalidMembers(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    polity_raft::Members::new(records)
        .map_err(|error| RaftNetError::InvalidMembers(error.to_string()))
}

/// The key a report is kept under in its place's ledger: one per task group (task,
/// level and group name, the attempt included), so each attempt of a place commits
/// once and the first report committed for it wins.
pub fn ledger_key(slot: &polity_proto::Slot) -> polity_consensus::TaskId {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(LEDGER_KEY_DOMAIN);
    hasher.update(&slot.task_id);
    hasher.update(slot.level.to_be_bytes());
    hasher.update((slot.group.len() as u64).to_be_bytes());
    hasher.update(slot.group.as_bytes());
    polity_consensus::TaskId(hasher.finalize().into())
}

/// What a group commits, checked where the entry enters it (the proposer, and the
/// leader for a forwarded one): [`check_entry`], and a report signed by a member of
/// the group, for a slot of the group's place at its level, kept under that slot's
/// [`ledger_key`]. So a member cannot get the leader's signed word for a report of
/// another place, a forged report, or a report filed under another key.
fn check_entry_for(
    entry: &LedgerEntry,
    level: polity_proto::Level,
    place: &str,
    is_member: impl Fn(&PublicKey) -> bool,
) -> Result<(), EntryError> {
    check_entry(entry)?;
    let statement = SignedStatement::decode(entry.report.as_slice())?;
    let (signer, report) =
        polity_consensus::statement::open::<Report>(&statement, StatementKind::Report)?;
    let slot = report.slot.ok_or(EntryError::NoSlot)?;
    let in_place = polity_consensus::binding::place_of(&slot.group)
        .is_ok_and(|slot_place| slot.level == level as i32 && slot_place == place);
    if !in_place {
        return Err(EntryError::OtherPlace {
            group: slot.group,
            level: slot.level,
            place: place.to_string(),
        });
    }
    if entry.task_id != ledger_key(&slot) {
        return Err(EntryError::WrongKey);
    }
    if !is_member(&signer) {
        return Err(EntryError::NotMember(signer));
    }
    Ok(())
}

/// The consensus crate's entry checks, the node's size limit, and a report the leader
/// can sign a commit for (a signed report statement with a slot).
fn check_entry(entry: &LedgerEntry) -> Result<(), EntryError> {
    entry.check()?;
    report_of(entry)?;
    if entry.payload_bytes() > NODE_LEDGER_ENTRY_BYTES_MAX {
        return Err(EntryError::TooLarge {
            bytes: entry.payload_bytes(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure detector of the locking tests: generous (two busy cores), and only ever
    /// reached when a call waits on a lock it should not need.
    const PROMPT: Duration = Duration::from_secs(20);

    /// The test seam of [`RaftGroups::start_group`]: each start adds a permit to
    /// `entered`, then waits for one of `release`.
    pub(super) struct StartPause {
        pub(super) entered: Semaphore,
        pub(super) release: Semaphore,
    }

    fn key(seed: u8) -> PublicKey {
        PublicKey(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
        )
    }

    fn peer(seed: u8) -> PeerId {
        polity_net::peer_id_of(&key(seed).0).unwrap()
    }

    /// The raft groups of a node with key `seed`, on a loopback libp2p node that is
    /// connected to nobody, at most `groups_max` running.
    fn groups(seed: u8, groups_max: usize) -> Arc<RaftGroups> {
        let config = polity_net::NetConfig {
            secret_key: [seed; 32],
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
            mdns: false,
            local: polity_net::LocalInfo::default(),
        };
        let (net, _events, _task) =
            polity_net::start(config, polity_net::NetMetrics::default()).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        RaftGroups::with_limit(signing_key, db, net, Arc::new(Metrics::new()), groups_max)
    }

    /// Pauses every later raft start of `groups`.
    fn pause(groups: &RaftGroups) -> Arc<StartPause> {
        let pause = Arc::new(StartPause {
            entered: Semaphore::new(0),
            release: Semaphore::new(0),
        });
        *groups.lock_pause() = Some(Arc::clone(&pause));
        pause
    }

    fn vote(name: &GroupName, seed: u8) -> RaftEnvelope {
        let rpc = RaftRpc::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(1, node_id(&key(seed))),
            None,
        ));
        RaftEnvelope {
            raft_group: name.to_string(),
            rpc: serde_json::to_vec(&rpc).unwrap(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_in_flight_stalls_no_other_group() {
        let node = groups(41, RAFT_GROUPS_MAX);
        let place_a = place("a", &[41, 42, 43]);
        let a = place_a.name.clone();
        node.ensure(&place_a).await.unwrap();

        // Group b's start is held at the seam (after its gate, before its raft starts).
        let pause = pause(&node);
        let place_b = place("b", &[41, 44]);
        let b = place_b.name.clone();
        let start_b = tokio::spawn({
            let (node, place_b) = (Arc::clone(&node), place_b.clone());
            async move { node.ensure(&place_b).await }
        });
        pause.entered.acquire().await.unwrap().forget();
        // A second caller for b waits for b's gate, and then finds b running.
        let again_b = tokio::spawn({
            let (node, place_b) = (Arc::clone(&node), place_b.clone());
            async move { node.ensure(&place_b).await }
        });

        // Meanwhile group a serves: an inbound raft RPC, a lookup, ensure, the list.
        let reply = tokio::time::timeout(PROMPT, node.handle_raft(peer(42), vote(&a, 42)))
            .await
            .expect("an inbound raft RPC of another group is not stalled by a start");
        let reply: RaftReply = serde_json::from_slice(&reply).unwrap();
        assert!(!matches!(reply, RaftReply::Refused(_)), "{reply:?}");
        tokio::time::timeout(
            PROMPT,
            node.ledger_get(&a, &polity_consensus::TaskId([1; 32])),
        )
        .await
        .expect("a lookup is not stalled by a start")
        .unwrap();
        tokio::time::timeout(PROMPT, node.ensure(&place_a))
            .await
            .expect("ensuring a running group is not stalled by a start")
            .unwrap();
        let running = tokio::time::timeout(PROMPT, node.running())
            .await
            .expect("the list is not stalled by a start");
        assert_eq!(running, vec![a.clone()]);
        assert!(!start_b.is_finished() && !again_b.is_finished());

        pause.release.add_permits(1);
        let started = async { (start_b.await, again_b.await) };
        let (start_b, again_b) = tokio::time::timeout(PROMPT, started)
            .await
            .expect("b starts once released, and only once");
        start_b.unwrap().unwrap();
        again_b.unwrap().unwrap();
        let mut running = node.running().await;
        running.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(running, expected);
        assert_eq!(pause.entered.available_permits(), 0, "b started once");
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_starts_never_exceed_the_bound() {
        const MAX: usize = 3;
        let node = groups(51, MAX);
        let places: Vec<PlaceGroup> = (0..4 * MAX)
            .map(|i| place(&format!("solo-{i}"), &[51]))
            .collect();
        let starts: Vec<_> = places
            .iter()
            .map(|place| {
                let (node, place) = (Arc::clone(&node), place.clone());
                tokio::spawn(async move { node.ensure(&place).await })
            })
            .collect();
        while !starts.iter().all(|start| start.is_finished()) {
            {
                let inner = node.lock();
                assert!(
                    inner.running.len() + inner.starting <= MAX,
                    "{} running, {} starting",
                    inner.running.len(),
                    inner.starting
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for start in starts {
            start.await.unwrap().unwrap();
        }
        assert_eq!(node.running().await.len(), MAX);
        {
            let inner = node.lock();
            assert_eq!(inner.starting, 0);
            assert!(inner.gates.is_empty(), "the gates are pruned");
        }
        node.shutdown().await;
        assert!(matches!(
            node.ensure(&places[0]).await,
            Err(RaftNetError::ShutDown)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_that_ends_after_shutdown_stops_its_group() {
        let node = groups(61, RAFT_GROUPS_MAX);
        let place_a = place("a", &[61]);
        node.ensure(&place_a).await.unwrap();
        let pause = pause(&node);
        let place_b = place("b", &[61]);
        let start_b = tokio::spawn({
            let (node, place_b) = (Arc::clone(&node), place_b.clone());
            async move { node.ensure(&place_b).await }
        });
        pause.entered.acquire().await.unwrap().forget();

        let mut shutdown = tokio::spawn({
            let node = Arc::clone(&node);
            async move { node.shutdown().await }
        });
        // Shutdown stops a at once, but returns only after b's start ended.
        let started = std::time::Instant::now();
        while !node.running().await.is_empty() {
            assert!(started.elapsed() < PROMPT, "shutdown did not stop a");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut shutdown)
                .await
                .is_err(),
            "shutdown waits for the start in flight"
        );
        assert!(matches!(
            node.ensure(&place_a).await,
            Err(RaftNetError::ShutDown)
        ));
        pause.release.add_permits(1);
        assert!(matches!(
            start_b.await.unwrap(),
            Err(RaftNetError::ShutDown)
        ));
        tokio::time::timeout(PROMPT, shutdown)
            .await
            .expect("shutdown ends once the start did")
            .unwrap();
        assert!(node.running().await.is_empty());
        assert!(node.lock().gates.is_empty());
    }

    /// A place group named `region-<label>-e0` of the keys of `seeds`, founded by them.
    fn place(label: &str, seeds: &[u8]) -> PlaceGroup {
        let keys: Vec<PublicKey> = seeds.iter().map(|&seed| key(seed)).collect();
        PlaceGroup {
            name: GroupName::new(format!("region-{label}-e0")).unwrap(),
            level: polity_proto::Level::Region,
            place: label.to_string(),
            founders: keys.clone(),
            members: keys,
        }
    }

    /// A ledger entry for task `[fill; 32]`'s region group "a" whose report is signed
    /// by `seed`'s key, under its slot's ledger key.
    fn report_entry(fill: u8, seed: u8) -> LedgerEntry {
        let slot = polity_proto::Slot {
            task_id: vec![fill; 32],
            level: polity_proto::Level::Region as i32,
            group: "a".into(),
            round: 0,
        };
        let report = Report {
            slot: Some(slot.clone()),
            value: b"v".to_vec(),
            ..Report::default()
        };
        let signer = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let statement = polity_consensus::sign_message(&signer, StatementKind::Report, &report);
        LedgerEntry::new(ledger_key(&slot), statement.encode_to_vec(), None).unwrap()
    }

    /// The leader signs its word only for a report of its place, signed by a member,
    /// under the report's own ledger key.
    #[test]
    fn entries_are_checked_against_the_group_s_place() {
        let member = |key: &PublicKey| *key == self::key(9);
        let good = report_entry(1, 9);
        check_entry_for(&good, polity_proto::Level::Region, "a", member).unwrap();
        let other_place = check_entry_for(&good, polity_proto::Level::Region, "b", member);
        assert!(other_place.unwrap_err().to_string().contains("place"));
        let other_level = check_entry_for(&good, polity_proto::Level::Continent, "a", member);
        assert!(other_level.is_err());
        let stranger = report_entry(1, 8);
        let refused = check_entry_for(&stranger, polity_proto::Level::Region, "a", member);
        assert!(refused.unwrap_err().to_string().contains("not a member"));
        let mut rekeyed = good.clone();
        rekeyed.task_id = polity_consensus::TaskId([1; 32]);
        let refused = check_entry_for(&rekeyed, polity_proto::Level::Region, "a", member);
        assert!(refused.unwrap_err().to_string().contains("key"));
        let mut forged = good;
        let mut statement = SignedStatement::decode(forged.report.as_slice()).unwrap();
        statement.signature[0] ^= 1;
        forged.report = statement.encode_to_vec();
        let refused = check_entry_for(&forged, polity_proto::Level::Region, "a", member);
        assert!(refused.unwrap_err().to_string().contains("report"));
    }

    /// A member takes a forwarded commit only on the word of the leader that appended
    /// the entry in its own log: the same commit signed by another key, or naming
    /// another index or report, is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_appending_leader_s_word_is_taken() {
        let node = groups(71, RAFT_GROUPS_MAX);
        let place = place("a", &[71]);
        node.ensure(&place).await.unwrap();
        let entry = report_entry(1, 71);
        let committed = node
            .commit(&place.name, entry.clone(), PROMPT)
            .await
            .unwrap();
        let (signer, body): (PublicKey, RaftCommit) =
            polity_consensus::statement::open(&committed.commit, StatementKind::RaftCommit)
                .unwrap();
        assert_eq!(signer, key(71), "the leader signs");
        assert_eq!(
            (body.term, body.commit_index),
            (committed.term, committed.commit_index)
        );
        let group = node.group(&place.name).unwrap();
        let reply = |commit: &SignedStatement| ProposeReply {
            accepted: true,
            term: committed.term,
            commit_index: committed.commit_index,
            commit: commit.encode_to_vec(),
            ..ProposeReply::default()
        };
        let taken = check_leader_word(&group, &entry, &reply(&committed.commit))
            .await
            .unwrap();
        assert_eq!(taken.commit, committed.commit);

        let impostor = ed25519_dalek::SigningKey::from_bytes(&[72; 32]);
        let forged = polity_consensus::sign_message(&impostor, StatementKind::RaftCommit, &body);
        let refused = check_leader_word(&group, &entry, &reply(&forged)).await;
        assert!(
            matches!(&refused, Err(RaftNetError::LeaderWord(reason)) if reason.contains("appended")),
            "{refused:?}"
        );
        let mut later = body.clone();
        later.commit_index += 1;
        let own_key = ed25519_dalek::SigningKey::from_bytes(&[71; 32]);
        let moved = polity_consensus::sign_message(&own_key, StatementKind::RaftCommit, &later);
        let refused = check_leader_word(&group, &entry, &reply(&moved)).await;
        assert!(
            matches!(refused, Err(RaftNetError::LeaderWord(_))),
            "{refused:?}"
        );
        let other_report = report_entry(2, 71);
        let refused = check_leader_word(&group, &other_report, &reply(&committed.commit)).await;
        assert!(
            matches!(refused, Err(RaftNetError::LeaderWord(_))),
            "{refused:?}"
        );
        drop(group);
        node.shutdown().await;
    }

    #[test]
    fn the_node_raft_config_is_valid() {
        let config = node_raft_config().unwrap();
        assert_eq!(
            config.snapshot_max_chunk_size,
            NODE_SNAPSHOT_CHUNK_BYTES_MAX as u64
        );
    }

    #[test]
    fn entries_over_the_node_limit_are_refused() {
        let entry = LedgerEntry::new(
            polity_consensus::TaskId([1; 32]),
            vec![0; NODE_LEDGER_ENTRY_BYTES_MAX],
            Some(vec![0; 1]),
        )
        .unwrap();
        assert!(check_entry(&entry).is_err());
        let entry = LedgerEntry::new(polity_consensus::TaskId([1; 32]), vec![1; 10], None).unwrap();
        assert!(check_entry(&entry).is_err(), "not a signed report");
        assert!(check_entry(&report_entry(1, 9)).is_ok());
    }
}
