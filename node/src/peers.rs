//! The node's view of its peers: what the network layer saw, joined with the
//! trust this node keeps for each peer; discovery by capability; and the handling
//! of what peers did (bad info, failed requests, evidence) as trust events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use polity_consensus::{
    PublicKey, TRUST_FLOOR, TRUST_PRIOR, TrustEvent, TrustScore, verify_evidence,
};
use polity_net::{NetEvent, NetHandle, PeerId, PeerView, public_key_of};
use polity_proto::{
    Evidence, GetTrustResponse, NodeInfo, PeerEntry, Topology, TopologyContinent, TopologyNode,
    TopologyRegion, TrustEntry,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::runtime::storage::{Store, StoreError};
use crate::telemetry::metrics::Metrics;
use crate::unix_ms;

/// Trust entries listed at most.
const TRUST_ENTRIES_MAX: usize = 100_000;

/// The compatibility rule (the seed's): a peer may join a group when its
/// capabilities overlap the task's by more than `overlap_min`, its trust is above
/// `trust_min` and its round-trip time is below `rtt_ms_max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compatibility {
    pub overlap_min: f64,
    pub trust_min: f64,
    pub rtt_ms_max: u64,
}

impl Default for Compatibility {
    fn default() -> Self {
        let config = crate::config::DiscoveryConfig::default();
        Compatibility {
            overlap_min: config.capability_overlap_min,
            trust_min: config.trust_min,
            rtt_ms_max: config.rtt_ms_max,
        }
    }
}

/// One peer, joined with this node's trust in it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub view: PeerView,
    pub trust: f64,
}

impl Candidate {
    /// The share of `wanted` capabilities the peer serves.
    pub fn overlap(&self, wanted: &[String]) -> f64 {
        if wanted.is_empty() {
            return 1.0;
        }
        let served = wanted
            .iter()
            .filter(|capability| self.view.serves(capability))
            .count();
        served as f64 / wanted.len() as f64
    }

    pub fn is_compatible(&self, wanted: &[String], rule: &Compatibility) -> bool {
        self.view.info.is_some()
            && self.overlap(wanted) > rule.overlap_min
            && self.trust > rule.trust_min
            && self.view.rtt_ms.is_some_and(|rtt| rtt < rule.rtt_ms_max)
    }
}

/// Filters and ranks candidates: compatible ones only, best trust first, then the
/// lowest round-trip time, then PeerId (so the order is deterministic).
pub fn rank(
    mut candidates: Vec<Candidate>,
    wanted: &[String],
    rule: &Compatibility,
) -> Vec<Candidate> {
    candidates.retain(|candidate| candidate.is_compatible(wanted, rule));
    candidates.sort_by(|a, b| {
        b.trust
            .total_cmp(&a.trust)
            .then(a.view.rtt_ms.cmp(&b.view.rtt_ms))
            .then(a.view.peer_id.cmp(&b.view.peer_id))
    });
    candidates
}

/// The node's peers service.
#[derive(Clone)]
pub struct Peers {
    net: NetHandle,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    rule: Compatibility,
    /// This node, for topology answers.
    local: NodeInfo,
    /// Trust is read, moved and written back under this lock: the one owner of trust
    /// updates, shared by every clone. Without it two moves of one peer can race and
    /// the later write loses the earlier one (a late agreement undoing an
    /// equivocation's final 0).
    trust_writes: Arc<Mutex<()>>,
}

impl Peers {
    pub fn new(
        net: NetHandle,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        rule: Compatibility,
        local: NodeInfo,
    ) -> Peers {
        Peers {
            net,
            store,
            metrics,
            rule,
            local,
            trust_writes: Arc::new(Mutex::new(())),
        }
    }

    /// This node's own NodeInfo (without `issued_at_ms`; signers date it).
    pub fn local(&self) -> &NodeInfo {
        &self.local
    }

    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    pub fn trust_of(&self, peer: &PeerId, now_ms: u64) -> Result<f64, StoreError> {
        let Ok(key) = public_key_of(peer) else {
            return Ok(0.0);
        };
        Ok(self
            .store
            .trust(&PublicKey(key))?
            .map(|score| score.at(now_ms))
            .unwrap_or(TRUST_PRIOR))
    }

    /// Moves a peer's trust by `event`, persistently.
    pub fn record(&self, peer: &PeerId, event: TrustEvent) -> Result<(), StoreError> {
        let Ok(key) = public_key_of(peer) else {
            return Ok(());
        };
        let key = PublicKey(key);
        self.record_key(&key, event)
    }

    pub fn record_key(&self, key: &PublicKey, event: TrustEvent) -> Result<(), StoreError> {
        // Poisoning is harmless here: the lock guards no data, only the order.
        let _one_writer = self.trust_writes.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = unix_ms();
        let current = self
            .store
            .trust(key)?
            .unwrap_or_else(|| TrustScore::new(now_ms));
        self.store.set_trust(key, current.apply(event, now_ms))
    }

    /// Every known peer with its trust.
    pub async fn candidates(&self) -> anyhow::Result<Vec<Candidate>> {
        let now_ms = unix_ms();
        let views = self.net.peers().await?;
        let mut candidates = Vec::with_capacity(views.len());
        for view in views {
            let trust = self.trust_of(&view.peer_id, now_ms)?;
            candidates.push(Candidate { view, trust });
        }
        self.metrics
            .agents
            .set(1 + candidates.iter().filter(|c| c.view.info.is_some()).count() as i64);
        self.metrics.set_trust_distribution(
            candidates
                .iter()
                .filter(|c| c.view.info.is_some())
                .map(|c| c.trust),
        );
        Ok(candidates)
    }

    /// Connected-or-known peers serving `capability` that pass the compatibility rule
    /// and whose circuit is closed, ranked best first; from the local peer table only
    /// (no DHT query), so it is cheap enough for every task.
    pub async fn find_local(&self, capability: &str) -> anyhow::Result<Vec<Candidate>> {
        Ok(self.seat_candidates(capability).await?.0)
    }

    /// [`find_local`](Peers::find_local)'s peers, and apart from them the peers
    /// serving `capability` left out for their trust alone (at or below the floor,
    /// reachable or not): a refusal can then tell "distrusted" (out for long) from
    /// "unreachable" (out while a partition or crash lasts).
    pub async fn seat_candidates(
        &self,
        capability: &str,
    ) -> anyhow::Result<(Vec<Candidate>, Vec<Candidate>)> {
        let wanted: Vec<String> = if capability.is_empty() {
            Vec::new()
        } else {
            vec![capability.to_string()]
        };
        let candidates = self.candidates().await?;
        let distrusted = candidates
            .iter()
            .filter(|candidate| {
                candidate.view.info.is_some()
                    && candidate.overlap(&wanted) > self.rule.overlap_min
                    && candidate.trust <= self.rule.trust_min
            })
            .cloned()
            .collect();
        let reachable = candidates
            .into_iter()
            .filter(|candidate| !candidate.view.circuit_open)
            .collect();
        Ok((rank(reachable, &wanted, &self.rule), distrusted))
    }

    /// ListPeers: filtered, and ranked when `compatible_only`.
    pub async fn list(
        &self,
        capability: &str,
        region: &str,
        continent: &str,
        compatible_only: bool,
    ) -> anyhow::Result<Vec<PeerEntry>> {
        let non_empty = |s: &str| (!s.is_empty()).then_some(s.to_string());
        let (region, continent) = (non_empty(region), non_empty(continent));
        let in_place = |c: &Candidate| {
            let info = c.view.info.as_ref();
            region
                .as_ref()
                .is_none_or(|r| info.is_some_and(|i| &i.region == r))
                && continent
                    .as_ref()
                    .is_none_or(|k| info.is_some_and(|i| &i.continent == k))
        };
        let candidates = if compatible_only {
            self.find_local(capability).await?
        } else {
            self.candidates()
                .await?
                .into_iter()
                .filter(|c| capability.is_empty() || c.view.serves(capability))
                .collect()
        };
        Ok(candidates
            .into_iter()
            .filter(in_place)
            .map(|candidate| PeerEntry {
                peer_id: candidate.view.peer_id.to_string(),
                info: candidate.view.info,
                trust: candidate.trust,
                rtt_ms: candidate.view.rtt_ms.unwrap_or(0),
                connected: candidate.view.connected,
                circuit_open: candidate.view.circuit_open,
            })
            .collect())
    }

    pub fn trust_table(&self, peer_id: &str) -> anyhow::Result<GetTrustResponse> {
        let now_ms = unix_ms();
        let mut entries = Vec::new();
        for (key, score) in self.store.trust_entries(TRUST_ENTRIES_MAX)? {
            let Ok(peer) = polity_net::peer_id_of(&key.0) else {
                continue;
            };
            let peer = peer.to_string();
            if peer_id.is_empty() || peer == peer_id {
                entries.push(TrustEntry {
                    peer_id: peer,
                    score: score.at(now_ms),
                    updated_at_ms: score.updated_at_ms,
                });
            }
        }
        Ok(GetTrustResponse {
            entries,
            floor: TRUST_FLOOR,
            prior: TRUST_PRIOR,
        })
    }

    pub async fn topology(&self) -> anyhow::Result<Topology> {
        let mut tree: BTreeMap<String, BTreeMap<String, Vec<TopologyNode>>> = BTreeMap::new();
        let mut place = |info: &NodeInfo, node: TopologyNode| {
            tree.entry(info.continent.clone())
                .or_default()
                .entry(info.region.clone())
                .or_default()
                .push(node);
        };
        place(
            &self.local,
            TopologyNode {
                peer_id: self.local.peer_id.clone(),
                capabilities: self.local.capabilities.clone(),
                grpc_endpoint: self.local.grpc_endpoint.clone(),
                trust: 1.0,
                connected: true,
                is_self: true,
            },
        );
        for candidate in self.candidates().await? {
            let Some(info) = &candidate.view.info else {
                continue;
            };
            place(
                info,
                TopologyNode {
                    peer_id: candidate.view.peer_id.to_string(),
                    capabilities: info.capabilities.clone(),
                    grpc_endpoint: info.grpc_endpoint.clone(),
                    trust: candidate.trust,
                    connected: candidate.view.connected,
                    is_self: false,
                },
            );
        }
        Ok(Topology {
            continents: tree
                .into_iter()
                .map(|(name, regions)| TopologyContinent {
                    name,
                    regions: regions
                        .into_iter()
                        .map(|(name, mut nodes)| {
                            nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                            TopologyRegion { name, nodes }
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Turns network events into trust events until the network stops; requests go
    /// to `requests` (the federation's handler), or are refused when it is full.
    pub async fn run(self, mut events: mpsc::Receiver<NetEvent>, requests: mpsc::Sender<NetEvent>) {
        while let Some(event) = events.recv().await {
            if let NetEvent::Request { .. } = event {
                if let Err(mpsc::error::TrySendError::Full(_)) = requests.try_send(event) {
                    // Dropping the responder fails the request on the sender's side.
                    self.metrics.peer_message_dropped("request backlog");
                }
                continue;
            }
            if let Err(error) = self.on_event(event) {
                tracing::warn!(%error, "could not record a peer event");
            }
        }
    }

    fn on_event(&self, event: NetEvent) -> Result<(), StoreError> {
        match event {
            NetEvent::InvalidInfo { peer, reason } => {
                tracing::info!(%peer, reason, "peer sent invalid node info");
                self.record(&peer, TrustEvent::InvalidSignature)
            }
            NetEvent::RequestFailed { peer, reason } => {
                // Not a trust event: a request that could not be delivered or was not
                // answered says the peer is unreachable (crashed, partitioned away,
                // overloaded), not that it lied. Reachability is the circuit
                // breaker's business (it keeps the peer out of seats while open);
                // trust moves only on what a peer did: its outcomes, signatures,
                // and silence in a group it had taken.
                tracing::debug!(%peer, reason, "request to peer failed");
                Ok(())
            }
            NetEvent::Evidence { source, bytes } => {
                let verdict = Evidence::decode(bytes.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|evidence| verify_evidence(&evidence).map_err(|e| e.to_string()));
                match verdict {
                    Ok(culprit) => {
                        tracing::warn!(%culprit, %source, "verified equivocation evidence");
                        self.metrics.byzantine_attacks_detected.inc();
                        self.record_key(&culprit, TrustEvent::Equivocation)
                    }
                    Err(reason) => {
                        tracing::info!(%source, reason, "gossiped evidence did not verify");
                        self.record(&source, TrustEvent::InvalidSignature)
                    }
                }
            }
            NetEvent::Request { .. } => Ok(()), // routed by `run`
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peers service over a fresh store and a network nobody joins.
    fn test_peers(dir: &tempfile::TempDir) -> Peers {
        let store: Arc<dyn Store> =
            Arc::new(crate::runtime::storage::SledStore::open(dir.path()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let config = polity_net::NetConfig {
            secret_key: [9; 32],
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: Vec::new(),
            mdns: false,
            local: polity_net::LocalInfo {
                capabilities: Vec::new(),
                region: "r".into(),
                continent: "c".into(),
                grpc_endpoint: "http://127.0.0.1:1".into(),
                version: "test".into(),
                ..polity_net::LocalInfo::default()
            },
        };
        let (net, _events, _task) = polity_net::start(config, metrics.net.clone()).unwrap();
        Peers::new(
            net,
            store,
            metrics,
            Compatibility::default(),
            NodeInfo::default(),
        )
    }

    /// Many tasks move one peer's trust at once while one of them convicts it of
    /// equivocation: the conviction is final whatever the interleaving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_trust_moves_never_undo_an_equivocation() {
        let dir = tempfile::tempdir().unwrap();
        let peers = test_peers(&dir);
        // Ten peers, one after another: a lost update needs an unlucky interleaving,
        // and ten chances catch one nearly always when the writes race.
        for peer in 0..10u8 {
            let key = PublicKey([peer; 32]);
            let writers: Vec<_> = (0..8)
                .map(|writer| {
                    let peers = peers.clone();
                    std::thread::spawn(move || {
                        for n in 0..200 {
                            let event = match (writer, n) {
                                (0, 100) => TrustEvent::Equivocation,
                                _ => TrustEvent::Agreement,
                            };
                            peers.record_key(&key, event).unwrap();
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            let score = peers.store.trust(&key).unwrap().unwrap();
            assert_eq!(score.score, 0.0, "a late agreement undid the conviction");
        }
    }

    /// Requests that fail (a partitioned, crashed or unreachable peer) do not lower
    /// its trust: unreachable is not lying, and two timeouts from the prior would
    /// put it below the floor, out of every group for over half an hour after the
    /// heal. What it *does* still costs trust.
    #[tokio::test]
    async fn an_unreachable_peer_keeps_its_trust() {
        let dir = tempfile::tempdir().unwrap();
        let peers = test_peers(&dir);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes();
        let peer = polity_net::peer_id_of(&key).unwrap();
        for reason in [
            "Failed to dial the requested peer",
            "Timeout",
            "Connection closed",
        ] {
            for _ in 0..10 {
                let event = NetEvent::RequestFailed {
                    peer,
                    reason: reason.into(),
                };
                peers.on_event(event).unwrap();
            }
        }
        let trust = peers.trust_of(&peer, unix_ms()).unwrap();
        assert_eq!(trust, TRUST_PRIOR, "an unreachable peer lost trust");
        assert!(peers.store.trust(&PublicKey(key)).unwrap().is_none());
        // A forged NodeInfo is a lie, and still costs trust.
        let event = NetEvent::InvalidInfo {
            peer,
            reason: "bad signature".into(),
        };
        peers.on_event(event).unwrap();
        assert!(peers.trust_of(&peer, unix_ms()).unwrap() < TRUST_PRIOR);
    }

    fn candidate(trust: f64, rtt_ms: Option<u64>, capabilities: &[&str]) -> Candidate {
        Candidate {
            view: PeerView {
                peer_id: PeerId::random(),
                info: Some(NodeInfo {
                    capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                    ..NodeInfo::default()
                }),
                signed: None,
                connected: true,
                rtt_ms,
                addresses: Vec::new(),
                last_seen_ms: 0,
                circuit_open: false,
            },
            trust,
        }
    }

    fn check(candidates: Vec<Candidate>) -> Vec<(f64, Option<u64>)> {
        rank(
            candidates,
            &["sha256".to_string()],
            &Compatibility::default(),
        )
        .into_iter()
        .map(|c| (c.trust, c.view.rtt_ms))
        .collect()
    }

    #[test]
    fn the_compatibility_rule_filters_and_ranks() {
        let ranked = check(vec![
            candidate(0.9, Some(50), &["sha256"]),
            candidate(0.95, Some(80), &["sha256", "echo"]),
            candidate(0.9, Some(10), &["sha256"]),
            candidate(0.7, Some(1), &["sha256"]), // trust not above the floor
            candidate(0.99, Some(100), &["sha256"]), // too slow
            candidate(0.99, None, &["sha256"]),   // never measured
            candidate(0.99, Some(1), &["echo"]),  // does not serve it
        ]);
        assert_eq!(
            ranked,
            vec![(0.95, Some(80)), (0.9, Some(10)), (0.9, Some(50))]
        );
    }

    #[test]
    fn overlap_is_the_served_share_of_the_wanted_capabilities() {
        let peer = candidate(0.9, Some(1), &["a", "b"]);
        let wanted: Vec<String> = ["a", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert!((peer.overlap(&wanted) - 1.0 / 3.0).abs() < 1e-9);
        assert!(peer.is_compatible(&wanted, &Compatibility::default()));
        let wanted: Vec<String> = ["a", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        assert!(!peer.is_compatible(&wanted, &Compatibility::default()));
    }
}
