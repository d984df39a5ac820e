//! What a node knows of its peers: their verified NodeInfo, connection state and
//! measured round-trip time. Owned by the event loop; others get snapshots.

use std::collections::{HashMap, VecDeque};

use libp2p::{Multiaddr, PeerId};
use polity_proto::{NodeInfo, SignedStatement};

/// Peers remembered at most unless configured (`NetConfig::peers_max`, default
/// 1,000); beyond it, an unconnected peer is forgotten: first one we hold no
/// verified info of, then one whose info names no registry epoch, then the least
/// recently seen.
pub const PEERS_MAX: usize = crate::network::PEERS_MAX_DEFAULT;
/// Addresses remembered per peer.
pub const ADDRESSES_PER_PEER_MAX: usize = 8;
/// Ping samples a peer's round-trip time is judged on: 20 s at one ping per 5 s.
pub const RTT_WINDOW: usize = 4;

/// One peer as the event loop sees it.
#[derive(Debug, Clone, Default)]
pub struct PeerRecord {
    /// The newest verified NodeInfo, and the statement that carried it.
    pub info: Option<NodeInfo>,
    pub signed: Option<SignedStatement>,
    pub addresses: Vec<Multiaddr>,
    pub connections: u32,
    /// The lowest of the recent ping samples (see [`PeerRecord::observe_rtt`]).
    pub rtt_ms: Option<u64>,
    rtt_samples: VecDeque<u64>,
    pub last_seen_ms: u64,
    /// An info request is in flight.
    pub info_requested: bool,
}

impl PeerRecord {
    /// Takes a ping sample: the peer's RTT is the lowest of the last [`RTT_WINDOW`]
    /// samples, a windowed min-RTT filter as in BBR. The compatibility rule asks how
    /// far a peer is (its limit is 100 ms); queueing and a busy CPU inflate single
    /// pings, never the minimum. So one slow ping does not make a peer incompatible,
    /// nor does the inflated first ping of a connection opened while the machine is
    /// busy starting nodes; a peer that is slow for a whole window is.
    pub fn observe_rtt(&mut self, sample_ms: u64) {
        if self.rtt_samples.len() == RTT_WINDOW {
            self.rtt_samples.pop_front();
        }
        self.rtt_samples.push_back(sample_ms);
        self.rtt_ms = self.rtt_samples.iter().copied().min();
    }
}

/// A peer, as handed out of the event loop.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub peer_id: PeerId,
    pub info: Option<NodeInfo>,
    pub signed: Option<SignedStatement>,
    pub connected: bool,
    pub rtt_ms: Option<u64>,
    pub addresses: Vec<Multiaddr>,
    pub last_seen_ms: u64,
    /// The circuit breaker for this peer is open: requests fail fast.
    pub circuit_open: bool,
}

impl PeerView {
    pub fn serves(&self, capability: &str) -> bool {
        self.info
            .as_ref()
            .is_some_and(|info| info.capabilities.iter().any(|c| c == capability))
    }
}

#[derive(Debug)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerRecord>,
    capacity: usize,
}

impl Default for PeerTable {
    fn default() -> Self {
        PeerTable::with_capacity(PEERS_MAX)
    }
}

impl PeerTable {
    /// A table of at most `capacity` peers (at least 1).
    pub fn with_capacity(capacity: usize) -> PeerTable {
        PeerTable {
            peers: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// The record of `peer`, created if new (evicting to stay under [`PEERS_MAX`]).
    pub fn entry(&mut self, peer: PeerId, now_ms: u64) -> &mut PeerRecord {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.capacity {
            self.evict_one();
        }
        let record = self.peers.entry(peer).or_default();
        record.last_seen_ms = now_ms;
        record
    }

    fn evict_one(&mut self) {
        let victim = self
            .peers
            .iter()
            .filter(|(_, record)| record.connections == 0)
            .min_by_key(|(_, record)| {
                let info = record.info.as_ref();
                (
                    info.is_some(),
                    info.is_some_and(|info| {
                        info.registry_epoch > 0 || !info.registry_digest.is_empty()
                    }),
                    record.last_seen_ms,
                )
            })
            .map(|(peer, _)| *peer);
        if let Some(peer) = victim {
            self.peers.remove(&peer);
        }
    }

    /// The addresses known for `peer` (empty for an unknown peer).
    pub fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|record| record.addresses.clone())
            .unwrap_or_default()
    }

    pub fn add_address(&mut self, peer: PeerId, address: Multiaddr, now_ms: u64) {
        let record = self.entry(peer, now_ms);
        if !record.addresses.contains(&address) {
            if record.addresses.len() >= ADDRESSES_PER_PEER_MAX {
                record.addresses.remove(0);
            }
            record.addresses.push(address);
        }
    }

    /// Stores `info` if it is newer than what we have. Returns whether it was.
    pub fn offer_info(
        &mut self,
        peer: PeerId,
        info: NodeInfo,
        signed: SignedStatement,
        now_ms: u64,
    ) -> bool {
        let record = self.entry(peer, now_ms);
        let newer = record
            .info
            .as_ref()
            .is_none_or(|known| info.issued_at_ms > known.issued_at_ms);
        if newer {
            record.info = Some(info);
            record.signed = Some(signed);
        }
        newer
    }

    pub fn views(&self) -> Vec<PeerView> {
        let mut views: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(peer, record)| PeerView {
                peer_id: *peer,
                info: record.info.clone(),
                signed: record.signed.clone(),
                connected: record.connections > 0,
                rtt_ms: record.rtt_ms,
                addresses: record.addresses.clone(),
                last_seen_ms: record.last_seen_ms,
                circuit_open: false,
            })
            .collect();
        views.sort_by_key(|view| view.peer_id);
        views
    }

    pub fn connected_count(&self) -> usize {
        self.peers
            .values()
            .filter(|record| record.connections > 0)
            .count()
    }

    /// Connected peers whose record satisfies `keep`.
    pub fn connected_where(&self, keep: impl Fn(&PeerRecord) -> bool) -> usize {
        self.peers
            .values()
            .filter(|record| record.connections > 0 && keep(record))
            .count()
    }

    pub fn records_mut(&mut self) -> impl Iterator<Item = (&PeerId, &mut PeerRecord)> {
        self.peers.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(issued_at_ms: u64) -> NodeInfo {
        NodeInfo {
            issued_at_ms,
            capabilities: vec!["sha256".into()],
            ..NodeInfo::default()
        }
    }

    #[test]
    fn rtt_is_the_windowed_minimum() {
        let mut table = PeerTable::default();
        let record = table.entry(PeerId::random(), 0);
        // A connection's first ping, taken while the machine is busy, is slow; the
        // next normal one sets the RTT at once.
        record.observe_rtt(228);
        assert_eq!(record.rtt_ms, Some(228));
        record.observe_rtt(5);
        assert_eq!(record.rtt_ms, Some(5));
        // Spikes within the window leave it alone.
        for _ in 0..RTT_WINDOW - 1 {
            record.observe_rtt(400);
            assert_eq!(record.rtt_ms, Some(5));
        }
        // A peer slow for a whole window is slow.
        record.observe_rtt(400);
        assert_eq!(record.rtt_ms, Some(400));
        record.observe_rtt(90);
        assert_eq!(record.rtt_ms, Some(90));
    }

    #[test]
    fn only_newer_info_replaces_older() {
        let mut table = PeerTable::default();
        let peer = PeerId::random();
        assert!(table.offer_info(peer, info(10), SignedStatement::default(), 0));
        assert!(!table.offer_info(peer, info(5), SignedStatement::default(), 0));
        assert!(!table.offer_info(peer, info(10), SignedStatement::default(), 0));
        assert!(table.offer_info(peer, info(11), SignedStatement::default(), 0));
        assert_eq!(
            table
                .get(&peer)
                .unwrap()
                .info
                .as_ref()
                .unwrap()
                .issued_at_ms,
            11
        );
        assert!(table.views()[0].serves("sha256"));
        assert!(!table.views()[0].serves("md5"));
    }

    #[test]
    fn eviction_keeps_verified_and_connected_peers_first() {
        let mut table = PeerTable::with_capacity(3);
        let (connected, verified, stranger) =
            (PeerId::random(), PeerId::random(), PeerId::random());
        table.entry(connected, 0).connections = 1;
        table.offer_info(verified, info(1), SignedStatement::default(), 1);
        table.entry(stranger, 5);
        // A newer stranger pushes out the older one, not the verified peer.
        let newcomer = PeerId::random();
        table.entry(newcomer, 6);
        assert!(table.get(&stranger).is_none());
        assert!(table.get(&verified).is_some() && table.get(&connected).is_some());
        // Among peers with info, the least recently seen goes.
        table.offer_info(newcomer, info(2), SignedStatement::default(), 7);
        table.entry(PeerId::random(), 8);
        assert!(table.get(&verified).is_none());
        assert!(table.get(&connected).is_some());
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn the_table_and_address_lists_are_bounded() {
        let mut table = PeerTable::default();
        for now_ms in 0..(PEERS_MAX as u64 + 10) {
            table.entry(PeerId::random(), now_ms);
        }
        assert_eq!(table.len(), PEERS_MAX);
        let peer = PeerId::random();
        for port in 0..20u16 {
            table.add_address(
                peer,
                format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(),
                0,
            );
        }
        assert_eq!(
            table.get(&peer).unwrap().addresses.len(),
            ADDRESSES_PER_PEER_MAX
        );
    }
}
