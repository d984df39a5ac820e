//! Certificate chains printed for people: one block per group, children indented
//! under their parent, with who voted what.

use std::fmt::Write;

use polity_consensus::{PublicKey, certificate_digest, open};
use polity_proto::{
    Certificate, ConsensusPath, Level, Observation, RaftCommit, Report, StatementKind,
};
use prost::Message;

/// Depth of a certificate chain we print (region → continent → global).
const CHAIN_DEPTH_MAX: usize = 3;

/// The value as text when printable, else hex.
pub fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => format!("0x{}", hex::encode(value)),
    }
}

pub fn level_name(level: i32) -> &'static str {
    match Level::try_from(level) {
        Ok(Level::Region) => "region",
        Ok(Level::Continent) => "continent",
        Ok(Level::Global) => "global",
        _ => "?",
    }
}

fn path_name(path: i32) -> &'static str {
    match ConsensusPath::try_from(path) {
        Ok(ConsensusPath::Bft) => "bft",
        Ok(ConsensusPath::Raft) => "raft",
        Ok(ConsensusPath::Stake) => "stake",
        _ => "?",
    }
}

fn short(key: &PublicKey) -> String {
    key.to_string()[..12].to_string()
}

/// Renders `certificate` and its carried children as an indented tree.
pub fn certificate_tree(certificate: &Certificate) -> String {
    let mut out = String::new();
    render(certificate, 0, &mut out);
    out
}

fn render(certificate: &Certificate, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    let slot = certificate.slot.clone().unwrap_or_default();
    let report = certificate
        .report
        .as_ref()
        .and_then(|statement| open::<Report>(statement, StatementKind::Report).ok())
        .map(|(_, report)| report);
    let value = report
        .as_ref()
        .map(|r| printable(&r.value))
        .unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "{indent}{} {:?} round {}: value {value}, path {} ({}), {} member(s), digest {}",
        level_name(slot.level),
        slot.group,
        slot.round,
        path_name(certificate.path),
        certificate.path_reason,
        certificate.members.len(),
        &hex::encode(certificate_digest(certificate))[..16],
    );
    for statement in &certificate.observations {
        match open::<Observation>(statement, StatementKind::Observation) {
            Ok((signer, observation)) => {
                let said = if observation.error.is_empty() {
                    printable(&observation.answer)
                } else {
                    format!("error: {}", observation.error)
                };
                let agrees = report
                    .as_ref()
                    .is_some_and(|r| observation.error.is_empty() && r.value == observation.answer);
                let _ = writeln!(
                    out,
                    "{indent}  {} voted {said} {}",
                    short(&signer),
                    if agrees { "(agrees)" } else { "(DISAGREES)" }
                );
            }
            Err(error) => {
                let _ = writeln!(out, "{indent}  unreadable observation: {error}");
            }
        }
    }
    if !certificate.attestations.is_empty() {
        let _ = writeln!(
            out,
            "{indent}  {} attestation(s) of the report",
            certificate.attestations.len()
        );
    }
    if let Some(statement) = &certificate.raft_commit
        && let Ok((signer, commit)) = open::<RaftCommit>(statement, StatementKind::RaftCommit)
    {
        let _ = writeln!(
            out,
            "{indent}  committed in the group's raft log at term {}, index {} (signed by {})",
            commit.term,
            commit.commit_index,
            short(&signer)
        );
    }
    if depth + 1 >= CHAIN_DEPTH_MAX && !certificate.children.is_empty() {
        let _ = writeln!(out, "{indent}  (deeper children not shown)");
        return;
    }
    // Several representatives of one child carry the identical certificate: once.
    let mut seen = std::collections::BTreeSet::new();
    for child in &certificate.children {
        if !seen.insert(child.as_slice()) {
            continue;
        }
        match Certificate::decode(child.as_slice()) {
            Ok(child) => render(&child, depth + 1, out),
            Err(error) => {
                let _ = writeln!(out, "{indent}    undecodable child certificate: {error}");
            }
        }
    }
}
