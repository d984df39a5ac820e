//! The swarm, its behaviours, and the event loop that alone owns it.
//!
//! Everything else talks to the loop through a [`NetHandle`]: a bounded command
//! channel, with a `oneshot` reply per command (the shape of rust-libp2p's
//! file-sharing example). What the loop hears that the node must act on arrives as
//! [`NetEvent`]s on a bounded channel; when the node falls behind, inbound requests
//! are dropped and counted, never queued without bound.
//!
//! Protocols:
//! - identify, ping, Kademlia (`/polity/kad/1.0.0`, server mode, provider records
//!   for `capability/<name>`, `region/<r>`, `continent/<c>`), mDNS (optional),
//!   gossipsub (topics `polity/announce/1` for signed NodeInfo, `polity/evidence/1`);
//! - request-response over [`FrameCodec`]: `/polity/info/1` (answered here with the
//!   signed NodeInfo), `/polity/task/1` and `/polity/consensus/1` (handed to the node).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::allow_block_list::{self, BlockedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey, store::MemoryStore};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, noise, ping, tcp, yamux};
use polity_consensus::{open, sign_message};
use polity_proto::{NodeInfo, SignedStatement, StatementKind};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::NotAnEd25519Key;
use crate::announce::AnnounceSchedule;
use crate::breaker::Breaker;
use crate::codec::{Frame, FrameCodec};
use crate::metrics::NetMetrics;
use crate::peers::{PeerTable, PeerView};

pub const KADEMLIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/kad/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/polity/id/1.0.0";
pub const INFO_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/info/1");
pub const TASK_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/task/1");
pub const CONSENSUS_PROTOCOL: StreamProtocol = StreamProtocol::new("/polity/consensus/1");
pub const ANNOUNCE_TOPIC: &str = "polity/announce/1";
pub const EVIDENCE_TOPIC: &str = "polity/evidence/1";

/// Commands queued to the event loop at most.
const COMMANDS_MAX: usize = 256;
/// Events queued to the node at most.
const EVENTS_MAX: usize = 1_024;
/// Largest gossip message.
const GOSSIP_BYTES_MAX: usize = 64 * 1024;
/// Connections at most, in total and per peer; pending handshakes at most.
const CONNECTIONS_MAX: u32 = 512;
const CONNECTIONS_PER_PEER_MAX: u32 = 2;
const PENDING_CONNECTIONS_MAX: u32 = 128;
/// Peers we dial on our own (learned through gossip, Kademlia or mDNS) while we have
/// fewer connections than this.
const DIAL_TARGET: usize = 128;
/// Request-response timeout and concurrent streams per connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const STREAMS_PER_CONNECTION_MAX: usize = 128;
/// Outbound requests and provider queries in flight at most.
const PENDING_REQUESTS_MAX: usize = 4_096;
const PENDING_QUERIES_MAX: usize = 256;
/// Providers collected per query at most.
const PROVIDERS_PER_QUERY_MAX: usize = 1_024;
/// How often the node re-bootstraps Kademlia. (When it gossips its NodeInfo again
/// is an [`AnnounceSchedule`].)
const BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);
/// How often the node republishes its provider records.
const PROVIDE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a node with no connection redials its bootstrap peers.
const BOOTSTRAP_REDIAL_INTERVAL: Duration = Duration::from_secs(2);
const KADEMLIA_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node's own NodeInfo says; the loop adds `issued_at_ms`, the peer id, the
/// public key and the listen addresses when it signs.
#[derive(Debug, Clone, Default)]
pub struct LocalInfo {
    pub capabilities: Vec<String>,
    pub region: String,
    pub continent: String,
    pub stake: u64,
    pub grpc_endpoint: String,
    pub version: String,
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
pub struct Responder(oneshot::Sender<Vec<u8>>);

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

enum Command {
    Peers(oneshot::Sender<Vec<PeerView>>),
    Request {
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    FindProviders {
        key: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    PublishEvidence(Vec<u8>),
    ListenAddresses(oneshot::Sender<Vec<Multiaddr>>),
    SetBlocked(HashSet<PeerId>),
}

/// Injected link faults on this node's outbound requests: a drop probability and
/// an added delay. Shared by every clone of a [`NetHandle`]; all zero by default.
#[derive(Debug, Default)]
struct LinkFaults {
    /// Drop probability in parts per million.
    drop_ppm: AtomicU64,
    delay_ms: AtomicU64,
    seed: AtomicU64,
    /// Requests seen, the counter behind each drop decision.
    sequence: AtomicU64,
}

impl LinkFaults {
    /// Whether the next request is dropped: a splitmix64 of (seed, sequence), so a
    /// run with the same seed and the same request order drops the same requests.
    fn drop_next(&self) -> bool {
        let ppm = self.drop_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut x =
            self.seed.load(Ordering::Relaxed) ^ sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        x % 1_000_000 < ppm
    }
}

/// A cloneable handle on the event loop.
#[derive(Clone, Debug)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    link: Arc<LinkFaults>,
}

impl NetHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, receive) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NetError::Stopped)?;
        receive.await.map_err(|_| NetError::Stopped)
    }

    /// Every peer the node knows.
    pub async fn peers(&self) -> Result<Vec<PeerView>, NetError> {
        self.call(Command::Peers).await
    }

    /// Sends `bytes` to `peer` on `protocol` and waits for the response.
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        let delay_ms = self.link.delay_ms.load(Ordering::Relaxed);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if self.link.drop_next() {
            return Err(NetError::Request {
                peer,
                reason: "dropped by fault injection".into(),
            });
        }
        self.call(|reply| Command::Request {
            peer,
            protocol,
            bytes,
            reply,
        })
        .await?
    }

    /// Providers of a Kademlia key (`capability/<name>`, `region/<r>`, `continent/<c>`).
    pub async fn find_providers(&self, key: String) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::FindProviders { key, reply })
            .await
    }

    pub async fn dial(&self, address: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { address, reply }).await?
    }

    /// Gossips evidence bytes to the federation.
    pub async fn publish_evidence(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.commands
            .send(Command::PublishEvidence(bytes))
            .await
            .map_err(|_| NetError::Stopped)
    }

    pub async fn listen_addresses(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(Command::ListenAddresses).await
    }

    /// Fault injection: from now on, drop each outbound request with probability
    /// `drop_rate` (clamped to [0, 1]; a dropped request fails at once with
    /// [`NetError::Request`]) and delay each by `delay_ms` before it is sent.
    pub fn set_link_faults(&self, drop_rate: f64, delay_ms: u64, seed: u64) {
        let ppm = if drop_rate.is_nan() {
            0
        } else {
            (drop_rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
        };
        self.link.drop_ppm.store(ppm, Ordering::Relaxed);
        self.link.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.link.seed.store(seed, Ordering::Relaxed);
    }

    /// Fault injection: refuse every connection with `peers` (closing the open
    /// ones) and unblock everyone else: one side of a partition.
    pub async fn set_blocked(&self, peers: HashSet<PeerId>) -> Result<(), NetError> {
        self.commands
            .send(Command::SetBlocked(peers))
            .await
            .map_err(|_| NetError::Stopped)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    /// Peers the node refuses to talk to (fault injection: partitions).
    blocked: allow_block_list::Behaviour<BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kademlia: kad::Behaviour<MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    /// One request-response behaviour per protocol: request-response does not say
    /// which of several protocols an inbound request came on, so each gets its own.
    info: request_response::Behaviour<FrameCodec>,
    task: request_response::Behaviour<FrameCodec>,
    consensus: request_response::Behaviour<FrameCodec>,
}

fn rpc_behaviour(protocol: StreamProtocol) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec,
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX),
    )
}

/// Starts the swarm and its event loop on the current tokio runtime. Returns the
/// handle, the event stream for the node, and the loop's task.
pub fn start(
    config: NetConfig,
    metrics: NetMetrics,
) -> Result<
    (
        NetHandle,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    StartError,
> {
    let keypair = Keypair::ed25519_from_bytes(config.secret_key).map_err(|e| e.to_string())?;
    let signing_key = SigningKey::from_bytes(&config.secret_key);
    let peer_id = keypair.public().to_peer_id();
    let mdns_enabled = config.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_behaviour(|key| {
            let local_peer_id = key.public().to_peer_id();
            let limits = connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_established(Some(CONNECTIONS_MAX))
                    .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
                    .with_max_pending_incoming(Some(PENDING_CONNECTIONS_MAX))
                    .with_max_pending_outgoing(Some(PENDING_CONNECTIONS_MAX)),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("polity/{}", config.local.version)),
            );
            let mut kademlia_config = kad::Config::new(KADEMLIA_PROTOCOL);
            kademlia_config
                .set_query_timeout(KADEMLIA_QUERY_TIMEOUT)
                .set_periodic_bootstrap_interval(Some(BOOTSTRAP_INTERVAL));
            let mut kademlia = kad::Behaviour::with_config(
                local_peer_id,
                MemoryStore::new(local_peer_id),
                kademlia_config,
            );
            kademlia.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    local_peer_id,
                )?)
            } else {
                None
            };
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .validation_mode(ValidationMode::Strict)
                .max_transmit_size(GOSSIP_BYTES_MAX)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            Ok(Behaviour {
                limits,
                blocked: allow_block_list::Behaviour::default(),
                identify,
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(5)),
                ),
                kademlia,
                mdns: Toggle::from(mdns),
                gossipsub,
                info: rpc_behaviour(INFO_PROTOCOL),
                task: rpc_behaviour(TASK_PROTOCOL),
                consensus: rpc_behaviour(CONSENSUS_PROTOCOL),
            })
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();

    for topic in [ANNOUNCE_TOPIC, EVIDENCE_TOPIC] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| e.to_string())?;
    }
    for address in &config.listen {
        swarm
            .listen_on(address.clone())
            .map_err(|e| format!("listening on {address}: {e}"))?;
    }
    // Bootstrap peers are dialed by the event loop's first redial tick, right away.

    let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_MAX);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_MAX);
    let event_loop = EventLoop {
        bootstrap: config.bootstrap.clone(),
        swarm,
        signing_key,
        local: config.local,
        commands: commands_rx,
        events: events_tx,
        metrics,
        peers: PeerTable::default(),
        pending_requests: HashMap::new(),
        pending_info: HashSet::new(),
        pending_queries: HashMap::new(),
        pending_responses: FuturesUnordered::new(),
        breakers: HashMap::new(),
        announce: AnnounceSchedule::new(0),
        started: std::time::Instant::now(),
    };
    let task = tokio::spawn(event_loop.run());
    Ok((
        NetHandle {
            commands: commands_tx,
            peer_id,
            link: Arc::default(),
        },
        events_rx,
        task,
    ))
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[error("p2p: {0}")]
pub struct StartError(String);

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError(message)
    }
}

/// The Kademlia keys a node provides.
pub fn provider_keys(local: &LocalInfo) -> Vec<String> {
    let mut keys: Vec<String> = local
        .capabilities
        .iter()
        .map(|capability| format!("capability/{capability}"))
        .collect();
    keys.push(format!("region/{}", local.region));
    keys.push(format!("continent/{}", local.continent));
    keys
}

/// A node's answer to an inbound request, on its way back to the swarm.
type PendingResponse = BoxFuture<'static, (AppProtocol, ResponseChannel<Frame>, Option<Vec<u8>>)>;

/// Where the response to a node-protocol request goes.
type Reply = oneshot::Sender<Result<Vec<u8>, NetError>>;

struct PendingQuery {
    reply: oneshot::Sender<Vec<PeerId>>,
    providers: HashSet<PeerId>,
}

struct EventLoop {
    /// Redialed while the node has no connection: a bootstrap peer that was not up
    /// yet when we started must not leave us alone for good.
    bootstrap: Vec<Multiaddr>,
    swarm: Swarm<Behaviour>,
    signing_key: SigningKey,
    local: LocalInfo,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    metrics: NetMetrics,
    peers: PeerTable,
    /// Outbound node-protocol requests, keyed by protocol too: each behaviour counts
    /// its own request ids.
    pending_requests: HashMap<(AppProtocol, OutboundRequestId), (PeerId, Reply)>,
    /// Outbound info requests (answered here, not by the node).
    pending_info: HashSet<OutboundRequestId>,
    pending_queries: HashMap<QueryId, PendingQuery>,
    pending_responses: FuturesUnordered<PendingResponse>,
    breakers: HashMap<PeerId, Breaker>,
    announce: AnnounceSchedule,
    started: std::time::Instant,
}

impl EventLoop {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// (Re-)publishes our provider records. Kademlia only reaches peers we know,
    /// so this runs on the first connection and then every [`PROVIDE_INTERVAL`].
    fn provide(&mut self) {
        for key in provider_keys(&self.local) {
            if let Err(error) = self
                .swarm
                .behaviour_mut()
                .kademlia
                .start_providing(RecordKey::new(&key))
            {
                tracing::warn!(%error, key, "cannot store a provider record");
            }
        }
    }

    fn redial_bootstrap(&mut self) {
        if self.peers.connected_count() > 0 {
            return;
        }
        for address in self.bootstrap.clone() {
            if let Err(error) = self.swarm.dial(address.clone()) {
                tracing::debug!(%address, %error, "bootstrap redial failed");
            }
        }
    }

    async fn run(mut self) {
        let announce = tokio::time::sleep_until(self.announce_due());
        tokio::pin!(announce);
        let mut provide = tokio::time::interval(PROVIDE_INTERVAL);
        let mut redial = tokio::time::interval(BOOTSTRAP_REDIAL_INTERVAL);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: the node is shutting down.
                    None => return,
                },
                Some((protocol, channel, response)) = self.pending_responses.next(), if !self.pending_responses.is_empty() => {
                    if let Some(bytes) = response {
                        let _ = self.rpc(protocol).send_response(channel, Frame(bytes));
                    }
                }
                _ = &mut announce => self.announce(),
                _ = provide.tick() => self.provide(),
                _ = redial.tick() => self.redial_bootstrap(),
            }
            // Any arm may have moved the next announcement (a newcomer, a publish).
            let due = self.announce_due();
            if announce.deadline() != due {
                announce.as_mut().reset(due);
            }
        }
    }

    fn announce_due(&self) -> tokio::time::Instant {
        let due = self.started + Duration::from_millis(self.announce.next_ms());
        tokio::time::Instant::from_std(due)
    }

    /// Our NodeInfo, freshly signed.
    fn signed_info(&self) -> SignedStatement {
        let info = NodeInfo {
            public_key: self.signing_key.verifying_key().to_bytes().to_vec(),
            peer_id: self.swarm.local_peer_id().to_string(),
            capabilities: self.local.capabilities.clone(),
            region: self.local.region.clone(),
            continent: self.local.continent.clone(),
            stake: self.local.stake,
            grpc_endpoint: self.local.grpc_endpoint.clone(),
            version: self.local.version.clone(),
            issued_at_ms: unix_ms(),
            listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
        };
        sign_message(&self.signing_key, StatementKind::NodeInfo, &info)
    }

    fn announce(&mut self) {
        let bytes = self.signed_info().encode_to_vec();
        // No subscribed peer yet is normal right after start: retried soon.
        let reached = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(IdentTopic::new(ANNOUNCE_TOPIC), bytes)
            .is_ok();
        let now_ms = self.now_ms();
        self.announce.published(now_ms, reached);
    }

    /// Verifies a signed NodeInfo (see [`verify_node_info`]) and remembers it.
    fn accept_info(
        &mut self,
        claimed: Option<PeerId>,
        statement: SignedStatement,
    ) -> Result<PeerId, String> {
        let (signer_peer, info) = verify_node_info(claimed, &statement)?;
        if signer_peer == *self.swarm.local_peer_id() {
            return Ok(signer_peer);
        }
        let now_ms = self.now_ms();
        if self
            .peers
            .get(&signer_peer)
            .is_none_or(|record| record.info.is_none())
        {
            // A peer new to us may not have heard of us either.
            self.announce.newcomer(now_ms);
        }
        let addresses: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if self.peers.offer_info(signer_peer, info, statement, now_ms) {
            for address in addresses {
                self.learn_address(signer_peer, address, now_ms);
            }
        }
        self.maybe_dial(signer_peer);
        Ok(signer_peer)
    }

    /// Remembers an address of `peer` in the peer table and in Kademlia's routing table.
    fn learn_address(&mut self, peer: PeerId, address: Multiaddr, now_ms: u64) {
        self.peers.add_address(peer, address.clone(), now_ms);
        self.swarm
            .behaviour_mut()
            .kademlia
            .add_address(&peer, address);
    }

    /// Dials a known peer we are not connected to, while under [`DIAL_TARGET`].
    fn maybe_dial(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.peers.connected_count() >= DIAL_TARGET
        {
            return;
        }
        let addresses = self.peers.addresses(&peer);
        if addresses.is_empty() {
            return;
        }
        let options = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addresses)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .build();
        let _ = self.swarm.dial(options);
    }

    fn request_info(&mut self, peer: PeerId) {
        let id = self
            .swarm
            .behaviour_mut()
            .info
            .send_request(&peer, Frame::default());
        self.pending_info.insert(id);
    }

    fn rpc(&mut self, protocol: AppProtocol) -> &mut request_response::Behaviour<FrameCodec> {
        match protocol {
            AppProtocol::Task => &mut self.swarm.behaviour_mut().task,
            AppProtocol::Consensus => &mut self.swarm.behaviour_mut().consensus,
        }
    }

    fn emit(&mut self, event: NetEvent) {
        if let Err(error) = self.events.try_send(event) {
            self.metrics.events_dropped.inc();
            tracing::debug!(%error, "node is behind; network event dropped");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let mut views = self.peers.views();
                for view in &mut views {
                    view.circuit_open = self
                        .breakers
                        .get(&view.peer_id)
                        .is_some_and(Breaker::is_open);
                }
                let _ = reply.send(views);
            }
            Command::Request {
                peer,
                protocol,
                bytes,
                reply,
            } => {
                // Busy first: a request refused here must not use up the breaker's
                // half-open probe, or the breaker would wait for an outcome forever.
                if self.pending_requests.len() >= PENDING_REQUESTS_MAX {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let now_ms = self.now_ms();
                if !self.breakers.entry(peer).or_default().allow(now_ms) {
                    let _ = reply.send(Err(NetError::CircuitOpen(peer)));
                    return;
                }
                let addresses = self.peers.addresses(&peer);
                let id =
                    self.rpc(protocol)
                        .send_request_with_addresses(&peer, Frame(bytes), addresses);
                self.pending_requests.insert((protocol, id), (peer, reply));
            }
            Command::FindProviders { key, reply } => {
                if self.pending_queries.len() >= PENDING_QUERIES_MAX {
                    let _ = reply.send(Vec::new());
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kademlia
                    .get_providers(RecordKey::new(&key));
                self.pending_queries.insert(
                    id,
                    PendingQuery {
                        reply,
                        providers: HashSet::new(),
                    },
                );
            }
            Command::Dial { address, reply } => {
                let result = self
                    .swarm
                    .dial(address)
                    .map_err(|e| NetError::Dial(e.to_string()));
                let _ = reply.send(result);
            }
            Command::PublishEvidence(bytes) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(EVIDENCE_TOPIC), bytes);
            }
            Command::ListenAddresses(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::SetBlocked(peers) => {
                let blocked = &mut self.swarm.behaviour_mut().blocked;
                let unblock: Vec<PeerId> = blocked
                    .blocked_peers()
                    .iter()
                    .filter(|peer| !peers.contains(peer))
                    .copied()
                    .collect();
                for peer in unblock {
                    blocked.unblock_peer(peer);
                }
                for peer in peers {
                    blocked.block_peer(peer);
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now_ms = self.now_ms();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let first_connection = self.peers.connected_count() == 0;
                let record = self.peers.entry(peer_id, now_ms);
                record.connections = num_established.get();
                if endpoint.is_dialer() {
                    let address = endpoint.get_remote_address().clone();
                    self.learn_address(peer_id, address, now_ms);
                }
                let needs_info = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|r| r.info.is_none() && !r.info_requested);
                if needs_info {
                    self.peers.entry(peer_id, now_ms).info_requested = true;
                    self.request_info(peer_id);
                }
                self.metrics
                    .connected_peers
                    .set(self.peers.connected_count() as i64);
                if first_connection {
                    self.provide();
                    let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.peers.entry(peer_id, now_ms).connections = num_established;
                self.metrics
                    .connected_peers
                    .set(self.peers.connected_count() as i64);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now_ms),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent, now_ms: u64) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for address in info.listen_addrs {
                    if is_dialable(&address) {
                        self.learn_address(peer_id, address, now_ms);
                    }
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.peers
                    .entry(peer, now_ms)
                    .observe_rtt(rtt.as_millis() as u64);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    self.learn_address(peer, address, now_ms);
                    self.maybe_dial(peer);
                }
            }
            BehaviourEvent::Kademlia(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            }) => self.on_providers(id, result, step.last),
            BehaviourEvent::Kademlia(kad::Event::RoutingUpdated { peer, .. }) => {
                self.peers.entry(peer, now_ms);
                self.maybe_dial(peer);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })
                if topic == IdentTopic::new(ANNOUNCE_TOPIC).hash() =>
            {
                // A peer that just connected (or came back) listens for announcements.
                self.announce.newcomer(now_ms);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                if message.data.len() > GOSSIP_BYTES_MAX {
                    self.metrics.malformed_messages.inc();
                    return;
                }
                if message.topic == IdentTopic::new(ANNOUNCE_TOPIC).hash() {
                    match SignedStatement::decode(message.data.as_slice()) {
                        Ok(statement) => {
                            if let Err(reason) = self.accept_info(None, statement) {
                                self.metrics.infos_rejected.inc();
                                let source = message.source.unwrap_or(*self.swarm.local_peer_id());
                                self.emit(NetEvent::InvalidInfo {
                                    peer: source,
                                    reason,
                                });
                            }
                        }
                        Err(_) => {
                            self.metrics.malformed_messages.inc();
                        }
                    }
                } else if message.topic == IdentTopic::new(EVIDENCE_TOPIC).hash() {
                    let source = message.source.unwrap_or(*self.swarm.local_peer_id());
                    self.emit(NetEvent::Evidence {
                        source,
                        bytes: message.data,
                    });
                }
            }
            BehaviourEvent::Info(event) => self.on_info_event(event, now_ms),
            BehaviourEvent::Task(event) => self.on_rpc_event(AppProtocol::Task, event, now_ms),
            BehaviourEvent::Consensus(event) => {
                self.on_rpc_event(AppProtocol::Consensus, event, now_ms)
            }
            _ => {}
        }
    }

    /// `/polity/info/1`: answered here with our signed NodeInfo; responses verified.
    fn on_info_event(&mut self, event: request_response::Event<Frame, Frame>, now_ms: u64) {
        use request_response::{Event, Message as RpcMessage};
        match event {
            Event::Message {
                message: RpcMessage::Request { channel, .. },
                ..
            } => {
                let info = self.signed_info().encode_to_vec();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .info
                    .send_response(channel, Frame(info));
            }
            Event::Message {
                peer,
                message:
                    RpcMessage::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.pending_info.remove(&request_id);
                self.peers.entry(peer, now_ms).info_requested = false;
                let result = SignedStatement::decode(response.0.as_slice())
                    .map_err(|e| format!("undecodable info: {e}"))
                    .and_then(|statement| self.accept_info(Some(peer), statement));
                if let Err(reason) = result {
                    self.metrics.infos_rejected.inc();
                    self.emit(NetEvent::InvalidInfo { peer, reason });
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.count_failure(&error.to_string());
                self.pending_info.remove(&request_id);
                self.peers.entry(peer, now_ms).info_requested = false;
            }
            Event::InboundFailure { error, .. } => self.count_failure(&error.to_string()),
            Event::ResponseSent { .. } => {}
        }
    }

    /// `/polity/task/1` and `/polity/consensus/1`: requests go to the node, responses
    /// to whoever asked.
    fn on_providers(&mut self, id: QueryId, result: kad::GetProvidersResult, last_step: bool) {
        let finished = match result {
            Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                if let Some(query) = self.pending_queries.get_mut(&id) {
                    for provider in providers {
                        if query.providers.len() < PROVIDERS_PER_QUERY_MAX {
                            query.providers.insert(provider);
                        }
                    }
                }
                last_step
            }
            Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => true,
        };
        if finished && let Some(query) = self.pending_queries.remove(&id) {
            let mut providers: Vec<PeerId> = query.providers.into_iter().collect();
            providers.sort();
            for provider in &providers {
                self.maybe_dial(*provider);
            }
            let _ = query.reply.send(providers);
        }
    }

    fn on_rpc_event(
        &mut self,
        protocol: AppProtocol,
        event: request_response::Event<Frame, Frame>,
        now_ms: u64,
    ) {
        use request_response::{Event, Message as RpcMessage};
        match event {
            Event::Message {
                peer,
                message:
                    RpcMessage::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let (sender, receiver) = oneshot::channel();
                self.emit(NetEvent::Request {
                    peer,
                    protocol,
                    bytes: request.0,
                    responder: Responder(sender),
                });
                self.pending_responses.push(Box::pin(async move {
                    (protocol, channel, receiver.await.ok())
                }));
            }
            Event::Message {
                message:
                    RpcMessage::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((peer, reply)) = self.pending_requests.remove(&(protocol, request_id)) {
                    self.breakers.entry(peer).or_default().record_success();
                    let _ = reply.send(Ok(response.0));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                let reason = error.to_string();
                self.count_failure(&reason);
                if let Some((peer, reply)) = self.pending_requests.remove(&(protocol, request_id)) {
                    self.breakers
                        .entry(peer)
                        .or_default()
                        .record_failure(now_ms);
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: reason.clone(),
                    }));
                    self.emit(NetEvent::RequestFailed { peer, reason });
                }
            }
            Event::InboundFailure { error, .. } => self.count_failure(&error.to_string()),
            Event::ResponseSent { .. } => {}
        }
    }

    fn count_failure(&mut self, error: &str) {
        self.metrics.requests_failed.inc();
        if is_malformed(error) {
            self.metrics.malformed_messages.inc();
        }
    }
}

/// Checks a signed NodeInfo: a valid NODE_INFO signature, by the key the info
/// names, whose PeerId is the one the info names and, for an answer to our own
/// info request, the peer we asked (`claimed`). Gossiped info has no claimed
/// sender: the signature alone says whose it is.
pub fn verify_node_info(
    claimed: Option<PeerId>,
    statement: &SignedStatement,
) -> Result<(PeerId, NodeInfo), String> {
    let (signer, info) = open::<NodeInfo>(statement, StatementKind::NodeInfo)
        .map_err(|e| format!("bad signature: {e}"))?;
    let signer_peer = crate::peer_id_of(signer.as_bytes())
        .map_err(|NotAnEd25519Key| "signer is not a key".to_string())?;
    if let Some(claimed) = claimed
        && claimed != signer_peer
    {
        return Err(format!("info for {claimed} signed by {signer_peer}"));
    }
    if info.public_key != signer.as_bytes().as_slice() || info.peer_id != signer_peer.to_string() {
        return Err("info names another key than its signer".to_string());
    }
    Ok((signer_peer, info))
}

fn is_malformed(error: &str) -> bool {
    error.contains("over the limit") || error.contains("varint") || error.contains("InvalidData")
}

/// Loopback, private and public IP addresses are dialable; relay circuits and
/// unspecified addresses are not.
fn is_dialable(address: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match address.iter().next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(drop_rate: f64, seed: u64) -> LinkFaults {
        let link = LinkFaults::default();
        link.drop_ppm
            .store((drop_rate * 1_000_000.0) as u64, Ordering::Relaxed);
        link.seed.store(seed, Ordering::Relaxed);
        link
    }

    #[test]
    fn link_drops_follow_the_rate_and_the_seed() {
        assert!((0..1_000).all(|_| !LinkFaults::default().drop_next()));
        assert!((0..1_000).all(|_| link(1.0, 3).drop_next()));
        let faults = link(0.3, 42);
        let drops = (0..20_000).filter(|_| faults.drop_next()).count();
        // 6,000 expected; the binomial standard deviation is about 65.
        assert!((5_600..6_400).contains(&drops), "{drops}");
        let again = link(0.3, 42);
        let replay: Vec<bool> = (0..64).map(|_| again.drop_next()).collect();
        let same_seed_same_choices: Vec<bool> = {
            let other = link(0.3, 42);
            (0..64).map(|_| other.drop_next()).collect()
        };
        assert_eq!(replay, same_seed_same_choices);
    }
}
