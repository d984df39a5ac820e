//! Trust: a node's local score in [0,1] for each peer, moved by evidence.
//!
//! Pure rules; the node persists [`TrustScore`]s and applies [`TrustScore::apply`]
//! as outcomes arrive. Time comes in as `now_ms`.
//!
//! | event | rule |
//! | --- | --- |
//! | agreement with the decided report | `t += 0.05 · (1 − t)` |
//! | disagreement with the decided report | `t −= 0.20 · t` |
//! | timeout (no answer in time) | `t −= 0.10 · t` |
//! | invalid signature or forged info | `t −= 0.50 · t` |
//! | verified equivocation evidence | `t = 0`, for good |
//!
//! Between events a score decays toward the prior ([`TRUST_PRIOR`]) with a half-life
//! of [`DECAY_HALF_LIFE_MS`]: old sins and old merits both fade. Zero is absorbing:
//! a peer convicted by evidence never climbs back by decay. The prior sits above the
//! compatibility floor ([`TRUST_FLOOR`]) so that a new peer can be chosen at all.

/// Score of a peer we know nothing about.
pub const TRUST_PRIOR: f64 = 0.8;
/// Peers at or below this score are not chosen for groups (the seed's rule: > 0.7).
pub const TRUST_FLOOR: f64 = 0.7;
/// Half-life of the decay toward the prior: one hour.
pub const DECAY_HALF_LIFE_MS: u64 = 3_600_000;

const AGREEMENT_GAIN: f64 = 0.05;
const DISAGREEMENT_LOSS: f64 = 0.20;
const TIMEOUT_LOSS: f64 = 0.10;
const INVALID_SIGNATURE_LOSS: f64 = 0.50;

/// What a peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustEvent {
    Agreement,
    Disagreement,
    Timeout,
    InvalidSignature,
    Equivocation,
}

/// A score and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustScore {
    pub score: f64,
    pub updated_at_ms: u64,
}

impl TrustScore {
    pub fn new(now_ms: u64) -> TrustScore {
        TrustScore {
            score: TRUST_PRIOR,
            updated_at_ms: now_ms,
        }
    }

    /// The score at `now_ms`, after decay toward the prior.
    pub fn at(&self, now_ms: u64) -> f64 {
        if self.score == 0.0 {
            return 0.0;
        }
        let elapsed_ms = now_ms.saturating_sub(self.updated_at_ms) as f64;
        let remaining = 0.5f64.powf(elapsed_ms / DECAY_HALF_LIFE_MS as f64);
        let score = TRUST_PRIOR + (self.score - TRUST_PRIOR) * remaining;
        debug_assert!((0.0..=1.0).contains(&score));
        score
    }

    /// The score after `event` at `now_ms`.
    pub fn apply(&self, event: TrustEvent, now_ms: u64) -> TrustScore {
        let current = self.at(now_ms);
        let score = match event {
            TrustEvent::Agreement => current + AGREEMENT_GAIN * (1.0 - current),
            TrustEvent::Disagreement => current - DISAGREEMENT_LOSS * current,
            TrustEvent::Timeout => current - TIMEOUT_LOSS * current,
            TrustEvent::InvalidSignature => current - INVALID_SIGNATURE_LOSS * current,
            TrustEvent::Equivocation => 0.0,
        };
        let score = if current == 0.0 {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
        TrustScore {
            score,
            updated_at_ms: now_ms.max(self.updated_at_ms),
        }
    }

    /// Encoding for storage: score and time, 16 bytes big-endian.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.score.to_be_bytes());
        bytes[8..].copy_from_slice(&self.updated_at_ms.to_be_bytes());
        bytes
    }

    /// Decodes [`TrustScore::to_bytes`]; `None` for anything that is not a valid score.
    pub fn from_bytes(bytes: &[u8]) -> Option<TrustScore> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        let score = f64::from_be_bytes(bytes[..8].try_into().ok()?);
        let updated_at_ms = u64::from_be_bytes(bytes[8..].try_into().ok()?);
        (0.0..=1.0).contains(&score).then_some(TrustScore {
            score,
            updated_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(events: &[TrustEvent]) -> f64 {
        events
            .iter()
            .fold(TrustScore::new(0), |score, event| score.apply(*event, 0))
            .score
    }

    #[test]
    fn agreement_raises_and_disagreement_lowers() {
        assert!(check(&[TrustEvent::Agreement]) > TRUST_PRIOR);
        assert!(check(&[TrustEvent::Disagreement]) < TRUST_PRIOR);
        assert!(check(&[TrustEvent::Timeout]) < TRUST_PRIOR);
        assert!(check(&[TrustEvent::Disagreement]) < check(&[TrustEvent::Timeout]));
        assert!(check(&[TrustEvent::Agreement; 1000]) <= 1.0);
    }

    #[test]
    fn one_disagreement_drops_a_new_peer_below_the_floor() {
        assert!(check(&[TrustEvent::Disagreement]) <= TRUST_FLOOR);
        assert!(
            check(&[TrustEvent::Timeout]) > TRUST_FLOOR,
            "one timeout is forgiven"
        );
    }

    #[test]
    fn equivocation_is_zero_for_good() {
        let convicted = TrustScore::new(0).apply(TrustEvent::Equivocation, 10);
        assert_eq!(convicted.score, 0.0);
        assert_eq!(convicted.at(10 + 100 * DECAY_HALF_LIFE_MS), 0.0);
        assert_eq!(convicted.apply(TrustEvent::Agreement, 20).score, 0.0);
    }

    #[test]
    fn scores_decay_toward_the_prior() {
        let low = TrustScore::new(0).apply(TrustEvent::InvalidSignature, 0);
        assert!((low.score - 0.4).abs() < 1e-9);
        let half = low.at(DECAY_HALF_LIFE_MS);
        assert!((half - 0.6).abs() < 1e-9, "{half}");
        assert!((low.at(50 * DECAY_HALF_LIFE_MS) - TRUST_PRIOR).abs() < 1e-9);
    }

    #[test]
    fn storage_encoding_round_trips_and_rejects_garbage() {
        let score = TrustScore {
            score: 0.42,
            updated_at_ms: 77,
        };
        assert_eq!(TrustScore::from_bytes(&score.to_bytes()), Some(score));
        assert_eq!(TrustScore::from_bytes(&[1, 2, 3]), None);
        let mut bad = score.to_bytes();
        bad[..8].copy_from_slice(&7.5f64.to_be_bytes());
        assert_eq!(TrustScore::from_bytes(&bad), None);
    }
}
