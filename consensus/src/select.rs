//! Path selection: which quorum rule decides a task, and why, from its risk policy.

use polity_proto::{ConsensusPath, RiskPolicy};

/// Adversarial risk above this selects [`ConsensusPath::Bft`].
pub const ADVERSARIAL_RISK_BFT_MIN: f64 = 0.7;
/// Consistency above this (and risk not above [`ADVERSARIAL_RISK_BFT_MIN`]) selects
/// [`ConsensusPath::Raft`].
pub const CONSISTENCY_RAFT_MIN: f64 = 0.8;

/// The chosen path and the human-readable reason that travels with the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChoice {
    pub path: ConsensusPath,
    pub reason: String,
}

/// Chooses the path: an explicit `path_override` wins; otherwise adversarial risk
/// above 0.7 selects BFT, then consistency above 0.8 selects Raft, else Stake.
/// No policy means Stake. NaN risks compare false and so never select a path.
pub fn select(policy: Option<&RiskPolicy>) -> PathChoice {
    let Some(policy) = policy else {
        return PathChoice {
            path: ConsensusPath::Stake,
            reason: "no risk policy: stake".into(),
        };
    };
    match ConsensusPath::try_from(policy.path_override) {
        Ok(ConsensusPath::Unspecified) | Err(_) => {}
        Ok(path) => {
            return PathChoice {
                path,
                reason: format!("path_override = {}", path.as_str_name()),
            };
        }
    }
    if policy.adversarial_risk > ADVERSARIAL_RISK_BFT_MIN {
        PathChoice {
            path: ConsensusPath::Bft,
            reason: format!(
                "adversarial_risk {} > {ADVERSARIAL_RISK_BFT_MIN}: bft",
                policy.adversarial_risk
            ),
        }
    } else if policy.consistency > CONSISTENCY_RAFT_MIN {
        PathChoice {
            path: ConsensusPath::Raft,
            reason: format!(
                "consistency {} > {CONSISTENCY_RAFT_MIN}: raft",
                policy.consistency
            ),
        }
    } else {
        PathChoice {
            path: ConsensusPath::Stake,
            reason: format!(
                "adversarial_risk {} <= {ADVERSARIAL_RISK_BFT_MIN} and consistency {} <= \
                 {CONSISTENCY_RAFT_MIN}: stake",
                policy.adversarial_risk, policy.consistency
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: Option<RiskPolicy>, path: ConsensusPath, reason_contains: &str) {
        let choice = select(policy.as_ref());
        assert_eq!(choice.path, path, "{choice:?}");
        assert!(choice.reason.contains(reason_contains), "{choice:?}");
    }

    fn policy(adversarial_risk: f64, consistency: f64, path_override: ConsensusPath) -> RiskPolicy {
        RiskPolicy {
            adversarial_risk,
            consistency,
            path_override: path_override as i32,
        }
    }

    #[test]
    fn rules_in_order() {
        check(None, ConsensusPath::Stake, "no risk policy");
        check(
            Some(policy(0.9, 0.9, ConsensusPath::Raft)),
            ConsensusPath::Raft,
            "path_override",
        );
        check(
            Some(policy(0.71, 0.9, ConsensusPath::Unspecified)),
            ConsensusPath::Bft,
            "0.71",
        );
        check(
            Some(policy(0.7, 0.81, ConsensusPath::Unspecified)),
            ConsensusPath::Raft,
            "0.81",
        );
        check(
            Some(policy(0.7, 0.8, ConsensusPath::Unspecified)),
            ConsensusPath::Stake,
            "0.8",
        );
        check(
            Some(policy(f64::NAN, f64::NAN, ConsensusPath::Unspecified)),
            ConsensusPath::Stake,
            "NaN",
        );
    }
}
