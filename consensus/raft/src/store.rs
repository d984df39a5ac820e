//! The sled-backed raft storage of one group: [`SledLogStore`] (openraft's
//! `RaftLogStorage`) and [`SledStateMachine`] (openraft's `RaftStateMachine`, whose
//! state is the group's ledger), plus [`LedgerReader`] for the node's lookups.
//!
//! Both sit on the node's one `sled::Db`, in trees namespaced by the group name:
//!
//! | tree | keys → values |
//! | --- | --- |
//! | `raft/<group>/log` | log index (u64 big-endian) → openraft `Entry` (JSON) |
//! | `raft/<group>/meta` | `vote`, `committed`, `last_purged` → JSON |
//! | `raft/<group>/ledger` | task id (32 bytes) → report and certificate ([`codec`]) |
//! | `raft/<group>/state` | `last_applied`, `membership` → JSON; `usage` → 2 × u64 BE |
//! | `raft/<group>/snapshot` | `meta` → JSON `SnapshotMeta`; `data` → snapshot bytes |
//!
//! Durability: `append` calls its callback only after `flush_async` (an fsync of the
//! database) returns; `save_vote` and `truncate` flush before returning; `purge` flushes
//! `last_purged` before deleting; `apply` and snapshot installation write the ledger,
//! the applied log id and the membership in one sled transaction and flush before
//! returning, so the state machine never runs behind a purged log after a crash.
//!
//! Nothing read from disk is trusted: an undecodable key or value is a
//! `StorageError` (openraft then stops the group), never a panic.
//!
//! [`codec`]: crate::codec

// openraft's storage traits fix the error type to its 224-byte `StorageError`; the helpers
// here return it as is rather than box it only to unbox it at every trait method.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Batch, IVec, Transactional, Tree};

use crate::codec::{
    self, CodecError, LEDGER_BYTES_MAX, LEDGER_ENTRIES_MAX, SNAPSHOT_BYTES_MAX, decode_snapshot,
    decode_value, encode_snapshot, encode_value,
};
use crate::types::{
    GroupName, LedgerEntry, LedgerOutcome, LedgerResponse, NodeId, RaftMember, TypeConfig,
};
use polity_consensus::ids::TaskId;

/// Most log entries one `AppendEntries` carries (openraft's `max_payload_entries`, and
/// the cap of [`RaftLogReader::limited_get_log_entries`]).
pub const ENTRIES_PER_APPEND_MAX: usize = 256;
/// A log read for replication stops once it has gathered this many stored bytes (after at
/// least one entry), so an `AppendEntries` stays under
/// [`crate::RAFT_MESSAGE_BYTES_MAX`] even with many large entries.
pub const APPEND_PAYLOAD_BYTES_SOFT_MAX: usize = 4 << 20;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_USAGE: &[u8] = b"usage";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
/// The last applied log id and the membership it carries.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, RaftMember>);

/// Why a store could not be opened or read outside openraft.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// The sled tree names of a group, in the order log, meta, ledger, state, snapshot.
pub fn tree_names(group: &GroupName) -> [String; 5] {
    ["log", "meta", "ledger", "state", "snapshot"].map(|part| format!("raft/{group}/{part}"))
}

/// Opens (creating if absent) a group's log store and state machine on `db`.
pub fn open_group(
    db: &sled::Db,
    group: &GroupName,
) -> Result<(SledLogStore, SledStateMachine), StoreError> {
    Ok((
        SledLogStore::open(db, group)?,
        SledStateMachine::open(db, group)?,
    ))
}

/// Deletes every tree of a group, e.g. when the node leaves it for good. The group must
/// not be running.
pub fn drop_group(db: &sled::Db, group: &GroupName) -> Result<(), StoreError> {
    for name in tree_names(group) {
        db.drop_tree(name)?;
    }
    Ok(())
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&error)).into()
}

fn corrupt(subject: ErrorSubject<NodeId>, detail: String) -> StorageError<NodeId> {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::error(detail)).into()
}

fn read_json<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    key: &[u8],
    subject: ErrorSubject<NodeId>,
) -> StorageResult<Option<T>> {
    match tree
        .get(key)
        .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
    {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_error(subject, ErrorVerb::Read, e)),
    }
}

fn to_json<T: serde::Serialize>(
    value: &T,
    subject: ErrorSubject<NodeId>,
) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io_error(subject, ErrorVerb::Write, e))
}

fn decode_index(key: &[u8]) -> StorageResult<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        corrupt(
            ErrorSubject::Logs,
            format!("log key of {} bytes", key.len()),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_log_entry(key: &[u8], value: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    let index = decode_index(key)?;
    let entry: Entry<TypeConfig> = serde_json::from_slice(value)
        .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
    if entry.log_id.index != index {
        return Err(corrupt(
            ErrorSubject::LogIndex(index),
            format!("entry under key {index} has index {}", entry.log_id.index),
        ));
    }
    Ok(entry)
}

/// A group's raft log, vote and log pointers. Cheap to clone (it is its own log reader).
#[derive(Clone)]
pub struct SledLogStore {
    log: Tree,
    meta: Tree,
}

impl SledLogStore {
    /// Opens the group's `log` and `meta` trees.
    pub fn open(db: &sled::Db, group: &GroupName) -> Result<SledLogStore, StoreError> {
        let [log, meta, ..] = tree_names(group);
        Ok(SledLogStore {
            log: db.open_tree(log)?,
            meta: db.open_tree(meta)?,
        })
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        // One sled database shares one log: flushing any tree makes every earlier write
        // of the database durable.
        self.log
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    /// Entries with index in `range`, stopping early once `entries_max` entries or
    /// `bytes_soft_max` stored bytes were gathered.
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        entries_max: usize,
        bytes_soft_max: usize,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => match start.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in self.log.range(start.to_be_bytes()..) {
            if entries.len() >= entries_max || bytes >= bytes_soft_max {
                break;
            }
            let (key, value) =
                item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let entry = decode_log_entry(&key, &value)?;
            if !range.contains(&entry.log_id.index) {
                break;
            }
            bytes += value.len();
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The entry at `index`, if this member's log still holds it (not yet purged behind
    /// a snapshot). Its log id's leader id names the leader that appended it.
    pub fn entry_at(&self, index: u64) -> Result<Option<Entry<TypeConfig>>, StoreError> {
        let Some(value) = self.log.get(index.to_be_bytes())? else {
            return Ok(None);
        };
        let entry = decode_log_entry(&index.to_be_bytes(), &value).map_err(|error| {
            StoreError::Corrupt {
                what: "log entry",
                detail: error.to_string(),
            }
        })?;
        Ok(Some(entry))
    }

    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> StorageResult<()> {
        let mut batch = Batch::default();
        for key in self.log.range(range).keys() {
            let key = key.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range, usize::MAX, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let entries = self.read_entries(
            start..end,
            ENTRIES_PER_APPEND_MAX,
            APPEND_PAYLOAD_BYTES_SOFT_MAX,
        )?;
        debug_assert!(entries.len() <= ENTRIES_PER_APPEND_MAX);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            read_json(&self.meta, KEY_LAST_PURGED, ErrorSubject::Store)?;
        let last = self
            .log
            .last()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            Some((key, value)) => Some(decode_log_entry(&key, &value)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let value = to_json(vote, ErrorSubject::Vote)?;
        self.meta
            .insert(KEY_VOTE, value)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_json(&self.meta, KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: a stale committed id after a crash only means re-applying less.
        let result = match committed {
            Some(log_id) => self
                .meta
                .insert(KEY_COMMITTED, to_json(&log_id, ErrorSubject::Store)?),
            None => self.meta.remove(KEY_COMMITTED),
        };
        result
            .map(|_| ())
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        read_json(&self.meta, KEY_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        for entry in entries {
            let value = to_json(&entry, ErrorSubject::LogIndex(entry.log_id.index))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), value);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Readable now; durable only after the flush, and only then is openraft told.
        match self.flush(ErrorSubject::Logs).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index.to_be_bytes()..)?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // `last_purged` is durable before any entry goes, so a crash in between leaves
        // entries openraft ignores rather than a hole it would trip on.
        let value = to_json(&log_id, ErrorSubject::Store)?;
        self.meta
            .insert(KEY_LAST_PURGED, value)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Store).await?;
        self.remove_range(..=log_id.index.to_be_bytes())
    }
}

/// Report and certificate totals of a ledger, kept beside it so the limits are checked
/// in O(1) inside the apply transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LedgerUsage {
    entries: u64,
    payload_bytes: u64,
}

impl LedgerUsage {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.entries.to_be_bytes());
        out[8..].copy_from_slice(&self.payload_bytes.to_be_bytes());
        out
    }

    fn decode(bytes: Option<&[u8]>) -> Result<LedgerUsage, String> {
        let Some(bytes) = bytes else {
            return Ok(LedgerUsage::default());
        };
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("usage of {} bytes", bytes.len()))?;
        let mut half = [0u8; 8];
        half.copy_from_slice(&bytes[..8]);
        let entries = u64::from_be_bytes(half);
        half.copy_from_slice(&bytes[8..]);
        Ok(LedgerUsage {
            entries,
            payload_bytes: u64::from_be_bytes(half),
        })
    }

    fn fits(self, more_entries: u64, more_bytes: usize) -> bool {
        self.entries + more_entries <= LEDGER_ENTRIES_MAX as u64
            && self.payload_bytes + more_bytes as u64 <= LEDGER_BYTES_MAX as u64
    }
}

type Abort = ConflictableTransactionError<StorageError<NodeId>>;

fn abort(error: StorageError<NodeId>) -> Abort {
    ConflictableTransactionError::Abort(error)
}

fn transaction_error(error: TransactionError<StorageError<NodeId>>) -> StorageError<NodeId> {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => {
            io_error(ErrorSubject::StateMachine, ErrorVerb::Write, error)
        }
    }
}

fn codec_error(subject: ErrorSubject<NodeId>, error: CodecError) -> StorageError<NodeId> {
    io_error(subject, ErrorVerb::Read, error)
}

/// Applies one ledger entry inside the apply transaction. Deterministic: every member
/// computes the same outcome from the same ledger.
fn apply_ledger_entry(
    ledger: &TransactionalTree,
    usage: &mut LedgerUsage,
    proposed: &LedgerEntry,
    applied_index: u64,
) -> Result<LedgerResponse, Abort> {
    let respond = |outcome, previous| LedgerResponse {
        applied_index,
        outcome,
        previous,
    };
    if proposed.check().is_err() {
        return Ok(respond(LedgerOutcome::TooLarge, None));
    }
    let key = proposed.task_id.as_bytes();
    let stored = match ledger.get(key)? {
        None => None,
        Some(bytes) => Some(
            decode_value(proposed.task_id, &bytes)
                .map_err(|e| abort(codec_error(ErrorSubject::StateMachine, e)))?,
        ),
    };
    let Some(stored) = stored else {
        if !usage.fits(1, proposed.payload_bytes()) {
            return Ok(respond(LedgerOutcome::LedgerFull, None));
        }
        ledger.insert(&key[..], encode_value(proposed))?;
        usage.entries += 1;
        usage.payload_bytes += proposed.payload_bytes() as u64;
        return Ok(respond(LedgerOutcome::Inserted, None));
    };
    let outcome = if stored == *proposed {
        LedgerOutcome::Unchanged
    } else if stored.report != proposed.report {
        LedgerOutcome::Conflict
    } else {
        match (&stored.certificate, &proposed.certificate) {
            (_, None) => LedgerOutcome::Unchanged,
            (Some(_), Some(_)) => LedgerOutcome::Conflict,
            (None, Some(certificate)) if !usage.fits(0, certificate.len()) => {
                LedgerOutcome::LedgerFull
            }
            (None, Some(certificate)) => {
                ledger.insert(&key[..], encode_value(proposed))?;
                usage.payload_bytes += certificate.len() as u64;
                LedgerOutcome::CertificateAttached
            }
        }
    };
    Ok(respond(outcome, Some(stored)))
}

/// A group's ledger as openraft's state machine, with persisted snapshots.
pub struct SledStateMachine {
    db: sled::Db,
    ledger: Tree,
    state: Tree,
    snapshot: Tree,
    /// Held while the ledger changes (apply, install) and while a snapshot reads it, so a
    /// snapshot is one consistent cut of ledger, applied log id and membership. Never held
    /// across an `.await`.
    cut: Arc<Mutex<()>>,
}

/// Builds snapshots of a [`SledStateMachine`] off the apply path.
pub struct SledSnapshotBuilder {
    db: sled::Db,
    ledger: Tree,
    state: Tree,
    snapshot: Tree,
    cut: Arc<Mutex<()>>,
}

fn lock(cut: &Mutex<()>) -> StorageResult<MutexGuard<'_, ()>> {
    cut.lock().map_err(|_| {
        corrupt(
            ErrorSubject::StateMachine,
            "state machine lock poisoned by a panic".to_string(),
        )
    })
}

fn read_applied_state(state: &Tree) -> StorageResult<AppliedState> {
    let last_applied = read_json(state, KEY_LAST_APPLIED, ErrorSubject::StateMachine)?;
    let membership = read_json(state, KEY_MEMBERSHIP, ErrorSubject::StateMachine)?;
    Ok((last_applied, membership.unwrap_or_default()))
}

fn read_snapshot(snapshot: &Tree) -> StorageResult<Option<Snapshot<TypeConfig>>> {
    let subject = ErrorSubject::Snapshot(None);
    let meta: Option<SnapshotMeta<NodeId, RaftMember>> =
        read_json(snapshot, KEY_SNAPSHOT_META, subject.clone())?;
    let data = snapshot
        .get(KEY_SNAPSHOT_DATA)
        .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
    match (meta, data) {
        (None, None) => Ok(None),
        (Some(meta), Some(data)) => Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        })),
        _ => Err(corrupt(
            subject,
            "snapshot meta and data not stored together".to_string(),
        )),
    }
}

impl SledStateMachine {
    /// Opens the group's `ledger`, `state` and `snapshot` trees.
    pub fn open(db: &sled::Db, group: &GroupName) -> Result<SledStateMachine, StoreError> {
        let [_, _, ledger, state, snapshot] = tree_names(group);
        Ok(SledStateMachine {
            db: db.clone(),
            ledger: db.open_tree(ledger)?,
            state: db.open_tree(state)?,
            snapshot: db.open_tree(snapshot)?,
            cut: Arc::new(Mutex::new(())),
        })
    }

    /// A read handle on the ledger, for the node's lookups.
    pub fn ledger(&self) -> LedgerReader {
        LedgerReader {
            ledger: self.ledger.clone(),
        }
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.ledger
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SledSnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let _cut = lock(&self.cut)?;
            let (last_log_id, last_membership) = read_applied_state(&self.state)?;
            let records = self
                .ledger
                .iter()
                .map(|item| item.map(|(key, value)| (key.to_vec(), value.to_vec())));
            let data = encode_snapshot(records)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
            let sequence = self
                .db
                .generate_id()
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
            let snapshot_id = match &last_log_id {
                Some(log_id) => format!("{}-{}-{sequence}", log_id.leader_id, log_id.index),
                None => format!("none-{sequence}"),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            store_snapshot_if_newer(&self.snapshot, &meta, &data)?;
            (meta, data)
        };
        self.snapshot
            .flush_async()
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Stores a built snapshot unless an installed one is already newer (an install can
/// overtake a build that started earlier).
fn store_snapshot_if_newer(
    snapshot: &Tree,
    meta: &SnapshotMeta<NodeId, RaftMember>,
    data: &[u8],
) -> StorageResult<()> {
    let subject = ErrorSubject::Snapshot(Some(meta.signature()));
    let stored: Option<SnapshotMeta<NodeId, RaftMember>> =
        read_json(snapshot, KEY_SNAPSHOT_META, subject.clone())?;
    if stored.is_some_and(|stored| stored.last_log_id > meta.last_log_id) {
        return Ok(());
    }
    let mut batch = Batch::default();
    batch.insert(KEY_SNAPSHOT_META, to_json(meta, subject.clone())?);
    batch.insert(KEY_SNAPSHOT_DATA, data);
    snapshot
        .apply_batch(batch)
        .map_err(|e| io_error(subject, ErrorVerb::Write, e))
}

impl RaftStateMachine<TypeConfig> for SledStateMachine {
    type SnapshotBuilder = SledSnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<AppliedState> {
        read_applied_state(&self.state)
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<LedgerResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let last_applied = to_json(&last.log_id, ErrorSubject::StateMachine)?;
        let responses = {
            let _cut = lock(&self.cut)?;
            (&self.ledger, &self.state)
                .transaction(|(ledger, state)| {
                    let mut usage = LedgerUsage::decode(state.get(KEY_USAGE)?.as_deref())
                        .map_err(|e| abort(corrupt(ErrorSubject::StateMachine, e)))?;
                    let mut responses = Vec::with_capacity(entries.len());
                    let mut membership = None;
                    for entry in &entries {
                        let index = entry.log_id.index;
                        let response = match &entry.payload {
                            EntryPayload::Normal(proposed) => {
                                apply_ledger_entry(ledger, &mut usage, proposed, index)?
                            }
                            EntryPayload::Membership(change) => {
                                membership =
                                    Some(StoredMembership::new(Some(entry.log_id), change.clone()));
                                LedgerResponse {
                                    applied_index: index,
                                    outcome: LedgerOutcome::NotLedgerEntry,
                                    previous: None,
                                }
                            }
                            EntryPayload::Blank => LedgerResponse {
                                applied_index: index,
                                outcome: LedgerOutcome::NotLedgerEntry,
                                previous: None,
                            },
                        };
                        responses.push(response);
                    }
                    if let Some(membership) = &membership {
                        let value =
                            to_json(membership, ErrorSubject::StateMachine).map_err(abort)?;
                        state.insert(KEY_MEMBERSHIP, value)?;
                    }
                    state.insert(KEY_LAST_APPLIED, last_applied.as_slice())?;
                    state.insert(KEY_USAGE, &usage.encode()[..])?;
                    Ok(responses)
                })
                .map_err(transaction_error)?
        };
        debug_assert_eq!(responses.len(), entries.len());
        self.flush(ErrorSubject::StateMachine).await?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SledSnapshotBuilder {
        SledSnapshotBuilder {
            db: self.db.clone(),
            ledger: self.ledger.clone(),
            state: self.state.clone(),
            snapshot: self.snapshot.clone(),
            cut: self.cut.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftMember>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(corrupt(
                subject,
                format!(
                    "snapshot of {} bytes exceeds {SNAPSHOT_BYTES_MAX}",
                    data.len()
                ),
            ));
        }
        let decoded = decode_snapshot(&data).map_err(|e| codec_error(subject.clone(), e))?;
        let usage = LedgerUsage {
            entries: decoded.records.len() as u64,
            payload_bytes: decoded.payload_bytes as u64,
        };
        let meta_json = to_json(meta, subject.clone())?;
        let last_applied = meta
            .last_log_id
            .map(|log_id| to_json(&log_id, subject.clone()))
            .transpose()?;
        let membership = to_json(&meta.last_membership, subject.clone())?;
        {
            let _cut = lock(&self.cut)?;
            let old_keys: Vec<IVec> = self
                .ledger
                .iter()
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
            (&self.ledger, &self.state, &self.snapshot)
                .transaction(|(ledger, state, snapshot)| {
                    for key in &old_keys {
                        ledger.remove(key)?;
                    }
                    for (task_id, value) in &decoded.records {
                        ledger.insert(&task_id.as_bytes()[..], value.as_slice())?;
                    }
                    match &last_applied {
                        Some(value) => state.insert(KEY_LAST_APPLIED, value.as_slice())?,
                        None => state.remove(KEY_LAST_APPLIED)?,
                    };
                    state.insert(KEY_MEMBERSHIP, membership.as_slice())?;
                    state.insert(KEY_USAGE, &usage.encode()[..])?;
                    snapshot.insert(KEY_SNAPSHOT_META, meta_json.as_slice())?;
                    snapshot.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
                    Ok(())
                })
                .map_err(transaction_error)?;
        }
        self.flush(subject).await
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        read_snapshot(&self.snapshot)
    }
}

/// A read handle on a group's ledger. Reads are local: they see what this member has
/// applied, which may lag the group. For a linearizable read, call
/// `Raft::ensure_linearizable` first (see [`crate::RaftGroup::read`]).
#[derive(Clone)]
pub struct LedgerReader {
    ledger: Tree,
}

impl LedgerReader {
    /// The decision stored for `task_id`, if any.
    pub fn get(&self, task_id: &TaskId) -> Result<Option<LedgerEntry>, StoreError> {
        match self.ledger.get(task_id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => {
                decode_value(*task_id, &bytes)
                    .map(Some)
                    .map_err(|error| StoreError::Corrupt {
                        what: "ledger value",
                        detail: error.to_string(),
                    })
            }
        }
    }

    /// Whether the ledger holds no decision.
    pub fn is_empty(&self) -> bool {
        self.ledger.is_empty()
    }
}

// Every stored length fits the codec's u32 prefixes.
const _: () = assert!(codec::LEDGER_VALUE_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(SNAPSHOT_BYTES_MAX < u32::MAX as usize);
