//! Evidence of equivocation: two statements of one kind, signed by one key, for one
//! slot, that say different things. Evidence proves itself: anyone can check it with
//! [`verify_evidence`] and nothing else.

use polity_proto::{
    Attestation, Evidence, Observation, RaftCommit, Report, SignedStatement, Slot, StatementKind,
};

use crate::ids::PublicKey;
use crate::statement::{StatementError, decode_body, verify_statement};

/// Why an [`Evidence`] proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence lacks its {0} statement")]
    Missing(&'static str),
    #[error("{which} statement: {error}")]
    Statement {
        which: &'static str,
        error: StatementError,
    },
    #[error("statements are signed by different keys")]
    DifferentSigners,
    #[error("statements are of different kinds")]
    DifferentKinds,
    #[error("statements of kind {0} carry no slot")]
    NoSlot(i32),
    #[error("statements are for different slots")]
    DifferentSlots,
    #[error("statements say the same thing")]
    NoConflict,
}

/// The slot named by a statement body of a slotted kind.
fn slot_of(kind: StatementKind, body: &[u8]) -> Result<Option<Slot>, StatementError> {
    Ok(match kind {
        StatementKind::Observation => decode_body::<Observation>(body)?.slot,
        StatementKind::Report => decode_body::<Report>(body)?.slot,
        StatementKind::Attestation => decode_body::<Attestation>(body)?.slot,
        StatementKind::RaftCommit => decode_body::<RaftCommit>(body)?.slot,
        StatementKind::NodeInfo | StatementKind::Unspecified => {
            return Err(StatementError::UnknownKind { kind: kind as i32 });
        }
    })
}

fn same_message(kind: StatementKind, first: &[u8], second: &[u8]) -> Result<bool, StatementError> {
    Ok(match kind {
        StatementKind::Observation => {
            decode_body::<Observation>(first)? == decode_body::<Observation>(second)?
        }
        StatementKind::Report => decode_body::<Report>(first)? == decode_body::<Report>(second)?,
        StatementKind::Attestation => {
            decode_body::<Attestation>(first)? == decode_body::<Attestation>(second)?
        }
        // An honest leader signs a commit again, at a new index, whenever the same
        // report is proposed again (the ledger answers "unchanged"): only another
        // report for the slot is a lie.
        StatementKind::RaftCommit => {
            decode_body::<RaftCommit>(first)?.report_digest
                == decode_body::<RaftCommit>(second)?.report_digest
        }
        StatementKind::NodeInfo | StatementKind::Unspecified => true,
    })
}

/// Checks that `evidence` proves equivocation and returns the culprit: both
/// statements verify, have one signer and one slotted kind (observation, report,
/// attestation, raft commit), name the same slot, and decode to different messages
/// (raft commits: name different reports).
pub fn verify_evidence(evidence: &Evidence) -> Result<PublicKey, EvidenceError> {
    let first = evidence
        .first
        .as_ref()
        .ok_or(EvidenceError::Missing("first"))?;
    let second = evidence
        .second
        .as_ref()
        .ok_or(EvidenceError::Missing("second"))?;
    let signer = verify_statement(first).map_err(|error| EvidenceError::Statement {
        which: "first",
        error,
    })?;
    let other = verify_statement(second).map_err(|error| EvidenceError::Statement {
        which: "second",
        error,
    })?;
    if signer != other {
        return Err(EvidenceError::DifferentSigners);
    }
    if first.kind != second.kind {
        return Err(EvidenceError::DifferentKinds);
    }
    let kind =
        StatementKind::try_from(first.kind).map_err(|_| EvidenceError::NoSlot(first.kind))?;
    let first_slot = slot_of(kind, &first.body).map_err(|error| EvidenceError::Statement {
        which: "first",
        error,
    })?;
    let second_slot = slot_of(kind, &second.body).map_err(|error| EvidenceError::Statement {
        which: "second",
        error,
    })?;
    let Some(slot) = first_slot else {
        return Err(EvidenceError::NoSlot(first.kind));
    };
    if second_slot.as_ref() != Some(&slot) {
        return Err(EvidenceError::DifferentSlots);
    }
    let same = same_message(kind, &first.body, &second.body).map_err(|error| {
        EvidenceError::Statement {
            which: "second",
            error,
        }
    })?;
    if same {
        return Err(EvidenceError::NoConflict);
    }
    debug_assert!(
        first.body != second.body,
        "different messages have different bodies"
    );
    Ok(signer)
}

/// Evidence from two statements, when they prove equivocation; `None` otherwise
/// (including when either does not verify).
pub fn evidence_from(first: &SignedStatement, second: &SignedStatement) -> Option<Evidence> {
    let evidence = Evidence {
        first: Some(first.clone()),
        second: Some(second.clone()),
    };
    verify_evidence(&evidence).ok().map(|_| evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::sign_message;
    use ed25519_dalek::SigningKey;

    fn slot(round: u32) -> Slot {
        Slot {
            task_id: vec![9; 32],
            level: 1,
            group: "eu".into(),
            round,
        }
    }

    fn observation(key: &SigningKey, round: u32, answer: &[u8]) -> SignedStatement {
        let observation = Observation {
            slot: Some(slot(round)),
            answer: answer.to_vec(),
            ..Observation::default()
        };
        sign_message(key, StatementKind::Observation, &observation)
    }

    fn check(first: SignedStatement, second: SignedStatement, expected: Result<(), EvidenceError>) {
        let evidence = Evidence {
            first: Some(first.clone()),
            second: Some(second),
        };
        let signer = PublicKey::from_slice(&first.signer).unwrap();
        assert_eq!(verify_evidence(&evidence), expected.map(|()| signer));
    }

    #[test]
    fn equivocation_is_evidence() {
        let key = SigningKey::from_bytes(&[3; 32]);
        check(
            observation(&key, 0, b"a"),
            observation(&key, 0, b"b"),
            Ok(()),
        );
    }

    #[test]
    fn what_is_not_evidence() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        check(
            observation(&key, 0, b"a"),
            observation(&key, 0, b"a"),
            Err(EvidenceError::NoConflict),
        );
        check(
            observation(&key, 0, b"a"),
            observation(&key, 1, b"b"),
            Err(EvidenceError::DifferentSlots),
        );
        check(
            observation(&key, 0, b"a"),
            observation(&other, 0, b"b"),
            Err(EvidenceError::DifferentSigners),
        );
        let attestation = sign_message(
            &key,
            StatementKind::Attestation,
            &Attestation {
                slot: Some(slot(0)),
                report_digest: vec![1; 32],
                ..Attestation::default()
            },
        );
        check(
            observation(&key, 0, b"a"),
            attestation,
            Err(EvidenceError::DifferentKinds),
        );
        // A leader signs an identical report again at a later index when it is
        // proposed again: no lie. Another report for the slot is one.
        let commit = |digest: u8, index: u64| {
            let body = RaftCommit {
                slot: Some(slot(0)),
                report_digest: vec![digest; 32],
                term: 2,
                commit_index: index,
            };
            sign_message(&key, StatementKind::RaftCommit, &body)
        };
        check(commit(1, 5), commit(1, 9), Err(EvidenceError::NoConflict));
        check(commit(1, 5), commit(2, 9), Ok(()));
        let mut forged = observation(&key, 0, b"b");
        forged.signature[0] ^= 1;
        check(
            observation(&key, 0, b"a"),
            forged,
            Err(EvidenceError::Statement {
                which: "second",
                error: StatementError::BadSignature,
            }),
        );
    }
}
