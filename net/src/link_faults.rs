//! Injected link faults: a drop probability and an added delay on this node's
//! outbound requests, and peer blocks (one side of a partition).
//!
//! The kernel the testnet runs on has no netem, so faults act inside the node. Drop
//! and delay act in the [`NetHandle`](crate::NetHandle), before a request reaches
//! the event loop; blocks act in the swarm's `allow_block_list` behaviour, which
//! closes open connections and refuses new ones.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::allow_block_list::{self, BlockedPeers};

use crate::network::NetError;

/// Drop probability and delay, shared by every clone of a [`NetHandle`](crate::NetHandle);
/// all zero by default. Atomics, so a healthy plan costs one load per request.
#[derive(Debug, Default)]
pub(crate) struct LinkFaults {
    /// Drop probability in parts per million.
    drop_ppm: AtomicU64,
    delay_ms: AtomicU64,
    seed: AtomicU64,
    /// Requests seen, the counter behind each drop decision.
    sequence: AtomicU64,
}

impl LinkFaults {
    /// Replaces the plan: `drop_rate` is clamped to [0, 1] (NaN counts as 0).
    pub(crate) fn set(&self, drop_rate: f64, delay_ms: u64, seed: u64) {
        let ppm = if drop_rate.is_nan() {
            0
        } else {
            (drop_rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
        };
        self.drop_ppm.store(ppm, Ordering::Relaxed);
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.seed.store(seed, Ordering::Relaxed);
    }

    /// Applies the plan to one outbound request to `peer`: waits out the delay,
    /// then fails the request if it is to be dropped.
    pub(crate) async fn before_request(&self, peer: PeerId) -> Result<(), NetError> {
        let delay_ms = self.delay_ms.load(Ordering::Relaxed);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if self.drop_next() {
            return Err(NetError::Request {
                peer,
                reason: "dropped by fault injection".into(),
            });
        }
        Ok(())
    }

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

/// Blocks exactly `peers`: everyone blocked before and not in `peers` is unblocked.
pub(crate) fn set_blocked(
    blocked: &mut allow_block_list::Behaviour<BlockedPeers>,
    peers: HashSet<PeerId>,
) {
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
