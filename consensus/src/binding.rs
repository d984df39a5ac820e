//! What binds a verified chain to its task. [`crate::verify_chain`] proves that each
//! group's quorum signed what the certificate says; [`verify_task_chain`] also checks
//! that the chain answers the task it names, as far as the task bytes can say:
//!
//! - the root is at the task's scope: its level is the scope's level, and it decides
//!   for the scope's place (a region child cut out of a global task's chain is no
//!   answer to the global task);
//! - every certificate of the chain used the path the task's own risk policy selects
//!   (`select`), and the task's aggregation. The entry node plans both, but a
//!   verifier recomputes them from the task bytes the chain carries, so an entry node
//!   cannot run a bft task as stake, or a majority task as first-valid.
//!
//! - no place decides twice among a certificate's children (`eu` and `eu~1` are one
//!   region: two of its attempts cannot both be counted).
//!
//! Who sat in each group, and which regions a continent's children must be, is the
//! registry's question (DESIGN.md §8), not this one's.

use std::collections::BTreeMap;

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

/// Attempts a group may have: a suffix above this is refused.
pub const ATTEMPTS_MAX: u32 = 64;

/// The name of the one global group.
pub const GLOBAL_GROUP: &str = "global";

/// [`verify_chain_with`], then the chain's binding to its task (see the module doc).
pub fn verify_task_chain(
    root: &Certificate,
    verifier: Option<&dyn AnswerVerifier>,
) -> Result<ChainSummary, VerifyError> {
    let summary = verify_chain_with(root, verifier)?;
    check_binding(root)?;
    Ok(summary)
}

/// The binding alone, for a root whose chain verified already: its task, its scope,
/// and the task's rule at every level.
pub fn check_binding(root: &Certificate) -> Result<(), VerifyError> {
    let spec = TaskSpec::decode(root.task.as_slice()).map_err(|error| VerifyError::Invalid {
        what: "task",
        value: error.to_string(),
    })?;
    check_scope(&spec, root)?;
    check_task_policy(root, &spec)
}

/// Every certificate of a verified chain (the root at any level, and all it
/// carries) used the path the task's policy selects and the task's aggregation, and
/// no place has two decisions among one certificate's children.
pub fn check_task_policy(certificate: &Certificate, spec: &TaskSpec) -> Result<(), VerifyError> {
    let (path, aggregation) = task_rule(spec)?;
    check_rule(certificate, path, aggregation)
}

/// [`check_task_policy`] with the task's rule already read (see [`task_rule`]).
pub fn check_rule(
    certificate: &Certificate,
    path: ConsensusPath,
    aggregation: Aggregation,
) -> Result<(), VerifyError> {
    check_policy(certificate, path, aggregation, 0)
}

/// The path and aggregation a task asks for; a spec with values outside their
/// enums (or risks outside [0, 1]) asks for nothing and is refused.
pub fn task_rule(spec: &TaskSpec) -> Result<(ConsensusPath, Aggregation), VerifyError> {
    let aggregation =
        Aggregation::try_from(spec.aggregation).map_err(|_| VerifyError::Invalid {
            what: "task aggregation",
            value: spec.aggregation.to_string(),
        })?;
    if let Some(policy) = &spec.policy {
        if ConsensusPath::try_from(policy.path_override).is_err() {
            return Err(VerifyError::Invalid {
                what: "task path_override",
                value: policy.path_override.to_string(),
            });
        }
        for (what, risk) in [
            ("task adversarial_risk", policy.adversarial_risk),
            ("task consistency", policy.consistency),
        ] {
            if !(0.0..=1.0).contains(&risk) {
                return Err(VerifyError::Invalid {
                    what,
                    value: risk.to_string(),
                });
            }
        }
    }
    Ok((select(spec.policy.as_ref()).path, normalize(aggregation)))
}

/// The place a slot's group decides for: its name without the attempt, which must
/// be a number in `1..=ATTEMPTS_MAX` when present.
pub fn place_of(group: &str) -> Result<&str, VerifyError> {
    let Some((place, attempt)) = group.split_once(ATTEMPT_SEPARATOR) else {
        return Ok(group);
    };
    match attempt.parse::<u32>() {
        Ok(n) if (1..=ATTEMPTS_MAX).contains(&n) && !attempt.starts_with('0') => Ok(place),
        _ => Err(VerifyError::Invalid {
            what: "group attempt",
            value: group.to_string(),
        }),
    }
}

fn check_scope(spec: &TaskSpec, root: &Certificate) -> Result<(), VerifyError> {
    let scope = spec
        .scope
        .as_ref()
        .ok_or(VerifyError::Missing { what: "task scope" })?;
    let expected = Level::try_from(scope.level).unwrap_or(Level::Unspecified);
    let slot = root
        .slot
        .as_ref()
        .ok_or(VerifyError::Missing { what: "slot" })?;
    let level = Level::try_from(slot.level).unwrap_or(Level::Unspecified);
    let place = match expected {
        Level::Global => GLOBAL_GROUP,
        _ => scope.name.as_str(),
    };
    let found = place_of(&slot.group)?;
    if level != expected || found != place {
        return Err(VerifyError::WrongScope {
            expected: format!("{} {place:?}", level_word(expected)),
            found: format!("{} {found:?}", level_word(level)),
        });
    }
    Ok(())
}

/// Every certificate of the chain, root first, used `path` and `aggregation`, and
/// each place appears once among a certificate's children. The chain verified
/// already, so its children decode and its depth is bounded.
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
    let found =
        Aggregation::try_from(report.aggregation).map_or(Aggregation::Unspecified, normalize);
    if found != aggregation {
        return Err(VerifyError::WrongPolicy {
            level: level_word(level),
            what: "aggregation",
            expected: word(aggregation.as_str_name(), "AGGREGATION_"),
            found: word(found.as_str_name(), "AGGREGATION_"),
        });
    }
    let mut places: BTreeMap<String, &[u8]> = BTreeMap::new();
    for bytes in &certificate.children {
        let child =
            Certificate::decode(bytes.as_slice()).map_err(|error| VerifyError::Invalid {
                what: "child",
                value: error.to_string(),
            })?;
        let group = child.slot.as_ref().map_or("", |slot| slot.group.as_str());
        let place = place_of(group)?.to_string();
        match places.get(&place) {
            Some(seen) if *seen != bytes.as_slice() => {
                return Err(VerifyError::Invalid {
                    what: "children",
                    value: format!("two decisions for {place:?}"),
                });
            }
            Some(_) => continue, // the same child again, for another representative
            None => {
                places.insert(place, bytes);
            }
        }
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

/// A level's name, for messages.
pub(crate) fn level_word(level: Level) -> &'static str {
    match level {
        Level::Region => "region",
        Level::Continent => "continent",
        Level::Global => "global",
        Level::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use polity_proto::RiskPolicy;

    use super::*;

    #[test]
    fn a_place_is_the_group_name_without_a_bounded_attempt() {
        assert_eq!(place_of("eu-west"), Ok("eu-west"));
        assert_eq!(place_of("eu-west~1"), Ok("eu-west"));
        assert_eq!(place_of("eu-west~64"), Ok("eu-west"));
        for bad in ["eu~", "eu~0", "eu~01", "eu~x", "eu~65", "eu~1~2"] {
            assert!(place_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_with_values_outside_its_enums_asks_for_nothing() {
        let spec = |aggregation: i32, policy: Option<RiskPolicy>| TaskSpec {
            aggregation,
            policy,
            ..TaskSpec::default()
        };
        assert_eq!(
            task_rule(&spec(0, None)),
            Ok((ConsensusPath::Stake, Aggregation::Majority))
        );
        let risky = RiskPolicy {
            adversarial_risk: 0.9,
            ..RiskPolicy::default()
        };
        assert_eq!(
            task_rule(&spec(2, Some(risky))),
            Ok((ConsensusPath::Bft, Aggregation::Tally))
        );
        assert!(task_rule(&spec(99, None)).is_err());
        let unknown_path = RiskPolicy {
            path_override: 99,
            ..RiskPolicy::default()
        };
        assert!(task_rule(&spec(1, Some(unknown_path))).is_err());
        let not_a_number = RiskPolicy {
            adversarial_risk: f64::NAN,
            ..RiskPolicy::default()
        };
        assert!(task_rule(&spec(1, Some(not_a_number))).is_err());
    }
}
