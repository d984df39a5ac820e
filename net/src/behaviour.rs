//! The swarm's construction: the transports (TCP and QUIC, Noise, Yamux), the
//! behaviours and their limits, and [`start`], which hands the built swarm to the
//! event loop and the node a [`NetHandle`].

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::allow_block_list::{self, BlockedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, mdns, noise, ping, relay,
    tcp, yamux,
};
use tokio::sync::mpsc;

use crate::codec::{FrameCodec, INBOUND_READING_BYTES_MAX, ReadingBudget};
use crate::event_loop::EventLoop;
use crate::handle::NetHandle;
use crate::metrics::NetMetrics;
use crate::network::{
    ANNOUNCE_TOPIC, CONSENSUS_PROTOCOL, EVIDENCE_TOPIC, IDENTIFY_PROTOCOL, INFO_PROTOCOL,
    KADEMLIA_PROTOCOL, LocalInfo, NetConfig, NetEvent, ReachConfig, RelayLimits, TASK_PROTOCOL,
};
use crate::peers::PeerTable;
use crate::reach::GatedCandidates;

/// Largest gossip message.
pub(crate) const GOSSIP_BYTES_MAX: usize = 64 * 1024;
/// Connections at most, in total and per peer; pending handshakes at most. Four
/// per peer: TCP and QUIC to a bootstrap peer, plus an AutoNAT dial-back or a
/// hole-punched connection next to a relayed one (with two, a node connected to
/// its bootstrap peer over both transports could never be dialed back by it).
const CONNECTIONS_MAX: u32 = 512;
const CONNECTIONS_PER_PEER_MAX: u32 = 4;
const PENDING_CONNECTIONS_MAX: u32 = 128;
/// Request-response timeout and concurrent streams per connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const STREAMS_PER_CONNECTION_MAX: usize = 128;
/// How often the node re-bootstraps Kademlia. (When it gossips its NodeInfo again
/// is an [`AnnounceSchedule`](crate::announce::AnnounceSchedule).)
const BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);
const KADEMLIA_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often ping measures each connection's round-trip time.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How often gossipsub exchanges its control messages.
const GOSSIP_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection with no stream open stays up.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Events queued to the node at most; when the node falls behind, the loop drops
/// and counts them rather than queueing without bound.
const EVENTS_MAX: usize = 1_024;

/// What a behaviour's constructor may fail with, as the swarm builder expects it.
type BuildError = Box<dyn std::error::Error + Send + Sync>;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    /// Peers the node refuses to talk to (fault injection: partitions).
    pub(crate) blocked: allow_block_list::Behaviour<BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kademlia: kad::Behaviour<MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    /// One request-response behaviour per protocol: request-response does not say
    /// which of several protocols an inbound request came on, so each gets its own.
    pub(crate) info: request_response::Behaviour<FrameCodec>,
    pub(crate) task: request_response::Behaviour<FrameCodec>,
    pub(crate) consensus: request_response::Behaviour<FrameCodec>,
    /// Circuit relay v2: the client side (reservations, relayed dials) always...
    pub(crate) relay_client: relay::client::Behaviour,
    /// ...the relay itself only with `--relay-server`.
    pub(crate) relay: Toggle<relay::Behaviour>,
    /// Hole punching over a relayed connection.
    pub(crate) dcutr: dcutr::Behaviour,
    /// AutoNAT v2: asks peers to dial our candidate addresses back; candidates come
    /// from the loop (see `reach`), not straight from identify.
    pub(crate) autonat: GatedCandidates<autonat::v2::client::Behaviour>,
    pub(crate) autonat_server: autonat::v2::server::Behaviour,
}

impl Behaviour {
    fn new(
        key: &Keypair,
        config: &NetConfig,
        reach: &ReachConfig,
        relay_client: relay::client::Behaviour,
    ) -> Result<Behaviour, BuildError> {
        let local_peer_id = key.public().to_peer_id();
        let (version, mdns_enabled) = (&config.local.version, config.mdns);
        let mdns = if mdns_enabled {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                local_peer_id,
            )?)
        } else {
            None
        };
        // One reading budget for the node's three request-response protocols.
        let reading = ReadingBudget::new(INBOUND_READING_BYTES_MAX);
        Ok(Behaviour {
            limits: connection_limits(),
            blocked: allow_block_list::Behaviour::default(),
            identify: identify(key, version),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            kademlia: kademlia(local_peer_id),
            mdns: Toggle::from(mdns),
            gossipsub: gossipsub(key)?,
            info: rpc_behaviour(INFO_PROTOCOL, &reading),
            task: rpc_behaviour(TASK_PROTOCOL, &reading),
            consensus: rpc_behaviour(CONSENSUS_PROTOCOL, &reading),
            relay_client,
            relay: Toggle::from(
                reach
                    .relay_server
                    .map(|limits| relay(local_peer_id, limits)),
            ),
            dcutr: dcutr::Behaviour::new(local_peer_id),
            autonat: GatedCandidates::new(autonat::v2::client::Behaviour::default()),
            autonat_server: autonat::v2::server::Behaviour::default(),
        })
    }
}

fn connection_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_established(Some(CONNECTIONS_MAX))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
            .with_max_pending_incoming(Some(PENDING_CONNECTIONS_MAX))
            .with_max_pending_outgoing(Some(PENDING_CONNECTIONS_MAX)),
    )
}

/// A circuit relay with the operator's limits, and libp2p's default rate limits
/// (per peer and per IP) on reservations and circuits.
fn relay(local_peer_id: PeerId, limits: RelayLimits) -> relay::Behaviour {
    let config = relay::Config {
        max_reservations: limits.reservations_max,
        max_reservations_per_peer: limits.reservations_per_peer_max,
        reservation_duration: Duration::from_secs(limits.reservation_duration_s),
        max_circuits: limits.circuits_max,
        max_circuits_per_peer: limits.circuits_per_peer_max,
        max_circuit_duration: Duration::from_secs(limits.circuit_duration_s),
        max_circuit_bytes: limits.circuit_bytes_max,
        ..relay::Config::default()
    };
    relay::Behaviour::new(local_peer_id, config)
}

fn identify(key: &Keypair, version: &str) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("polity/{version}")),
    )
}

/// Kademlia in server mode, so every node answers queries and stores provider records.
fn kademlia(local_peer_id: PeerId) -> kad::Behaviour<MemoryStore> {
    let mut config = kad::Config::new(KADEMLIA_PROTOCOL);
    config
        .set_query_timeout(KADEMLIA_QUERY_TIMEOUT)
        .set_periodic_bootstrap_interval(Some(BOOTSTRAP_INTERVAL));
    let mut kademlia =
        kad::Behaviour::with_config(local_peer_id, MemoryStore::new(local_peer_id), config);
    kademlia.set_mode(Some(kad::Mode::Server));
    kademlia
}

/// Gossipsub with signed messages, strictly validated, at most [`GOSSIP_BYTES_MAX`].
fn gossipsub(key: &Keypair) -> Result<gossipsub::Behaviour, BuildError> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(GOSSIP_HEARTBEAT_INTERVAL)
        .validation_mode(ValidationMode::Strict)
        .max_transmit_size(GOSSIP_BYTES_MAX)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(gossipsub::Behaviour::new(
        MessageAuthenticity::Signed(key.clone()),
        config,
    )?)
}

fn rpc_behaviour(
    protocol: StreamProtocol,
    reading: &Arc<ReadingBudget>,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(Arc::clone(reading)),
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX),
    )
}

/// Starts the swarm and its event loop on the current tokio runtime, with the
/// default [`ReachConfig`]. Returns the handle, the event stream for the node, and
/// the loop's task.
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
    start_with(config, ReachConfig::default(), metrics)
}

/// [`start`] with the node's reachability settings.
pub fn start_with(
    config: NetConfig,
    reach: ReachConfig,
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
    let mut swarm = build_swarm(keypair, &config, &reach)?;
    subscribe_and_listen(&mut swarm, &config.listen, &config.local.region)?;
    for address in &reach.external_addresses {
        // The operator's word: confirmed without a probe.
        swarm.add_external_address(address.clone());
    }
    // Bootstrap peers are dialed by the event loop's first redial tick, right away.

    let bootstrap_peers = config
        .bootstrap
        .iter()
        .filter_map(|address| {
            address.iter().find_map(|protocol| match protocol {
                libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
                _ => None,
            })
        })
        .collect();
    let (handle, commands) = NetHandle::channel(peer_id);
    let (events, events_rx) = mpsc::channel(EVENTS_MAX);
    let mut event_loop = EventLoop::new(
        swarm,
        signing_key,
        config.local,
        config.bootstrap,
        commands,
        events,
        metrics,
    );
    event_loop.peers = PeerTable::with_capacity(reach.peers_max);
    event_loop.reach.operator_reachable = !reach.external_addresses.is_empty();
    event_loop.reach.trusted_relays = bootstrap_peers;
    let task = tokio::spawn(event_loop.run());
    Ok((handle, events_rx, task))
}

fn build_swarm(
    keypair: Keypair,
    config: &NetConfig,
    reach: &ReachConfig,
) -> Result<Swarm<Behaviour>, StartError> {
    let resolver_config = system_resolver_config();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        // `/dns4/NAME/tcp/PORT` bootstrap addresses (containers reach each other by
        // service name), resolved by the system's resolver at each dial.
        .with_dns_config(resolver_config.0, resolver_config.1)
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| e.to_string())?
        .with_behaviour(|key, relay_client| Behaviour::new(key, config, reach, relay_client))
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// The system's resolver configuration (`/etc/resolv.conf`), or one with no name
/// server when there is none: the node still starts, and only `/dns` addresses
/// fail to resolve (each dial says why).
fn system_resolver_config() -> (libp2p::dns::ResolverConfig, libp2p::dns::ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "no system DNS configuration: /dns addresses will not resolve");
            (
                libp2p::dns::ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                libp2p::dns::ResolverOpts::default(),
            )
        }
    }
}

/// Subscribes to the announce topics (everyone's and the region's) and the
/// evidence topic, and opens the listeners.
fn subscribe_and_listen(
    swarm: &mut Swarm<Behaviour>,
    listen: &[Multiaddr],
    region: &str,
) -> Result<(), StartError> {
    let region_topic = crate::network::region_announce_topic(region);
    for topic in [ANNOUNCE_TOPIC, EVIDENCE_TOPIC, region_topic.as_str()] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| e.to_string())?;
    }
    for address in listen {
        swarm
            .listen_on(address.clone())
            .map_err(|e| format!("listening on {address}: {e}"))?;
    }
    Ok(())
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
