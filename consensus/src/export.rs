//! A documented JSON form of a certificate for independent verifiers (see
//! `SIGNING.md`). Every signed statement appears with its `signed_message`
//! (`domain_tag || body`, hex) so that any ed25519 library can check `signature` over
//! it with `signer`, without knowing protobuf. Decoded fields are given for reading;
//! they are not verified here — [`crate::verify_chain`] verifies.

use polity_proto::{
    Attestation, Certificate, ConsensusPath, Level, Observation, RaftCommit, Report,
    SignedStatement, Slot, StatementKind,
};
use prost::Message;
use serde_json::{Value, json};

use crate::certificate::{LEVELS_MAX, certificate_bytes_digest, report_digest};
use crate::statement::{domain_tag, signed_message, statement_digest};
use crate::task::task_id;

/// The value of the `format` field.
pub const CERTIFICATE_JSON_FORMAT: &str = "polity/v1/certificate-json";

/// The JSON form of `certificate`, children nested (up to [`LEVELS_MAX`] levels).
/// Every level carries `bytes`, the certificate's exact protobuf encoding (the root's
/// encoding; for a child, the bytes carried in its parent's `children`), and
/// `digest`, the certificate digest of those bytes: a verifier needs nothing else.
pub fn certificate_json(certificate: &Certificate) -> Value {
    certificate_json_at(certificate, &certificate.encode_to_vec(), 0)
}

/// One level: `certificate` decoded from (or encoded as) `bytes`.
fn certificate_json_at(certificate: &Certificate, bytes: &[u8], depth: usize) -> Value {
    let report = certificate.report.as_ref();
    let decoded_report =
        report.and_then(|statement| Report::decode(statement.body.as_slice()).ok());
    let children: Vec<Value> = certificate
        .children
        .iter()
        .map(|bytes| match Certificate::decode(bytes.as_slice()) {
            Ok(child) if depth + 1 < LEVELS_MAX => certificate_json_at(&child, bytes, depth + 1),
            Ok(_) => undecoded_json(bytes, "deeper than the chain limit".into()),
            Err(error) => undecoded_json(bytes, format!("does not decode: {error}")),
        })
        .collect();
    json!({
        "format": CERTIFICATE_JSON_FORMAT,
        "digest": hex::encode(certificate_bytes_digest(bytes)),
        "bytes": hex::encode(bytes),
        "task_id": hex::encode(task_id(&certificate.task).0),
        "task": hex::encode(&certificate.task),
        "slot": slot_json(certificate.slot.as_ref()),
        "path": ConsensusPath::try_from(certificate.path).map(|p| p.as_str_name()).unwrap_or("INVALID"),
        "path_reason": certificate.path_reason,
        "members": certificate.members.iter().map(|member| json!({
            "public_key": hex::encode(&member.public_key),
            "weight": member.weight,
        })).collect::<Vec<_>>(),
        "value": decoded_report.as_ref().map(|r| bytes_json(&r.value)),
        "degraded": decoded_report.as_ref().map(|r| r.degraded),
        "report_digest": report.map(|s| hex::encode(report_digest(&s.body))),
        "report": report.map(statement_json),
        "observations": certificate.observations.iter().map(statement_json).collect::<Vec<_>>(),
        "attestations": certificate.attestations.iter().map(statement_json).collect::<Vec<_>>(),
        "raft_commit": certificate.raft_commit.as_ref().map(statement_json),
        "child_digests": certificate.child_digests.iter().map(hex::encode).collect::<Vec<_>>(),
        "children": children,
    })
}

/// A carried child the JSON form does not unfold: its bytes, digest and why.
fn undecoded_json(bytes: &[u8], error: String) -> Value {
    json!({
        "digest": hex::encode(certificate_bytes_digest(bytes)),
        "bytes": hex::encode(bytes),
        "error": error,
    })
}

fn bytes_json(bytes: &[u8]) -> Value {
    json!({ "hex": hex::encode(bytes), "utf8": std::str::from_utf8(bytes).ok() })
}

fn slot_json(slot: Option<&Slot>) -> Value {
    match slot {
        None => Value::Null,
        Some(slot) => json!({
            "task_id": hex::encode(&slot.task_id),
            "level": Level::try_from(slot.level).map(|l| l.as_str_name()).unwrap_or("INVALID"),
            "group": slot.group,
            "round": slot.round,
        }),
    }
}

/// One signed statement: what was signed, by whom, and the decoded body.
pub fn statement_json(statement: &SignedStatement) -> Value {
    let kind = StatementKind::try_from(statement.kind).unwrap_or(StatementKind::Unspecified);
    let body = statement.body.as_slice();
    let decoded = match kind {
        StatementKind::Observation => Observation::decode(body).ok().map(|o| {
            json!({
                "slot": slot_json(o.slot.as_ref()),
                "answer": bytes_json(&o.answer),
                "error": o.error,
                "child_certificate_digest": hex::encode(&o.child_certificate_digest),
            })
        }),
        StatementKind::Report => Report::decode(body).ok().map(|r| {
            json!({
                "slot": slot_json(r.slot.as_ref()),
                "aggregation": polity_proto::Aggregation::try_from(r.aggregation)
                    .map(|a| a.as_str_name()).unwrap_or("INVALID"),
                "value": bytes_json(&r.value),
                "tally": r.tally.iter().map(|t| json!({
                    "answer": bytes_json(&t.answer), "count": t.count, "weight": t.weight,
                })).collect::<Vec<_>>(),
                "observation_digests": r.observation_digests.iter().map(hex::encode).collect::<Vec<_>>(),
                "degraded": r.degraded,
                "degraded_reason": r.degraded_reason,
            })
        }),
        StatementKind::Attestation => Attestation::decode(body).ok().map(|a| {
            json!({
                "slot": slot_json(a.slot.as_ref()),
                "report_digest": hex::encode(&a.report_digest),
                "raft_term": a.raft_term,
                "raft_index": a.raft_index,
                "raft_leader": hex::encode(&a.raft_leader),
            })
        }),
        StatementKind::RaftCommit => RaftCommit::decode(body).ok().map(|c| {
            json!({
                "slot": slot_json(c.slot.as_ref()),
                "report_digest": hex::encode(&c.report_digest),
                "term": c.term,
                "commit_index": c.commit_index,
            })
        }),
        StatementKind::NodeInfo | StatementKind::Unspecified => None,
    };
    json!({
        "kind": kind_name(kind),
        "domain_tag": hex::encode(domain_tag(kind)),
        "signer": hex::encode(&statement.signer),
        "signature": hex::encode(&statement.signature),
        "body": hex::encode(body),
        "signed_message": hex::encode(signed_message(kind, body)),
        "digest": hex::encode(statement_digest(statement)),
        "decoded": decoded,
    })
}

fn kind_name(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Unspecified => "unspecified",
        StatementKind::Observation => "observation",
        StatementKind::Report => "report",
        StatementKind::Attestation => "attestation",
        StatementKind::NodeInfo => "node-info",
        StatementKind::RaftCommit => "raft-commit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::tests::{config, key};
    use crate::round::{Action, Input, Round};
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    use polity_proto::Aggregation;

    /// Checks every signed statement in `json` the way an independent verifier would:
    /// hex-decode `signer`, `signature` and `signed_message`, verify with plain
    /// ed25519, and check that `signed_message` is the kind's tag followed by `body`.
    /// Returns how many it checked, children included.
    fn check(json: &Value) -> usize {
        let hex_field =
            |value: &Value, name: &str| hex::decode(value[name].as_str().unwrap()).unwrap();
        let mut statements: Vec<&Value> = Vec::new();
        statements.extend(json["report"].as_object().map(|_| &json["report"]));
        statements.extend(json["observations"].as_array().unwrap());
        statements.extend(json["attestations"].as_array().unwrap());
        statements.extend(
            json["raft_commit"]
                .as_object()
                .map(|_| &json["raft_commit"]),
        );
        for statement in &statements {
            let signer: [u8; 32] = hex_field(statement, "signer").try_into().unwrap();
            let signature: [u8; 64] = hex_field(statement, "signature").try_into().unwrap();
            let message = hex_field(statement, "signed_message");
            let tag = format!("polity/v1/{}\0", statement["kind"].as_str().unwrap());
            assert_eq!(
                message,
                [tag.as_bytes(), &hex_field(statement, "body")].concat()
            );
            VerifyingKey::from_bytes(&signer)
                .unwrap()
                .verify(&message, &Signature::from_bytes(&signature))
                .unwrap();
        }
        statements.len()
            + json["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(check)
                .sum::<usize>()
    }

    #[test]
    fn every_statement_verifies_with_plain_ed25519() {
        let me = key(1);
        let region = config(
            std::slice::from_ref(&me),
            ConsensusPath::Stake,
            Aggregation::Majority,
            Level::Region,
        );
        let mut round = Round::new(region.clone(), me.clone()).unwrap();
        let input = Input::LocalAnswer {
            answer: Ok(b"42".to_vec()),
            child_certificate: None,
        };
        let child = round
            .step(10_000, input)
            .into_iter()
            .find_map(|action| match action {
                Action::Decided(certificate) => Some(certificate),
                _ => None,
            })
            .unwrap();
        let continent = crate::round::RoundConfig {
            level: Level::Continent,
            group: "europe".into(),
            ..region
        };
        let mut parent = Round::new(continent, me).unwrap();
        let input = Input::LocalAnswer {
            answer: Ok(b"42".to_vec()),
            child_certificate: Some(child.encode_to_vec()),
        };
        parent.step(10_000, input);
        let json = certificate_json(parent.decided().unwrap());
        assert_eq!(json["format"], CERTIFICATE_JSON_FORMAT);
        assert_eq!(json["value"]["utf8"], "42");
        assert_eq!(json["slot"]["level"], "LEVEL_CONTINENT");
        assert_eq!(json["children"][0]["slot"]["level"], "LEVEL_REGION");
        assert_eq!(json["child_digests"][0], json["children"][0]["digest"]);
        assert_eq!(json["task_id"], json["slot"]["task_id"]);
        let parent_bytes = hex::encode(parent.decided().unwrap().encode_to_vec());
        assert_eq!(json["bytes"], parent_bytes.as_str());
        assert_eq!(
            json["children"][0]["bytes"],
            hex::encode(&parent.decided().unwrap().children[0]).as_str()
        );
        assert_eq!(check(&json), 4);
    }
}
