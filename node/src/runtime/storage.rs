//! Durable state of a node, in sled, behind the [`Store`] trait.
//!
//! Trees: `meta` (identity record), `tasks` (task id → `TaskRecord` protobuf),
//! `trust` (public key → score). The raft log and state machine get their own trees
//! when raft groups land. The sled handle is owned by [`SledStore`]; the rest of
//! the node holds an `Arc<dyn Store>`.
//!
//! **Invariant:** a record is written whole (one sled insert) and flushed before the
//! node reports it final; a crash never leaves half a record.

use std::path::{Path, PathBuf};

use polity_consensus::{PublicKey, TaskId, TrustScore};
use polity_proto::TaskRecord;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data dir {0} is in use by another polity process (its database is locked); \
         stop that process or choose another --data-dir"
    )]
    Locked(PathBuf),
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Typed access to a node's durable state.
pub trait Store: Send + Sync + 'static {
    /// The public key the data dir belongs to, recorded at first start.
    fn identity(&self) -> Result<Option<PublicKey>, StoreError>;
    fn set_identity(&self, key: &PublicKey) -> Result<(), StoreError>;

    /// Writes (or replaces) a task record.
    fn put_task(&self, record: &TaskRecord) -> Result<(), StoreError>;
    fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;
    /// Every stored task id, in key order, at most `limit`.
    fn task_ids(&self, limit: usize) -> Result<Vec<TaskId>, StoreError>;
    fn task_count(&self) -> u64;

    fn trust(&self, peer: &PublicKey) -> Result<Option<TrustScore>, StoreError>;
    fn set_trust(&self, peer: &PublicKey, score: TrustScore) -> Result<(), StoreError>;
    /// Every stored score, in key order, at most `limit`.
    fn trust_entries(&self, limit: usize) -> Result<Vec<(PublicKey, TrustScore)>, StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Cheap liveness probe for /ready.
    fn is_healthy(&self) -> bool;
}

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    tasks: sled::Tree,
    trust: sled::Tree,
}

const IDENTITY_KEY: &[u8] = b"identity";

impl SledStore {
    /// Opens (or creates) the database in `data_dir/db`. Fails at once when another
    /// process holds it.
    pub fn open(data_dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(ref io) if is_lock_error(io) => {
                    StoreError::Locked(data_dir.to_path_buf())
                }
                other => StoreError::Sled(other),
            })?;
        Ok(SledStore {
            meta: db.open_tree("meta")?,
            tasks: db.open_tree("tasks")?,
            trust: db.open_tree("trust")?,
            db,
        })
    }

    /// The node's sled database (a cheap clone of the handle), shared with the raft
    /// groups ([`crate::raft::RaftGroups`]), whose trees are named `raft/<group>/…`.
    pub fn db(&self) -> sled::Db {
        self.db.clone()
    }
}

fn is_lock_error(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
        || error.to_string().contains("lock")
        || error.raw_os_error() == Some(libc::EWOULDBLOCK)
}

impl Store for SledStore {
    fn identity(&self) -> Result<Option<PublicKey>, StoreError> {
        let Some(bytes) = self.meta.get(IDENTITY_KEY)? else {
            return Ok(None);
        };
        let key: [u8; 32] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            key: "meta/identity".into(),
            reason: format!("{} bytes, expected 32", bytes.len()),
        })?;
        Ok(Some(PublicKey(key)))
    }

    fn set_identity(&self, key: &PublicKey) -> Result<(), StoreError> {
        self.meta.insert(IDENTITY_KEY, key.0.as_slice())?;
        Ok(())
    }

    fn put_task(&self, record: &TaskRecord) -> Result<(), StoreError> {
        debug_assert_eq!(record.task_id.len(), 32, "task ids are SHA-256 digests");
        self.tasks
            .insert(record.task_id.as_slice(), record.encode_to_vec())?;
        Ok(())
    }

    fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let Some(bytes) = self.tasks.get(id.as_bytes())? else {
            return Ok(None);
        };
        TaskRecord::decode(bytes.as_ref())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("tasks/{id}"),
                reason: e.to_string(),
            })
    }

    fn task_ids(&self, limit: usize) -> Result<Vec<TaskId>, StoreError> {
        let mut ids = Vec::new();
        for entry in self.tasks.iter().keys().take(limit) {
            let key = entry?;
            if let Ok(bytes) = <[u8; 32]>::try_from(key.as_ref()) {
                ids.push(TaskId(bytes));
            }
        }
        Ok(ids)
    }

    fn task_count(&self) -> u64 {
        self.tasks.len() as u64
    }

    fn trust(&self, peer: &PublicKey) -> Result<Option<TrustScore>, StoreError> {
        let Some(bytes) = self.trust.get(peer.0)? else {
            return Ok(None);
        };
        TrustScore::from_bytes(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("trust/{peer}"),
                reason: format!("{} bytes that are not a trust score", bytes.len()),
            })
    }

    fn set_trust(&self, peer: &PublicKey, score: TrustScore) -> Result<(), StoreError> {
        assert!(
            (0.0..=1.0).contains(&score.score),
            "trust scores live in [0,1], got {}",
            score.score
        );
        self.trust.insert(peer.0, score.to_bytes().as_slice())?;
        Ok(())
    }

    fn trust_entries(&self, limit: usize) -> Result<Vec<(PublicKey, TrustScore)>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.trust.iter().take(limit) {
            let (key, value) = entry?;
            if let (Ok(key), Some(score)) = (
                <[u8; 32]>::try_from(key.as_ref()),
                TrustScore::from_bytes(&value),
            ) {
                entries.push((PublicKey(key), score));
            }
        }
        Ok(entries)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        self.meta.get(IDENTITY_KEY).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polity_proto::TaskState;

    fn record(byte: u8) -> TaskRecord {
        TaskRecord {
            task_id: vec![byte; 32],
            state: TaskState::Decided as i32,
            value: format!("value-{byte}").into_bytes(),
            ..TaskRecord::default()
        }
    }

    #[test]
    fn writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = PublicKey([9; 32]);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.set_identity(&key).unwrap();
            store.put_task(&record(1)).unwrap();
            store.put_task(&record(2)).unwrap();
            store
                .set_trust(
                    &key,
                    TrustScore {
                        score: 0.25,
                        updated_at_ms: 5,
                    },
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), Some(key));
        assert_eq!(store.task(&TaskId([1; 32])).unwrap(), Some(record(1)));
        assert_eq!(store.task(&TaskId([2; 32])).unwrap(), Some(record(2)));
        assert_eq!(store.task(&TaskId([3; 32])).unwrap(), None);
        assert_eq!(store.task_count(), 2);
        assert_eq!(
            store.task_ids(10).unwrap(),
            vec![TaskId([1; 32]), TaskId([2; 32])]
        );
        assert_eq!(store.task_ids(1).unwrap().len(), 1);
        assert_eq!(
            store.trust(&key).unwrap(),
            Some(TrustScore {
                score: 0.25,
                updated_at_ms: 5
            })
        );
        assert_eq!(store.trust_entries(10).unwrap().len(), 1);
    }

    #[test]
    fn a_second_opener_fails_naming_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let error = SledStore::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(error, StoreError::Locked(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .tasks
            .insert([4u8; 32], &[0xff, 0xff, 0xff][..])
            .unwrap();
        let error = store.task(&TaskId([4; 32])).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }
}

/// Group commit: many tasks finishing at once share one `flush` (one fsync), run off
/// the async runtime. A caller's writes before `flush().await` are durable when it
/// returns `Ok`.
#[derive(Clone)]
pub struct GroupCommit {
    requests: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), FlushError>>>,
}

/// Why a group flush did not make the writes durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// The store's flush failed (shared by everyone in the group, hence a string).
    #[error("{0}")]
    Store(String),
    #[error("the flusher stopped")]
    Stopped,
}

/// Callers waiting for the next flush at most; more wait for a slot.
const FLUSH_WAITERS_MAX: usize = 4_096;

impl GroupCommit {
    /// Starts the flusher task on the current runtime.
    pub fn start(store: std::sync::Arc<dyn Store>) -> GroupCommit {
        let (requests, mut receiver) = tokio::sync::mpsc::channel::<
            tokio::sync::oneshot::Sender<Result<(), FlushError>>,
        >(FLUSH_WAITERS_MAX);
        tokio::spawn(async move {
            let mut waiters = Vec::new();
            while let Some(first) = receiver.recv().await {
                waiters.push(first);
                // Everyone who asked while the previous flush ran shares this one.
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                let store = std::sync::Arc::clone(&store);
                let result = tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .map_err(|error| FlushError::Store(error.to_string()))
                    .and_then(|flushed| flushed.map_err(|e| FlushError::Store(e.to_string())));
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        GroupCommit { requests }
    }

    /// Makes every write made before this call durable.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.requests
            .send(done)
            .await
            .map_err(|_| FlushError::Stopped)?;
        wait.await.map_err(|_| FlushError::Stopped)?
    }
}
