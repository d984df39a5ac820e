//! Real swarms in one process, on loopback TCP: signed info exchange, discovery by
//! capability, node-protocol requests, limits, and forged info.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use polity_consensus::sign_message;
use polity_net::network::verify_node_info;
use polity_net::{
    AppProtocol, LocalInfo, Multiaddr, NetConfig, NetError, NetEvent, NetHandle, NetMetrics,
    PeerId, Responder,
};
use polity_proto::{NodeInfo, StatementKind};
use tokio::sync::mpsc;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    handle: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    metrics: NetMetrics,
    address: Multiaddr,
}

async fn start(seed: u8, capabilities: &[&str], region: &str, bootstrap: Vec<Multiaddr>) -> Node {
    start_on(
        seed,
        capabilities,
        region,
        bootstrap,
        "/ip4/127.0.0.1/tcp/0",
    )
    .await
}

async fn start_on(
    seed: u8,
    capabilities: &[&str],
    region: &str,
    bootstrap: Vec<Multiaddr>,
    listen: &str,
) -> Node {
    let metrics = NetMetrics::default();
    let config = NetConfig {
        secret_key: [seed; 32],
        listen: vec![listen.parse().unwrap()],
        bootstrap,
        mdns: false,
        local: LocalInfo {
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            region: region.to_string(),
            continent: "earth".to_string(),
            grpc_endpoint: format!("http://127.0.0.1:{seed}"),
            version: "test".to_string(),
            ..LocalInfo::default()
        },
    };
    let (handle, events, _task) = polity_net::start(config, metrics.clone()).unwrap();
    let started = Instant::now();
    let address = loop {
        if let Some(address) = handle.listen_addresses().await.unwrap().into_iter().next() {
            break address;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no listen address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let address = address.with(libp2p::multiaddr::Protocol::P2p(handle.local_peer_id()));
    Node {
        handle,
        events,
        metrics,
        address,
    }
}

/// Waits until `node` holds verified info for every peer in `expected`.
async fn wait_for_infos(node: &Node, expected: &[PeerId]) {
    let started = Instant::now();
    loop {
        let peers = node.handle.peers().await.unwrap();
        let known = expected
            .iter()
            .filter(|peer| {
                peers
                    .iter()
                    .any(|view| view.peer_id == **peer && view.info.is_some())
            })
            .count();
        if known == expected.len() {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "{} knows {known} of {} peers",
            node.handle.local_peer_id(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a provider query for `key` at `node` finds every peer in `expected`.
async fn wait_for_providers(node: &Node, key: &str, expected: &[PeerId]) {
    let started = Instant::now();
    loop {
        let providers = node.handle.find_providers(key.to_string()).await.unwrap();
        if expected.iter().all(|peer| providers.contains(peer)) {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "providers found: {providers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a request from `handle` on its own task, so the test can answer it.
fn spawn_request(
    handle: &NetHandle,
    peer: PeerId,
    protocol: AppProtocol,
    bytes: &[u8],
) -> tokio::task::JoinHandle<Result<Vec<u8>, NetError>> {
    let handle = handle.clone();
    let bytes = bytes.to_vec();
    tokio::spawn(async move { handle.request(peer, protocol, bytes).await })
}

/// The next inbound request among a node's events (other events are skipped).
async fn next_request(
    events: &mut mpsc::Receiver<NetEvent>,
) -> (PeerId, AppProtocol, Vec<u8>, Responder) {
    tokio::time::timeout(CONVERGE_TIMEOUT, async {
        loop {
            if let NetEvent::Request {
                peer,
                protocol,
                bytes,
                responder,
            } = events.recv().await.expect("events")
            {
                return (peer, protocol, bytes, responder);
            }
        }
    })
    .await
    .expect("the request arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_discover_each_other_and_serve_requests() {
    let a = start(1, &["sha256"], "north", vec![]).await;
    let b = start(2, &["sha256", "echo"], "south", vec![a.address.clone()]).await;
    let mut c = start(3, &["echo"], "south", vec![a.address.clone()]).await;
    let ids = [
        a.handle.local_peer_id(),
        b.handle.local_peer_id(),
        c.handle.local_peer_id(),
    ];

    // b and c only know a; gossip and dialing make everyone know everyone.
    wait_for_infos(&a, &[ids[1], ids[2]]).await;
    wait_for_infos(&b, &[ids[0], ids[2]]).await;
    wait_for_infos(&c, &[ids[0], ids[1]]).await;

    let views = b.handle.peers().await.unwrap();
    let view_c = views.iter().find(|view| view.peer_id == ids[2]).unwrap();
    let info_c = view_c.info.as_ref().unwrap();
    assert_eq!(info_c.capabilities, vec!["echo".to_string()]);
    assert_eq!(info_c.region, "south");
    assert_eq!(info_c.peer_id, ids[2].to_string());
    assert!(view_c.serves("echo") && !view_c.serves("sha256"));

    // Kademlia provider records: a and b provide capability/sha256.
    wait_for_providers(&c, "capability/sha256", &[ids[0], ids[1]]).await;

    // A request on the task protocol reaches c's node, and c's answer comes back.
    let ask = spawn_request(&a.handle, ids[2], AppProtocol::Task, b"ping?");
    let (peer, protocol, bytes, responder) = next_request(&mut c.events).await;
    assert_eq!(peer, ids[0]);
    assert_eq!(protocol, AppProtocol::Task);
    assert_eq!(bytes, b"ping?");
    responder.respond(b"pong!".to_vec());
    assert_eq!(ask.await.unwrap().unwrap(), b"pong!");

    // An unanswered request fails on the asking side instead of hanging.
    let ask = spawn_request(&a.handle, ids[2], AppProtocol::Consensus, b"ignored");
    let (_, _, _, responder) = next_request(&mut c.events).await;
    drop(responder);
    assert!(matches!(ask.await.unwrap(), Err(NetError::Request { .. })));

    // An oversized request is refused by the codec and counted, and nothing crashes.
    let oversized = vec![0u8; polity_net::codec::FRAME_BYTES_MAX + 1];
    let result = a.handle.request(ids[1], AppProtocol::Task, oversized).await;
    assert!(result.is_err(), "{result:?}");
    assert!(a.metrics.requests_failed.get() >= 1);
    assert_eq!(b.metrics.infos_rejected.get(), 0);
    // Both nodes still answer.
    assert!(b.handle.peers().await.is_ok() && a.handle.peers().await.is_ok());
}

fn signed(key: &SigningKey, edit: impl FnOnce(&mut NodeInfo)) -> polity_proto::SignedStatement {
    let public = key.verifying_key().to_bytes();
    let mut info = NodeInfo {
        public_key: public.to_vec(),
        peer_id: polity_net::peer_id_of(&public).unwrap().to_string(),
        capabilities: vec!["sha256".into()],
        issued_at_ms: 1,
        ..NodeInfo::default()
    };
    edit(&mut info);
    sign_message(key, StatementKind::NodeInfo, &info)
}

#[test]
fn forged_or_mismatched_node_info_is_rejected() {
    let honest = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let honest_peer = polity_net::peer_id_of(&honest.verifying_key().to_bytes()).unwrap();
    let other_peer = polity_net::peer_id_of(&other.verifying_key().to_bytes()).unwrap();

    let good = signed(&honest, |_| {});
    assert_eq!(
        verify_node_info(Some(honest_peer), &good).unwrap().0,
        honest_peer
    );
    assert_eq!(verify_node_info(None, &good).unwrap().0, honest_peer);

    // Answering for another peer.
    assert!(
        verify_node_info(Some(other_peer), &good)
            .unwrap_err()
            .to_string()
            .contains("signed by")
    );
    // A flipped byte in the body.
    let mut tampered = good.clone();
    tampered.body[3] ^= 1;
    assert!(
        verify_node_info(None, &tampered)
            .unwrap_err()
            .to_string()
            .contains("bad signature")
    );
    // Signed by one key, claiming another key inside.
    let lying = signed(&other, |info| {
        info.public_key = honest.verifying_key().to_bytes().to_vec()
    });
    assert!(
        verify_node_info(None, &lying)
            .unwrap_err()
            .to_string()
            .contains("another key")
    );
    // Unsigned.
    let mut unsigned = good.clone();
    unsigned.signature.clear();
    assert!(verify_node_info(None, &unsigned).is_err());
    // Wrong statement kind.
    let mut wrong_kind = good;
    wrong_kind.kind = StatementKind::Observation as i32;
    assert!(verify_node_info(None, &wrong_kind).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_bootstrap_peer_still_joins() {
    // Reserve a port for the late node, then free it for the node to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late_key = ed25519_dalek::SigningKey::from_bytes(&[21; 32]);
    let late_peer = polity_net::peer_id_of(&late_key.verifying_key().to_bytes()).unwrap();
    let late_address: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{late_peer}")
        .parse()
        .unwrap();

    let early = start(20, &["echo"], "north", vec![late_address]).await;
    // The first dial fails: nobody listens yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = start_on(
        21,
        &["echo"],
        "north",
        vec![],
        &format!("/ip4/127.0.0.1/tcp/{port}"),
    )
    .await;
    assert_eq!(late.handle.local_peer_id(), late_peer);
    wait_for_infos(&early, &[late_peer]).await;
    wait_for_infos(&late, &[early.handle.local_peer_id()]).await;
}
