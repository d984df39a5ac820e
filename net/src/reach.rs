//! Reachability: which of our addresses others can dial, and how to be reached
//! when none can.
//!
//! - **Candidates.** identify tells us the address each peer sees us at. Such an
//!   "observed" address is only a claim of one peer; [`ObservedAddresses`] keeps
//!   each peer's latest claim (bounded), and an address goes to AutoNAT v2 for a
//!   dial-back test only once [`REPORTERS_TO_TEST`] distinct peers report it.
//!   AutoNAT's client keeps every candidate it is given for good, so
//!   [`GatedCandidates`] hides the swarm's own candidate events from it and the
//!   loop feeds it ours, at most [`CANDIDATES_TESTED_MAX`] over the node's life.
//! - **Confirmed addresses** are the ones an AutoNAT server dialed back, and the
//!   operator's `--external-address`es. They go into our NodeInfo and
//!   `endpoints.json`.
//! - **Relays.** A node with no confirmed address reserves a slot on up to
//!   [`RELAYS_MAX`] peers that serve circuit relay v2 (`--relay-server`), and lists
//!   the circuit address in its NodeInfo. A relayed connection is upgraded to a
//!   direct one by DCUtR hole punching; once a direct connection to a peer exists,
//!   the loop closes the relayed ones, so requests (round and task traffic) take
//!   the direct path. Messages are counted by the path they took.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::ListenerId;
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, autonat, dcutr, identify, relay};

use crate::event_loop::EventLoop;

/// Peers whose observation of our address we remember at most.
pub const OBSERVED_REPORTERS_MAX: usize = 256;
/// Distinct peers that must report an address before AutoNAT tests it.
pub const REPORTERS_TO_TEST: usize = 2;
/// Candidates handed to AutoNAT over the node's life (it never forgets one).
pub const CANDIDATES_TESTED_MAX: usize = 64;
/// Relays a node reserves a slot on at most.
pub const RELAYS_MAX: usize = 2;
/// Relayed connections remembered (for the path of each message) at most; the
/// swarm's connection limit is lower, so this never binds in practice.
const RELAYED_CONNECTIONS_MAX: usize = 1_024;
/// The circuit relay v2 hop protocol, as identify lists it.
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// Whether an address goes through a relay.
pub fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether an address's IP is routable on the internet as far as we can tell: not
/// private, loopback, link-local, unspecified, shared (CGNAT, 100.64/10) or a
/// unique-local IPv6. (Documentation ranges count as public: the NAT test's
/// "internet" is 198.51.100.0/24.)
pub fn is_public(address: &Multiaddr) -> bool {
    match address.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let cgnat = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || cgnat)
        }
        Some(Protocol::Ip6(ip)) => {
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

/// Observed addresses: each reporter's latest one counts, so one peer (however
/// often it pushes identify, whatever it claims) is one vote for one address.
/// Bounded: the oldest reporter is forgotten first.
#[derive(Debug, Default)]
pub struct ObservedAddresses {
    by_reporter: HashMap<PeerId, Multiaddr>,
    /// Reporters in order of their latest report, for eviction.
    order: VecDeque<PeerId>,
    /// Addresses handed to AutoNAT (never twice), at most [`CANDIDATES_TESTED_MAX`].
    tested: HashSet<Multiaddr>,
}

impl ObservedAddresses {
    /// Records that `reporter` sees us at `address`. Returns the address when it
    /// just became worth testing (enough reporters, not tested before, budget left).
    pub fn report(&mut self, reporter: PeerId, address: Multiaddr) -> Option<Multiaddr> {
        if is_relayed(&address) {
            return None;
        }
        self.order.retain(|peer| *peer != reporter);
        if self.order.len() >= OBSERVED_REPORTERS_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_reporter.remove(&oldest);
        }
        self.order.push_back(reporter);
        self.by_reporter.insert(reporter, address.clone());
        let votes = self.by_reporter.values().filter(|a| **a == address).count();
        if votes < REPORTERS_TO_TEST
            || self.tested.contains(&address)
            || self.tested.len() >= CANDIDATES_TESTED_MAX
        {
            return None;
        }
        self.tested.insert(address.clone());
        Some(address)
    }

    pub fn len(&self) -> usize {
        self.by_reporter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_reporter.is_empty()
    }
}

/// A behaviour that does not see the swarm's external-address candidates: they
/// come from [`GatedCandidates::offer`] only. Everything else is passed through.
pub struct GatedCandidates<B> {
    pub(crate) inner: B,
}

impl<B: NetworkBehaviour> GatedCandidates<B> {
    pub fn new(inner: B) -> Self {
        GatedCandidates { inner }
    }

    /// Hands one candidate to the inner behaviour.
    pub fn offer(&mut self, address: &Multiaddr) {
        self.inner
            .on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr: address },
            ));
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for GatedCandidates<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if !matches!(event, FromSwarm::NewExternalAddrCandidate(_)) {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// The node's addresses as others may dial them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Bound listeners (may be private or loopback).
    pub listen: Vec<Multiaddr>,
    /// Confirmed reachable: dialed back by an AutoNAT server, or given by the
    /// operator (`--external-address`).
    pub confirmed: Vec<Multiaddr>,
    /// Circuit addresses reserved on relays.
    pub relayed: Vec<Multiaddr>,
}

/// The loop's reachability state.
#[derive(Debug, Default)]
pub(crate) struct ReachState {
    pub(crate) observed: ObservedAddresses,
    /// Relays we asked for a reservation (at most [`RELAYS_MAX`]), by the listener
    /// of their circuit: a closed listener (reservation refused, relay gone) frees
    /// the slot, and the next identify of a relay reserves again.
    pub(crate) relays: HashMap<ListenerId, PeerId>,
    /// Bootstrap peers' ids: when any is a relay, only those are used as relays
    /// (a stranger announcing the hop protocol cannot take our relay slots first).
    pub(crate) trusted_relays: HashSet<PeerId>,
    /// The operator gave `--external-address`: the node is reachable and reserves
    /// no relay slot. (An AutoNAT confirmation does not stop reservations: a
    /// hostile AutoNAT server can fake one, and the relay is the fallback.)
    pub(crate) operator_reachable: bool,
    /// Open relayed connections, and when each was established (`now_ms`).
    pub(crate) relayed_connections: HashMap<ConnectionId, (PeerId, u64)>,
}

impl EventLoop {
    /// The addresses we put in our NodeInfo: listeners (circuits included) and
    /// confirmed external addresses.
    pub(crate) fn advertised_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self.swarm.listeners().map(ToString::to_string).collect();
        for address in self.swarm.external_addresses() {
            let text = address.to_string();
            if !addresses.contains(&text) {
                addresses.push(text);
            }
        }
        addresses
    }

    pub(crate) fn reachability(&self) -> Reachability {
        let (relayed, listen): (Vec<Multiaddr>, Vec<Multiaddr>) =
            self.swarm.listeners().cloned().partition(is_relayed);
        Reachability {
            listen,
            // The relay client confirms its circuit addresses as external ones too:
            // they are listed as relayed, not as reachable.
            confirmed: self
                .swarm
                .external_addresses()
                .filter(|address| !is_relayed(address))
                .cloned()
                .collect(),
            relayed,
        }
    }

    /// identify: the address the peer sees us at (a candidate), and whether it
    /// serves as a relay we should reserve a slot on.
    pub(crate) fn on_identified(&mut self, peer: PeerId, info: &identify::Info, now_ms: u64) {
        let observed = info.observed_addr.clone();
        if !is_public(&observed) {
            // A private or loopback address is reachable only where its network is,
            // and the peers there know it from our listen addresses already.
        } else if let Some(candidate) = self.reach.observed.report(peer, observed) {
            tracing::info!(%candidate, "testing an observed address with AutoNAT");
            self.swarm.behaviour_mut().autonat.offer(&candidate);
        }
        let serves_relay = info
            .protocols
            .iter()
            .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL);
        if serves_relay {
            self.maybe_reserve(peer, now_ms);
        }
    }

    /// Reserves a slot on a relay we know the address of, unless the operator
    /// says we are reachable, we have enough relays, or the relay is a stranger
    /// while some bootstrap peer serves as a relay.
    fn maybe_reserve(&mut self, relay_peer: PeerId, _now_ms: u64) {
        let stranger = !self.reach.trusted_relays.is_empty()
            && !self.reach.trusted_relays.contains(&relay_peer);
        if self.reach.operator_reachable
            || stranger
            || self.reach.relays.len() >= RELAYS_MAX
            || self.reach.relays.values().any(|peer| *peer == relay_peer)
        {
            return;
        }
        let Some(address) = self
            .peers
            .addresses(&relay_peer)
            .into_iter()
            .find(|a| !is_relayed(a))
        else {
            return;
        };
        let circuit = address
            .with_p2p(relay_peer)
            .unwrap_or_else(|address| address)
            .with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                self.reach.relays.insert(listener, relay_peer);
                tracing::info!(%circuit, "reserving a slot on a relay");
            }
            Err(error) => tracing::warn!(%circuit, %error, "cannot reserve on a relay"),
        }
    }

    pub(crate) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    self.metrics.relay_reservations.inc();
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                    // Peers should hear of the circuit address soon.
                    let now_ms = self.now_ms();
                    self.announce.newcomer(now_ms);
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "outbound circuit");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(source = %src_peer_id, "inbound circuit");
            }
        }
    }

    /// A hole punch ended: on success the direct connection is there, and the
    /// relayed ones to that peer are closed (so rounds take the direct path).
    pub(crate) fn on_dcutr_event(&mut self, event: dcutr::Event, now_ms: u64) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(connection) => {
                let relayed_since = self
                    .reach
                    .relayed_connections
                    .values()
                    .filter(|(p, _)| *p == peer)
                    .map(|(_, since)| *since)
                    .min();
                if let Some(since) = relayed_since {
                    let elapsed_ms = now_ms.saturating_sub(since);
                    let elapsed_s = elapsed_ms as f64 / 1_000.0;
                    self.metrics.hole_punch_seconds.observe(elapsed_s);
                }
                self.metrics.hole_punches_succeeded.inc();
                tracing::info!(%peer, ?connection, "hole punched: direct connection");
                self.close_relayed(peer);
            }
            Err(error) => {
                self.metrics.hole_punches_failed.inc();
                tracing::info!(%peer, %error, "hole punch failed; staying relayed");
            }
        }
    }

    pub(crate) fn on_autonat_event(&mut self, event: autonat::v2::client::Event) {
        match event.result {
            Ok(()) => {
                tracing::info!(address = %event.tested_addr, server = %event.server, "address confirmed reachable");
                let now_ms = self.now_ms();
                self.announce.newcomer(now_ms);
            }
            Err(error) => {
                tracing::info!(address = %event.tested_addr, server = %event.server, %error, "address not reachable");
            }
        }
    }

    /// Tracks a new connection's path (`connections`: the peer's established
    /// connections, this one included); a direct one makes the relayed ones to
    /// the same peer redundant, whichever came first.
    pub(crate) fn track_path(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &libp2p::core::ConnectedPoint,
        connections: u32,
        now_ms: u64,
    ) {
        if endpoint.is_relayed() {
            if self.reach.relayed_connections.len() < RELAYED_CONNECTIONS_MAX {
                self.reach
                    .relayed_connections
                    .insert(connection, (peer, now_ms));
                self.update_relayed_gauge();
            }
            let relayed = self.relayed_count(peer);
            if connections as usize > relayed {
                // Already directly connected: this one is not needed.
                self.close_relayed(peer);
            }
        } else if self
            .reach
            .relayed_connections
            .values()
            .any(|(p, _)| *p == peer)
        {
            let address = endpoint.get_remote_address();
            tracing::info!(%peer, %address, "direct connection next to a relayed one");
            self.close_relayed(peer);
        }
    }

    /// A listener closed: when it was a relay's circuit, that relay slot is free.
    pub(crate) fn on_listener_closed(&mut self, listener: ListenerId) {
        if let Some(relay) = self.reach.relays.remove(&listener) {
            tracing::info!(%relay, "relay reservation ended");
        }
    }

    pub(crate) fn forget_path(&mut self, connection: ConnectionId) {
        self.reach.relayed_connections.remove(&connection);
        self.update_relayed_gauge();
    }

    fn relayed_count(&self, peer: PeerId) -> usize {
        self.reach
            .relayed_connections
            .values()
            .filter(|(p, _)| *p == peer)
            .count()
    }

    fn close_relayed(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .reach
            .relayed_connections
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in relayed {
            self.swarm.close_connection(id);
        }
    }

    /// Publishes the number of open relayed connections.
    fn update_relayed_gauge(&mut self) {
        self.metrics
            .relayed_connections
            .set(self.reach.relayed_connections.len() as i64);
    }

    /// Counts one message by the path it took.
    pub(crate) fn count_path(&mut self, connection: ConnectionId) {
        if self.reach.relayed_connections.contains_key(&connection) {
            self.metrics.messages_relayed.inc();
        } else {
            self.metrics.messages_direct.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> Multiaddr {
        format!("/ip4/198.51.100.7/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn an_address_is_tested_once_two_peers_report_it() {
        let mut observed = ObservedAddresses::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(observed.report(a, address(1)), None);
        // The same peer again is still one reporter.
        assert_eq!(observed.report(a, address(1)), None);
        assert_eq!(observed.report(b, address(1)), Some(address(1)));
        // Never twice.
        assert_eq!(observed.report(PeerId::random(), address(1)), None);
        let circuit: Multiaddr = "/ip4/198.51.100.7/tcp/1/p2p-circuit".parse().unwrap();
        assert_eq!(observed.report(a, circuit.clone()), None);
        assert_eq!(observed.report(b, circuit), None);
    }

    #[test]
    fn only_public_addresses_are_candidates() {
        for (text, public) in [
            ("/ip4/198.51.100.7/tcp/1", true),
            ("/ip4/8.8.8.8/udp/1/quic-v1", true),
            ("/ip4/10.1.0.2/tcp/1", false),
            ("/ip4/192.168.1.2/tcp/1", false),
            ("/ip4/127.0.0.1/tcp/1", false),
            ("/ip4/100.64.3.2/tcp/1", false),
            ("/ip6/::1/tcp/1", false),
            ("/ip6/fd00::1/tcp/1", false),
            ("/ip6/2001:db8::1/tcp/1", true),
        ] {
            let address: Multiaddr = text.parse().unwrap();
            assert_eq!(is_public(&address), public, "{text}");
        }
    }

    #[test]
    fn a_liar_has_one_vote_and_the_table_stays_bounded() {
        let mut observed = ObservedAddresses::default();
        let liar = PeerId::random();
        for port in 0..10_000u16 {
            assert_eq!(observed.report(liar, address(port)), None);
        }
        assert_eq!(observed.len(), 1);
        // An address two honest peers report gets tested whatever the liar says.
        let (a, b) = (PeerId::random(), PeerId::random());
        observed.report(a, address(60_000));
        observed.report(liar, address(1));
        assert_eq!(observed.report(b, address(60_000)), Some(address(60_000)));
        // Many reporters: the table keeps the newest ones only.
        for _ in 0..1_000 {
            observed.report(PeerId::random(), address(2));
        }
        assert_eq!(observed.len(), OBSERVED_REPORTERS_MAX);
        // Sybils can use up the test budget, never more.
        let mut tested = 2;
        for port in 3..1_000u16 {
            observed.report(a, address(port));
            if observed.report(b, address(port)).is_some() {
                tested += 1;
            }
        }
        assert_eq!(tested, CANDIDATES_TESTED_MAX);
    }
}
