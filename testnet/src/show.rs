//! Certificate chains printed for people: one block per group, children indented
//! under their parent, with who voted what.

use std::fmt::Write;

use polity_consensus::registry::Epoch;
use polity_consensus::{PublicKey, certificate_digest, open};
use polity_node::client::printable;
use polity_node::entry::{level_name, path_name};
use polity_proto::{
    Certificate, ConsensusPath, Level, Observation, RaftCommit, Report, StatementKind,
};
use prost::Message;

/// Depth of a certificate chain we print (region → continent → global).
const CHAIN_DEPTH_MAX: usize = 3;

/// The name of a level or path number as the node spells it, `?` for a number
/// this build does not know.
pub fn level_label(level: i32) -> &'static str {
    Level::try_from(level).map(level_name).unwrap_or("?")
}

fn path_label(path: i32) -> &'static str {
    ConsensusPath::try_from(path).map(path_name).unwrap_or("?")
}

fn short(key: &PublicKey) -> String {
    key.to_string()[..12].to_string()
}

/// Renders `certificate` and its carried children as an indented tree; with
/// `epoch` (the registry epoch the chain was drawn from), each voter with its
/// region and stake there.
pub fn certificate_tree_in(certificate: &Certificate, epoch: Option<&Epoch>) -> String {
    let mut out = String::new();
    render(certificate, epoch, 0, &mut out);
    out
}

fn render(certificate: &Certificate, epoch: Option<&Epoch>, depth: usize, out: &mut String) {
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
        level_label(slot.level),
        slot.group,
        slot.round,
        path_label(certificate.path),
        certificate.path_reason,
        certificate.members.len(),
        &hex::encode(certificate_digest(certificate))[..16],
    );
    write_votes(certificate, report.as_ref(), epoch, &indent, out);
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
    write_children(certificate, epoch, depth, &indent, out);
}

/// One line per observation: who voted what, and whether it agrees with the report.
fn write_votes(
    certificate: &Certificate,
    report: Option<&Report>,
    epoch: Option<&Epoch>,
    indent: &str,
    out: &mut String,
) {
    for statement in &certificate.observations {
        match open::<Observation>(statement, StatementKind::Observation) {
            Ok((signer, observation)) => {
                let said = if observation.error.is_empty() {
                    printable(&observation.answer)
                } else {
                    format!("error: {}", observation.error)
                };
                let agrees = report
                    .is_some_and(|r| observation.error.is_empty() && r.value == observation.answer);
                let seat = match epoch.map(|epoch| epoch.member(&signer)) {
                    Some(Some(member)) => format!(" [{}, stake {}]", member.region, member.stake),
                    Some(None) => " [NOT A REGISTRY MEMBER]".to_string(),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "{indent}  {}{seat} voted {said} {}",
                    short(&signer),
                    if agrees { "(agrees)" } else { "(DISAGREES)" }
                );
            }
            Err(error) => {
                let _ = writeln!(out, "{indent}  unreadable observation: {error}");
            }
        }
    }
}

/// The carried child certificates, one level deeper, each distinct one once.
fn write_children(
    certificate: &Certificate,
    epoch: Option<&Epoch>,
    depth: usize,
    indent: &str,
    out: &mut String,
) {
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
            Ok(child) => render(&child, epoch, depth + 1, out),
            Err(error) => {
                let _ = writeln!(out, "{indent}    undecodable child certificate: {error}");
            }
        }
    }
}
