//! Counters the network keeps; the node registers them in its Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Shared counters (cloning shares the values).
#[derive(Debug, Clone, Default)]
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
    }
}
