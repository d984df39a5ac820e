//! A byzantine entry node, played by a bare libp2p peer against a real `polity`
//! process: it assigns the node a seat under a path the task's own policy does not
//! select, under a registry epoch the node is not at, next to a stranger that is no
//! registry member, and with a weight the registry does not give. The member refuses
//! each (with the reason, counted) rather than sign; the honest assignment is taken.

mod support;

use std::time::{Duration, Instant};

use polity_consensus::encode_task;
use polity_net::{AppProtocol, LocalInfo, Multiaddr, NetConfig, NetMetrics, PeerId};
use polity_proto::{
    Ack, Aggregation, Assign, ConsensusPath, GroupPlan, Level, Member, RiskPolicy, Scope,
    TaskRequest, TaskSpec, task_request,
};
use prost::Message;
use support::TestNode;

/// Bound on every wait: generous, since two cores may be busy compiling.
const WAIT: Duration = Duration::from_secs(60);

/// What the hostile entry node varies.
struct Hostile {
    path: ConsensusPath,
    registry_digest: Vec<u8>,
    members: Vec<Member>,
}

fn assign(hostile: Hostile) -> Vec<u8> {
    // adversarial_risk 0.9: the policy selects bft.
    let spec = TaskSpec {
        capability: "echo".into(),
        payload: b"hi".to_vec(),
        scope: Some(Scope {
            level: Level::Region as i32,
            name: "local".into(),
        }),
        replication: 1,
        aggregation: Aggregation::Majority as i32,
        policy: Some(RiskPolicy {
            adversarial_risk: 0.9,
            ..RiskPolicy::default()
        }),
        deadline_ms: 5_000,
        nonce: 1,
    };
    let plan = GroupPlan {
        level: Level::Region as i32,
        group: "local".into(),
        members: hostile.members,
        path: hostile.path as i32,
        path_reason: "chosen by a hostile entry node".into(),
        aggregation: Aggregation::Majority as i32,
        round_timeout_ms: 1_000,
        rounds_max: 3,
        registry_digest: hostile.registry_digest,
    };
    TaskRequest {
        request: Some(task_request::Request::Assign(Assign {
            task: encode_task(&spec),
            plan: Some(plan),
            child_certificate: Vec::new(),
        })),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_a_plan_its_task_policy_or_registry_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("member"), &["--region", "local"]);
    let node_peer: PeerId = node.endpoints.peer_id.parse().unwrap();
    let node_key = hex::decode(&node.endpoints.public_key).unwrap();
    let bootstrap: Vec<Multiaddr> = node
        .endpoints
        .p2p
        .iter()
        .map(|address| address.parse().unwrap())
        .collect();
    let config = NetConfig {
        secret_key: [0x66; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        mdns: false,
        local: LocalInfo {
            capabilities: vec!["echo".into()],
            region: "local".into(),
            continent: "local".into(),
            grpc_endpoint: "http://127.0.0.1:1".into(),
            version: "hostile".into(),
            ..LocalInfo::default()
        },
    };
    let (net, _events, _task) = polity_net::start(config, NetMetrics::default()).unwrap();

    // The node runs a one-member dev federation of itself: its epoch comes from it.
    let chain = node
        .client()
        .await
        .get_epoch_chain(polity_proto::GetEpochChainRequest {})
        .await
        .unwrap()
        .into_inner();
    let anchor = polity_consensus::Anchor::from_chain(chain).unwrap();
    let digest = anchor.current().digest().to_vec();
    let me = Member {
        public_key: node_key.clone(),
        weight: 1,
    };
    let stranger = Member {
        public_key: ed25519_dalek::SigningKey::from_bytes(&[0x66; 32])
            .verifying_key()
            .to_bytes()
            .to_vec(),
        weight: 1_000_000,
    };
    let ask = |path, registry_digest: &[u8], members: Vec<Member>| {
        let net = net.clone();
        let bytes = assign(Hostile {
            path,
            registry_digest: registry_digest.to_vec(),
            members,
        });
        async move {
            let started = Instant::now();
            loop {
                match net
                    .request(node_peer, AppProtocol::Task, bytes.clone())
                    .await
                {
                    Ok(reply) => return Ack::decode(reply.as_slice()).unwrap(),
                    Err(error) => {
                        assert!(started.elapsed() < WAIT, "no answer: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    let refused = ask(ConsensusPath::Stake, &digest, vec![me.clone()]).await;
    assert!(!refused.accepted, "a stake seat on a bft task was taken");
    assert!(
        refused
            .reason
            .contains("not the one the task's policy selects"),
        "{}",
        refused.reason
    );
    let (_, metrics) = node.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.contains("assign refused") && !line.ends_with(" 0")),
        "the refusal is counted:\n{metrics}"
    );
    let refusals = [
        (
            ask(ConsensusPath::Bft, &[7; 32], vec![me.clone()]).await,
            "drawn from registry",
        ),
        (
            ask(ConsensusPath::Bft, &digest, vec![me.clone(), stranger]).await,
            "is not a registry member",
        ),
        (
            ask(
                ConsensusPath::Bft,
                &digest,
                vec![Member {
                    weight: 9,
                    ..me.clone()
                }],
            )
            .await,
            "the registry gives it stake 1",
        ),
    ];
    for (ack, reason) in refusals {
        assert!(!ack.accepted, "taken: expected a refusal for {reason:?}");
        assert!(
            ack.reason.contains(reason),
            "{} (expected {reason:?})",
            ack.reason
        );
    }
    let taken = ask(ConsensusPath::Bft, &digest, vec![me]).await;
    assert!(taken.accepted, "the right plan is taken: {}", taken.reason);
    node.stop();
}
