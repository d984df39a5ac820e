//! # polity-net
//!
//! Polity's peer-to-peer layer: a libp2p swarm over TCP and QUIC (Noise, Yamux) with
//! identify, ping, Kademlia, mDNS, gossipsub and Polity's own request-response
//! protocols; signed NodeInfo exchange; discovery by capability; per-peer circuit
//! breakers.
//!
//! This crate must never decide anything: it moves bytes between nodes, bounded in
//! size and count, verifies what peers say about themselves, and reports what it
//! saw. Only its event loop owns the swarm; the node holds a [`NetHandle`].
//!
//! # Layout
//!
//! - [`network`]: behaviours, the event loop, [`NetHandle`], [`NetEvent`].
//! - [`codec`]: length-prefixed frames with a size limit.
//! - [`peers`]: the peer table (verified info, connections, RTT).
//! - [`breaker`]: the per-peer circuit breaker.
//! - [`metrics`]: counters of dropped and rejected input.

pub mod breaker;
pub mod codec;
pub mod metrics;
pub mod network;
pub mod peers;

pub use libp2p::Multiaddr;
pub use metrics::NetMetrics;
pub use network::{
    AppProtocol, LocalInfo, NetConfig, NetError, NetEvent, NetHandle, Responder, StartError, start,
};
pub use peers::PeerView;

pub use libp2p::PeerId;

/// The bytes are not an ed25519 public key, or the PeerId does not embed one.
#[derive(Debug, thiserror::Error)]
#[error("not an ed25519 public key")]
pub struct NotAnEd25519Key;

/// Multihash code of the identity hash: ed25519 PeerIds embed the key itself.
const MULTIHASH_IDENTITY: u64 = 0x00;

/// The libp2p PeerId of an ed25519 public key (32 bytes): the identity multihash of
/// the protobuf-encoded public key, as every libp2p implementation derives it.
pub fn peer_id_of(public_key: &[u8; 32]) -> Result<PeerId, NotAnEd25519Key> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(public_key)
        .map_err(|_| NotAnEd25519Key)?;
    Ok(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The ed25519 public key a PeerId embeds (the inverse of [`peer_id_of`]).
pub fn public_key_of(peer_id: &PeerId) -> Result<[u8; 32], NotAnEd25519Key> {
    let multihash = peer_id.as_ref();
    if multihash.code() != MULTIHASH_IDENTITY {
        return Err(NotAnEd25519Key);
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest())
        .map_err(|_| NotAnEd25519Key)?;
    let key = key.try_into_ed25519().map_err(|_| NotAnEd25519Key)?;
    Ok(key.to_bytes())
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
