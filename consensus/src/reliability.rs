//! Reliability math: the probability that a federation's answer is correct, given
//! independent members that are each wrong with probability `epsilon`.
//!
//! - majority over `n` members: `P1 = Σ_{k > n/2} C(n,k) (1-ε)^k ε^(n-k)` (a tie is a
//!   failure);
//! - a parent taking the majority over `b` child groups: the same formula with
//!   `ε' = 1 - P1` (composition over levels);
//! - first-valid over `n` members (a correct answer is recognisable): `1 - ε^n`;
//! - the seed document's figure `1 - ε^(n·d)` for `d` levels, which is the chance that
//!   at least one of `n·d` agents is right, and is reported next to the others so
//!   readers can see the gap.
//!
//! Pure functions of their arguments; inputs outside their domain are clamped and
//! documented, never a panic.

use serde::{Deserialize, Serialize};

/// Largest group size the binomial sum is evaluated for.
pub const MEMBERS_MAX: u32 = 1024;

fn clamp_probability(probability: f64) -> f64 {
    if probability.is_nan() {
        1.0
    } else {
        probability.clamp(0.0, 1.0)
    }
}

/// `C(n, k)` as a float (exact up to 2^53, then rounded), via a product of ratios.
fn binomial(n: u32, k: u32) -> f64 {
    debug_assert!(k <= n);
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

/// P(a strict majority of `members` independent members is right), each wrong with
/// probability `epsilon` (NaN counts as always wrong; `members` is capped at
/// [`MEMBERS_MAX`]; zero members are never right).
pub fn majority_correct(members: u32, epsilon: f64) -> f64 {
    let members = members.min(MEMBERS_MAX);
    let epsilon = clamp_probability(epsilon);
    let right = 1.0 - epsilon;
    let probability: f64 = (members / 2 + 1..=members)
        .map(|k| binomial(members, k) * right.powi(k as i32) * epsilon.powi((members - k) as i32))
        .sum();
    let probability = probability.clamp(0.0, 1.0);
    debug_assert!((0.0..=1.0).contains(&probability));
    probability
}

/// Majority composed over levels: `group_sizes[0]` is the region size, each next
/// entry the number of child groups a parent takes the majority over. The error rate
/// of a level is `1 - P` of the level below.
pub fn majority_correct_levels(group_sizes: &[u32], epsilon: f64) -> f64 {
    group_sizes
        .iter()
        .fold(1.0 - clamp_probability(epsilon), |correct, &size| {
            majority_correct(size, 1.0 - correct)
        })
}

/// P(at least one of `members` is right): first-valid with a perfect verifier.
pub fn first_valid_correct(members: u32, epsilon: f64) -> f64 {
    1.0 - clamp_probability(epsilon).powi(members.min(MEMBERS_MAX) as i32)
}

/// The seed document's `1 - ε^(n·d)`.
pub fn seed_formula(members: u32, levels: u32, epsilon: f64) -> f64 {
    let exponent = members.saturating_mul(levels).min(MEMBERS_MAX * 3);
    1.0 - clamp_probability(epsilon).powi(exponent as i32)
}

/// One line of the table: a configuration and its theoretical P(correct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityRow {
    /// "majority", "first-valid" or "seed".
    pub aggregation: String,
    /// Group sizes per level, region first.
    pub group_sizes: Vec<u32>,
    /// Per-member error rate.
    pub epsilon: f64,
    /// Theoretical probability that the root answer is correct.
    pub correct: f64,
    /// What was measured under fault injection, when the node has measured it.
    pub measured: Option<f64>,
}

/// The theoretical figures the node prints next to what it measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityTable {
    pub rows: Vec<ReliabilityRow>,
}

impl ReliabilityTable {
    /// Rows for majority (composed over the levels), first-valid (at the region level:
    /// one group of `group_sizes[0]`) and the seed formula (with `n = group_sizes[0]`
    /// and `d` = number of levels), for each `epsilon`.
    pub fn new(group_sizes: &[u32], epsilons: &[f64]) -> ReliabilityTable {
        let region_size = group_sizes.first().copied().unwrap_or(0);
        let levels = u32::try_from(group_sizes.len()).unwrap_or(u32::MAX);
        let mut rows = Vec::with_capacity(epsilons.len() * 3);
        for &epsilon in epsilons {
            let row = |aggregation: &str, sizes: Vec<u32>, correct: f64| ReliabilityRow {
                aggregation: aggregation.into(),
                group_sizes: sizes,
                epsilon,
                correct,
                measured: None,
            };
            rows.push(row(
                "majority",
                group_sizes.to_vec(),
                majority_correct_levels(group_sizes, epsilon),
            ));
            rows.push(row(
                "first-valid",
                vec![region_size],
                first_valid_correct(region_size, epsilon),
            ));
            rows.push(row(
                "seed",
                group_sizes.to_vec(),
                seed_formula(region_size, levels, epsilon),
            ));
        }
        ReliabilityTable { rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    #[test]
    fn binomial_majority() {
        check(majority_correct(3, 0.15), 0.93925);
        check(majority_correct(1, 0.15), 0.85);
        // A tie is a failure: two members need both right.
        check(majority_correct(2, 0.15), 0.85 * 0.85);
        check(majority_correct(0, 0.15), 0.0);
        check(majority_correct(5, 0.0), 1.0);
        check(majority_correct(5, 1.0), 0.0);
        check(majority_correct(3, f64::NAN), 0.0);
        assert!(majority_correct(1024, 0.4) > 0.99999);
    }

    #[test]
    fn levels_compose() {
        check(majority_correct_levels(&[3], 0.15), 0.93925);
        let one = 1.0 - 0.93925;
        check(
            majority_correct_levels(&[3, 3], 0.15),
            majority_correct(3, one),
        );
        check(majority_correct_levels(&[], 0.15), 0.85);
    }

    #[test]
    fn first_valid_and_seed() {
        check(first_valid_correct(3, 0.15), 1.0 - 0.15f64.powi(3));
        check(seed_formula(3, 2, 0.15), 1.0 - 0.15f64.powi(6));
    }

    #[test]
    fn table_serializes() {
        let table = ReliabilityTable::new(&[3, 3, 3], &[0.15]);
        assert_eq!(table.rows.len(), 3);
        check(
            table.rows[0].correct,
            majority_correct_levels(&[3, 3, 3], 0.15),
        );
        let json = serde_json::to_string(&table).unwrap();
        let back: ReliabilityTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
    }
}
