//! # polity-net
//!
//! Polity's peer-to-peer layer: a libp2p swarm over TCP and QUIC (Noise, Yamux) with
//! identify, ping, Kademlia, mDNS, gossipsub, circuit relay v2, DCUtR, AutoNAT v2
//! and Polity's own request-response protocols; signed NodeInfo exchange; discovery by capability; per-peer circuit
//! breakers.
//!
//! This crate must never decide anything: it moves bytes between nodes, bounded in
//! size and count, verifies what peers say about themselves, and reports what it
//! saw. Only its event loop owns the swarm; the node holds a [`NetHandle`].
//!
//! # Layout
//!
//! - [`network`]: the vocabulary: [`NetConfig`], [`NetEvent`], [`NetError`], protocol names.
//! - `handle`: [`NetHandle`], the client side; its commands carry `oneshot` replies.
//! - `event_loop`: the only owner of the swarm; swarm events and commands.
//! - `behaviour`: transports and behaviours, their limits, and [`start`].
//! - `info`: the signed NodeInfo: asked for on connect, verified, announced in gossip.
//! - `link_faults`: injected drop and delay on outbound requests, and peer blocks.
//! - [`codec`]: length-prefixed frames with a size limit.
//! - [`peers`]: the peer table (verified info, connections, RTT).
//! - [`announce`]: when the node gossips its NodeInfo again (backs off while quiet).
//! - [`breaker`]: the per-peer circuit breaker.
//! - [`reach`]: reachability: observed addresses confirmed by AutoNAT v2, relay
//!   reservations, DCUtR hole punching, direct-versus-relayed paths.
//! - [`metrics`]: counters of dropped and rejected input.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod announce;
mod behaviour;
pub mod breaker;
pub mod codec;
mod event_loop;
mod handle;
mod info;
mod link_faults;
pub mod metrics;
pub mod network;
pub mod peers;
pub mod reach;

pub use libp2p::Multiaddr;
pub use metrics::NetMetrics;
pub use network::{
    AppProtocol, LocalInfo, NetConfig, NetError, NetEvent, NetHandle, PEERS_MAX_DEFAULT,
    ReachConfig, Reachability, RelayLimits, Responder, StartError, start, start_with,
};
pub use peers::PeerView;

pub use libp2p::PeerId;

/// The bytes are not an ed25519 public key, or the PeerId does not embed one.
#[derive(Debug, thiserror::Error)]
#[error("not an ed25519 public key")]
pub struct NotAnEd25519Key;

/// Multihash code of the identity hash: ed25519 PeerIds embed the key itself.
const MULTIHASH_IDENTITY: u64 = 0x00;

/// The protobuf encoding libp2p gives an ed25519 public key: field 1 (key type) = 1
/// (Ed25519), field 2 (data) = the 32 key bytes.
const ED25519_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// The libp2p PeerId of an ed25519 public key (32 bytes): the identity multihash of
/// the protobuf-encoded public key, as every libp2p implementation derives it.
///
/// Pure byte work (no point decompression): this runs for every message a node
/// sends, and a PeerId of bytes that are not a curve point can never complete a
/// Noise handshake anyway.
pub fn peer_id_of(public_key: &[u8; 32]) -> Result<PeerId, NotAnEd25519Key> {
    let mut encoded = [0u8; 36];
    encoded[..4].copy_from_slice(&ED25519_PROTOBUF_PREFIX);
    encoded[4..].copy_from_slice(public_key);
    let multihash = libp2p::multihash::Multihash::<64>::wrap(MULTIHASH_IDENTITY, &encoded)
        .map_err(|_| NotAnEd25519Key)?;
    PeerId::from_multihash(multihash).map_err(|_| NotAnEd25519Key)
}

/// The ed25519 public key a PeerId embeds (the inverse of [`peer_id_of`]). Reads the
/// bytes without decompressing the point: a connected peer's id was proven by its
/// Noise handshake.
pub fn public_key_of(peer_id: &PeerId) -> Result<[u8; 32], NotAnEd25519Key> {
    let multihash = peer_id.as_ref();
    if multihash.code() != MULTIHASH_IDENTITY {
        return Err(NotAnEd25519Key);
    }
    let digest = multihash.digest();
    match digest.split_first_chunk::<4>() {
        Some((prefix, key)) if *prefix == ED25519_PROTOBUF_PREFIX => {
            <[u8; 32]>::try_from(key).map_err(|_| NotAnEd25519Key)
        }
        _ => Err(NotAnEd25519Key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_public_key_round_trip() {
        let keypair = libp2p::identity::ed25519::Keypair::generate();
        let public = keypair.public().to_bytes();
        let peer_id = peer_id_of(&public).unwrap();
        assert_eq!(
            peer_id,
            libp2p::identity::PublicKey::from(keypair.public()).to_peer_id()
        );
        assert_eq!(public_key_of(&peer_id).unwrap(), public);
    }

    #[test]
    fn a_random_peer_id_embeds_no_key() {
        assert!(public_key_of(&PeerId::random()).is_err());
    }
}
