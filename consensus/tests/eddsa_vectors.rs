//! Polity's one signature rule (`polity_consensus::statement::verify_signature`, the
//! rule libsodium applies) against the edge cases that split ed25519 implementations:
//!
//! - the 12 vectors of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, 2020),
//!   in `tests/data/eddsa_vectors.json` with libsodium's verdict on each, checked
//!   one by one and through the certificate path (`batch_verify`);
//! - the same file given to libsodium itself, through PyNaCl
//!   (`scripts/eddsa_verdicts.py`), verdict for verdict;
//! - a real certificate whose report signature is re-made with a small-order point
//!   added to `R`, chosen so that ed25519 batch verification accepts the certificate:
//!   `verify_chain` must refuse it.

use std::path::{Path, PathBuf};
use std::process::Command;

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use polity_consensus::statement::{batch_verify, signed_message, verify_signature};
use polity_consensus::{
    Action, Input, PublicKey, Round, RoundConfig, RoundMessage, VerifyError, verify_chain,
    verify_statement,
};
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, Level, Member, SignedStatement, StatementKind,
    TaskSpec,
};
use sha2::{Digest, Sha512};

/// One edge-case vector and the verdict libsodium gives it.
struct Vector {
    case: u64,
    message: Vec<u8>,
    public_key: [u8; 32],
    signature: [u8; 64],
    libsodium_accepts: bool,
}

fn vectors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/eddsa_vectors.json")
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hex_field = |vector: &serde_json::Value, name: &str| {
        hex::decode(vector[name].as_str().unwrap()).unwrap()
    };
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vector| Vector {
            case: vector["case"].as_u64().unwrap(),
            message: hex_field(vector, "message"),
            public_key: hex_field(vector, "public_key").try_into().unwrap(),
            signature: hex_field(vector, "signature").try_into().unwrap(),
            libsodium_accepts: vector["libsodium_accepts"].as_bool().unwrap(),
        })
        .collect()
}

/// Polity's verdict on one signature: the key checks, then the signature rule.
fn polity_accepts(vector: &Vector) -> bool {
    let Ok(key) = PublicKey(vector.public_key).to_verifying_key() else {
        return false;
    };
    verify_signature(
        &key,
        &vector.message,
        &Signature::from_bytes(&vector.signature),
    )
    .is_ok()
}

/// The certificate path's verdict on a set of signatures, in order.
fn batch_accepts(signatures: &[(Vec<u8>, [u8; 32], [u8; 64])]) -> bool {
    let mut keys = Vec::new();
    for (_, public_key, _) in signatures {
        let Ok(key) = PublicKey(*public_key).to_verifying_key() else {
            return false;
        };
        keys.push(key);
    }
    let messages: Vec<Vec<u8>> = signatures.iter().map(|(m, _, _)| m.clone()).collect();
    let signatures: Vec<Signature> = signatures
        .iter()
        .map(|(_, _, signature)| Signature::from_bytes(signature))
        .collect();
    batch_verify(&messages, &signatures, &keys).is_ok()
}

fn as_triple(vector: &Vector) -> (Vec<u8>, [u8; 32], [u8; 64]) {
    (vector.message.clone(), vector.public_key, vector.signature)
}

/// An honest signature by a fixed key over `message`.
fn honest(seed: u8, message: &[u8]) -> (Vec<u8>, [u8; 32], [u8; 64]) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let signature = ed25519_dalek::Signer::sign(&key, message);
    (
        message.to_vec(),
        key.verifying_key().to_bytes(),
        signature.to_bytes(),
    )
}

#[test]
fn the_twelve_vectors_get_libsodiums_verdicts() {
    let vectors = vectors();
    let cases: Vec<u64> = vectors.iter().map(|vector| vector.case).collect();
    assert_eq!(cases, (0..12).collect::<Vec<u64>>());
    // Only case 3 (mixed-order A and R, both equations hold) is valid for libsodium.
    let accepted: Vec<u64> = vectors
        .iter()
        .filter(|vector| vector.libsodium_accepts)
        .map(|vector| vector.case)
        .collect();
    assert_eq!(accepted, [3]);
    for vector in &vectors {
        assert_eq!(
            polity_accepts(vector),
            vector.libsodium_accepts,
            "case {}",
            vector.case
        );
    }
}

/// With dalek's `verify_batch` behind `batch_verify` (the old certificate path) this
/// fails on case 3 in the other direction: the batch multiplies `A` by `z k mod L`,
/// which scrambles a mixed-order key's torsion part, so a signature libsodium accepts
/// was refused in certificates.
#[test]
fn the_certificate_path_gives_the_same_verdicts() {
    let vectors = vectors();
    for vector in &vectors {
        let alone = [as_triple(vector)];
        assert_eq!(
            batch_accepts(&alone),
            vector.libsodium_accepts,
            "case {} alone",
            vector.case
        );
        // Among honest signatures, before and after, a vector decides the set.
        let among = [honest(1, b"before"), as_triple(vector), honest(2, b"after")];
        assert_eq!(
            batch_accepts(&among),
            vector.libsodium_accepts,
            "case {} among honest signatures",
            vector.case
        );
    }
    let all_accepted: Vec<_> = vectors
        .iter()
        .filter(|vector| vector.libsodium_accepts)
        .map(as_triple)
        .chain([honest(3, b"honest")])
        .collect();
    assert!(batch_accepts(&all_accepted));
}

/// libsodium's own verdicts, from `scripts/eddsa_verdicts.py` (PyNaCl). Skipped with
/// a note when python3 or PyNaCl is missing, unless POLITY_REQUIRE_PYNACL is set (as
/// in `.ci/run`).
#[test]
fn verdicts_agree_with_libsodium_through_pynacl() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/eddsa_verdicts.py");
    let required = std::env::var("POLITY_REQUIRE_PYNACL").is_ok_and(|value| value == "1");
    let output = Command::new("python3")
        .arg(&script)
        .arg(vectors_path())
        .output();
    let missing = match &output {
        Err(error) => Some(format!("python3 did not run: {error}")),
        Ok(output) if output.status.code() == Some(2) => {
            Some(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
        Ok(_) => None,
    };
    if let Some(reason) = missing {
        assert!(!required, "POLITY_REQUIRE_PYNACL=1 but {reason}");
        eprintln!("SKIPPED verdicts_agree_with_libsodium_through_pynacl: {reason}");
        return;
    }
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let libsodium: Vec<(u64, bool)> = stdout
        .lines()
        .map(|line| {
            let (case, verdict) = line.split_once(' ').unwrap();
            let accepts = match verdict {
                "accept" => true,
                "reject" => false,
                other => panic!("unknown verdict {other:?}"),
            };
            (case.parse().unwrap(), accepts)
        })
        .collect();
    let polity: Vec<(u64, bool)> = vectors()
        .iter()
        .map(|vector| (vector.case, polity_accepts(vector)))
        .collect();
    assert_eq!(polity, libsodium);
    // And the verdicts recorded in the file are libsodium's.
    let recorded: Vec<(u64, bool)> = vectors()
        .iter()
        .map(|vector| (vector.case, vector.libsodium_accepts))
        .collect();
    assert_eq!(recorded, libsodium);
}

// --- A batch-valid forgery inside a real certificate -------------------------------

const ANSWER: &[u8] = b"200 sha256:9f86d081884c";

fn member_key(index: u8) -> SigningKey {
    SigningKey::from_bytes(&[0x40 + index; 32])
}

fn round_config(keys: &[SigningKey]) -> RoundConfig {
    RoundConfig {
        task: polity_consensus::encode_task(&TaskSpec {
            capability: "http-get".into(),
            nonce: 7,
            ..TaskSpec::default()
        }),
        level: Level::Region,
        group: "eu-west".into(),
        registry_digest: [9; 32],
        members: keys
            .iter()
            .map(|key| Member {
                public_key: key.verifying_key().to_bytes().to_vec(),
                weight: 1,
            })
            .collect(),
        path: ConsensusPath::Bft,
        path_reason: "test".into(),
        aggregation: Aggregation::Majority,
        round_timeout_ms: 10_000,
        rounds_max: 3,
        started_at_ms: 0,
    }
}

fn local_answer() -> Input {
    Input::LocalAnswer {
        answer: Ok(ANSWER.to_vec()),
        child_certificate: None,
    }
}

/// A bft fast-path certificate of four members, decided by member 0 (the collector).
fn certificate(keys: &[SigningKey]) -> Box<Certificate> {
    let config = round_config(keys);
    let mut collector = Round::new(config.clone(), keys[0].clone()).unwrap();
    collector.step(1, local_answer());
    for key in &keys[1..] {
        let mut member = Round::new(config.clone(), key.clone()).unwrap();
        let statement = member
            .step(1, local_answer())
            .into_iter()
            .find_map(|action| match action {
                Action::SendTo(_, RoundMessage::Statement(statement)) => Some(statement),
                _ => None,
            })
            .expect("a member sends its observation to the collector");
        let input = Input::Message {
            from: PublicKey::from_verifying_key(&key.verifying_key()),
            statement,
        };
        for action in collector.step(2, input) {
            if let Action::Decided(certificate) = action {
                return certificate;
            }
        }
    }
    panic!("no fast-path decision");
}

/// The secret scalar `a` of `key` (RFC 8032 5.1.5: the clamped low half of
/// SHA-512(seed)).
fn secret_scalar(key: &SigningKey) -> Scalar {
    let digest = Sha512::digest(key.to_bytes());
    let mut low: [u8; 32] = digest[..32].try_into().unwrap();
    low[0] &= 248;
    low[31] &= 127;
    low[31] |= 64;
    let scalar = Scalar::from_bytes_mod_order(low);
    assert_eq!(
        (ED25519_BASEPOINT_POINT * scalar).compress().to_bytes(),
        key.verifying_key().to_bytes()
    );
    scalar
}

/// What only the signer can make: `R = [r]B + T` with `T` of order 8, and `S` computed
/// honestly for that `R`. `[S]B - R - [k]A = -T`: the cofactored equation holds, the
/// cofactorless one misses by a point of small order.
fn signature_with_torsion(key: &SigningKey, message: &[u8], attempt: u32) -> Signature {
    let a = secret_scalar(key);
    let mut nonce = Sha512::new();
    nonce.update(b"polity test: forged nonce");
    nonce.update(attempt.to_le_bytes());
    let r = Scalar::from_bytes_mod_order_wide(&nonce.finalize().into());
    let big_r: EdwardsPoint = ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1];
    let big_r = big_r.compress().to_bytes();
    let mut challenge = Sha512::new();
    challenge.update(big_r);
    challenge.update(key.verifying_key().to_bytes());
    challenge.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&challenge.finalize().into());
    let s = r + k * a;
    Signature::from_components(big_r, s.to_bytes())
}

/// The signed messages, signatures and keys of a certificate's statements in the
/// order `verify_chain` checks them: report, observations.
fn certificate_signatures(
    certificate: &Certificate,
) -> (Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>) {
    let statements: Vec<&SignedStatement> = certificate
        .report
        .iter()
        .chain(&certificate.observations)
        .collect();
    assert!(certificate.attestations.is_empty() && certificate.raft_commit.is_none());
    let messages = statements
        .iter()
        .map(|statement| {
            let kind = StatementKind::try_from(statement.kind).unwrap();
            signed_message(kind, &statement.body)
        })
        .collect();
    let signatures = statements
        .iter()
        .map(|statement| Signature::from_slice(&statement.signature).unwrap())
        .collect();
    let keys = statements
        .iter()
        .map(|statement| {
            VerifyingKey::from_bytes(&statement.signer.clone().try_into().unwrap()).unwrap()
        })
        .collect();
    (messages, signatures, keys)
}

/// The collector re-signs its report with a small-order point added to `R`, trying
/// nonces until ed25519 batch verification (dalek's `verify_batch`, what
/// `verify_chain` used before) accepts the whole certificate. Nothing else in the
/// certificate refers to the report's signature, so only the signature rule can
/// refuse it, and it must.
#[test]
fn verify_chain_refuses_a_batch_valid_report_with_small_order_r() {
    let keys: Vec<SigningKey> = (0..4).map(member_key).collect();
    let honest = certificate(&keys);
    assert!(verify_chain(&honest).is_ok());

    let report = honest.report.clone().unwrap();
    let message = signed_message(StatementKind::Report, &report.body);
    // Each attempt passes the batch with probability 1/8 (its coefficient a multiple
    // of 8); 200 attempts all failing has probability below 1e-11, and the attempts
    // are deterministic anyway.
    let forged = (0..200)
        .map(|attempt| {
            let signature = signature_with_torsion(&keys[0], &message, attempt);
            let mut forged = honest.clone();
            forged.report.as_mut().unwrap().signature = signature.to_bytes().to_vec();
            forged
        })
        .find(|forged| {
            let (messages, signatures, keys) = certificate_signatures(forged);
            let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        })
        .expect("some nonce makes the batch accept");

    let forged_report = forged.report.as_ref().unwrap();
    assert_ne!(forged_report.signature, report.signature);
    assert!(verify_statement(forged_report).is_err());
    assert!(matches!(
        verify_chain(&forged),
        Err(VerifyError::BadSignature)
    ));
}
