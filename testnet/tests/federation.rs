//! Tasks decided across real node processes on loopback: every path at every scope on
//! a 9-node testnet (3 regions on 2 continents), a region that goes silent, and an
//! entry node killed mid-task.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use polity_consensus::verify_chain;
use polity_proto::federation_client::FederationClient;
use polity_proto::{
    ConsensusPath, GetTaskRequest, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskEventKind,
    TaskRecord, TaskState, WatchTaskRequest,
};
use polity_testnet::cluster::{Launched, UpArgs, default_capabilities, launch};
use polity_testnet::process::{NodeProcess, pause, polity_binary, resume};
use sha2::Digest;
use tonic::transport::Channel;

fn up_args(dir: &std::path::Path, node_args: &[&str]) -> UpArgs {
    UpArgs {
        nodes: 9,
        regions: 3,
        continents: 2,
        capabilities: Vec::new(),
        dir: dir.to_path_buf(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: node_args.iter().map(|arg| arg.to_string()).collect(),
    }
}

fn request(
    capability: &str,
    payload: &str,
    scope: Level,
    path: ConsensusPath,
) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: capability.into(),
        payload: payload.as_bytes().to_vec(),
        scope: Some(Scope {
            level: scope as i32,
            name: String::new(),
        }),
        replication: 3,
        policy: Some(RiskPolicy {
            path_override: path as i32,
            ..RiskPolicy::default()
        }),
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

async fn submit(client: &mut FederationClient<Channel>, request: SubmitTaskRequest) -> TaskRecord {
    client
        .submit_task(request)
        .await
        .unwrap_or_else(|status| panic!("submit failed: {status}"))
        .into_inner()
}

fn state(record: &TaskRecord) -> TaskState {
    TaskState::try_from(record.state).unwrap()
}

/// Placement of the testnet: region-0 and region-2 on continent-0, region-1 on
/// continent-1 (see `cluster::placement`).
fn expected_groups(scope: Level, entry_region: &str) -> BTreeSet<(i32, String)> {
    let region = |name: &str| (Level::Region as i32, name.to_string());
    let continent = |name: &str| (Level::Continent as i32, name.to_string());
    match scope {
        Level::Region => [region(entry_region)].into(),
        Level::Continent => match entry_region {
            "region-1" => [region("region-1"), continent("continent-1")].into(),
            _ => [
                region("region-0"),
                region("region-2"),
                continent("continent-0"),
            ]
            .into(),
        },
        _ => [
            region("region-0"),
            region("region-1"),
            region("region-2"),
            continent("continent-0"),
            continent("continent-1"),
            (Level::Global as i32, "global".to_string()),
        ]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_decides_at_every_scope_and_a_silent_region_degrades_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Launched { nodes, .. } = launch(&up_args(dir.path(), &[]), &default_capabilities())
        .await
        .expect("testnet starts and converges");

    let paths = [
        ConsensusPath::Bft,
        ConsensusPath::Stake,
        ConsensusPath::Raft,
    ];
    let scopes = [Level::Region, Level::Continent, Level::Global];
    for (p, path) in paths.into_iter().enumerate() {
        for (s, scope) in scopes.into_iter().enumerate() {
            // A different entry node each time, so every region enters tasks.
            let entry = &nodes[(p * 3 + s) % nodes.len()];
            let mut client = entry.client().await.unwrap();
            let payload = format!("{path:?} at {scope:?}");
            let record = submit(&mut client, request("sha256", &payload, scope, path)).await;
            let what = format!("{path:?} at {scope:?} entered at {}", entry.spec.name);
            assert_eq!(state(&record), TaskState::Decided, "{what}: {record:?}");
            let certificate = record.certificate.as_ref().expect("decided: a certificate");
            let summary = verify_chain(certificate).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(summary.value, record.value, "{what}");
            let digest = hex::encode(sha2::Sha256::digest(payload.as_bytes()));
            assert_eq!(
                record.value,
                digest.as_bytes(),
                "{what}: the sha256 of the payload"
            );
            assert_eq!(certificate.path, path as i32, "{what}");
            assert_eq!(
                certificate.slot.as_ref().unwrap().level,
                scope as i32,
                "{what}: the root decides the scope"
            );
            let groups: BTreeSet<(i32, String)> = record
                .groups
                .iter()
                .map(|group| (group.level, group.group.clone()))
                .collect();
            assert_eq!(groups, expected_groups(scope, &entry.spec.region), "{what}");
            for group in &record.groups {
                assert!(group.disagreed.is_empty(), "{what}: {group:?}");
                assert!(group.degraded_reason.is_empty(), "{what}: {group:?}");
            }
            let region_groups = record
                .groups
                .iter()
                .filter(|g| g.level == Level::Region as i32);
            for group in region_groups {
                assert_eq!(group.members.len(), 3, "{what}: replication 3: {group:?}");
            }
        }
    }

    // WatchTask follows a task through its levels to FINAL.
    let mut client = nodes[2].client().await.unwrap();
    let started = client
        .submit_task(SubmitTaskRequest {
            wait: false,
            ..request(
                "wordcount",
                "watch this task",
                Level::Continent,
                ConsensusPath::Bft,
            )
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: started.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        let kind = TaskEventKind::try_from(event.kind).unwrap();
        events.push((kind, event.level, event.group));
    }
    let kinds: Vec<TaskEventKind> = events.iter().map(|(kind, ..)| *kind).collect();
    assert_eq!(kinds.last(), Some(&TaskEventKind::Final), "{kinds:?}");
    // The watch may begin after some events went by (it sees a suffix of the
    // task's progress), but what it sees comes in order: each group is dispatched
    // before it is decided.
    let position = |kind, level, group: &str| {
        events
            .iter()
            .position(|(k, l, g)| *k == kind && *l == level && g == group)
    };
    for (level, group) in events
        .iter()
        .map(|(_, level, group)| (*level, group.as_str()))
    {
        if let (Some(dispatched), Some(decided)) = (
            position(TaskEventKind::Dispatched, level, group),
            position(TaskEventKind::GroupDecided, level, group),
        ) {
            assert!(dispatched < decided, "{events:?}");
        }
    }
    assert!(
        kinds[..kinds.len() - 1]
            .iter()
            .all(|kind| *kind != TaskEventKind::Final),
        "FINAL comes once, last: {kinds:?}"
    );

    // region-1 (nodes 1, 4, 7) hangs: still connected, never answering.
    let silent: Vec<&NodeProcess> = nodes
        .iter()
        .filter(|n| n.spec.region == "region-1")
        .collect();
    for node in &silent {
        pause(node.endpoints.pid);
    }
    let mut client = nodes[0].client().await.unwrap();
    let record = submit(
        &mut client,
        request(
            "sha256",
            "while region-1 is silent",
            Level::Global,
            ConsensusPath::Bft,
        ),
    )
    .await;
    for node in &silent {
        resume(node.endpoints.pid);
    }
    assert_eq!(state(&record), TaskState::Degraded, "{record:?}");
    assert!(
        record.degraded_reason.contains("region-1"),
        "{}",
        record.degraded_reason
    );
    let certificate = record
        .certificate
        .as_ref()
        .expect("a degraded result has a certificate");
    verify_chain(certificate).expect("the degraded global result still verifies");
    assert_eq!(
        certificate.slot.as_ref().unwrap().level,
        Level::Global as i32
    );
    let decided: BTreeSet<&str> = record
        .groups
        .iter()
        .filter(|group| group.degraded_reason.is_empty())
        .map(|group| group.group.as_str())
        .collect();
    assert_eq!(
        decided,
        ["region-0", "region-2", "continent-0", "global"].into(),
        "the silent region held back none of its siblings: {:?}",
        record.groups
    );
    for node in nodes {
        node.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_node_killed_mid_task_loses_no_certified_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = up_args(dir.path(), &[]);
    args.nodes = 4;
    args.regions = 1;
    args.continents = 1;
    // `slow` takes a while, so a task is surely running when the node is killed.
    let mut capabilities = default_capabilities();
    capabilities.push("slow=exec:sleep 3".into());
    let Launched { mut nodes, .. } = launch(&args, &capabilities).await.expect("testnet starts");
    let entry = nodes.remove(3);
    let spec = entry.spec.clone();
    let mut client = entry.client().await.unwrap();
    let mut certified = Vec::new();
    for n in 0..3 {
        let record = submit(
            &mut client,
            request(
                "sha256",
                &format!("certified {n}"),
                Level::Region,
                ConsensusPath::Bft,
            ),
        )
        .await;
        assert_eq!(state(&record), TaskState::Decided, "{record:?}");
        certified.push(record);
    }
    let running = client
        .submit_task(SubmitTaskRequest {
            wait: false,
            deadline_ms: 20_000,
            ..request("slow", "", Level::Region, ConsensusPath::Bft)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&running), TaskState::Running);
    drop(client);
    drop(entry); // SIGKILL, mid-task
    tokio::time::sleep(Duration::from_millis(200)).await;

    let entry = NodeProcess::start(&polity_binary().unwrap(), spec).expect("restarts");
    let mut client = entry.client().await.unwrap();
    for record in &certified {
        let stored = client
            .get_task(GetTaskRequest {
                task_id: record.task_id.clone(),
            })
            .await
            .expect("a certified task survives the kill")
            .into_inner();
        assert_eq!(stored.certificate, record.certificate);
        verify_chain(stored.certificate.as_ref().unwrap()).unwrap();
    }
    // The running task's record is not flushed on acceptance (only certified results
    // are made durable at once), so it is either back as FAILED ("interrupted") or
    // gone; it is never left RUNNING and never turns into a result.
    match client
        .get_task(GetTaskRequest {
            task_id: running.task_id.clone(),
        })
        .await
    {
        Ok(interrupted) => {
            let interrupted = interrupted.into_inner();
            assert_eq!(state(&interrupted), TaskState::Failed, "{interrupted:?}");
            assert!(
                interrupted.error.contains("interrupted"),
                "{}",
                interrupted.error
            );
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{status}"),
    }
    entry.stop().unwrap();
    for node in nodes {
        node.stop().unwrap();
    }
}

/// Starts `answers.len()` nodes in one region; node i serves capability `answer` as
/// `exec:echo <answers[i]>`. Node 0 is the entry and every other node's bootstrap.
async fn answering_nodes(dir: &std::path::Path, answers: &[&str]) -> Vec<NodeProcess> {
    let node_args = answers
        .iter()
        .map(|answer| {
            vec![
                "--capability".to_string(),
                format!("answer=exec:echo {answer}"),
            ]
        })
        .collect();
    support::start_region(dir, "answer", node_args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_agrees_on_nothing_gets_more_replicas_up_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Every node answers a different random number: no group can ever agree.
    let random = "$(od -An -N8 -tx8 /dev/urandom)";
    let nodes = answering_nodes(dir.path(), &[random; 5]).await;
    let mut client = nodes[0].client().await.unwrap();
    let record = submit(
        &mut client,
        SubmitTaskRequest {
            deadline_ms: 30_000,
            ..request("answer", "", Level::Region, ConsensusPath::Bft)
        },
    )
    .await;
    assert_eq!(state(&record), TaskState::Failed, "{record:?}");
    let attempts: Vec<(&str, usize)> = record
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g.members.len()))
        .collect();
    // One more replica per attempt, two extra attempts at most (the default bound).
    assert_eq!(
        attempts,
        [("region-0", 3), ("region-0~1", 4), ("region-0~2", 5)],
        "{:?}",
        record.groups
    );
    for group in &record.groups {
        assert!(!group.degraded_reason.is_empty(), "{group:?}");
    }
    for node in nodes {
        node.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_crashed_are_replaced_by_spare_seats_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = UpArgs {
        nodes: 5,
        regions: 1,
        continents: 1,
        ..up_args(dir.path(), &[])
    };
    let Launched { nodes, .. } = launch(&args, &default_capabilities())
        .await
        .expect("testnet starts and converges");
    let mut client = nodes[0].client().await.unwrap();
    // The task, with every field as the entry node canonicalizes it, so that its id
    // (and so the seat rule's draw) is known before it is submitted.
    let payload = "two members crashed";
    let mut task = request("sha256", payload, Level::Region, ConsensusPath::Bft);
    task.replication = 3;
    task.aggregation = polity_proto::Aggregation::Majority as i32;
    task.deadline_ms = 20_000;
    task.scope = Some(Scope {
        level: Level::Region as i32,
        name: nodes[0].spec.region.clone(),
    });
    let spec = polity_proto::TaskSpec {
        capability: task.capability.clone(),
        payload: task.payload.clone(),
        scope: task.scope.clone(),
        replication: task.replication,
        aggregation: task.aggregation,
        policy: task.policy,
        deadline_ms: task.deadline_ms,
        nonce: task.nonce,
    };
    let id = polity_consensus::task_id(&polity_consensus::encode_task(&spec));
    let chain = client
        .get_epoch_chain(polity_proto::GetEpochChainRequest {})
        .await
        .unwrap()
        .into_inner();
    let anchor = polity_consensus::Anchor::from_chain(chain).unwrap();
    let drawn = anchor
        .current()
        .seat_order(&id, "sha256", &nodes[0].spec.region);
    // The two members the seat rule draws first (other than the entry node itself)
    // sit in the first group of three.
    let doomed: Vec<&NodeProcess> = drawn
        .iter()
        .map(|key| key.to_string())
        .filter(|key| *key != nodes[0].endpoints.public_key)
        .take(2)
        .map(|key| {
            nodes
                .iter()
                .find(|node| node.endpoints.public_key == key)
                .unwrap()
        })
        .collect();
    assert_eq!(doomed.len(), 2);
    for node in &doomed {
        polity_testnet::process::kill(node.endpoints.pid);
    }
    let record = submit(&mut client, task).await;
    assert_eq!(state(&record), TaskState::Decided, "{record:?}");
    let truth = hex::encode(sha2::Sha256::digest(payload.as_bytes())).into_bytes();
    assert_eq!(record.value, truth);
    verify_chain(record.certificate.as_ref().unwrap()).unwrap();
    // The group that held the crashed members was re-formed under a new slot name,
    // without them, and decided well within the region's time budget.
    let decided = record
        .groups
        .iter()
        .find(|group| group.degraded_reason.is_empty())
        .unwrap();
    assert!(decided.group.contains('~'), "{:?}", record.groups);
    let doomed_keys: Vec<&str> = doomed
        .iter()
        .map(|node| node.endpoints.public_key.as_str())
        .collect();
    assert!(
        decided
            .members
            .iter()
            .all(|member| !doomed_keys.contains(&member.as_str())),
        "{decided:?}"
    );
    // The first group was given up because members were unreachable, not because
    // the level's time ran out.
    let given_up = &record.groups[0];
    assert!(
        given_up.degraded_reason.contains("unreachable")
            && !given_up.degraded_reason.contains("time ran out"),
        "{given_up:?}"
    );
}
