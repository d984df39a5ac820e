//! What the node and the network say to each other: the configuration, the
//! protocols, the events the node hears and the errors its calls return.
//!
//! The pieces that act on these live in their own (crate-private) modules:
//! `handle`, `event_loop`, `behaviour`, `info`, `link_faults`. The items
//! re-exported here keep the paths `polity_net::network::*` that callers use.
//!
//! Protocols:
//! - identify, ping, Kademlia (`/polity/kad/1.0.0`, server mode, provider records
//!   for `capability/<name>`, `region/<r>`, `continent/<c>`), mDNS (optional),
//!   gossipsub (topics `polity/announce/1` for signed NodeInfo, `polity/evidence/1`);
//! - circuit relay v2 (client always, server with `--relay-server`), DCUtR hole
//!   punching, AutoNAT v2 (client and server): see `reach`;
//! - request-response over [`FrameCodec`](crate::codec::FrameCodec): `/polity/info/1`
//!   (answered by the event loop with the signed NodeInfo), `/polity/task/1` and
//!   `/polity/consensus/1` (handed to the node).

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::oneshot;

pub use crate::behaviour::{StartError, provider_keys, start, start_with};
pub use crate::handle::NetHandle;
pub use crate::info::{InvalidInfo, verify_node_info};
pub use crate::reach::Reachability;

pub const KADEMLIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/kad/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/polity/id/1.0.0";
pub const INFO_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/info/1");
pub const TASK_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/task/1");
pub const CONSENSUS_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/consensus/1");
pub const ANNOUNCE_TOPIC: &str = "polity/announce/1";
/// Every announcement goes to the node's region's topic; one in this many also
/// goes to [`ANNOUNCE_TOPIC`], which every node hears (sampled gossip: see
/// ARCHITECTURE.md, "How discovery traffic grows with N").
pub const GLOBAL_ANNOUNCE_EVERY: u64 = 4;

/// The announce topic of one region (labels are validated: no `/`).
pub fn region_announce_topic(region: &str) -> String {
    format!("{ANNOUNCE_TOPIC}/region/{region}")
}
pub const EVIDENCE_TOPIC: &str = "polity/evidence/1";

/// What the node's own NodeInfo says; the loop adds `issued_at_ms`, the peer id, the
/// public key and the listen addresses when it signs.
#[derive(Debug, Clone, Default)]
pub struct LocalInfo {
    pub capabilities: Vec<String>,
    pub region: String,
    pub continent: String,
    pub grpc_endpoint: String,
    pub version: String,
    /// The registry epoch and its digest, as the node moves on: read at each signing.
    pub registry: std::sync::Arc<std::sync::RwLock<(u64, Vec<u8>)>>,
}

/// How to start the network.
#[derive(Clone)]
pub struct NetConfig {
    /// The node's ed25519 secret key: its PeerId and its statement signer.
    pub secret_key: [u8; 32],
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub local: LocalInfo,
}

/// How the node makes itself reachable, and how much of the network it keeps in
/// mind. Separate from [`NetConfig`] so callers that want the defaults (tests,
/// tools) need not name them: [`start`] uses the defaults, [`start_with`] these.
#[derive(Debug, Clone)]
pub struct ReachConfig {
    /// Addresses the operator says the node is reachable at (`--external-address`):
    /// confirmed without a probe, announced in the NodeInfo.
    pub external_addresses: Vec<Multiaddr>,
    /// Serve as a circuit relay v2 with these limits (`--relay-server`); none: not
    /// a relay (the node still uses relays as a client).
    pub relay_server: Option<RelayLimits>,
    /// Peers the peer table keeps at most.
    pub peers_max: usize,
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            external_addresses: Vec::new(),
            relay_server: None,
            peers_max: PEERS_MAX_DEFAULT,
        }
    }
}

/// Peers the peer table keeps by default.
pub const PEERS_MAX_DEFAULT: usize = 1_000;

/// What a relay (`--relay-server`) serves at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, in total and per peer.
    pub reservations_max: usize,
    pub reservations_per_peer_max: usize,
    /// Circuits relayed at once, in total and per peer.
    pub circuits_max: usize,
    pub circuits_per_peer_max: usize,
    /// A circuit is closed after this long or this many bytes (each direction).
    pub circuit_duration_s: u64,
    pub circuit_bytes_max: u64,
    /// How long a reservation lasts before the client must renew it.
    pub reservation_duration_s: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            reservations_max: 128,
            reservations_per_peer_max: 2,
            circuits_max: 64,
            circuits_per_peer_max: 8,
            circuit_duration_s: 600,
            circuit_bytes_max: 8 * 1024 * 1024,
            reservation_duration_s: 3_600,
        }
    }
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The request-response protocols the node itself serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    Task,
    Consensus,
}

/// Why a network call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("the network event loop has stopped")]
    Stopped,
    #[error("circuit breaker open for peer {0}")]
    CircuitOpen(PeerId),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("too many requests in flight")]
    Busy,
    #[error("dial failed: {0}")]
    Dial(String),
}

/// Answers one inbound request. Dropping it unanswered makes the request fail on
/// the remote side.
#[derive(Debug)]
pub struct Responder(pub(crate) oneshot::Sender<Vec<u8>>);

impl Responder {
    pub fn respond(self, bytes: Vec<u8>) {
        let _ = self.0.send(bytes);
    }
}

/// What the node hears from the network.
#[derive(Debug)]
pub enum NetEvent {
    /// A peer's request on a node protocol.
    Request {
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
        responder: Responder,
    },
    /// Gossiped evidence bytes (a `polity.v1.Evidence`), not yet verified.
    Evidence { source: PeerId, bytes: Vec<u8> },
    /// A peer sent a NodeInfo that failed verification.
    InvalidInfo { peer: PeerId, reason: String },
    /// A request to a peer failed (timeout, refused, closed): for trust accounting.
    RequestFailed { peer: PeerId, reason: String },
}
