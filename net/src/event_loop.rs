//! The event loop: the only owner of the [`Swarm`]. It takes [`Command`]s from
//! [`NetHandle`](crate::NetHandle)s and events from the swarm, and hands the node
//! what it must act on as [`NetEvent`]s on a bounded channel; when the node falls
//! behind, events are dropped and counted, never queued without bound.
//!
//! The NodeInfo exchange and announcements are methods of the loop too, kept in
//! [`crate::info`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use tokio::sync::{mpsc, oneshot};

use crate::announce::AnnounceSchedule;
use crate::behaviour::{Behaviour, BehaviourEvent, GOSSIP_BYTES_MAX};
use crate::breaker::{Breaker, BreakerState};
use crate::codec::{Frame, FrameCodec};
use crate::handle::Command;
use crate::link_faults;
use crate::metrics::NetMetrics;
use crate::network::{
    ANNOUNCE_TOPIC, AppProtocol, EVIDENCE_TOPIC, LocalInfo, NetError, NetEvent, Responder,
    provider_keys,
};
use crate::peers::{PeerTable, PeerView};
use crate::reach::ReachState;

/// Peers we dial on our own (learned through gossip, Kademlia or mDNS) while we have
/// fewer connections than this...
const DIAL_TARGET: usize = 128;
/// ...and, of those, peers of other regions (or of a region we do not know yet)
/// only while fewer than this are connected: a node keeps its own region (its
/// seats) connected and a sample of the rest, so the connection set, and the pings
/// and gossip heartbeats that go with it, does not grow with the federation.
/// Seats elsewhere are dialed when wanted (requests, provider queries).
const OTHER_REGIONS_DIAL_TARGET: usize = 16;
/// Outbound requests and provider queries in flight at most.
const PENDING_REQUESTS_MAX: usize = 4_096;
const PENDING_QUERIES_MAX: usize = 256;
/// Providers collected per query at most.
const PROVIDERS_PER_QUERY_MAX: usize = 1_024;
/// How often the node republishes its provider records.
const PROVIDE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a node with no connection redials its bootstrap peers.
const BOOTSTRAP_REDIAL_INTERVAL: Duration = Duration::from_secs(2);
/// How often the loop looks for open breakers whose probe is due.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Breaker probes (dials and NodeInfo requests) out at once at most.
const PROBES_MAX: usize = 256;
/// Dials the loop's breaker probes start per [`PROBE_INTERVAL`] at most: a stranger
/// that gossips many unreachable peers cannot make the node dial without bound.
const PROBE_DIALS_PER_TICK: usize = 16;

/// A node's answer to an inbound request, on its way back to the swarm.
type PendingResponse = BoxFuture<'static, (AppProtocol, ResponseChannel<Frame>, Option<Vec<u8>>)>;

/// Where the response to a node-protocol request goes.
type Reply = oneshot::Sender<Result<Vec<u8>, NetError>>;

/// A provider query in flight: the providers found so far, and who asked.
struct PendingQuery {
    reply: oneshot::Sender<Vec<PeerId>>,
    providers: HashSet<PeerId>,
}

/// The loop's state. Fields are crate-visible for the loop's methods in
/// [`crate::info`]; nothing else in the crate holds an `EventLoop`.
pub(crate) struct EventLoop {
    /// Redialed while the node has no connection: a bootstrap peer that was not up
    /// yet when we started must not leave us alone for good.
    bootstrap: Vec<Multiaddr>,
    pub(crate) swarm: Swarm<Behaviour>,
    /// Signs our NodeInfo (the same key as the swarm's identity).
    pub(crate) signing_key: SigningKey,
    pub(crate) local: LocalInfo,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    pub(crate) metrics: NetMetrics,
    pub(crate) peers: PeerTable,
    /// Outbound node-protocol requests, keyed by protocol too: each behaviour counts
    /// its own request ids.
    /// Requests in flight: the peer, the caller, and whether the breaker counts it.
    pending_requests: HashMap<(AppProtocol, OutboundRequestId), (PeerId, Reply, bool)>,
    /// Outbound info requests (answered here, not by the node).
    pub(crate) pending_info: HashSet<OutboundRequestId>,
    pending_queries: HashMap<QueryId, PendingQuery>,
    pending_responses: FuturesUnordered<PendingResponse>,
    pub(crate) breakers: HashMap<PeerId, Breaker>,
    /// The loop's own breaker probes out: NodeInfo requests, whose answer closes
    /// the peer's breaker (at most [`PROBES_MAX`]).
    pub(crate) probes: HashMap<OutboundRequestId, PeerId>,
    pub(crate) announce: AnnounceSchedule,
    /// The origin of the loop's `now_ms` clock.
    pub(crate) started: Instant,
    /// Peers blocked by fault injection (a partition), as last set.
    injected_blocks: HashSet<PeerId>,
    /// Banned peers and when each ban ends (`now_ms`); at most [`BANS_MAX`].
    bans: HashMap<PeerId, u64>,
    /// Observed addresses, relays, relayed connections (see [`crate::reach`]).
    pub(crate) reach: ReachState,
    /// Announcements made so far (one in [`GLOBAL_ANNOUNCE_EVERY`] goes to all).
    ///
    /// [`GLOBAL_ANNOUNCE_EVERY`]: crate::network::GLOBAL_ANNOUNCE_EVERY
    pub(crate) announcements: u64,
}

/// Bans held at once; a new ban past this replaces the one ending soonest.
const BANS_MAX: usize = 4_096;

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        signing_key: SigningKey,
        local: LocalInfo,
        bootstrap: Vec<Multiaddr>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        metrics: NetMetrics,
    ) -> EventLoop {
        EventLoop {
            bootstrap,
            swarm,
            signing_key,
            local,
            commands,
            events,
            metrics,
            peers: PeerTable::default(),
            pending_requests: HashMap::new(),
            pending_info: HashSet::new(),
            pending_queries: HashMap::new(),
            pending_responses: FuturesUnordered::new(),
            breakers: HashMap::new(),
            probes: HashMap::new(),
            announce: AnnounceSchedule::new(0),
            started: Instant::now(),
            injected_blocks: HashSet::new(),
            bans: HashMap::new(),
            reach: ReachState::default(),
            announcements: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let announce = tokio::time::sleep_until(self.announce_due());
        tokio::pin!(announce);
        let mut provide = tokio::time::interval(PROVIDE_INTERVAL);
        let mut redial = tokio::time::interval(BOOTSTRAP_REDIAL_INTERVAL);
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = probe.tick() => self.probe_breakers(),
                _ = redial.tick() => {
                    self.redial_bootstrap();
                    if !self.bans.is_empty() {
                        self.apply_blocks();
                    }
                }
            }
            // Any arm may have moved the next announcement (a newcomer, a publish).
            let due = self.announce_due();
            if announce.deadline() != due {
                announce.as_mut().reset(due);
            }
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Hands an event to the node, or drops and counts it when the node is behind.
    pub(crate) fn emit(&mut self, event: NetEvent) {
        if let Err(error) = self.events.try_send(event) {
            self.metrics.events_dropped.inc();
            tracing::debug!(%error, "node is behind; network event dropped");
        }
    }

    // Commands from handles.

    /// One arm per command; each hands off to a method named after it.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_views());
            }
            Command::Request {
                peer,
                protocol,
                bytes,
                guarded,
                reply,
            } => self.send_request(peer, protocol, bytes, guarded, reply),
            Command::FindProviders { key, reply } => self.find_providers(key, reply),
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
            Command::Reachability(reply) => {
                let _ = reply.send(self.reachability());
            }
            Command::SetBlocked(peers) => {
                let unblocked: Vec<PeerId> =
                    self.injected_blocks.difference(&peers).copied().collect();
                self.injected_blocks = peers;
                self.apply_blocks();
                self.reach_again(&unblocked);
            }
            Command::Ban { peer, for_ms } => {
                if self.bans.len() >= BANS_MAX
                    && let Some(soonest) = self.bans.iter().min_by_key(|(_, until)| **until)
                {
                    let soonest = *soonest.0;
                    self.bans.remove(&soonest);
                }
                let until = self.now_ms().saturating_add(for_ms);
                self.bans.insert(peer, until);
                self.metrics.peers_banned.inc();
                tracing::warn!(%peer, for_ms, "banned a peer that kept breaking the protocol");
                self.apply_blocks();
            }
        }
    }

    /// Blocks the injected partition and the bans still running (blocking closes a
    /// peer's connections and refuses new ones); ended bans are dropped.
    fn apply_blocks(&mut self) {
        let now_ms = self.now_ms();
        self.bans.retain(|_, until| *until > now_ms);
        let mut blocked = self.injected_blocks.clone();
        blocked.extend(self.bans.keys().copied());
        link_faults::set_blocked(&mut self.swarm.behaviour_mut().blocked, blocked);
    }

    /// Peers whose block was just cleared (a healed partition): their breakers'
    /// probes are due now and they are dialed at once, instead of waiting out a
    /// cool-down that grew while the partition lasted.
    fn reach_again(&mut self, peers: &[PeerId]) {
        let now_ms = self.now_ms();
        for peer in peers {
            if let Some(breaker) = self.breakers.get_mut(peer) {
                breaker.reachable_again(now_ms);
            }
            self.dial_known(*peer);
        }
        self.probe_breakers();
    }

    /// Probes every open breaker whose cool-down is over: a connected peer is asked
    /// for its NodeInfo (an answer closes the breaker), another one is dialed (a
    /// connection makes the NodeInfo probe due; a failed dial opens it again, with
    /// a longer cool-down). Without this, a peer whose breaker opened would get no
    /// seat, so no request, so no probe: it would stay out until someone else's
    /// task happened to send it a message.
    pub(crate) fn probe_breakers(&mut self) {
        let now_ms = self.now_ms();
        // A breaker lives as long as its peer's record (the peer table is bounded)
        // or its connection: the map cannot outgrow what the node keeps of peers.
        let (peers, swarm) = (&self.peers, &self.swarm);
        self.breakers
            .retain(|peer, _| peers.get(peer).is_some() || swarm.is_connected(peer));
        let mut dials = 0;
        let due: Vec<PeerId> = self
            .breakers
            .iter()
            .filter(|(_, breaker)| breaker.probe_due(now_ms))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if self.probes.len() >= PROBES_MAX {
                return;
            }
            if self.swarm.is_connected(&peer) {
                self.send_probe(peer, now_ms);
                continue;
            }
            if dials >= PROBE_DIALS_PER_TICK {
                continue;
            }
            let Some(breaker) = self.breakers.get_mut(&peer) else {
                continue;
            };
            breaker.start_probe(now_ms);
            dials += 1;
            if !self.dial_known(peer) {
                // Refused before any packet left (blocked, or no address).
                self.breakers
                    .entry(peer)
                    .or_default()
                    .record_unreachable(now_ms);
            }
        }
    }

    /// Sends the breaker's probe to a connected peer: a NodeInfo request.
    fn send_probe(&mut self, peer: PeerId, now_ms: u64) {
        if self.probes.values().any(|probed| *probed == peer) {
            return; // one probe per peer
        }
        let breaker = self.breakers.entry(peer).or_default();
        if !breaker.start_probe(now_ms) && !matches!(breaker.state(), BreakerState::HalfOpen { .. })
        {
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .info
            .send_request(&peer, Frame::default());
        self.probes.insert(id, peer);
    }

    /// A probe's answer: an answer closes the breaker, a failure opens it again.
    pub(crate) fn on_probe_result(&mut self, id: &OutboundRequestId, ok: bool) {
        let Some(peer) = self.probes.remove(id) else {
            return;
        };
        let now_ms = self.now_ms();
        let breaker = self.breakers.entry(peer).or_default();
        match ok {
            true => breaker.record_success(),
            false => breaker.record_failure(now_ms),
        }
    }

    /// The peer table, with each peer's breaker state.
    fn peer_views(&self) -> Vec<PeerView> {
        let mut views = self.peers.views();
        for view in &mut views {
            view.circuit_open = self
                .breakers
                .get(&view.peer_id)
                .is_some_and(Breaker::is_open);
        }
        views
    }

    fn send_request(
        &mut self,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
        guarded: bool,
        reply: Reply,
    ) {
        // Busy first: a request refused here must not use up the breaker's
        // half-open probe, or the breaker would wait for an outcome forever.
        if self.pending_requests.len() >= PENDING_REQUESTS_MAX {
            let _ = reply.send(Err(NetError::Busy));
            return;
        }
        let now_ms = self.now_ms();
        let breaker = self.breakers.entry(peer).or_default();
        if guarded && !breaker.allow(now_ms) {
            // Refused fast; but someone wants this peer, so probe it soon.
            breaker.wanted(now_ms);
            let _ = reply.send(Err(NetError::CircuitOpen(peer)));
            return;
        }
        let addresses = self.peers.addresses(&peer);
        let id = self
            .rpc(protocol)
            .send_request_with_addresses(&peer, Frame(bytes), addresses);
        self.pending_requests
            .insert((protocol, id), (peer, reply, guarded));
    }

    fn find_providers(&mut self, key: String, reply: oneshot::Sender<Vec<PeerId>>) {
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

    // Timers.

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

    /// libp2p does not retry a failed dial, so a node started before its bootstrap
    /// peers would otherwise stay alone.
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

    // Swarm events.

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now_ms = self.now_ms();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let connections = num_established.get();
                self.track_path(peer_id, connection_id, &endpoint, connections, now_ms);
                self.on_connection_established(peer_id, &endpoint, num_established.get(), now_ms)
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.on_listener_closed(listener_id);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.announce.newcomer(now_ms);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.forget_path(connection_id);
                self.peers.entry(peer_id, now_ms).connections = num_established;
                self.metrics
                    .connected_peers
                    .set(self.peers.connected_count() as i64);
                // Closed by an error (a crashed or partitioned peer, not an idle
                // close): dial it back at once. A refusal opens its breaker now,
                // before a task seats it; a connection costs nothing.
                if num_established == 0 && cause.is_some() {
                    self.dial_known(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => self.on_dial_failure(peer, &error, now_ms),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now_ms),
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        endpoint: &ConnectedPoint,
        connections: u32,
        now_ms: u64,
    ) {
        let first_connection = self.peers.connected_count() == 0;
        self.peers.entry(peer, now_ms).connections = connections;
        // The peer is back: an open breaker is probed now, not after its cool-down.
        if let Some(breaker) = self.breakers.get_mut(&peer)
            && breaker.is_open()
        {
            breaker.reachable_again(now_ms);
            self.send_probe(peer, now_ms);
        }
        if endpoint.is_dialer() {
            let address = endpoint.get_remote_address().clone();
            self.learn_address(peer, address, now_ms);
        }
        self.ask_info_if_unknown(peer, now_ms);
        self.metrics
            .connected_peers
            .set(self.peers.connected_count() as i64);
        if first_connection {
            self.provide();
            let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
        }
    }

    /// One arm per behaviour event we act on; a table reads better whole.
    fn on_behaviour_event(&mut self, event: BehaviourEvent, now_ms: u64) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, &info, now_ms);
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
                self.on_gossip_message(message)
            }
            BehaviourEvent::Info(event) => self.on_info_event(event, now_ms),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr_event(event, now_ms),
            BehaviourEvent::Autonat(event) => self.on_autonat_event(event),
            BehaviourEvent::Task(event) => self.on_rpc_event(AppProtocol::Task, event, now_ms),
            BehaviourEvent::Consensus(event) => {
                self.on_rpc_event(AppProtocol::Consensus, event, now_ms)
            }
            _ => {}
        }
    }

    fn on_gossip_message(&mut self, message: gossipsub::Message) {
        if message.data.len() > GOSSIP_BYTES_MAX {
            self.metrics.malformed_messages.inc();
            return;
        }
        let region_topic = crate::network::region_announce_topic(&self.local.region);
        if message.topic == IdentTopic::new(ANNOUNCE_TOPIC).hash()
            || message.topic == IdentTopic::new(region_topic).hash()
        {
            self.on_announcement(message.source, &message.data);
        } else if message.topic == IdentTopic::new(EVIDENCE_TOPIC).hash() {
            let source = message.source.unwrap_or(*self.swarm.local_peer_id());
            self.emit(NetEvent::Evidence {
                source,
                bytes: message.data,
            });
        }
    }

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

    // The node protocols.

    /// `/polity/task/1` and `/polity/consensus/1`: requests go to the node, responses
    /// to whoever asked.
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
                connection_id,
                message:
                    RpcMessage::Request {
                        request, channel, ..
                    },
            } => {
                self.count_path(connection_id);
                self.on_inbound_request(peer, protocol, request, channel)
            }
            Event::Message {
                connection_id,
                message:
                    RpcMessage::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.count_path(connection_id);
                if let Some((peer, reply, guarded)) =
                    self.pending_requests.remove(&(protocol, request_id))
                {
                    if guarded {
                        self.breakers.entry(peer).or_default().record_success();
                    }
                    let _ = reply.send(Ok(response.0));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => self.on_outbound_failure(protocol, request_id, &error, now_ms),
            Event::InboundFailure { error, .. } => self.count_failure(&error.to_string()),
            Event::ResponseSent { .. } => {}
        }
    }

    /// Hands the request to the node and waits (in `pending_responses`, not here)
    /// for its answer.
    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        protocol: AppProtocol,
        request: Frame,
        channel: ResponseChannel<Frame>,
    ) {
        let (sender, receiver) = oneshot::channel();
        self.emit(NetEvent::Request {
            peer,
            protocol,
            bytes: request.0,
            responder: Responder(sender),
        });
        self.pending_responses.push(Box::pin(
            async move { (protocol, channel, receiver.await.ok()) },
        ));
    }

    fn on_outbound_failure(
        &mut self,
        protocol: AppProtocol,
        request_id: OutboundRequestId,
        error: &request_response::OutboundFailure,
        now_ms: u64,
    ) {
        let reason = error.to_string();
        self.count_failure(&reason);
        if let Some((peer, reply, guarded)) = self.pending_requests.remove(&(protocol, request_id))
        {
            let _ = reply.send(Err(NetError::Request {
                peer,
                reason: reason.clone(),
            }));
            if guarded {
                let breaker = self.breakers.entry(peer).or_default();
                match error {
                    // Not reachable at all: open at once (an open breaker is left to
                    // its probe, which a dial failure also reports).
                    request_response::OutboundFailure::DialFailure => {
                        if !breaker.is_open() {
                            breaker.record_unreachable(now_ms);
                        }
                    }
                    _ => breaker.record_failure(now_ms),
                }
                self.emit(NetEvent::RequestFailed { peer, reason });
            }
        }
    }

    pub(crate) fn count_failure(&mut self, error: &str) {
        self.metrics.requests_failed.inc();
        if is_malformed(error) {
            self.metrics.malformed_messages.inc();
        }
    }

    fn rpc(&mut self, protocol: AppProtocol) -> &mut request_response::Behaviour<FrameCodec> {
        match protocol {
            AppProtocol::Task => &mut self.swarm.behaviour_mut().task,
            AppProtocol::Consensus => &mut self.swarm.behaviour_mut().consensus,
        }
    }

    // Addresses and dialing.

    /// Remembers an address of `peer` in the peer table and in Kademlia's routing table.
    pub(crate) fn learn_address(&mut self, peer: PeerId, address: Multiaddr, now_ms: u64) {
        self.peers.add_address(peer, address.clone(), now_ms);
        self.swarm
            .behaviour_mut()
            .kademlia
            .add_address(&peer, address);
    }

    /// A dial that failed for a reason about the peer (not "already dialing"): a
    /// probe's dial failed, or a peer whose breaker was closed is not reachable
    /// (its breaker opens at once).
    fn on_dial_failure(&mut self, peer: PeerId, error: &DialError, now_ms: u64) {
        // A dial denied by this node's own connection limits says nothing about the
        // peer: counted, anyone who fills the limits (many inbound connections, dials
        // to dead addresses) would open the breakers of honest members.
        let about_the_peer = match error {
            DialError::Transport(_) | DialError::NoAddresses | DialError::WrongPeerId { .. } => {
                true
            }
            DialError::Denied { cause, .. } => cause
                .downcast_ref::<libp2p::connection_limits::Exceeded>()
                .is_none(),
            _ => false,
        };
        if !about_the_peer || self.swarm.is_connected(&peer) {
            return;
        }
        let breaker = self.breakers.entry(peer).or_default();
        match breaker.state() {
            BreakerState::Open { .. } => {}
            BreakerState::HalfOpen { .. } | BreakerState::Closed { .. } => {
                breaker.record_unreachable(now_ms)
            }
        }
    }

    /// Dials a peer we know addresses of, unless connected or dialing already;
    /// `false` when the dial was refused at once (blocked, no address).
    fn dial_known(&mut self, peer: PeerId) -> bool {
        if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
            return true;
        }
        let addresses = self.peers.addresses(&peer);
        if addresses.is_empty() {
            return false;
        }
        let options = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addresses)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(options) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => true,
            Err(_) => false,
        }
    }

    /// Dials a known peer we are not connected to, while under [`DIAL_TARGET`]: ping
    /// can only measure the RTT of a peer we are connected to.
    pub(crate) fn maybe_dial(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.peers.connected_count() >= DIAL_TARGET
        {
            return;
        }
        let region = self.local.region.as_str();
        let of_our_region = |record: &crate::peers::PeerRecord| {
            record
                .info
                .as_ref()
                .is_some_and(|info| info.region == region)
        };
        if !self.peers.get(&peer).is_some_and(of_our_region)
            && self.peers.connected_where(|record| !of_our_region(record))
                >= OTHER_REGIONS_DIAL_TARGET
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
}

/// Whether a request-response failure was a peer breaking the wire rules (the
/// codec's size limit, a bad varint, undecodable bytes).
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
