//! A byzantine entry node, played by a bare libp2p peer against a real `polity`
//! process. The hostile peer is a registry member (a member gone bad): it assigns
//! the node a seat under a path the task's own policy does not select, under a
//! registry epoch the node is not at, next to a stranger that is no registry member,
//! and with a weight the registry does not give. The member refuses each (with the
//! reason, counted) rather than sign; the honest assignment is taken. A peer outside
//! the registry may not assign work at all.

mod support;

use std::time::{Duration, Instant};

use polity_consensus::encode_task;
use polity_consensus::registry::sign_genesis;
use polity_net::{AppProtocol, LocalInfo, Multiaddr, NetConfig, NetMetrics, PeerId};
use polity_proto::{
    Ack, Admission, Aggregation, Assign, ConsensusPath, EpochChain, GroupPlan, Level, Member,
    Registry, RegistryMember, RiskPolicy, Scope, TaskRequest, TaskSpec, task_request,
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

/// A genesis of the node (data dir `member`) and the hostile peer's key, both in
/// region "local", admission open; returns its path.
fn genesis(dir: &std::path::Path) -> std::path::PathBuf {
    let member_dir = dir.join("member");
    std::fs::create_dir_all(&member_dir).unwrap();
    let node = polity_node::runtime::identity::Identity::load_or_create(&member_dir).unwrap();
    let mut members: Vec<RegistryMember> = [node.public_key().0, key(HOSTILE)]
        .into_iter()
        .map(|public_key| RegistryMember {
            public_key: public_key.to_vec(),
            region: "local".into(),
            continent: "local".into(),
            stake: 1,
            capabilities: vec!["echo".into()],
        })
        .collect();
    members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    let authority = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]);
    let registry = Registry {
        federation: "hostile".into(),
        epoch: 0,
        previous: Vec::new(),
        members,
        admission: Admission::Open as i32,
        authorities: vec![authority.verifying_key().to_bytes().to_vec()],
    };
    let chain = EpochChain {
        genesis: Some(sign_genesis(&registry, &[authority]).unwrap()),
        changes: Vec::new(),
    };
    let path = dir.join("genesis.pb");
    std::fs::write(&path, chain.encode_to_vec()).unwrap();
    path
}

const HOSTILE: u8 = 0x66;
const STRANGER: u8 = 0x77;

fn key(seed: u8) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .verifying_key()
        .to_bytes()
}

/// A bare libp2p peer with secret key `[seed; 32]`, bootstrapped to `bootstrap`.
fn peer(seed: u8, bootstrap: Vec<Multiaddr>) -> polity_net::NetHandle {
    let config = NetConfig {
        secret_key: [seed; 32],
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
    net
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_a_plan_its_task_policy_or_registry_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis(dir.path());
    let node = TestNode::start(
        &dir.path().join("member"),
        &[
            "--region",
            "local",
            "--continent",
            "local",
            "--genesis",
            genesis.to_str().unwrap(),
        ],
    );
    let node_peer: PeerId = node.endpoints.peer_id.parse().unwrap();
    let node_key = hex::decode(&node.endpoints.public_key).unwrap();
    let bootstrap: Vec<Multiaddr> = node
        .endpoints
        .p2p
        .iter()
        .map(|address| address.parse().unwrap())
        .collect();
    let net = peer(HOSTILE, bootstrap.clone());
    let stranger_net = peer(STRANGER, bootstrap);

    // The node's epoch, as it serves it.
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
        public_key: key(0x99).to_vec(),
        weight: 1_000_000,
    };
    let ask_as =
        |net: polity_net::NetHandle, path, registry_digest: &[u8], members: Vec<Member>| {
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
    let ask =
        |path, registry_digest: &[u8], members| ask_as(net.clone(), path, registry_digest, members);
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
        (
            ask_as(
                stranger_net.clone(),
                ConsensusPath::Bft,
                &digest,
                vec![me.clone()],
            )
            .await,
            "only members may assign work",
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
