//! What binds a verified chain to its task. [`crate::verify_chain`] proves that each
//! group's quorum signed what the certificate says; [`verify_task_chain`] also proves
//! that the chain is the whole answer to the task it names:
//!
//! - the root is at the task's scope: its level is the scope's level, and it decides
//!   for the scope's place (a region child cut out of a global task's chain is no
//!   answer to the global task);
//! - every certificate of the chain used the path the task's own risk policy selects
//!   (`select`), and the task's aggregation. The entry node plans both, but a
//!   verifier recomputes them from the task bytes the chain carries, so an entry node
//!   cannot run a bft task as stake, or a majority task as first-valid.
//!
//! Who sat in each group is the registry's question (DESIGN.md §8), not this one's.

use polity_proto::{
    Aggregation, Certificate, ConsensusPath, Level, Report, StatementKind, TaskSpec,
};
use prost::Message;

use crate::AnswerVerifier;
use crate::aggregate::normalize;
use crate::certificate::{ChainSummary, LEVELS_MAX, VerifyError, verify_chain_with};
use crate::select;

/// Separates a group's place from its attempt number in a slot's group name
/// (`eu-west~1` is the second composition of region `eu-west`).
pub const ATTEMPT_SEPARATOR: char = '~';

/// The name of the one global group.
pub const GLOBAL_GROUP: &str = "global";

/// [`verify_chain_with`], then the chain's binding to its task (see the module doc).
pub fn verify_task_chain(
    root: &Certificate,
    verifier: Option<&dyn AnswerVerifier>,
) -> Result<ChainSummary, VerifyError> {
    let summary = verify_chain_with(root, verifier)?;
    let spec = TaskSpec::decode(root.task.as_slice()).map_err(|error| VerifyError::Invalid {
        what: "task",
        value: error.to_string(),
    })?;
    check_scope(&spec, root, summary.level)?;
    let path = select(spec.policy.as_ref()).path;
    let aggregation = normalize(Aggregation::try_from(spec.aggregation).unwrap_or_default());
    check_policy(root, path, aggregation, 0)?;
    Ok(summary)
}

/// The place a slot's group decides for: its name without the attempt.
pub fn place_of(group: &str) -> &str {
    group.split(ATTEMPT_SEPARATOR).next().unwrap_or(group)
}

fn check_scope(spec: &TaskSpec, root: &Certificate, level: Level) -> Result<(), VerifyError> {
    let scope = spec
        .scope
        .as_ref()
        .ok_or(VerifyError::Missing { what: "task scope" })?;
    let expected = Level::try_from(scope.level).unwrap_or(Level::Unspecified);
    let group = root.slot.as_ref().map_or("", |slot| slot.group.as_str());
    let place = match expected {
        Level::Global => GLOBAL_GROUP,
        _ => scope.name.as_str(),
    };
    if level != expected || place_of(group) != place {
        return Err(VerifyError::WrongScope {
            expected: format!("{} {place:?}", level_word(expected)),
            found: format!("{} {:?}", level_word(level), place_of(group)),
        });
    }
    Ok(())
}

/// Every certificate of the chain, root first, used `path` and `aggregation`. The
/// chain verified already, so its children decode and its depth is bounded.
fn check_policy(
    certificate: &Certificate,
    path: ConsensusPath,
    aggregation: Aggregation,
    depth: usize,
) -> Result<(), VerifyError> {
    if depth >= LEVELS_MAX {
        return Err(VerifyError::TooDeep);
    }
    let level = certificate
        .slot
        .as_ref()
        .and_then(|slot| Level::try_from(slot.level).ok())
        .unwrap_or(Level::Unspecified);
    if certificate.path != path as i32 {
        return Err(VerifyError::WrongPolicy {
            level: level_word(level),
            what: "path",
            expected: word(path.as_str_name(), "CONSENSUS_PATH_"),
            found: ConsensusPath::try_from(certificate.path).map_or("unknown".into(), |found| {
                word(found.as_str_name(), "CONSENSUS_PATH_")
            }),
        });
    }
    let report = certificate
        .report
        .as_ref()
        .filter(|statement| statement.kind == StatementKind::Report as i32)
        .and_then(|statement| Report::decode(statement.body.as_slice()).ok())
        .ok_or(VerifyError::Missing { what: "report" })?;
    let found = normalize(Aggregation::try_from(report.aggregation).unwrap_or_default());
    if found != aggregation {
        return Err(VerifyError::WrongPolicy {
            level: level_word(level),
            what: "aggregation",
            expected: word(aggregation.as_str_name(), "AGGREGATION_"),
            found: word(found.as_str_name(), "AGGREGATION_"),
        });
    }
    for bytes in &certificate.children {
        let child =
            Certificate::decode(bytes.as_slice()).map_err(|error| VerifyError::Invalid {
                what: "child",
                value: error.to_string(),
            })?;
        check_policy(&child, path, aggregation, depth + 1)?;
    }
    Ok(())
}

/// A protobuf enum value's name as people write it: `CONSENSUS_PATH_BFT` → `bft`.
fn word(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', "-")
}

fn level_word(level: Level) -> &'static str {
    match level {
        Level::Region => "region",
        Level::Continent => "continent",
        Level::Global => "global",
        Level::Unspecified => "unspecified",
    }
}
