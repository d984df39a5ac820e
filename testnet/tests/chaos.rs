//! Chaos on real node processes (`polity-testnet chaos`): a byzantine member that
//! lies and equivocates, SIGKILL under load, a partition into 2 | 3 and its heal,
//! and the reliability measurement's report. Correctness only: no timing is
//! asserted. The tests take turns (one cluster at a time), so a 2-core machine runs
//! each at the pace the others would slow down.

use polity_consensus::verify_chain;
use polity_proto::{
    ConsensusPath, Faults, GetTrustRequest, Level, ListPeersRequest, RiskPolicy, Scope,
    SubmitTaskRequest, TaskState,
};
use polity_testnet::chaos::run::{RunArgs, run};
use polity_testnet::chaos::sha256_hex;
use polity_testnet::cluster::{Launched, UpArgs, default_capabilities, launch};
use polity_testnet::rpc::{Token, federation};

/// One cluster at a time (an async lock: held across awaits, shared by the
/// tests' runtimes; a failed test does not poison it).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_equivocating_member_never_gets_a_wrong_certificate_and_loses_trust() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token = Token::create(dir.path()).unwrap();
    let up = UpArgs {
        nodes: 4,
        regions: 1,
        continents: 1,
        capabilities: Vec::new(),
        dir: dir.path().to_path_buf(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: vec![token.node_arg()],
    };
    let Launched { nodes, .. } = launch(&up, &default_capabilities())
        .await
        .expect("four nodes start and converge");
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

    // Every honest node distrusts the liar (trust at or below the floor), or no
    // longer offers it as a compatible peer.
    for honest in &nodes[..3] {
        let mut client = federation(&honest.endpoints.grpc, Some(&token.value))
            .await
            .unwrap();
        let trust = client
            .get_trust(GetTrustRequest {
                peer_id: byzantine.endpoints.peer_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let score = trust
            .entries
            .iter()
            .find(|entry| entry.peer_id == byzantine.endpoints.peer_id)
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
            .any(|peer| peer.peer_id == byzantine.endpoints.peer_id);
        assert!(
            score.is_some_and(|score| score <= trust.floor) || !compatible,
            "{} still trusts the liar: score {score:?}, floor {}, compatible {compatible}",
            honest.spec.name,
            trust.floor
        );
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
