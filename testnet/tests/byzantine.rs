//! Byzantine members on real node processes: one of four (f = 1 of 3f + 1) forges
//! signatures and replays old statements, or withholds as collector. The other
//! three still decide the right value on the bft path, the liar's messages are
//! refused and counted, and its trust falls. (Wrong answers with equivocation, and
//! crashes and partitions, are in `chaos.rs`.)

mod support;

use polity_consensus::verify_chain;
use polity_proto::federation_client::FederationClient;
use polity_proto::{
    ConsensusPath, GetTrustRequest, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskState,
};
use polity_testnet::process::NodeProcess;
use sha2::Digest;
use tonic::transport::Channel;

const NODES: usize = 4;

/// Starts four nodes in one region; the last one gets `byzantine_args`. Waits until
/// every node sees the other three as compatible.
async fn cluster(dir: &std::path::Path, byzantine_args: &[&str]) -> Vec<NodeProcess> {
    let node_args = (0..NODES)
        .map(|index| {
            let mut args = vec![
                "--capability".to_string(),
                "sha256=builtin:sha256".to_string(),
            ];
            if index == NODES - 1 {
                args.extend(byzantine_args.iter().map(|arg| arg.to_string()));
            }
            args
        })
        .collect();
    support::start_region(dir, "sha256", node_args).await
}

fn bft_task(payload: &str) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: "sha256".into(),
        payload: payload.as_bytes().to_vec(),
        scope: Some(Scope {
            level: Level::Region as i32,
            name: String::new(),
        }),
        replication: NODES as u32,
        policy: Some(RiskPolicy {
            path_override: ConsensusPath::Bft as i32,
            ..RiskPolicy::default()
        }),
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

fn truth(payload: &str) -> Vec<u8> {
    hex::encode(sha2::Sha256::digest(payload.as_bytes())).into_bytes()
}

async fn trust_of(client: &mut FederationClient<Channel>, peer_id: &str) -> f64 {
    client
        .get_trust(GetTrustRequest {
            peer_id: peer_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .first()
        .map(|entry| entry.score)
        .unwrap_or(polity_consensus::TRUST_PRIOR)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_statements_are_refused_and_cost_trust() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &["--fault-forge-signatures", "--fault-replay"]).await;
    let liar = &nodes[NODES - 1];
    let mut client = nodes[0].client().await.unwrap();
    let mut trust_before = Vec::new();
    for node in &nodes[..NODES - 1] {
        let mut honest = node.client().await.unwrap();
        trust_before.push(trust_of(&mut honest, &liar.endpoints.peer_id).await);
    }
    for index in 0..6 {
        let payload = format!("forged {index}");
        let record = match client.submit_task(bft_task(&payload)).await {
            Ok(record) => record.into_inner(),
            // Once the liar's trust is at the floor it is not chosen, and a region of
            // three honest nodes cannot seat four: that is the point.
            Err(status) if index > 0 && status.code() == tonic::Code::FailedPrecondition => break,
            Err(status) => panic!("task {index}: {status}"),
        };
        assert_eq!(
            record.state,
            TaskState::Decided as i32,
            "task {index}: {record:?}"
        );
        assert_eq!(record.value, truth(&payload), "task {index}");
        let summary = verify_chain(record.certificate.as_ref().unwrap()).unwrap();
        assert_eq!(summary.value, truth(&payload));
    }
    // Seats (and so the collector) are drawn by the seat rule: whichever honest
    // node the liar's statements reached refused them.
    let mut refused = 0.0;
    for node in &nodes[..NODES - 1] {
        refused += support::metric(
            node,
            "federation_peer_messages_dropped_total{reason=\"invalid statement\"}",
        )
        .await;
    }
    assert!(
        refused >= 1.0,
        "the liar's statements were refused: {refused}"
    );
    let forged = support::metric(
        liar,
        "polity_faults_injected_total{kind=\"forged_signature\"}",
    )
    .await;
    assert!(forged >= 1.0, "the liar did forge: {forged}");
    // Trust falls where the forgeries were seen (the drawn collector, or any member
    // the liar sent to), not necessarily at the entry node.
    let mut trust_after = Vec::new();
    for node in &nodes[..NODES - 1] {
        let mut honest = node.client().await.unwrap();
        trust_after.push(trust_of(&mut honest, &liar.endpoints.peer_id).await);
    }
    assert!(
        trust_after
            .iter()
            .zip(&trust_before)
            .any(|(after, before)| after < before),
        "trust fell somewhere: {trust_before:?} -> {trust_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withholding_collector_does_not_stop_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &["--fault-withhold"]).await;
    let withholder = &nodes[NODES - 1];
    // Enter tasks everywhere until the withholder has been a collector at least once;
    // every task must still decide the right value (the collector rotates).
    let mut withheld = 0.0;
    for index in 0..24 {
        let payload = format!("withheld {index}");
        let mut client = nodes[index % NODES].client().await.unwrap();
        let record = client
            .submit_task(bft_task(&payload))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            record.state,
            TaskState::Decided as i32,
            "task {index}: {record:?}"
        );
        assert_eq!(record.value, truth(&payload), "task {index}");
        withheld = support::metric(
            withholder,
            "polity_faults_injected_total{kind=\"withheld\"}",
        )
        .await;
        if withheld >= 1.0 && index >= NODES {
            break;
        }
    }
    assert!(
        withheld >= 1.0,
        "the withholder was collector at least once and withheld"
    );
}
