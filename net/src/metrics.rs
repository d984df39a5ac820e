//! Counters the network keeps; the node registers them in its Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of the relayed-to-direct time, in seconds.
const HOLE_PUNCH_SECONDS_BUCKETS: [f64; 10] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Shared counters (cloning shares the values).
#[derive(Debug, Clone)]
pub struct NetMetrics {
    /// Frames or gossip messages that broke the wire rules (size, encoding).
    pub malformed_messages: Counter,
    /// NodeInfo statements that failed verification (signature, key mismatch).
    pub infos_rejected: Counter,
    /// Requests to peers that failed (timeout, refused, closed, malformed).
    pub requests_failed: Counter,
    /// Events the node was too busy to take.
    pub events_dropped: Counter,
    pub connected_peers: Gauge,
    /// Peers banned for breaking the protocol again and again.
    pub peers_banned: Counter,
    /// Node-protocol messages (requests received, responses received) by the path
    /// of the connection they came on.
    pub messages_direct: Counter,
    pub messages_relayed: Counter,
    /// DCUtR hole punches that gave a direct connection, and that failed.
    pub hole_punches_succeeded: Counter,
    pub hole_punches_failed: Counter,
    /// From a peer's first relayed connection to the direct one a hole punch gave.
    pub hole_punch_seconds: Histogram,
    /// Reservations relays accepted for us (renewals not counted).
    pub relay_reservations: Counter,
    /// Relayed connections open now.
    pub relayed_connections: Gauge,
}

impl Default for NetMetrics {
    fn default() -> Self {
        NetMetrics {
            malformed_messages: Counter::default(),
            infos_rejected: Counter::default(),
            requests_failed: Counter::default(),
            events_dropped: Counter::default(),
            connected_peers: Gauge::default(),
            peers_banned: Counter::default(),
            messages_direct: Counter::default(),
            messages_relayed: Counter::default(),
            hole_punches_succeeded: Counter::default(),
            hole_punches_failed: Counter::default(),
            hole_punch_seconds: Histogram::new(HOLE_PUNCH_SECONDS_BUCKETS),
            relay_reservations: Counter::default(),
            relayed_connections: Gauge::default(),
        }
    }
}

impl NetMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "polity_p2p_malformed_messages",
            "Peer frames or gossip messages dropped for breaking the wire rules",
            self.malformed_messages.clone(),
        );
        registry.register(
            "polity_p2p_node_infos_rejected",
            "Signed NodeInfo statements that failed verification",
            self.infos_rejected.clone(),
        );
        registry.register(
            "polity_p2p_requests_failed",
            "Requests between peers that failed",
            self.requests_failed.clone(),
        );
        registry.register(
            "polity_p2p_events_dropped",
            "Network events dropped because the node was behind",
            self.events_dropped.clone(),
        );
        registry.register(
            "polity_p2p_connected_peers",
            "Peers with an open connection",
            self.connected_peers.clone(),
        );
        registry.register(
            "polity_p2p_peers_banned",
            "Peers disconnected and refused for a while after repeated protocol violations",
            self.peers_banned.clone(),
        );
        self.register_paths(registry);
    }

    /// Relays, hole punching, and which path messages took.
    fn register_paths(&self, registry: &mut Registry) {
        registry.register(
            "polity_p2p_messages_direct",
            "Node-protocol messages received over direct connections",
            self.messages_direct.clone(),
        );
        registry.register(
            "polity_p2p_messages_relayed",
            "Node-protocol messages received over relayed (circuit) connections",
            self.messages_relayed.clone(),
        );
        registry.register(
            "polity_p2p_hole_punches_succeeded",
            "DCUtR hole punches that upgraded a relayed connection to a direct one",
            self.hole_punches_succeeded.clone(),
        );
        registry.register(
            "polity_p2p_hole_punches_failed",
            "DCUtR hole punches that failed (the peers stay relayed)",
            self.hole_punches_failed.clone(),
        );
        registry.register(
            "polity_p2p_hole_punch_seconds",
            "Seconds from a peer's first relayed connection to a punched direct one",
            self.hole_punch_seconds.clone(),
        );
        registry.register(
            "polity_p2p_relay_reservations",
            "Slots relays accepted to reserve for this node",
            self.relay_reservations.clone(),
        );
        registry.register(
            "polity_p2p_relayed_connections",
            "Connections open now that go through a relay",
            self.relayed_connections.clone(),
        );
    }
}
