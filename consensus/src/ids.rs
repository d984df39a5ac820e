//! Identifiers that travel everywhere: [`TaskId`] (the SHA-256 of a canonical task) and
//! [`PublicKey`] (a member's ed25519 key). Both are 32-byte newtypes that print and parse
//! as lowercase hex, so logs, JSON and the command line agree on one spelling.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ed25519_dalek::VerifyingKey;

/// Why bytes or text are not a valid identifier or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 32 bytes.
    #[error("expected 32 bytes, got {length_bytes}")]
    Length { length_bytes: usize },
    /// Not hex.
    #[error("invalid hex: {0}")]
    Hex(String),
    /// 32 bytes that are not a point on the curve.
    #[error("not a valid ed25519 public key")]
    InvalidKey,
    /// A key of small order, for which signatures prove nothing.
    #[error("weak ed25519 public key")]
    WeakKey,
    /// A point encoded with `y >= p`: libsodium refuses it, so Polity does too (a key
    /// has exactly one accepted spelling, and outside verifiers agree with ours).
    #[error("non-canonical ed25519 public key encoding")]
    NonCanonicalKey,
}

fn parse_32(text: &str) -> Result<[u8; 32], IdError> {
    let bytes = hex::decode(text).map_err(|error| IdError::Hex(error.to_string()))?;
    bytes_32(&bytes)
}

fn bytes_32(bytes: &[u8]) -> Result<[u8; 32], IdError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| IdError::Length {
        length_bytes: bytes.len(),
    })
}

/// SHA-256 of `"polity/v1/task\0" || TaskSpec bytes` (see [`crate::task_id`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub [u8; 32]);

impl TaskId {
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From a 32-byte slice, e.g. `Slot::task_id`.
    pub fn from_slice(bytes: &[u8]) -> Result<TaskId, IdError> {
        bytes_32(bytes).map(TaskId)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(text: &str) -> Result<TaskId, IdError> {
        parse_32(text).map(TaskId)
    }
}

/// A member's ed25519 public key, as the 32 bytes that go on the wire.
///
/// Holding a `PublicKey` does not mean the bytes are a usable key: call
/// [`PublicKey::to_verifying_key`], which also rejects weak keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key of a verifying key.
    pub fn from_verifying_key(key: &VerifyingKey) -> PublicKey {
        PublicKey(key.to_bytes())
    }

    /// From a 32-byte slice, e.g. `SignedStatement::signer`. Does not check the curve.
    pub fn from_slice(bytes: &[u8]) -> Result<PublicKey, IdError> {
        bytes_32(bytes).map(PublicKey)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A verifying key, if the bytes are the canonical encoding of a valid point that is
    /// not of small order: the key half of Polity's signature rule (see
    /// [`crate::statement::verify_signature`]).
    ///
    /// Decompressing a point costs about as much as a third of a signature check, and
    /// the same few member keys sign everything a node sees, so results are memoized
    /// in a process-wide table of at most [`KEY_CACHE_ENTRIES_MAX`] keys (emptied when
    /// full). The answer is a pure function of the bytes, so the cache changes nothing
    /// but the time.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, IdError> {
        static CACHE: OnceLock<Mutex<KeyCache>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(known) = cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(&self.0).cloned())
        {
            return known;
        }
        let result = decompress(&self.0);
        if let Ok(mut cache) = cache.lock() {
            if cache.len() >= KEY_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(self.0, result.clone());
        }
        result
    }
}

/// Decompressed keys (or why the bytes are not a usable key), by key bytes.
type KeyCache = HashMap<[u8; 32], Result<VerifyingKey, IdError>>;

/// Keys memoized by [`PublicKey::to_verifying_key`] at most.
pub const KEY_CACHE_ENTRIES_MAX: usize = 8_192;

/// The key checks libsodium's `crypto_sign_verify_detached` makes, in its order: `y < p`
/// (ignoring the sign bit), not of small order, a point on the curve. dalek's
/// `VerifyingKey::from_bytes` reduces `y` modulo `p` and so accepts the non-canonical
/// encodings; they are refused here.
fn decompress(bytes: &[u8; 32]) -> Result<VerifyingKey, IdError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdError::InvalidKey)?;
    if key.is_weak() {
        return Err(IdError::WeakKey);
    }
    if !is_canonical_y(bytes) {
        return Err(IdError::NonCanonicalKey);
    }
    Ok(key)
}

/// Whether the 255-bit `y` of a compressed Edwards point is below
/// `p = 2^255 - 19`, as libsodium's `ge25519_is_canonical` checks. The encodings at or
/// above `p` are `y = p + i` for `i` in `0..19`: bytes `0xed + i, 0xff * 30, 0x7f`.
/// (The one other non-unique spelling, `x = 0` with the sign bit set, only exists for
/// `y = 1` and `y = -1`, both of small order, so the weak-key check refuses it.)
fn is_canonical_y(bytes: &[u8; 32]) -> bool {
    let top_is_max = bytes[31] & 0x7f == 0x7f;
    let middle_is_max = bytes[1..31].iter().all(|&byte| byte == 0xff);
    !(top_is_max && middle_is_max && bytes[0] >= 0xed)
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdError;
    fn from_str(text: &str) -> Result<PublicKey, IdError> {
        parse_32(text).map(PublicKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<[u8; 32], IdError>) {
        assert_eq!(text.parse::<TaskId>().map(|id| id.0), expected.clone());
        assert_eq!(text.parse::<PublicKey>().map(|key| key.0), expected.clone());
        if let Ok(bytes) = expected {
            assert_eq!(TaskId(bytes).to_string(), text.to_lowercase());
            assert_eq!(PublicKey(bytes).to_string(), text.to_lowercase());
        }
    }

    #[test]
    fn hex_round_trip_and_errors() {
        check(&"ab".repeat(32), Ok([0xab; 32]));
        check(&"AB".repeat(32), Ok([0xab; 32]));
        check(&"ab".repeat(31), Err(IdError::Length { length_bytes: 31 }));
        assert!(matches!("zz".parse::<TaskId>(), Err(IdError::Hex(_))));
    }

    #[test]
    fn weak_key_is_rejected() {
        // The identity point (y = 1) is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey(identity).to_verifying_key(),
            Err(IdError::WeakKey)
        );
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(
            PublicKey::from_verifying_key(&key)
                .to_verifying_key()
                .is_ok()
        );
    }

    /// `y = p + i` for small `i`: dalek decompresses some of these to points of large
    /// order, libsodium refuses every one; so must we.
    #[test]
    fn non_canonical_keys_are_rejected() {
        let mut refused_large_order = 0;
        for i in 0u8..19 {
            for sign in [0, 0x80] {
                let mut bytes = [0xff; 32];
                bytes[0] = 0xed + i;
                bytes[31] = 0x7f | sign;
                assert!(!is_canonical_y(&bytes));
                let result = PublicKey(bytes).to_verifying_key();
                assert!(result.is_err(), "y = p + {i} accepted");
                let Ok(dalek) = VerifyingKey::from_bytes(&bytes) else {
                    continue;
                };
                if !dalek.is_weak() {
                    assert_eq!(result, Err(IdError::NonCanonicalKey));
                    refused_large_order += 1;
                }
            }
        }
        // The check is not vacuous: some of these do decode to usable points.
        assert!(refused_large_order > 0);
        // `p - 1` (that is, y = -1) is canonical; the largest canonical `y`.
        let mut largest = [0xff; 32];
        largest[0] = 0xec;
        largest[31] = 0x7f;
        assert!(is_canonical_y(&largest));
    }
}
