//! One stranger floods a real `polity` process with maximal round messages for slots
//! that were never assigned (the early buffer, before an `Assign` arrives). The node
//! keeps only its byte budget of them, refuses the rest with a reason, and keeps
//! serving. `FLOOD_MESSAGES=600` makes the flood as large as BENCHMARKS.md's run.

mod support;

use std::time::{Duration, Instant};

use polity_net::{AppProtocol, LocalInfo, Multiaddr, NetConfig, NetMetrics, PeerId};
use polity_proto::{
    Ack, ConsensusRequest, GetNodeInfoRequest, Level, RoundEnvelope, RoundMessage, SignedStatement,
    consensus_request, round_message,
};
use prost::Message;
use support::TestNode;

/// Bound on every wait: generous, since two cores may be busy compiling.
const WAIT: Duration = Duration::from_secs(60);
/// A round message as large as a frame allows (4 MiB, less the envelope).
const MESSAGE_BYTES: usize = (4 << 20) - 4096;
/// The node's budget for one sending peer's early messages (`member/router.rs`).
const PEER_BUDGET_BYTES: usize = 16 << 20;

fn flood_message(slot: u32) -> Vec<u8> {
    let mut task_id = [0u8; 32];
    task_id[..4].copy_from_slice(&slot.to_le_bytes());
    let envelope = RoundEnvelope {
        task_id: task_id.to_vec(),
        level: Level::Region as i32,
        group: "nowhere".into(),
        message: Some(RoundMessage {
            message: Some(round_message::Message::Statement(SignedStatement {
                body: vec![7; MESSAGE_BYTES],
                ..SignedStatement::default()
            })),
        }),
    };
    ConsensusRequest {
        request: Some(consensus_request::Request::Round(envelope)),
    }
    .encode_to_vec()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A bare libp2p peer with key `[seed; 32]`, bootstrapped to `node`.
fn stranger(
    node: &TestNode,
    seed: u8,
) -> (
    polity_net::NetHandle,
    tokio::sync::mpsc::Receiver<polity_net::NetEvent>,
    tokio::task::JoinHandle<()>,
) {
    let config = NetConfig {
        secret_key: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: node
            .endpoints
            .p2p
            .iter()
            .map(|address| address.parse::<Multiaddr>().unwrap())
            .collect(),
        mdns: false,
        local: LocalInfo {
            capabilities: Vec::new(),
            region: "elsewhere".into(),
            continent: "elsewhere".into(),
            grpc_endpoint: "http://127.0.0.1:1".into(),
            version: "flood".into(),
            ..LocalInfo::default()
        },
    };
    polity_net::start(config, NetMetrics::default()).unwrap()
}

/// A peer that keeps sending what does not decode is banned: after its strikes
/// (32 within a minute) the node closes its connection and refuses it, and counts
/// the ban; the node keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_breaking_the_protocol_is_banned() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("target"), &[]);
    let node_peer: PeerId = node.endpoints.peer_id.parse().unwrap();
    let (net, _events, _task) = stranger(&node, 0x78);
    let started = Instant::now();
    let mut answered = 0;
    let banned = loop {
        assert!(
            started.elapsed() < WAIT,
            "never banned after {answered} answers"
        );
        match net
            .request(node_peer, AppProtocol::Consensus, vec![0xff; 64])
            .await
        {
            Ok(reply) => {
                let ack = Ack::decode(reply.as_slice()).unwrap();
                assert!(!ack.accepted, "garbage was accepted");
                answered += 1;
            }
            // Before the first answer, the connection may still be forming.
            Err(_) if answered == 0 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => break answered,
        }
    };
    assert!(banned >= 31, "banned after only {banned} violations");
    let (_, metrics) = node.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("polity_p2p_peers_banned_total 1")),
        "the ban is counted:\n{metrics}"
    );
    let mut client = node.client().await;
    assert!(client.get_node_info(GetNodeInfoRequest {}).await.is_ok());
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flooding_early_messages_gets_only_its_byte_budget() {
    let messages: u32 = std::env::var("FLOOD_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("target"), &[]);
    let node_peer: PeerId = node.endpoints.peer_id.parse().unwrap();
    let (net, _events, _task) = stranger(&node, 0x77);
    let (mut accepted, mut refused) = (0usize, 0usize);
    let started = Instant::now();
    for slot in 0..messages {
        let reply = loop {
            match net
                .request(node_peer, AppProtocol::Consensus, flood_message(slot))
                .await
            {
                Ok(reply) => break reply,
                Err(error) => {
                    assert!(
                        started.elapsed() < WAIT,
                        "the node stopped answering: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let ack = Ack::decode(reply.as_slice()).unwrap();
        if ack.accepted {
            accepted += 1;
        } else {
            assert!(ack.reason.contains("too many bytes"), "{}", ack.reason);
            refused += 1;
        }
    }
    let pid = node.endpoints.pid;
    println!(
        "{messages} messages of {MESSAGE_BYTES} bytes: {accepted} held, {refused} refused; \
         the node's peak RSS {} MiB",
        rss_kib(pid) / 1024
    );
    // Each message is just under 4 MiB on the wire: four fit the budget, a fifth not.
    assert_eq!(accepted, PEER_BUDGET_BYTES / (4 << 20));
    assert_eq!(accepted + refused, messages as usize);
    // The node still serves.
    let mut client = node.client().await;
    let info = client.get_node_info(GetNodeInfoRequest {}).await.unwrap();
    assert!(info.into_inner().info.is_some());
    node.stop();
}
