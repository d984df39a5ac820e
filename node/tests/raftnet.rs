//! `RaftGroups` on real libp2p nodes on loopback: a place's group of three forms,
//! commits an entry proposed on a follower (forwarded to the leader, whose signed word
//! comes back), replicates it, and follows its place's members as they change (a
//! fourth joins as a voter, one leaves); raft traffic from outside the group is
//! refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use polity_consensus::PublicKey;
use polity_net::{AppProtocol, LocalInfo, Multiaddr, NetConfig, NetEvent, NetHandle, NetMetrics};
use polity_node::raft::{PROPOSE_REFUSED, PlaceGroup, RaftGroups, RaftNetError, ledger_key};
use polity_node::telemetry::metrics::{Metrics, RaftGroupLabels};
use polity_proto::{
    ConsensusRequest, Level, RaftCommit, RaftEnvelope, RaftPropose, Report, Slot, StatementKind,
};
use polity_raft::{GroupName, LedgerEntry, RaftReply, RaftRpc, node_id};
use prost::Message;

/// Bound on every wait: generous, since two cores may be busy compiling.
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    key: PublicKey,
    net: NetHandle,
    address: Multiaddr,
    groups: Arc<RaftGroups>,
    metrics: Arc<Metrics>,
}

fn public_key(seed: u8) -> PublicKey {
    PublicKey(
        SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .to_bytes(),
    )
}

/// The place group `region-<label>-e0` founded by `founders`, now with `members`.
fn place(label: &str, founders: &[u8], members: &[u8]) -> PlaceGroup {
    PlaceGroup {
        name: GroupName::new(format!("region-{label}-e0")).unwrap(),
        level: Level::Region,
        place: label.to_string(),
        founders: founders.iter().map(|&seed| public_key(seed)).collect(),
        members: members.iter().map(|&seed| public_key(seed)).collect(),
    }
}

/// A ledger entry for task `[fill; 32]`'s group in region `place`, carrying a report
/// of `value` signed by member `signer`, under its slot's ledger key.
fn report_entry(place: &str, signer: u8, fill: u8, value: &[u8]) -> LedgerEntry {
    let slot = Slot {
        task_id: vec![fill; 32],
        level: Level::Region as i32,
        group: place.into(),
        round: 0,
    };
    let report = Report {
        slot: Some(slot.clone()),
        value: value.to_vec(),
        ..Report::default()
    };
    let statement = polity_consensus::sign_message(
        &SigningKey::from_bytes(&[signer; 32]),
        StatementKind::Report,
        &report,
    );
    LedgerEntry::new(ledger_key(&slot), statement.encode_to_vec(), None).unwrap()
}

/// The voters of `name` in `node`'s metrics.
fn voters(node: &Node, name: &GroupName) -> i64 {
    let labels = RaftGroupLabels {
        group: name.to_string(),
    };
    node.metrics.raft_voters.get_or_create(&labels).get()
}

/// Starts a libp2p node (loopback TCP, no mDNS) with its raft groups, and routes its
/// inbound `/polity/consensus/1` requests to them as the node's event loop would.
async fn start(seed: u8, bootstrap: Vec<Multiaddr>) -> Node {
    let config = NetConfig {
        secret_key: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        mdns: false,
        local: LocalInfo {
            capabilities: vec!["echo".to_string()],
            region: "eu-west".to_string(),
            continent: "europe".to_string(),
            grpc_endpoint: format!("http://127.0.0.1:{seed}"),
            version: "test".to_string(),
            ..LocalInfo::default()
        },
    };
    let (net, mut events, _task) = polity_net::start(config, NetMetrics::default()).unwrap();
    let started = Instant::now();
    let address = loop {
        if let Some(address) = net.listen_addresses().await.unwrap().into_iter().next() {
            break address;
        }
        assert!(
            started.elapsed() < WAIT,
            "node {seed} has no listen address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let address: Multiaddr = format!("{address}/p2p/{}", net.local_peer_id())
        .parse()
        .unwrap();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let metrics = Arc::new(Metrics::new());
    let key = public_key(seed);
    let groups = RaftGroups::new(
        SigningKey::from_bytes(&[seed; 32]),
        db,
        net.clone(),
        metrics.clone(),
    );
    let router = groups.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let NetEvent::Request {
                peer,
                protocol: AppProtocol::Consensus,
                bytes,
                responder,
            } = event
            else {
                continue;
            };
            let groups = router.clone();
            tokio::spawn(async move {
                let reply = match ConsensusRequest::decode(bytes.as_slice()) {
                    Ok(request) => groups.handle_consensus(peer, request).await,
                    Err(_) => None,
                };
                match reply {
                    Some(reply) => responder.respond(reply),
                    None => drop(responder),
                }
            });
        }
    });
    Node {
        key,
        net,
        address,
        groups,
        metrics,
    }
}

/// Waits until `node` is connected to every one of `others`.
async fn wait_connected(node: &Node, others: &[&Node]) {
    let started = Instant::now();
    loop {
        let peers = node.net.peers().await.unwrap();
        let connected = others
            .iter()
            .filter(|other| {
                peers
                    .iter()
                    .any(|view| view.peer_id == other.net.local_peer_id() && view.connected)
            })
            .count();
        if connected == others.len() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{} is connected to {connected} of {} peers",
            node.net.local_peer_id(),
            others.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node names the same leader of `name`, and returns it.
async fn wait_for_leader(nodes: &[Node], name: &GroupName) -> PublicKey {
    let started = Instant::now();
    loop {
        let mut leaders = Vec::new();
        for node in nodes {
            leaders.push(node.groups.leader(name).await);
        }
        if let Some(Some(first)) = leaders.first()
            && leaders.iter().all(|leader| leader.as_ref() == Some(first))
        {
            return *first;
        }
        assert!(
            started.elapsed() < WAIT,
            "no agreed leader of {name}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_entry(node: &Node, name: &GroupName, entry: &LedgerEntry) {
    let started = Instant::now();
    loop {
        let stored = node.groups.ledger_get(name, &entry.task_id).await.unwrap();
        if stored.as_ref() == Some(entry) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{} never applied {entry:?}; holds {stored:?}",
            node.key
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_an_entry_forwarded_by_a_follower() {
    let a = start(11, vec![]).await;
    let b = start(12, vec![a.address.clone()]).await;
    let c = start(13, vec![a.address.clone(), b.address.clone()]).await;
    wait_connected(&a, &[&b, &c]).await;
    wait_connected(&b, &[&a, &c]).await;
    wait_connected(&c, &[&a, &b]).await;
    let nodes = [a, b, c];

    let eu_west = place("eu-west", &[13, 11, 12], &[13, 11, 12]);
    let name = eu_west.name.clone();
    for node in &nodes {
        node.groups.ensure(&eu_west).await.unwrap();
        // Idempotent.
        node.groups.ensure(&eu_west).await.unwrap();
    }
    let leader = wait_for_leader(&nodes, &name).await;
    let followers: Vec<&Node> = nodes.iter().filter(|node| node.key != leader).collect();
    assert_eq!(
        followers.len(),
        2,
        "the leader {leader} is one of the three"
    );

    // A follower commits: its proposal is forwarded to the leader.
    let entry = report_entry("eu-west", 11, 9, b"nine");
    let committed = followers[0]
        .groups
        .commit(&name, entry.clone(), WAIT)
        .await
        .expect("the forwarded commit succeeds");
    assert!(committed.term >= 1, "{committed:?}");
    // The leader's word: signed by the leader, for this report, term and index.
    let (signer, commit): (PublicKey, RaftCommit) =
        polity_consensus::statement::open(&committed.commit, StatementKind::RaftCommit).unwrap();
    assert_eq!(signer, leader);
    assert_eq!(
        (commit.term, commit.commit_index),
        (committed.term, committed.commit_index)
    );
    // Index 1 is the initial membership, and a new leader appends a blank entry first.
    assert!(committed.commit_index >= 2, "{committed:?}");
    for node in &nodes {
        wait_for_entry(node, &name, &entry).await;
    }

    // The other follower confirms the leader's word from its own log; the same body
    // signed by a non-leader, or naming another index, it refuses.
    let confirmed = followers[1]
        .groups
        .confirm(&name, committed.commit.clone())
        .await
        .expect("the other follower's log confirms the commit");
    assert_eq!(confirmed, committed);
    let seed = [11, 12, 13]
        .into_iter()
        .find(|&seed| public_key(seed) == followers[0].key)
        .unwrap();
    let impostor = SigningKey::from_bytes(&[seed; 32]);
    let forged = polity_consensus::sign_message(&impostor, StatementKind::RaftCommit, &commit);
    let refused = followers[1].groups.confirm(&name, forged).await;
    assert!(
        matches!(&refused, Err(RaftNetError::LeaderWord(reason)) if reason.contains("appended in term")),
        "{refused:?}"
    );
    let elsewhere = RaftCommit {
        commit_index: 1,
        ..commit.clone()
    };
    let leader_seed = [11, 12, 13]
        .into_iter()
        .find(|&seed| public_key(seed) == leader)
        .unwrap();
    let moved = polity_consensus::sign_message(
        &SigningKey::from_bytes(&[leader_seed; 32]),
        StatementKind::RaftCommit,
        &elsewhere,
    );
    let refused = followers[1].groups.confirm(&name, moved).await;
    assert!(
        matches!(refused, Err(RaftNetError::LeaderWord(_))),
        "{refused:?}"
    );
    // The leader's own signature on the right index and report, but for another
    // round's slot: the logged report is not that slot's, so nobody attests it.
    let mut other_round = commit.clone();
    other_round.slot.as_mut().unwrap().round += 1;
    let reslotted = polity_consensus::sign_message(
        &SigningKey::from_bytes(&[leader_seed; 32]),
        StatementKind::RaftCommit,
        &other_round,
    );
    let refused = followers[1].groups.confirm(&name, reslotted).await;
    assert!(
        matches!(&refused, Err(RaftNetError::LeaderWord(reason)) if reason.contains("another report or slot")),
        "{refused:?}"
    );

    // Committing the same entry again is accepted (unchanged); a certificate attaches.
    let again = followers[1]
        .groups
        .commit(&name, entry.clone(), WAIT)
        .await
        .expect("an identical entry is accepted");
    assert!(again.commit_index > committed.commit_index);
    let certified =
        LedgerEntry::new(entry.task_id, entry.report.clone(), Some(b"cert".to_vec())).unwrap();
    followers[1]
        .groups
        .commit(&name, certified.clone(), WAIT)
        .await
        .expect("a certificate attaches");

    // Another report for the same task conflicts, and the stored entry comes back.
    let other = report_entry("eu-west", 12, 9, b"another");
    match followers[0].groups.commit(&name, other, WAIT).await {
        Err(RaftNetError::Conflict { stored, .. }) => {
            assert_eq!(stored.as_deref(), Some(&certified));
        }
        result => panic!("expected a conflict, got {result:?}"),
    }
    for node in &nodes {
        wait_for_entry(node, &name, &certified).await;
    }

    // Exactly the leader reports leadership in its metrics.
    let labels = RaftGroupLabels {
        group: name.to_string(),
    };
    let started = Instant::now();
    loop {
        let leading: Vec<i64> = nodes
            .iter()
            .map(|node| node.metrics.raft_leader.get_or_create(&labels).get())
            .collect();
        let terms: Vec<i64> = nodes
            .iter()
            .map(|node| node.metrics.raft_term.get_or_create(&labels).get())
            .collect();
        let leader_at = nodes.iter().position(|node| node.key == leader).unwrap();
        if leading.iter().sum::<i64>() == 1
            && leading[leader_at] == 1
            && terms.iter().all(|t| *t >= 1)
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "leader gauges {leading:?}, terms {terms:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = nodes[0].metrics.encode_prometheus();
    assert!(text.contains("federation_raft_leader{group="), "{text}");

    // The place gains a member: following it, the leader adds the fourth as a learner,
    // then as a voter; the newcomer catches up and commits through the group.
    let addresses: Vec<Multiaddr> = nodes.iter().map(|node| node.address.clone()).collect();
    let d = start(14, addresses).await;
    wait_connected(&d, &nodes.iter().collect::<Vec<_>>()).await;
    let grown = place("eu-west", &[13, 11, 12], &[13, 11, 12, 14]);
    let started = Instant::now();
    while voters(&d, &name) != 4 || nodes.iter().any(|node| voters(node, &name) != 4) {
        for node in nodes.iter().chain([&d]) {
            node.groups.follow(std::slice::from_ref(&grown)).await;
        }
        assert!(
            started.elapsed() < WAIT,
            "the fourth member never became a voter"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_entry(&d, &name, &certified).await;
    let tenth = report_entry("eu-west", 14, 10, b"ten");
    d.groups
        .commit(&name, tenth.clone(), WAIT)
        .await
        .expect("the new voter commits through the group");

    // A founder leaves the place: the voters shrink to the other three.
    let shrunk = place("eu-west", &[13, 11, 12], &[11, 12, 14]);
    let started = Instant::now();
    while [&nodes[0], &nodes[1], &d]
        .iter()
        .any(|node| voters(node, &name) != 3)
    {
        for node in nodes.iter().chain([&d]) {
            node.groups.follow(std::slice::from_ref(&shrunk)).await;
        }
        assert!(
            started.elapsed() < WAIT,
            "the leaving member stayed a voter"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for node in nodes.iter().chain([&d]) {
        node.groups.shutdown().await;
    }
    assert!(matches!(
        nodes[0].groups.ensure(&eu_west).await,
        Err(RaftNetError::ShutDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_from_outside_the_group_is_refused() {
    let node = start(21, vec![]).await;
    let eu_west = place("eu-west", &[21, 22, 23], &[21, 22, 23]);
    let name = eu_west.name.clone();
    node.groups.ensure(&eu_west).await.unwrap();

    let peer = |seed: u8| polity_net::peer_id_of(&public_key(seed).0).unwrap();
    let vote = |seed: u8| {
        let rpc = RaftRpc::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(1, node_id(&public_key(seed))),
            None,
        ));
        serde_json::to_vec(&rpc).unwrap()
    };
    let ask = |raft_group: &str, rpc: Vec<u8>| RaftEnvelope {
        raft_group: raft_group.to_string(),
        rpc,
    };
    let refused = |bytes: Vec<u8>| match serde_json::from_slice::<RaftReply>(&bytes).unwrap() {
        RaftReply::Refused(reason) => Some(reason),
        _ => None,
    };

    // A stranger's well-formed vote request.
    let reply = node
        .groups
        .handle_raft(peer(99), ask(name.as_str(), vote(99)))
        .await;
    let reason = refused(reply).expect("a non-member is refused");
    assert!(reason.contains("not a member"), "{reason}");

    // A member's garbage, an unknown group, a malformed group name.
    let reason = refused(
        node.groups
            .handle_raft(peer(22), ask(name.as_str(), b"{not json".to_vec()))
            .await,
    )
    .expect("garbage is refused");
    assert!(reason.contains("undecodable"), "{reason}");
    let reason = refused(
        node.groups
            .handle_raft(peer(22), ask("region-elsewhere-00", vote(22)))
            .await,
    )
    .expect("an unknown group is refused");
    assert!(reason.contains("does not run here"), "{reason}");
    assert!(
        refused(
            node.groups
                .handle_raft(peer(22), ask("a/b", vote(22)))
                .await
        )
        .is_some(),
        "a bad group name is refused"
    );

    // A member's vote request reaches the raft.
    let reply = node
        .groups
        .handle_raft(peer(22), ask(name.as_str(), vote(22)))
        .await;
    assert_eq!(refused(reply), None, "a member's vote is served");

    // A stranger's proposal is refused for good.
    let entry = report_entry("eu-west", 22, 1, b"r");
    let reply = node
        .groups
        .handle_propose(
            peer(99),
            RaftPropose {
                raft_group: name.to_string(),
                entry: serde_json::to_vec(&entry).unwrap(),
            },
        )
        .await;
    assert!(!reply.accepted);
    assert_eq!(reply.commit_index, 0);
    assert!(reply.error.starts_with(PROPOSE_REFUSED), "{reply:?}");

    // A member's undecodable proposal too.
    let reply = node
        .groups
        .handle_propose(
            peer(22),
            RaftPropose {
                raft_group: name.to_string(),
                entry: b"\xff".to_vec(),
            },
        )
        .await;
    assert!(reply.error.starts_with(PROPOSE_REFUSED), "{reply:?}");

    // A group this node is not in cannot be ensured.
    let outside = place("elsewhere", &[22, 23], &[22, 23]);
    assert!(matches!(
        node.groups.ensure(&outside).await,
        Err(RaftNetError::NotAMember(_))
    ));
    node.groups.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_idle_group_is_evicted_and_restarts_from_sled() {
    use polity_node::raft::RAFT_GROUPS_MAX;

    let node = start(31, vec![]).await;
    let places: Vec<PlaceGroup> = (0..=RAFT_GROUPS_MAX)
        .map(|i| place(&format!("solo-{i}"), &[31], &[31]))
        .collect();
    let names: Vec<GroupName> = places.iter().map(|place| place.name.clone()).collect();
    node.groups.ensure(&places[0]).await.unwrap();
    let entry = report_entry("solo-0", 31, 3, b"solo");
    node.groups
        .commit(&names[0], entry.clone(), WAIT)
        .await
        .expect("a one-member group commits");
    for place in &places[1..RAFT_GROUPS_MAX] {
        node.groups.ensure(place).await.unwrap();
    }
    assert_eq!(node.groups.running().await.len(), RAFT_GROUPS_MAX);

    // One more: the least recently used (the first) is shut down.
    node.groups.ensure(&places[RAFT_GROUPS_MAX]).await.unwrap();
    let running = node.groups.running().await;
    assert_eq!(running.len(), RAFT_GROUPS_MAX);
    assert!(!running.contains(&names[0]), "the first group was evicted");
    assert!(matches!(
        node.groups.ledger_get(&names[0], &entry.task_id).await,
        Err(RaftNetError::NotRunning(_))
    ));

    // Ensured again, it restarts from its state in sled (evicting the next one).
    node.groups.ensure(&places[0]).await.unwrap();
    assert_eq!(
        node.groups
            .ledger_get(&names[0], &entry.task_id)
            .await
            .unwrap(),
        Some(entry.clone())
    );
    assert!(!node.groups.running().await.contains(&names[1]));
    node.groups
        .commit(&names[0], entry, WAIT)
        .await
        .expect("the restarted group commits again");
    node.groups.shutdown().await;
}
