//! The sled store against openraft's own storage suite, the ledger's apply rules, and a
//! real three-member openraft cluster over the in-memory transport.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote};
use tempfile::TempDir;

use super::*;
use polity_consensus::ids::{PublicKey, TaskId};

const WAIT: Duration = Duration::from_secs(10);

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn open_db(path: &Path) -> sled::Db {
    sled::Config::new().path(path).open().unwrap()
}

fn entry(task: u8, report: &[u8], certificate: Option<&[u8]>) -> LedgerEntry {
    LedgerEntry::new(
        TaskId([task; 32]),
        report.to_vec(),
        certificate.map(<[u8]>::to_vec),
    )
    .unwrap()
}

fn log_entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload,
    }
}

struct TempSled;

impl StoreBuilder<TypeConfig, SledLogStore, SledStateMachine, TempDir> for TempSled {
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore, SledStateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let (log, state_machine) = open_group(&db, &group("suite")).unwrap();
        Ok((dir, log, state_machine))
    }
}

/// openraft's own conformance suite (it runs its own tokio runtimes, hence `#[test]`).
#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(TempSled).unwrap();
}

/// Apply `entries` as log indexes 1.. and return the outcomes.
async fn apply(
    state_machine: &mut SledStateMachine,
    first_index: u64,
    entries: &[LedgerEntry],
) -> Vec<LedgerResponse> {
    let log = entries
        .iter()
        .enumerate()
        .map(|(i, e)| log_entry(first_index + i as u64, EntryPayload::Normal(e.clone())));
    state_machine.apply(log.collect::<Vec<_>>()).await.unwrap()
}

#[tokio::test]
async fn ledger_keeps_the_first_report_and_attaches_certificates_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let (_log, mut sm) = open_group(&db, &group("g")).unwrap();
    let ledger = sm.ledger();

    let original = entry(1, b"report-a", None);
    let certified = entry(1, b"report-a", Some(b"cert-1"));
    let mut too_large = entry(3, b"r", None);
    too_large.report = vec![0; LEDGER_REPORT_BYTES_MAX + 1];
    let responses = apply(
        &mut sm,
        1,
        &[
            original.clone(),
            original.clone(),
            entry(1, b"report-b", None),
            certified.clone(),
            entry(1, b"report-a", Some(b"cert-2")),
            original.clone(),
            too_large,
            entry(2, b"other", None),
        ],
    )
    .await;
    let outcomes: Vec<(u64, LedgerOutcome)> = responses
        .iter()
        .map(|r| (r.applied_index, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, LedgerOutcome::Inserted),
            (2, LedgerOutcome::Unchanged),
            (3, LedgerOutcome::Conflict),
            (4, LedgerOutcome::CertificateAttached),
            (5, LedgerOutcome::Conflict),
            (6, LedgerOutcome::Unchanged),
            (7, LedgerOutcome::TooLarge),
            (8, LedgerOutcome::Inserted),
        ]
    );
    assert_eq!(responses[0].previous, None);
    assert_eq!(responses[2].previous.as_ref(), Some(&original));
    assert_eq!(responses[4].previous.as_ref(), Some(&certified));
    assert_eq!(ledger.get(&TaskId([1; 32])).unwrap(), Some(certified));
    assert_eq!(ledger.get(&TaskId([3; 32])).unwrap(), None);
    assert_eq!(
        sm.applied_state().await.unwrap().0.map(|l| l.index),
        Some(8)
    );
}

#[tokio::test]
async fn groups_share_a_db_but_not_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let (mut log_a, mut sm_a) = open_group(&db, &group("a")).unwrap();
    let (mut log_b, sm_b) = open_group(&db, &group("b")).unwrap();
    apply(&mut sm_a, 1, &[entry(1, b"x", None)]).await;
    log_a.save_vote(&Vote::new(3, 7)).await.unwrap();
    assert!(sm_b.ledger().get(&TaskId([1; 32])).unwrap().is_none());
    assert_eq!(log_b.read_vote().await.unwrap(), None);
    assert!(sm_a.ledger().get(&TaskId([1; 32])).unwrap().is_some());

    drop((log_a, sm_a));
    drop_group(&db, &group("a")).unwrap();
    let (mut log_a, sm_a) = open_group(&db, &group("a")).unwrap();
    assert!(sm_a.ledger().is_empty());
    assert_eq!(log_a.read_vote().await.unwrap(), None);
}

#[tokio::test]
async fn snapshots_carry_the_ledger_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let (_log, mut leader) = open_group(&db, &group("leader")).unwrap();
    let (_log_f, mut follower) = open_group(&db, &group("follower")).unwrap();
    apply(&mut follower, 1, &[entry(9, b"stale", None)]).await;
    let entries = [entry(1, b"one", Some(b"c1")), entry(2, b"two", None)];
    apply(&mut leader, 1, &entries).await;

    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));
    let data = snapshot.snapshot.into_inner();
    follower
        .install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data.clone())))
        .await
        .unwrap();
    let ledger = follower.ledger();
    for e in &entries {
        assert_eq!(ledger.get(&e.task_id).unwrap().as_ref(), Some(e));
    }
    assert_eq!(
        ledger.get(&TaskId([9; 32])).unwrap(),
        None,
        "replaced, not merged"
    );
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    let mut corrupt = data;
    corrupt.truncate(corrupt.len() - 1);
    let refused = follower
        .install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(corrupt)))
        .await;
    assert!(refused.is_err());
    assert_eq!(
        ledger.get(&entries[0].task_id).unwrap().as_ref(),
        Some(&entries[0])
    );
}

#[tokio::test]
async fn corrupt_disk_bytes_are_storage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let name = group("g");
    let (mut log, mut sm) = open_group(&db, &name).unwrap();
    let [log_tree, meta_tree, ledger_tree, state_tree, _] = tree_names_of(&db, &name);

    log_tree
        .insert(5u64.to_be_bytes(), &b"{not json"[..])
        .unwrap();
    assert!(log.try_get_log_entries(0..10).await.is_err());
    assert!(log.get_log_state().await.is_err());
    log_tree.clear().unwrap();
    let mislabeled = serde_json::to_vec(&log_entry(6, EntryPayload::Blank)).unwrap();
    log_tree.insert(5u64.to_be_bytes(), mislabeled).unwrap();
    assert!(log.try_get_log_entries(0..10).await.is_err());
    log_tree.insert(&b"short"[..], &b"{}"[..]).unwrap();
    assert!(log.try_get_log_entries(..).await.is_err());

    meta_tree.insert("vote", &b"\xff"[..]).unwrap();
    assert!(log.read_vote().await.is_err());

    ledger_tree
        .insert([1u8; 32], &b"\x00\x00\x00\x09ab"[..])
        .unwrap();
    assert!(sm.ledger().get(&TaskId([1; 32])).is_err());
    let refused = sm
        .apply([log_entry(1, EntryPayload::Normal(entry(1, b"r", None)))])
        .await;
    assert!(refused.is_err(), "a corrupt stored value stops apply");
    assert!(
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .is_err()
    );

    state_tree.insert("usage", &b"short"[..]).unwrap();
    let refused = sm
        .apply([log_entry(1, EntryPayload::Normal(entry(2, b"r", None)))])
        .await;
    assert!(refused.is_err());
}

fn tree_names_of(db: &sled::Db, name: &GroupName) -> [sled::Tree; 5] {
    store::tree_names(name).map(|tree| db.open_tree(tree).unwrap())
}

#[tokio::test]
async fn log_survives_reopen_and_purge_keeps_its_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let name = group("g");
    {
        let db = open_db(dir.path());
        let (mut log, _sm) = open_group(&db, &name).unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        // Appending needs openraft's callback, which only openraft can make; write the
        // way `append` does and purge through the trait.
        let [log_tree, ..] = tree_names_of(&db, &name);
        for index in 1..=5 {
            let bytes = serde_json::to_vec(&log_entry(index, EntryPayload::Blank)).unwrap();
            log_tree.insert(index.to_be_bytes(), bytes).unwrap();
        }
        log.purge(openraft::testing::log_id(1, 1, 3)).await.unwrap();
        log.save_committed(Some(openraft::testing::log_id(1, 1, 4)))
            .await
            .unwrap();
    }
    let db = open_db(dir.path());
    let (mut log, _sm) = open_group(&db, &name).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    assert_eq!(
        log.read_committed().await.unwrap().map(|l| l.index),
        Some(4)
    );
    let indexes: Vec<u64> = log
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [4, 5]);
    let limited = log.limited_get_log_entries(0, u64::MAX).await.unwrap();
    assert!(!limited.is_empty() && limited.len() <= ENTRIES_PER_APPEND_MAX);
}

#[test]
fn serve_refuses_rpcs_over_the_bounds() {
    let meta = openraft::SnapshotMeta::<NodeId, RaftMember>::default();
    let chunk = |offset: u64, length: usize| {
        RaftRpc::InstallSnapshot(openraft::raft::InstallSnapshotRequest {
            vote: Vote::new(1, 1),
            meta: meta.clone(),
            offset,
            data: vec![0; length],
            done: false,
        })
    };
    assert!(network::check_rpc(&chunk(0, SNAPSHOT_CHUNK_BYTES_MAX)).is_ok());
    assert!(network::check_rpc(&chunk(0, SNAPSHOT_CHUNK_BYTES_MAX + 1)).is_err());
    assert!(network::check_rpc(&chunk(SNAPSHOT_BYTES_MAX as u64, 1)).is_err());
    assert!(network::check_rpc(&chunk(u64::MAX, 1)).is_err());
    let append = |count: u64| {
        RaftRpc::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=count)
                .map(|i| log_entry(i, EntryPayload::Blank))
                .collect(),
        })
    };
    assert!(network::check_rpc(&append(ENTRIES_PER_APPEND_MAX as u64)).is_ok());
    assert!(network::check_rpc(&append(ENTRIES_PER_APPEND_MAX as u64 + 1)).is_err());
    let refused = RaftReply::Refused("too big".into()).into_append_entries();
    assert!(matches!(refused, Err(TransportError::Unreachable(_))));
}

// ---- a real cluster ------------------------------------------------------------------

struct Member {
    key: PublicKey,
    member: RaftMember,
    dir: TempDir,
}

impl Member {
    fn new(seed: u8) -> Member {
        let key =
            PublicKey::from_verifying_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key());
        Member {
            key,
            member: RaftMember::new(key, format!("peer-{seed}")).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn id(&self) -> NodeId {
        self.member.node_id()
    }
}

/// Opens the member's db, retrying while a shut-down raft's tasks still hold the lock.
async fn reopen(path: &Path) -> sled::Db {
    let deadline = Instant::now() + WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return db,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("reopen {}: {error}", path.display()),
        }
    }
}

fn test_config() -> Arc<openraft::Config> {
    let mut config = raft_config("polity-test").unwrap();
    // Small enough that the test builds snapshots and purges the log behind them.
    config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(3);
    config.max_in_snapshot_log_to_keep = 0;
    Arc::new(config.validate().unwrap())
}

async fn start(member: &Member, db: &sled::Db, router: &MemoryRouter) -> RaftGroup {
    let raft = RaftGroup::start(
        &member.key,
        group("region-eu"),
        test_config(),
        db,
        router.clone(),
    )
    .await
    .unwrap();
    router
        .register(raft.node_id(), raft.raft().clone())
        .unwrap();
    raft
}

async fn wait_for_leader(group: &RaftGroup, not: Option<NodeId>) -> NodeId {
    let metrics = group
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .unwrap();
    metrics.current_leader.unwrap()
}

async fn wait_applied(group: &RaftGroup, index: u64) {
    group
        .raft()
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_commit_fail_over_and_restart_from_disk() {
    let members: Vec<Member> = (1..=3).map(Member::new).collect();
    let router = MemoryRouter::new();
    let mut dbs: Vec<Option<sled::Db>> = members
        .iter()
        .map(|m| Some(open_db(m.dir.path())))
        .collect();
    let mut groups: Vec<Option<RaftGroup>> = Vec::new();
    for (member, db) in members.iter().zip(&dbs) {
        groups.push(Some(start(member, db.as_ref().unwrap(), &router).await));
    }
    let membership = Members::new(members.iter().map(|m| m.member.clone())).unwrap();
    groups[0]
        .as_ref()
        .unwrap()
        .initialize(membership)
        .await
        .unwrap();

    // Elect, then commit three decisions through the leader.
    let leader_id = wait_for_leader(groups[0].as_ref().unwrap(), None).await;
    let leader_at = members.iter().position(|m| m.id() == leader_id).unwrap();
    let first = [
        entry(1, b"one", None),
        entry(2, b"two", None),
        entry(3, b"three", None),
    ];
    let mut last_index = 0;
    for e in &first {
        let response = groups[leader_at]
            .as_ref()
            .unwrap()
            .propose(e.clone())
            .await
            .unwrap();
        assert_eq!(response.index, response.response.applied_index);
        assert!(response.term >= 1);
        let response = response.response;
        assert_eq!(response.outcome, LedgerOutcome::Inserted);
        last_index = response.applied_index;
    }
    for group in groups.iter().flatten() {
        wait_applied(group, last_index).await;
        for e in &first {
            assert_eq!(group.ledger().get(&e.task_id).unwrap().as_ref(), Some(e));
        }
    }

    // Kill the leader; the other two elect a new one.
    let killed_at_index = last_index;
    router.unregister(leader_id);
    groups[leader_at].take().unwrap().shutdown().await.unwrap();
    dbs[leader_at] = None;
    let survivor = groups.iter().flatten().next().unwrap();
    let new_leader_id = wait_for_leader(survivor, Some(leader_id)).await;
    assert_ne!(new_leader_id, leader_id);
    let new_leader_at = members
        .iter()
        .position(|m| m.id() == new_leader_id)
        .unwrap();
    let follower_at = (0..3)
        .find(|&i| i != leader_at && i != new_leader_at)
        .unwrap();
    let new_leader = groups[new_leader_at].as_ref().unwrap();

    // Write again: a new task, a certificate for an old one, a conflicting report.
    let fourth = entry(4, b"four", None);
    let certified = entry(1, b"one", Some(b"certificate-1"));
    let response = new_leader.propose(fourth.clone()).await.unwrap().response;
    assert_eq!(response.outcome, LedgerOutcome::Inserted);
    let response = new_leader
        .propose(certified.clone())
        .await
        .unwrap()
        .response;
    assert_eq!(response.outcome, LedgerOutcome::CertificateAttached);
    let response = new_leader
        .propose(entry(2, b"not-two", None))
        .await
        .unwrap()
        .response;
    assert_eq!(response.outcome, LedgerOutcome::Conflict);
    assert_eq!(response.previous.as_ref(), Some(&first[1]));
    last_index = response.applied_index;
    let forwarded = groups[follower_at]
        .as_ref()
        .unwrap()
        .propose(entry(5, b"five", None))
        .await;
    assert!(matches!(
        forwarded,
        Err(RaftGroupError::ForwardToLeader { leader_id: Some(id), .. }) if id == new_leader_id
    ));

    // Read back through the ledger, linearizably on the leader.
    assert_eq!(
        new_leader.read(&fourth.task_id).await.unwrap(),
        Some(fourth.clone())
    );
    assert_eq!(
        new_leader.read(&certified.task_id).await.unwrap(),
        Some(certified.clone())
    );
    assert_eq!(new_leader.read(&TaskId([5; 32])).await.unwrap(), None);
    wait_applied(groups[follower_at].as_ref().unwrap(), last_index).await;
    assert_eq!(
        groups[follower_at]
            .as_ref()
            .unwrap()
            .ledger()
            .get(&fourth.task_id)
            .unwrap(),
        Some(fourth.clone())
    );

    // Everything the old leader lacks is purged behind a snapshot: it must catch up by one.
    new_leader
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > killed_at_index),
            "purged behind a snapshot",
        )
        .await
        .unwrap();

    // Restart the old leader from its sled db: it still has what it applied...
    let db = reopen(members[leader_at].dir.path()).await;
    let restarted = start(&members[leader_at], &db, &router).await;
    for e in &first {
        assert_eq!(
            restarted.ledger().get(&e.task_id).unwrap().as_ref(),
            Some(e)
        );
    }
    // ...and catches up with what it missed.
    wait_applied(&restarted, last_index).await;
    assert_eq!(
        restarted.ledger().get(&fourth.task_id).unwrap(),
        Some(fourth)
    );
    assert_eq!(
        restarted.ledger().get(&certified.task_id).unwrap(),
        Some(certified)
    );
    assert_eq!(
        restarted.ledger().get(&first[1].task_id).unwrap().as_ref(),
        Some(&first[1])
    );
    let snapshot = restarted.raft().metrics().borrow().snapshot;
    assert!(
        snapshot.is_some(),
        "caught up through an installed snapshot"
    );

    restarted.shutdown().await.unwrap();
    for group in groups.into_iter().flatten() {
        group.shutdown().await.unwrap();
    }
}

/// A [`MemoryRouter`] that carries at most one entry per `AppendEntries`, answering
/// larger appends with [`TransportError::PayloadTooLarge`] (as the node's frame-bounded
/// transport does) and counting them.
#[derive(Clone)]
struct OneEntryPerAppend {
    router: MemoryRouter,
    too_large: Arc<std::sync::atomic::AtomicUsize>,
}

impl RaftTransport for OneEntryPerAppend {
    async fn append_entries(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<network::AppendEntriesReply, TransportError> {
        if request.entries.len() > 1 {
            self.too_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TransportError::PayloadTooLarge { entries_hint: 1 });
        }
        self.router.append_entries(target, member, request).await
    }

    async fn vote(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<network::VoteReply, TransportError> {
        self.router.vote(target, member, request).await
    }

    async fn install_snapshot(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<network::InstallSnapshotReply, TransportError> {
        self.router.install_snapshot(target, member, request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_too_large_makes_the_leader_send_fewer_entries() {
    let members: Vec<Member> = (1..=3).map(Member::new).collect();
    let router = MemoryRouter::new();
    let transport = OneEntryPerAppend {
        router: router.clone(),
        too_large: Arc::default(),
    };
    let dbs: Vec<sled::Db> = members.iter().map(|m| open_db(m.dir.path())).collect();
    let mut groups = Vec::new();
    for (member, db) in members.iter().zip(&dbs) {
        let group = RaftGroup::start(
            &member.key,
            group("region-eu"),
            Arc::new(raft_config("polity-test").unwrap()),
            db,
            transport.clone(),
        )
        .await
        .unwrap();
        groups.push(group);
    }
    // The third member is away while the others commit a backlog.
    for group in &groups[..2] {
        router
            .register(group.node_id(), group.raft().clone())
            .unwrap();
    }
    let membership = Members::new(members.iter().map(|m| m.member.clone())).unwrap();
    groups[0].initialize(membership).await.unwrap();
    let leader_id = wait_for_leader(&groups[0], None).await;
    let leader = groups.iter().find(|g| g.node_id() == leader_id).unwrap();
    let mut last_index = 0;
    for task in 1..=5 {
        last_index = leader
            .propose(entry(task, b"report", None))
            .await
            .unwrap()
            .index;
    }

    // Back: it catches up one entry per append.
    router
        .register(groups[2].node_id(), groups[2].raft().clone())
        .unwrap();
    wait_applied(&groups[2], last_index).await;
    for task in 1..=5 {
        assert!(
            groups[2]
                .ledger()
                .get(&TaskId([task; 32]))
                .unwrap()
                .is_some()
        );
    }
    assert!(
        transport
            .too_large
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the backlog was sent in one append"
    );
    for group in groups {
        group.shutdown().await.unwrap();
    }
}
