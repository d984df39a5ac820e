//! Chaos on real node processes (`polity-testnet chaos`): a byzantine member that
//! lies and equivocates, SIGKILL under load, a partition into 2 | 3 and its heal,
//! and the reliability measurement's report. Correctness only: no timing is
//! asserted. The tests take turns (one cluster at a time), so a 2-core machine runs
//! each at the pace the others would slow down.

use polity_consensus::TRUST_PRIOR;
use polity_consensus::verify_chain;
use polity_proto::{
    ConsensusPath, Faults, GetTrustRequest, Level, ListPeersRequest, RiskPolicy, Scope,
    SubmitTaskRequest, TaskState,
};
use polity_testnet::chaos::run::{RunArgs, run};
use polity_testnet::chaos::sha256_hex;
use polity_testnet::cluster::{Launched, UpArgs, default_capabilities, launch};
use polity_testnet::process::NodeProcess;
use polity_testnet::rpc::{Token, federation};

/// One cluster at a time (an async lock: held across awaits, shared by the
/// tests' runtimes; a failed test does not poison it).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_equivocating_member_never_gets_a_wrong_certificate_and_loses_trust() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (token, nodes) = one_region(4, dir.path()).await;
    let byzantine = &nodes[3];
    polity_testnet::rpc::set_faults(
        &byzantine.endpoints.grpc,
        &token,
        Faults {
            error_rate: 1.0,
            equivocate: true,
            seed: 7,
            ..Faults::default()
        },
    )
    .await
    .expect("the byzantine plan is in force");

    let (mut correct, mut undecided) = (0, 0);
    for k in 0..9 {
        // Entered at the honest nodes in turn.
        let entry = &nodes[k % 3];
        let mut client = federation(&entry.endpoints.grpc, Some(&token.value))
            .await
            .unwrap();
        let payload = format!("byzantine test task {k}");
        let request = SubmitTaskRequest {
            capability: "sha256".into(),
            payload: payload.clone().into_bytes(),
            scope: Some(Scope {
                level: Level::Region as i32,
                name: String::new(),
            }),
            replication: 4,
            policy: Some(RiskPolicy {
                path_override: ConsensusPath::Bft as i32,
                ..RiskPolicy::default()
            }),
            wait: true,
            ..SubmitTaskRequest::default()
        };
        let record = match client.submit_task(request).await {
            Ok(record) => record.into_inner(),
            // Once the liar is distrusted, no group of four can be formed.
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::FailedPrecondition,
                    "task {k}: {status}"
                );
                undecided += 1;
                continue;
            }
        };
        let state = TaskState::try_from(record.state).unwrap();
        if let Some(certificate) = &record.certificate {
            let summary = verify_chain(certificate).expect("a stored chain verifies");
            assert_eq!(summary.value, record.value);
            assert_eq!(
                record.value,
                sha256_hex(payload.as_bytes()).as_bytes(),
                "task {k}: a certificate for a wrong value ({state:?}): {record:?}"
            );
            correct += 1;
        } else {
            assert_eq!(state, TaskState::Failed, "task {k}: {record:?}");
            undecided += 1;
        }
    }
    assert!(correct > 0, "the three honest members decided nothing");
    assert_eq!(correct + undecided, 9);

    // The liar loses the trust of the honest nodes that saw its lies (trust at or
    // below the floor, or no longer offered as a compatible peer); evidence of its
    // equivocation travels by gossip. Its lies can also arrive after a group already
    // decided without it (the fast path needs three of four), and then nobody has two
    // of its statements for one slot: so at least one honest node must distrust it,
    // within 30 s, not necessarily all.
    let started = std::time::Instant::now();
    loop {
        let mut standings = Vec::new();
        for honest in &nodes[..3] {
            standings.push(liar_standing(honest, byzantine, &token).await);
        }
        let distrusting = standings
            .iter()
            .filter(|(score, floor, compatible)| {
                score.is_some_and(|score| score <= *floor) || !compatible
            })
            .count();
        if distrusting > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no honest node distrusts the liar: {standings:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for node in nodes {
        node.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_under_load_lose_no_certified_result() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = RunArgs {
        kill_every_s: Some(4.0),
        restart_after_s: 2.0,
        duration_s: 13.0,
        clients: 2,
        seed: 11,
        json: true,
        ..RunArgs::new(4, dir.path())
    };
    let report = run(&args).await.expect("the chaos run completes");
    let summary = report.table();
    assert!(report.kills >= 2, "{summary}");
    assert_eq!(report.restarts, report.kills, "{summary}");
    assert!(report.total.decided > 0, "{summary}");
    assert_eq!(
        report.ledger.certified,
        report.total.certified(),
        "{summary}"
    );
    assert_eq!(report.ledger.served, report.ledger.certified, "{summary}");
    assert_eq!(report.ledger.lost + report.ledger.changed, 0, "{summary}");
    assert_eq!(
        report.wrong_values + report.invalid_certificates,
        0,
        "{summary}"
    );
    // The restarted nodes serve what they entered, before and after their kill.
    let restarted: Vec<_> = report
        .node_reports
        .iter()
        .filter(|node| node.restarts > 0)
        .collect();
    assert!(!restarted.is_empty(), "{summary}");
    assert!(
        restarted
            .iter()
            .map(|node| node.certified_entered)
            .sum::<u64>()
            > 0,
        "no restarted node had entered a certified task: {summary}"
    );
    for node in &restarted {
        assert_eq!(node.served, node.certified_entered, "{summary}");
    }
    assert!(report.ok, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_decides_nothing_while_split_and_both_sides_decide_after_the_heal() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = RunArgs {
        partition_at_s: Some(3.0),
        heal_after_s: 7.0,
        duration_s: 20.0,
        clients: 3,
        seed: 5,
        json: true,
        ..RunArgs::new(5, dir.path())
    };
    let report = run(&args).await.expect("the chaos run completes");
    let summary = report.table();
    let partition = report.partition.as_ref().expect("a partition happened");
    assert_eq!(partition.minority.len(), 2, "{summary}");
    assert!(partition.times.healed_ms.is_some(), "{summary}");
    // While split: the minority (2 < replication 3) certifies nothing, the
    // majority goes on, and no certificate has members on both sides.
    assert!(partition.minority_entered.submitted > 0, "{summary}");
    assert_eq!(partition.minority_entered.certified(), 0, "{summary}");
    assert!(partition.majority_entered.decided > 0, "{summary}");
    assert_eq!(partition.mixed_certificates, 0, "{summary}");
    // Healed: both sides decide again.
    assert!(partition.minority_after_heal.decided > 0, "{summary}");
    assert!(partition.majority_after_heal.decided > 0, "{summary}");
    assert_eq!(report.ledger.served, report.ledger.certified, "{summary}");
    assert!(report.ok, "{summary}");
}

/// A sha256 task for the entry node's region, replication 3, waiting for the end.
fn region_task(payload: &str) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: "sha256".into(),
        payload: payload.as_bytes().to_vec(),
        scope: Some(Scope {
            level: Level::Region as i32,
            name: String::new(),
        }),
        replication: 3,
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

/// Launches `nodes` nodes in one region with the test's API token.
async fn one_region(nodes: usize, dir: &std::path::Path) -> (Token, Vec<NodeProcess>) {
    regions(nodes, 1, dir).await
}

/// Launches `nodes` nodes in `regions` regions of one continent with the test's API
/// token.
async fn regions(nodes: usize, regions: usize, dir: &std::path::Path) -> (Token, Vec<NodeProcess>) {
    let token = Token::create(dir).unwrap();
    let up = UpArgs {
        nodes,
        regions,
        continents: 1,
        capabilities: Vec::new(),
        dir: dir.to_path_buf(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: vec![token.node_arg()],
    };
    let Launched { nodes, .. } = launch(&up, &default_capabilities())
        .await
        .expect("the nodes start and converge");
    (token, nodes)
}

/// Submits region tasks at `entry` until one gets `wanted` (at most `tries`, a
/// pause between them); returns what each try gave, the last one first.
async fn submit_until(
    entry: &NodeProcess,
    token: &Token,
    label: &str,
    tries: usize,
    wanted: impl Fn(&Result<TaskState, tonic::Status>) -> bool,
) -> Vec<Result<TaskState, tonic::Status>> {
    let mut seen = Vec::new();
    for attempt in 0..tries {
        let mut client = federation(&entry.endpoints.grpc, Some(&token.value))
            .await
            .unwrap();
        let payload = format!("{label} {attempt}");
        let outcome = match client.submit_task(region_task(&payload)).await {
            Ok(record) => {
                let record = record.into_inner();
                if record.certificate.is_some() {
                    assert_eq!(record.value, sha256_hex(payload.as_bytes()).as_bytes());
                }
                Ok(TaskState::try_from(record.state).unwrap())
            }
            Err(status) => Err(status),
        };
        let done = wanted(&outcome);
        seen.insert(0, outcome);
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    seen
}

/// Refused as UNAVAILABLE with `words` in the message.
fn refused_with(outcome: &Result<TaskState, tonic::Status>, words: &str) -> bool {
    matches!(outcome, Err(status)
        if status.code() == tonic::Code::Unavailable && status.message().contains(words))
}

fn decided(outcome: &Result<TaskState, tonic::Status>) -> bool {
    matches!(outcome, Ok(TaskState::Decided))
}

/// The refusal's code and words: UNAVAILABLE, "no quorum reachable", and how many
/// members it reaches of how many.
fn check_refusal(seen: &[Result<TaskState, tonic::Status>], reachable_of: &str) {
    let Some(Err(status)) = seen.first() else {
        panic!("never refused: {seen:?}")
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(
        status.message().starts_with("no quorum reachable")
            && status.message().contains(reachable_of),
        "{status}"
    );
}

/// A 2 | 3 partition with replication 3: an entry node on the minority side
/// refuses at once (UNAVAILABLE, "no quorum reachable", 2 of the 5) instead of
/// running a task that cannot decide; the majority decides; after the heal the
/// minority's entry node decides again (its breakers probe and close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_entry_node_refuses_at_once_and_decides_again_after_the_heal() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (token, nodes) = one_region(5, dir.path()).await;
    let key = |node: &NodeProcess| hex::decode(&node.endpoints.public_key).unwrap();
    let (minority, majority) = nodes.split_at(2);
    let block = |mine: &[NodeProcess], theirs: &[NodeProcess]| {
        let blocked: Vec<Vec<u8>> = theirs.iter().map(key).collect();
        let grpcs: Vec<String> = mine.iter().map(|n| n.endpoints.grpc.clone()).collect();
        (grpcs, blocked)
    };
    for (grpcs, blocked) in [block(minority, majority), block(majority, minority)] {
        for grpc in grpcs {
            let faults = Faults {
                blocked_peers: blocked.clone(),
                ..Faults::default()
            };
            polity_testnet::rpc::set_faults(&grpc, &token, faults)
                .await
                .expect("the partition is in force");
        }
    }
    let seen = submit_until(&minority[0], &token, "minority", 1, |_| true).await;
    check_refusal(&seen, "2 of the 5");
    let seen = submit_until(&majority[0], &token, "majority", 20, decided).await;
    assert!(decided(&seen[0]), "the majority did not decide: {seen:?}");
    // The heal: every block cleared.
    for node in &nodes {
        polity_testnet::rpc::set_faults(&node.endpoints.grpc, &token, Faults::default())
            .await
            .expect("the heal is in force");
    }
    for (index, node) in nodes.iter().enumerate() {
        let seen = submit_until(node, &token, &format!("healed {index}"), 40, decided).await;
        assert!(
            decided(&seen[0]),
            "{} after the heal: {seen:?}",
            node.spec.name
        );
    }
    for node in nodes {
        node.stop().unwrap();
    }
}

/// Not only blocked peers: peers that are down. Of three nodes, two are stopped;
/// the third refuses (UNAVAILABLE, "no quorum reachable", 1 of the 3) once it has
/// found them gone, rather than seating them or blaming them; restarted, they are
/// seated again (breakers probed and closed on the new connections) and tasks
/// decide. Their trust is untouched by having been unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_node_that_cannot_reach_a_quorum_refuses_and_decides_once_they_are_back() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (token, mut nodes) = one_region(3, dir.path()).await;
    let seen = submit_until(&nodes[0], &token, "before", 20, decided).await;
    assert!(decided(&seen[0]), "{seen:?}");
    let trust_before = trust_table(&nodes[0], &token).await;
    let stopped: Vec<NodeProcess> = nodes.drain(1..).collect();
    let specs: Vec<_> = stopped.iter().map(|node| node.spec.clone()).collect();
    for node in stopped {
        node.stop().unwrap();
    }
    // Each stopped peer counts as reachable until this node finds it gone (its
    // connection closed, then a dial refused); a refusal may first say 2 of the 3.
    let seen = submit_until(&nodes[0], &token, "down", 40, |outcome| {
        refused_with(outcome, "1 of the 3")
    })
    .await;
    check_refusal(&seen, "1 of the 3");
    let binary = polity_testnet::process::polity_binary().unwrap();
    for spec in specs {
        let node = tokio::task::spawn_blocking({
            let binary = binary.clone();
            move || NodeProcess::start(&binary, spec)
        })
        .await
        .unwrap()
        .expect("the node starts again");
        nodes.push(node);
    }
    let seen = submit_until(&nodes[0], &token, "back", 80, decided).await;
    assert!(decided(&seen[0]), "never decided again: {seen:?}");
    // Being unreachable cost no trust: no score fell below where it stood.
    let trust_after = trust_table(&nodes[0], &token).await;
    for (peer, before) in &trust_before {
        let after = trust_after.get(peer).copied().unwrap_or(TRUST_PRIOR);
        assert!(after >= *before - 1e-9, "{peer}: trust {before} -> {after}");
    }
    for node in nodes {
        node.stop().unwrap();
    }
}

/// A global task whose entry node cannot reach one region (here: an injected block;
/// in the field: a NAT nobody crossed) is not decided as if that region did not
/// exist: the region comes from the registry, and the task ends DEGRADED with a
/// reason naming it. What could be seated still decides, and its chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_out_of_reach_degrades_a_global_task_by_name() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (token, nodes) = regions(4, 2, dir.path()).await;
    let entry = &nodes[0];
    let region = |node: &NodeProcess| node.spec.region.clone();
    let cut_off: Vec<Vec<u8>> = nodes
        .iter()
        .filter(|node| region(node) != region(entry))
        .map(|node| hex::decode(&node.endpoints.public_key).unwrap())
        .collect();
    assert_eq!(cut_off.len(), 2);
    let faults = Faults {
        blocked_peers: cut_off,
        ..Faults::default()
    };
    polity_testnet::rpc::set_faults(&entry.endpoints.grpc, &token, faults)
        .await
        .expect("the block is in force");
    let mut client = federation(&entry.endpoints.grpc, Some(&token.value))
        .await
        .unwrap();
    let request = SubmitTaskRequest {
        scope: Some(Scope {
            level: Level::Global as i32,
            name: String::new(),
        }),
        replication: 2,
        ..region_task("across two regions")
    };
    let record = client.submit_task(request).await.unwrap().into_inner();
    let other = nodes
        .iter()
        .map(region)
        .find(|r| *r != region(entry))
        .unwrap();
    assert_eq!(
        record.state,
        TaskState::Degraded as i32,
        "{:?}: {}{}",
        record.state(),
        record.error,
        record.degraded_reason
    );
    assert!(
        record
            .degraded_reason
            .contains(&format!("region {other}: not seated")),
        "{}",
        record.degraded_reason
    );
    verify_chain(
        record
            .certificate
            .as_ref()
            .expect("the reachable region decided"),
    )
    .unwrap();
    // The entry node signed and checked statements for it, and its /metrics says so
    // (what `bench` reads for the signature-bound limit).
    let counts = polity_testnet::limit::scrape(std::slice::from_ref(&entry.endpoints.http))
        .await
        .unwrap();
    assert!(
        counts.signed > 0.0 && counts.verified > counts.signed,
        "{counts:?}"
    );
    for node in nodes {
        node.stop().unwrap();
    }
}

/// What `honest` thinks of `liar`: its trust score (if it has one), the trust floor,
/// and whether it still offers the liar as a compatible peer.
async fn liar_standing(
    honest: &NodeProcess,
    liar: &NodeProcess,
    token: &Token,
) -> (Option<f64>, f64, bool) {
    let mut client = federation(&honest.endpoints.grpc, Some(&token.value))
        .await
        .unwrap();
    let trust = client
        .get_trust(GetTrustRequest {
            peer_id: liar.endpoints.peer_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let score = trust
        .entries
        .iter()
        .find(|entry| entry.peer_id == liar.endpoints.peer_id)
        .map(|entry| entry.score);
    let compatible = client
        .list_peers(ListPeersRequest {
            capability: "sha256".into(),
            compatible_only: true,
            ..ListPeersRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .peers
        .iter()
        .any(|peer| peer.peer_id == liar.endpoints.peer_id);
    (score, trust.floor, compatible)
}

/// A node's trust table: peer id to score.
async fn trust_table(node: &NodeProcess, token: &Token) -> std::collections::BTreeMap<String, f64> {
    let mut client = federation(&node.endpoints.grpc, Some(&token.value))
        .await
        .unwrap();
    client
        .get_trust(GetTrustRequest {
            peer_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|entry| (entry.peer_id, entry.score))
        .collect()
}

#[test]
fn the_reliability_command_reports_counts_that_add_up() {
    let _turn = TURN.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_polity-testnet"));
    let output = std::process::Command::new(&binary)
        .args([
            "chaos",
            "reliability",
            "--tasks",
            "30",
            "--epsilon",
            "0.3",
            "--replicas",
            "3",
            "--seed",
            "3",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .env("POLITY_BIN", binary.with_file_name("polity"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let counts = &report["counts"];
    let count = |name: &str| {
        counts[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {counts}"))
    };
    assert_eq!(count("tasks"), 30);
    assert_eq!(
        count("correct") + count("wrong") + count("undecided") + count("invalid") + count("errors"),
        30,
        "{counts}"
    );
    assert_eq!(count("invalid"), 0, "{counts}");
    assert!(count("correct") > 0, "{counts}");
    let measured = report["measured"]["reliability"]["value"].as_f64().unwrap();
    assert!((measured - count("correct") as f64 / 30.0).abs() < 1e-12);
    let low = report["measured"]["reliability"]["low"].as_f64().unwrap();
    let high = report["measured"]["reliability"]["high"].as_f64().unwrap();
    assert!(0.0 <= low && low <= measured && measured <= high && high <= 1.0);
    let theory = report["theory"].as_array().expect("theory lines");
    assert_eq!(theory.len(), 3);
    // Majority over three at ε = 0.3.
    let majority = theory[0]["correct"].as_f64().unwrap();
    assert!((majority - 0.784).abs() < 1e-9, "{majority}");
    assert_eq!(
        theory[0]["correct_inside"].as_bool().unwrap(),
        low <= majority && majority <= high
    );
    assert_eq!(report["node_reliability"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_spawns_nodes_under_load_and_retires_them_when_it_falls() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // One worker slot per node and slow executions: six clients overload three
    // nodes at once. The load stops at 8 s; the supervisor watches until 18 s.
    let config = dir.path().join("workers.toml");
    std::fs::write(&config, "[workers]\nslots_min = 1\nslots_max = 1\n").unwrap();
    let args = RunArgs {
        clients: 6,
        duration_s: 18.0,
        load_until_s: Some(8.0),
        autoscale: true,
        poll_ms: 500,
        spawn_max: 1,
        node_args: vec![
            format!("--config={}", config.display()),
            "--fault-latency-ms=300".into(),
        ],
        json: true,
        ..RunArgs::new(3, &dir.path().join("run"))
    };
    // Meanwhile `polity-testnet status` shows the spawned node with its Admin columns.
    let status_dir = args.dir.clone();
    let status_row = tokio::spawn(async move {
        for _ in 0..80 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_polity-testnet"))
                .arg("status")
                .arg("--dir")
                .arg(&status_dir)
                .output()
                .await;
            let Ok(output) = output else { continue };
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            if let Some(row) = text
                .lines()
                .find(|line| line.split_whitespace().nth(7) == Some("spawned"))
            {
                return Some(row.to_string());
            }
        }
        None
    });
    let report = run(&args).await.expect("the chaos run completes");
    let summary = report.table();
    let row = status_row
        .await
        .unwrap()
        .expect("status never listed a spawned node");
    // node pid state peers rss region continent origin slots load reliability gRPC
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[2], "up", "{row}");
    assert_eq!(columns[8].parse::<u32>().ok(), Some(1), "one slot: {row}");
    assert!(columns[9].parse::<f64>().is_ok(), "load: {row}");
    assert!(columns[10].parse::<f64>().is_ok(), "reliability: {row}");
    let autoscale = report.autoscale.as_ref().expect("autoscaling ran");
    assert_eq!(autoscale.spawned, 1, "spawn-max 1: {summary}");
    assert_eq!(autoscale.retired, 1, "{summary}");
    assert!(autoscale.mean_load_max > args.load_high, "{summary}");
    let spawned: Vec<_> = report
        .node_reports
        .iter()
        .filter(|node| node.spawned)
        .collect();
    assert_eq!(spawned.len(), 1, "{summary}");
    assert!(spawned[0].retired, "{summary}");
    // Whatever the spawned node entered is still served after its retirement.
    assert_eq!(spawned[0].served, spawned[0].certified_entered, "{summary}");
    assert_eq!(report.ledger.served, report.ledger.certified, "{summary}");
    assert!(report.ok, "{summary}");
}
