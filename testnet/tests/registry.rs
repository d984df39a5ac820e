//! The registry as an attacker meets it, with real processes: an outsider that
//! answers wrong and is not in the genesis gets no seat and changes no decision; a
//! stranger's self-signed certificate passes `polity verify` only as "membership
//! not checked" (exit 3) and is refused against the federation (exit 2); the
//! outsider joins through a proposal the members decide while one member is down,
//! every node moves to epoch 1 (the one that was down pulls it when it is back), and
//! certificates of epoch 0 still verify against the epoch chain.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use polity_consensus::{Input, Round, RoundConfig};
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, GetEpochChainRequest, Level, Member, RiskPolicy,
    Scope, SubmitTaskRequest, TaskState,
};
use polity_testnet::cluster::{Launched, UpArgs, default_capabilities, launch};
use polity_testnet::process::{NodeProcess, NodeSpec, polity_binary};
use prost::Message;
use sha2::{Digest, Sha256};

fn stake_task(nonce: u64) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: "sha256".into(),
        payload: b"who may vote".to_vec(),
        scope: Some(Scope {
            level: Level::Region as i32,
            name: "region-0".into(),
        }),
        replication: 4,
        aggregation: Aggregation::Majority as i32,
        policy: Some(RiskPolicy {
            path_override: ConsensusPath::Stake as i32,
            ..RiskPolicy::default()
        }),
        deadline_ms: 10_000,
        nonce,
        wait: true,
    }
}

fn polity(args: &[&str]) -> (i32, String) {
    let output = Command::new(polity_binary().unwrap())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// A 1-member stake certificate for `task`, signed by a key that is nobody.
fn stranger_certificate(task: Vec<u8>) -> Certificate {
    let key = SigningKey::from_bytes(&[0x5a; 32]);
    let config = RoundConfig {
        task,
        level: Level::Region,
        group: "region-0".into(),
        members: vec![Member {
            public_key: key.verifying_key().to_bytes().to_vec(),
            weight: 1,
        }],
        registry_digest: [0; 32],
        path: ConsensusPath::Stake,
        path_reason: "forged".into(),
        aggregation: Aggregation::Majority,
        round_timeout_ms: 1_000,
        rounds_max: 1,
        started_at_ms: 0,
    };
    let mut round = Round::new(config, key).unwrap();
    let actions = round.step(
        0,
        Input::LocalAnswer {
            answer: Ok(b"forged".to_vec()),
            child_certificate: None,
        },
    );
    actions
        .into_iter()
        .find_map(|action| match action {
            polity_consensus::Action::Decided(certificate) => Some(*certificate),
            _ => None,
        })
        .expect("a one-member round decides alone")
}

async fn epoch_of(node: &NodeProcess) -> usize {
    let mut client = node.client().await.unwrap();
    client
        .get_epoch_chain(GetEpochChainRequest {})
        .await
        .unwrap()
        .into_inner()
        .changes
        .len()
}

/// A testnet of `count` nodes in region-0 (its genesis in `dir/genesis.pb`).
async fn launch_region(dir: &Path, count: usize) -> Vec<NodeProcess> {
    let args = UpArgs {
        nodes: count,
        regions: 1,
        continents: 1,
        capabilities: Vec::new(),
        dir: dir.to_path_buf(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: Vec::new(),
    };
    let Launched { nodes, .. } = launch(&args, &default_capabilities()).await.unwrap();
    nodes
}

/// A node in region-0 that is not in the genesis (data in `dir/name`), started with
/// the testnet's genesis, bootstrapping to `bootstrap`, with `extra` flags.
fn start_newcomer(dir: &Path, name: &str, bootstrap: &NodeProcess, extra: &[&str]) -> NodeProcess {
    let mut extra_args = vec![
        "--genesis".to_string(),
        dir.join("genesis.pb").display().to_string(),
        "--bootstrap".into(),
        bootstrap.endpoints.p2p[0].clone(),
    ];
    extra_args.extend(extra.iter().map(|flag| flag.to_string()));
    for capability in default_capabilities() {
        extra_args.extend(["--capability".to_string(), capability]);
    }
    NodeProcess::start(
        &polity_binary().unwrap(),
        NodeSpec {
            name: name.into(),
            data_dir: dir.join(name),
            region: "region-0".into(),
            continent: "continent-0".into(),
            extra_args,
        },
    )
    .unwrap()
}

/// `polity propose join` for the node whose data is in `data_dir`, through `entry`.
fn propose_join(entry: &NodeProcess, data_dir: &Path) -> (i32, String) {
    polity(&[
        "propose",
        "join",
        "--addr",
        &entry.endpoints.grpc,
        "--data-dir",
        &data_dir.display().to_string(),
        "--region",
        "region-0",
        "--continent",
        "continent-0",
        "--capability",
        "sha256",
    ])
}

/// Waits until every node of `nodes` is at registry epoch 1.
async fn wait_for_epoch_1<'a>(nodes: impl Iterator<Item = &'a NodeProcess>) {
    let started = Instant::now();
    for node in nodes {
        while epoch_of(node).await < 1 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "epoch 1 not pushed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_decides_who_sits_and_moves_only_by_proposals() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = launch_region(dir.path(), 4).await;
    let genesis = dir.path().join("genesis.pb");

    // An outsider in the same region, always wrong, with the testnet's genesis.
    let outsider = start_newcomer(
        dir.path(),
        "outsider",
        &nodes[0],
        &["--fault-error-rate", "1.0", "--fault-distinct-wrong"],
    );
    let outsider_key = hex::decode(&outsider.endpoints.public_key).unwrap();
    let truth = hex::encode(Sha256::digest(b"who may vote")).into_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await; // let it be discovered

    let mut client = nodes[0].client().await.unwrap();
    let mut old_certificate = None;
    for nonce in 0..4 {
        let record = client
            .submit_task(stake_task(nonce))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(record.state, TaskState::Decided as i32, "{record:?}");
        assert_eq!(record.value, truth);
        let certificate = record.certificate.unwrap();
        assert!(
            certificate
                .members
                .iter()
                .all(|m| m.public_key != outsider_key),
            "an outsider got a seat"
        );
        old_certificate = Some(certificate);
    }
    let old_certificate = old_certificate.unwrap();

    // A stranger's chain for a real task: valid signatures, no right to sign.
    let stranger = stranger_certificate(old_certificate.task.clone());
    let stranger_file = write(&dir.path().join("stranger.pb"), &stranger.encode_to_vec());
    let genesis_file = genesis.display().to_string();
    let (code, text) = polity(&["verify", &stranger_file]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("membership NOT checked"), "{text}");
    let (code, text) = polity(&["verify", &stranger_file, "--federation", &genesis_file]);
    assert_eq!(code, 2, "{text}");
    let old_file = write(&dir.path().join("old.pb"), &old_certificate.encode_to_vec());
    let (code, text) = polity(&["verify", &old_file, "--federation", &genesis_file]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("registry epoch 0"), "{text}");

    // node-3 is down while the registry changes: a member that cannot be reached
    // does not block the change (3 of 4 stakes approve), and catches up later.
    let sleeper = nodes.pop().unwrap();
    let sleeper_spec = sleeper.spec.clone();
    sleeper.stop().unwrap();

    // The outsider asks to join; the members (admission open) approve.
    let entry = &nodes[0].endpoints.grpc.clone();
    let (code, text) = propose_join(&nodes[0], &dir.path().join("outsider"));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("epoch 1"), "{text}");
    wait_for_epoch_1(nodes.iter().chain([&outsider])).await;

    // node-3 comes back at epoch 0 and pulls the change from a peer that announces
    // epoch 1.
    let sleeper = NodeProcess::start(&polity_binary().unwrap(), sleeper_spec).unwrap();
    let started = Instant::now();
    while epoch_of(&sleeper).await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "node-3 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    nodes.push(sleeper);

    // The exported chain proves epoch 1, and the epoch-0 certificate still verifies.
    let chain_file = dir.path().join("chain.pb").display().to_string();
    let (code, text) = polity(&["genesis", "export", "--addr", entry, "--out", &chain_file]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = polity(&["verify", &old_file, "--federation", &chain_file]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = polity(&["genesis", "show", &chain_file]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("epoch 1"), "{text}");

    // New tasks are drawn from epoch 1 and still decide the truth: the joined
    // member is always wrong, and one liar of five cannot move a stake quorum.
    let record = client
        .submit_task(stake_task(100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.state, TaskState::Decided as i32, "{record:?}");
    assert_eq!(record.value, truth);
    let certificate = record.certificate.unwrap();
    assert_ne!(certificate.registry_digest, old_certificate.registry_digest);
    let new_file = write(&dir.path().join("new.pb"), &certificate.encode_to_vec());
    let (code, text) = polity(&["verify", &new_file, "--federation", &chain_file]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = polity(&["verify", &new_file, "--federation", &genesis_file]);
    assert_eq!(
        code, 2,
        "an epoch-1 certificate against the genesis alone: {text}"
    );
}

fn raft_task(nonce: u64) -> SubmitTaskRequest {
    let mut request = stake_task(nonce);
    request.replication = 2;
    request.policy = Some(RiskPolicy {
        path_override: ConsensusPath::Raft as i32,
        ..RiskPolicy::default()
    });
    request
}

/// The raft path commits through the region's long-lived raft group, and that group's
/// voters follow the registry: after a member joins and an original member stops,
/// the region's raft still has a majority (2 of 3) only if the joined member became a
/// voter (without the change, the task never decides). Every raft commit is signed by
/// a registry member of the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_groups_follow_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = launch_region(dir.path(), 2).await;
    let genesis = dir.path().join("genesis.pb").display().to_string();
    let truth = hex::encode(Sha256::digest(b"who may vote")).into_bytes();
    let key_of = |node: &NodeProcess| hex::decode(&node.endpoints.public_key).unwrap();
    let mut client = nodes[0].client().await.unwrap();

    let record = client.submit_task(raft_task(0)).await.unwrap().into_inner();
    assert_eq!(record.state, TaskState::Decided as i32, "{record:?}");
    assert_eq!(record.value, truth);
    let certificate = record.certificate.unwrap();
    let signer = certificate.raft_commit.as_ref().unwrap().signer.clone();
    assert!(nodes.iter().any(|node| key_of(node) == signer));
    let file = write(&dir.path().join("raft-0.pb"), &certificate.encode_to_vec());
    let (code, text) = polity(&["verify", &file, "--federation", &genesis]);
    assert_eq!(code, 0, "{text}");

    // A third member joins region-0 (admission open: both members approve).
    let joiner = start_newcomer(dir.path(), "joiner", &nodes[0], &[]);
    let (code, text) = propose_join(&nodes[0], &dir.path().join("joiner"));
    assert_eq!(code, 0, "{text}");
    wait_for_epoch_1(nodes.iter().chain([&joiner])).await;

    // The region's raft group moves to three voters (a membership change needs the
    // old majority, so node-1 stays up until it is done) ...
    let started = Instant::now();
    while support::metric(
        &nodes[0],
        "federation_raft_voters{group=\"region-region-0-e0\"}",
    )
    .await
        < 3.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the region's raft group did not follow epoch 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... then node-1 stops: the region's raft keeps a majority only with the joiner
    // as a voter.
    nodes.pop().unwrap().stop().unwrap();
    let joiner_key = key_of(&joiner);
    let started = Instant::now();
    let mut nonce = 1;
    let certificate = loop {
        let record = client
            .submit_task(raft_task(nonce))
            .await
            .unwrap()
            .into_inner();
        if record.state == TaskState::Decided as i32 {
            break record.certificate.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no raft decision after the joiner became a member: {record:?}"
        );
        nonce += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        certificate
            .members
            .iter()
            .any(|m| m.public_key == joiner_key)
    );
    let signer = &certificate.raft_commit.as_ref().unwrap().signer;
    assert!(*signer == key_of(&nodes[0]) || *signer == joiner_key);
    let chain = dir.path().join("chain.pb").display().to_string();
    let (code, text) = polity(&[
        "genesis",
        "export",
        "--addr",
        &nodes[0].endpoints.grpc.clone(),
        "--out",
        &chain,
    ]);
    assert_eq!(code, 0, "{text}");
    let file = write(&dir.path().join("raft-1.pb"), &certificate.encode_to_vec());
    let (code, text) = polity(&["verify", &file, "--federation", &chain]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("raft commit by leader"), "{text}");
    let attested = format!(
        "attested by {} of {} members",
        certificate.attestations.len(),
        certificate.members.len()
    );
    assert!(text.contains(&attested), "{text}");

    // The member that did not lead signs the commit anew, and its own attestation to
    // match: the other member's attestation still names the real leader, so the
    // verifier refuses it.
    let impostor = [&nodes[0], &joiner]
        .into_iter()
        .find(|node| key_of(node) != *signer)
        .unwrap();
    let forged = resign_commit(&certificate, &identity(impostor));
    let file = write(&dir.path().join("raft-forged.pb"), &forged.encode_to_vec());
    let (code, text) = polity(&["verify", &file, "--federation", &chain]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("another raft term, index or leader"),
        "{text}"
    );
}

/// A node's secret key, as it keeps it in its data directory.
fn identity(node: &NodeProcess) -> SigningKey {
    let secret = std::fs::read(node.spec.data_dir.join("identity.key")).unwrap();
    SigningKey::from_bytes(&secret.try_into().unwrap())
}

/// `certificate` (raft) with its commit re-signed by `impostor`, and the impostor's own
/// attestation re-signed to name itself as the leader.
fn resign_commit(certificate: &Certificate, impostor: &SigningKey) -> Certificate {
    use polity_proto::{Attestation, RaftCommit, StatementKind};
    let mut forged = certificate.clone();
    let impostor_key = impostor.verifying_key().to_bytes().to_vec();
    let commit = forged.raft_commit.as_mut().unwrap();
    let body = RaftCommit::decode(commit.body.as_slice()).unwrap();
    *commit = polity_consensus::sign_message(impostor, StatementKind::RaftCommit, &body);
    for attestation in &mut forged.attestations {
        if attestation.signer == impostor_key {
            let mut mark = Attestation::decode(attestation.body.as_slice()).unwrap();
            mark.raft_leader = impostor_key.clone();
            *attestation =
                polity_consensus::sign_message(impostor, StatementKind::Attestation, &mark);
        }
    }
    assert_ne!(
        &forged, certificate,
        "the impostor attested the real commit"
    );
    forged
}
