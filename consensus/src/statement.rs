//! Signed statements: the only thing a Polity node ever signs or trusts.
//!
//! A statement is signed over `domain_tag(kind) || body`, where `body` is the exact
//! protobuf encoding of the statement message. Verification checks the carried bytes
//! *before* anything decodes them, so no verifier depends on re-encoding being
//! canonical, and a signature made for one kind can never be replayed as another.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use polity_proto::{SignedStatement, StatementKind};
use sha2::{Digest, Sha256};

use crate::ids::{IdError, PublicKey};

/// Largest statement body accepted or produced. A report carries its tally (one entry
/// per distinct answer), so this is [`ANSWER_BYTES_MAX`] times a generous number of
/// distinct answers.
pub const STATEMENT_BODY_BYTES_MAX: usize = 8 << 20;

/// Largest answer an observation may carry.
pub const ANSWER_BYTES_MAX: usize = 64 << 10;

const TAG_OBSERVATION: &[u8] = b"polity/v1/observation\0";
const TAG_REPORT: &[u8] = b"polity/v1/report\0";
const TAG_ATTESTATION: &[u8] = b"polity/v1/attestation\0";
const TAG_NODE_INFO: &[u8] = b"polity/v1/node-info\0";
const TAG_RAFT_COMMIT: &[u8] = b"polity/v1/raft-commit\0";

/// Why a statement is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("signer must be 32 bytes, got {length_bytes}")]
    SignerLength { length_bytes: usize },
    #[error("signature must be 64 bytes, got {length_bytes}")]
    SignatureLength { length_bytes: usize },
    #[error("body of {length_bytes} bytes exceeds {STATEMENT_BODY_BYTES_MAX}")]
    BodyTooLarge { length_bytes: usize },
    #[error("unknown or unspecified statement kind {kind}")]
    UnknownKind { kind: i32 },
    #[error("expected a {expected:?} statement, got kind {found}")]
    WrongKind { expected: StatementKind, found: i32 },
    #[error("signer key: {0}")]
    Key(#[from] IdError),
    #[error("bad signature")]
    BadSignature,
    #[error("body does not decode: {0}")]
    Decode(String),
}

/// The domain tag of a statement kind; empty for `Unspecified`, which no verifier
/// accepts.
pub fn domain_tag(kind: StatementKind) -> &'static [u8] {
    match kind {
        StatementKind::Unspecified => b"",
        StatementKind::Observation => TAG_OBSERVATION,
        StatementKind::Report => TAG_REPORT,
        StatementKind::Attestation => TAG_ATTESTATION,
        StatementKind::NodeInfo => TAG_NODE_INFO,
        StatementKind::RaftCommit => TAG_RAFT_COMMIT,
    }
}

/// The exact bytes a signature covers: `domain_tag(kind) || body`.
pub fn signed_message(kind: StatementKind, body: &[u8]) -> Vec<u8> {
    let tag = domain_tag(kind);
    let mut message = Vec::with_capacity(tag.len() + body.len());
    message.extend_from_slice(tag);
    message.extend_from_slice(body);
    message
}

/// Signatures made and checked by this process, for the signature-bound limit of a
/// decision (`polity_signatures_signed_total`, `polity_signatures_verified_total`).
/// Process-wide: one node per process in production; tests that run several nodes in
/// one process see their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureCounts {
    /// Statements signed.
    pub signed: u64,
    /// Signatures checked one at a time (a statement, a registry signature).
    pub verified_single: u64,
    /// Signatures checked as part of a set (a certificate's statements), each still
    /// under the strict rule (see [`batch_verify`]).
    pub verified_batch: u64,
    /// Signatures found good before (no curve work; see [`verify_signature`]).
    pub verified_cached: u64,
}

static SIGNED: AtomicU64 = AtomicU64::new(0);
static VERIFIED_SINGLE: AtomicU64 = AtomicU64::new(0);
static VERIFIED_BATCH: AtomicU64 = AtomicU64::new(0);
static VERIFIED_CACHED: AtomicU64 = AtomicU64::new(0);

/// The process's [`SignatureCounts`] so far.
pub fn signature_counts() -> SignatureCounts {
    SignatureCounts {
        signed: SIGNED.load(Ordering::Relaxed),
        verified_single: VERIFIED_SINGLE.load(Ordering::Relaxed),
        verified_batch: VERIFIED_BATCH.load(Ordering::Relaxed),
        verified_cached: VERIFIED_CACHED.load(Ordering::Relaxed),
    }
}

/// Signs `body` as a statement of `kind`.
pub fn sign_statement(key: &SigningKey, kind: StatementKind, body: Vec<u8>) -> SignedStatement {
    debug_assert!(kind != StatementKind::Unspecified, "statements have a kind");
    debug_assert!(body.len() <= STATEMENT_BODY_BYTES_MAX, "body within limit");
    SIGNED.fetch_add(1, Ordering::Relaxed);
    let signature = key.sign(&signed_message(kind, &body));
    SignedStatement {
        kind: kind as i32,
        body,
        signer: key.verifying_key().to_bytes().to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Encodes `message` and signs it as a statement of `kind`.
pub fn sign_message<M: prost::Message>(
    key: &SigningKey,
    kind: StatementKind,
    message: &M,
) -> SignedStatement {
    sign_statement(key, kind, message.encode_to_vec())
}

/// The kind of a statement, if it is one a verifier accepts.
pub fn statement_kind(statement: &SignedStatement) -> Result<StatementKind, StatementError> {
    match StatementKind::try_from(statement.kind) {
        Ok(StatementKind::Unspecified) | Err(_) => Err(StatementError::UnknownKind {
            kind: statement.kind,
        }),
        Ok(kind) => Ok(kind),
    }
}

/// The checks of [`check_shape`] that need no curve arithmetic: kind, body length,
/// signer and signature lengths. The signer key is not decompressed, so a caller that
/// already holds it as a checked [`VerifyingKey`] (a certificate's member list) need
/// not decompress it again; any other caller must go on to
/// [`PublicKey::to_verifying_key`].
pub(crate) fn check_lengths(
    statement: &SignedStatement,
) -> Result<(StatementKind, PublicKey, Signature), StatementError> {
    let kind = statement_kind(statement)?;
    if statement.body.len() > STATEMENT_BODY_BYTES_MAX {
        return Err(StatementError::BodyTooLarge {
            length_bytes: statement.body.len(),
        });
    }
    let signer =
        PublicKey::from_slice(&statement.signer).map_err(|_| StatementError::SignerLength {
            length_bytes: statement.signer.len(),
        })?;
    let signature = Signature::from_slice(&statement.signature).map_err(|_| {
        StatementError::SignatureLength {
            length_bytes: statement.signature.len(),
        }
    })?;
    Ok((kind, signer, signature))
}

/// Everything about a statement that can be checked without the signature math:
/// lengths, kind, and a valid, non-weak signer key.
pub(crate) fn check_shape(
    statement: &SignedStatement,
) -> Result<(StatementKind, PublicKey, VerifyingKey, Signature), StatementError> {
    let (kind, signer, signature) = check_lengths(statement)?;
    let verifying_key = signer.to_verifying_key()?;
    Ok((kind, signer, verifying_key, signature))
}

/// Polity's one signature rule, the one libsodium's `crypto_sign_verify_detached`
/// applies (RFC 8032 Ed25519 with its optional checks made mandatory), so that any
/// outside verifier built on libsodium agrees with every node bit for bit. A signature
/// `(R, S)` by key `A` over `message` is accepted if and only if:
///
/// 1. `A` is the canonical encoding (`y < p`) of a curve point not of small order
///    (checked once per key by [`PublicKey::to_verifying_key`], which made
///    `verifying_key`);
/// 2. `S < L` (canonical);
/// 3. `R` decodes to a point not of small order;
/// 4. with `k = SHA-512(R || A || message)` reduced mod `L`, the encoding of
///    `[S]B - [k]A` equals the 32 bytes of `R` (cofactorless; a byte comparison, so a
///    non-canonical `R` never matches).
///
/// dalek's `verify_strict` makes checks 2 to 4. Plain `verify` (no small-order checks)
/// and batch verification (a random linear combination of the cofactorless equations,
/// which a signature whose `R` carries a small-order component passes with probability
/// at least 1/8, or always when its coefficients can be predicted) accept signatures
/// this rule refuses, so neither is used anywhere in Polity.
pub fn verify_signature(
    verifying_key: &VerifyingKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), StatementError> {
    verify_strict(verifying_key, message, signature, &VERIFIED_SINGLE)
}

/// Checks one signature under the strict rule, or finds it among the signatures this
/// process already found good, and counts the work in `counter` (or as cached).
///
/// A member sees the same statements again and again: its own round's observations,
/// then each in the certificate it adopts, then in the parent's copy of that
/// certificate. The rule is a pure function of `(A, message, signature)`, so a good
/// verdict is remembered under `SHA-256(A || signature || message)` in a process-wide
/// table of at most [`VERIFIED_CACHE_ENTRIES_MAX`] entries (emptied when full, like the
/// key cache): only the time changes. Bad verdicts are not remembered; a peer filling
/// the table must pay a good signature (a full check here) per entry.
fn verify_strict(
    verifying_key: &VerifyingKey,
    message: &[u8],
    signature: &Signature,
    counter: &AtomicU64,
) -> Result<(), StatementError> {
    static CACHE: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashSet::new()));
    let mut hasher = Sha256::new();
    hasher.update(verifying_key.as_bytes());
    hasher.update(signature.to_bytes());
    hasher.update(message);
    let seen: [u8; 32] = hasher.finalize().into();
    if cache.lock().is_ok_and(|cache| cache.contains(&seen)) {
        VERIFIED_CACHED.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    counter.fetch_add(1, Ordering::Relaxed);
    verifying_key
        .verify_strict(message, signature)
        .map_err(|_| StatementError::BadSignature)?;
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= VERIFIED_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(seen);
    }
    Ok(())
}

/// Good signatures remembered by [`verify_signature`] and [`batch_verify`] at most.
pub const VERIFIED_CACHE_ENTRIES_MAX: usize = 65_536;

/// Verifies one statement (lengths, kind, the key checks, then [`verify_signature`])
/// and returns its signer. The body is not decoded.
pub fn verify_statement(statement: &SignedStatement) -> Result<PublicKey, StatementError> {
    let (kind, signer, verifying_key, signature) = check_shape(statement)?;
    verify_signature(
        &verifying_key,
        &signed_message(kind, &statement.body),
        &signature,
    )?;
    Ok(signer)
}

/// Verifies many statements and returns their signers, in order. Every statement is
/// shape-checked first (kind, lengths, a valid, canonical, non-weak signer key, as in
/// [`verify_statement`]); the first shape error is returned and no signature is
/// checked. A bad signature anywhere fails the whole call with
/// [`StatementError::BadSignature`], without saying which: call [`verify_statement`]
/// on each to find it. Bodies are not decoded.
///
/// This is the check [`crate::verify_chain`] makes on a certificate's statements
/// (which also requires every signer to be a member). It accepts exactly what
/// [`verify_statement`] accepts on each: see [`batch_verify`] for why there is no
/// batch-equation fast path.
pub fn verify_statements_batch(
    statements: &[SignedStatement],
) -> Result<Vec<PublicKey>, StatementError> {
    let mut signers = Vec::with_capacity(statements.len());
    let mut messages = Vec::with_capacity(statements.len());
    let mut signatures = Vec::with_capacity(statements.len());
    let mut verifying_keys = Vec::with_capacity(statements.len());
    for statement in statements {
        let (kind, signer, verifying_key, signature) = check_shape(statement)?;
        signers.push(signer);
        messages.push(signed_message(kind, &statement.body));
        signatures.push(signature);
        verifying_keys.push(verifying_key);
    }
    batch_verify(&messages, &signatures, &verifying_keys)?;
    Ok(signers)
}

/// Checks every signature of a set with [`verify_signature`], one by one, and fails
/// on the first bad one. The keys must come from [`PublicKey::to_verifying_key`].
/// Panics if the three slices differ in length (a caller's bug, not a peer's).
///
/// There is deliberately no ed25519 batch equation here. A batch accepts when
/// `sum z_i ([S_i]B - R_i - [k_i]A_i) = 0` for coefficients `z_i`; a signature forged
/// as `R_i = R + T` with `T` of small order leaves `z_i T`, which vanishes whenever
/// `z_i` is a multiple of `T`'s order: at least 1 time in 8 with random `z_i`, always
/// when they are derived from the inputs (dalek's `verify_batch`, which a forger can
/// grind), and regardless of `z` when two forged signatures' torsion cancels. Making
/// the batch safe would need every `R_i` checked for torsion (`[L]R_i = 0`, a scalar
/// multiplication per signature), which costs what the batch saves. Measured with
/// `cargo bench -p polity-consensus` (see BENCHMARKS.md).
pub fn batch_verify(
    messages: &[Vec<u8>],
    signatures: &[Signature],
    verifying_keys: &[VerifyingKey],
) -> Result<(), StatementError> {
    assert_eq!(
        messages.len(),
        signatures.len(),
        "one signature per message"
    );
    assert_eq!(messages.len(), verifying_keys.len(), "one key per message");
    messages
        .iter()
        .zip(signatures)
        .zip(verifying_keys)
        .try_for_each(|((message, signature), verifying_key)| {
            verify_strict(verifying_key, message, signature, &VERIFIED_BATCH)
        })
}

/// Verifies a statement of the expected `kind`, then decodes its body.
pub fn open<M: prost::Message + Default>(
    statement: &SignedStatement,
    kind: StatementKind,
) -> Result<(PublicKey, M), StatementError> {
    let verified = Verified::open(statement, kind)?;
    Ok((verified.signer, verified.message))
}

/// Decodes a body whose signature has already been checked.
pub(crate) fn decode_body<M: prost::Message + Default>(body: &[u8]) -> Result<M, StatementError> {
    M::decode(body).map_err(|error| StatementError::Decode(error.to_string()))
}

/// SHA-256 over `domain_tag(kind) || body || signature`: how reports name the
/// observations they aggregate.
pub fn statement_digest(statement: &SignedStatement) -> [u8; 32] {
    let kind = StatementKind::try_from(statement.kind).unwrap_or(StatementKind::Unspecified);
    let mut hasher = Sha256::new();
    hasher.update(domain_tag(kind));
    hasher.update(&statement.body);
    hasher.update(&statement.signature);
    hasher.finalize().into()
}

/// A statement whose signature checked out, with its decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<M> {
    /// Who signed it.
    pub signer: PublicKey,
    /// The decoded body.
    pub message: M,
    /// [`statement_digest`] of the statement.
    pub digest: [u8; 32],
}

impl<M: prost::Message + Default> Verified<M> {
    /// Verifies `statement` as a `kind` statement, then decodes it.
    pub fn open(statement: &SignedStatement, kind: StatementKind) -> Result<Self, StatementError> {
        if statement.kind != kind as i32 {
            return Err(StatementError::WrongKind {
                expected: kind,
                found: statement.kind,
            });
        }
        let signer = verify_statement(statement)?;
        let message = decode_body(&statement.body)?;
        Ok(Verified {
            signer,
            message,
            digest: statement_digest(statement),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polity_proto::{Attestation, Slot};
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn attestation() -> Attestation {
        Attestation {
            slot: Some(Slot {
                task_id: vec![1; 32],
                level: 1,
                group: "eu".into(),
                round: 0,
            }),
            report_digest: vec![2; 32],
            ..Attestation::default()
        }
    }

    #[test]
    fn a_good_signature_seen_again_costs_no_curve_work_and_a_bad_one_still_fails() {
        let statement = sign_message(&key(41), StatementKind::Attestation, &attestation());
        assert!(verify_statement(&statement).is_ok());
        let cached = signature_counts().verified_cached;
        assert!(verify_statement(&statement).is_ok());
        // Other tests run alongside: the count only grows.
        assert!(signature_counts().verified_cached > cached);
        let mut forged = statement.clone();
        forged.signature[5] ^= 1;
        assert_eq!(verify_statement(&forged), Err(StatementError::BadSignature));
        let mut other_body = statement;
        other_body.body.push(0);
        assert_eq!(
            verify_statement(&other_body),
            Err(StatementError::BadSignature)
        );
    }

    fn check(statement: &SignedStatement, expected: Result<PublicKey, StatementError>) {
        assert_eq!(verify_statement(statement), expected);
    }

    #[test]
    fn sign_then_verify() {
        let key = key(1);
        let signer = PublicKey::from_verifying_key(&key.verifying_key());
        let statement = sign_message(&key, StatementKind::Attestation, &attestation());
        check(&statement, Ok(signer));
        let (opened_signer, opened) =
            open::<Attestation>(&statement, StatementKind::Attestation).unwrap();
        assert_eq!((opened_signer, opened), (signer, attestation()));
        assert_eq!(
            open::<Attestation>(&statement, StatementKind::Observation),
            Err(StatementError::WrongKind {
                expected: StatementKind::Observation,
                found: StatementKind::Attestation as i32
            })
        );
    }

    #[test]
    fn a_signature_does_not_transfer_to_another_kind() {
        let mut statement = sign_message(&key(1), StatementKind::Attestation, &attestation());
        statement.kind = StatementKind::Observation as i32;
        check(&statement, Err(StatementError::BadSignature));
        statement.kind = 0;
        check(&statement, Err(StatementError::UnknownKind { kind: 0 }));
        statement.kind = 99;
        check(&statement, Err(StatementError::UnknownKind { kind: 99 }));
    }

    #[test]
    fn malformed_statements_are_rejected() {
        let good = sign_message(&key(1), StatementKind::Attestation, &attestation());
        let mut short = good.clone();
        short.signer.pop();
        check(
            &short,
            Err(StatementError::SignerLength { length_bytes: 31 }),
        );
        let mut short = good.clone();
        short.signature.pop();
        check(
            &short,
            Err(StatementError::SignatureLength { length_bytes: 63 }),
        );
        let mut weak = good.clone();
        weak.signer = {
            let mut identity = vec![0u8; 32];
            identity[0] = 1;
            identity
        };
        check(&weak, Err(StatementError::Key(IdError::WeakKey)));
        let mut large = good;
        large.body = vec![0; STATEMENT_BODY_BYTES_MAX + 1];
        check(
            &large,
            Err(StatementError::BodyTooLarge {
                length_bytes: STATEMENT_BODY_BYTES_MAX + 1,
            }),
        );
    }

    #[test]
    fn batch_verifies_like_one_by_one() {
        let statements: Vec<SignedStatement> = (1..=5)
            .map(|seed| sign_message(&key(seed), StatementKind::Attestation, &attestation()))
            .collect();
        let signers: Vec<PublicKey> = statements
            .iter()
            .map(|s| verify_statement(s).unwrap())
            .collect();
        assert_eq!(verify_statements_batch(&statements), Ok(signers));
        assert_eq!(verify_statements_batch(&[]), Ok(Vec::new()));

        let mut bad = statements.clone();
        bad[3].signature[7] ^= 1;
        assert_eq!(
            verify_statements_batch(&bad),
            Err(StatementError::BadSignature)
        );
        let mut replayed = statements.clone();
        replayed[1].kind = StatementKind::Observation as i32;
        assert_eq!(
            verify_statements_batch(&replayed),
            Err(StatementError::BadSignature)
        );
        // Shape errors come first, as from `verify_statement`, even after a bad signature.
        bad[4].signer = {
            let mut identity = vec![0u8; 32];
            identity[0] = 1;
            identity
        };
        assert_eq!(
            verify_statements_batch(&bad),
            Err(StatementError::Key(IdError::WeakKey))
        );
        bad[4].kind = 0;
        assert_eq!(
            verify_statements_batch(&bad),
            Err(StatementError::UnknownKind { kind: 0 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any single flipped bit in the kind, body, signer or signature is rejected.
        #[test]
        fn any_flipped_bit_is_rejected(field in 0usize..4, bit in 0usize..4096, seed in 1u8..255) {
            let mut statement = sign_message(&key(seed), StatementKind::Attestation, &attestation());
            match field {
                0 => statement.kind ^= 1 << (bit % 31),
                1 => { let n = statement.body.len() * 8; statement.body[(bit % n) / 8] ^= 1 << (bit % 8); }
                2 => statement.signer[(bit % 256) / 8] ^= 1 << (bit % 8),
                _ => statement.signature[(bit % 512) / 8] ^= 1 << (bit % 8),
            }
            prop_assert!(verify_statement(&statement).is_err());
        }
    }
}
