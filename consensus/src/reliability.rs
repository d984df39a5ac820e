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
//!   readers can see the gap;
//! - the same under colluding wrong members ([`majority_wrong_levels`]), and a
//!   quorum model closer to what the federation runs: a region group decides only
//!   when enough members agree for its path ([`quorum_outcome`],
//!   [`decisive_agreement`], [`equal_weight_quorum`]),
//!   a parent group over representatives of its decided children
//!   ([`parent_outcome`]);
//! - the Wilson score interval, for reporting measured rates next to the theory
//!   (`polity-testnet chaos reliability`).
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

/// P(a strict majority of the root is WRONG) over `group_sizes` (as
/// [`majority_correct_levels`]) when wrong members collude, i.e. every wrong member
/// gives the same wrong answer: a wrong majority is then a majority of the wrong, so
/// the figure is [`majority_correct_levels`] with `1 - epsilon`. With distinct wrong
/// answers it is an upper bound. Correct, wrong and "no majority" add up to 1.
pub fn majority_wrong_levels(group_sizes: &[u32], epsilon: f64) -> f64 {
    majority_correct_levels(group_sizes, 1.0 - clamp_probability(epsilon))
}

/// P(at least `quorum` of `members` independent trials succeed), each with
/// probability `success` (NaN counts as 0; `members` capped at [`MEMBERS_MAX`]).
pub fn at_least(members: u32, quorum: u32, success: f64) -> f64 {
    let members = members.min(MEMBERS_MAX);
    let success = if success.is_nan() {
        0.0
    } else {
        success.clamp(0.0, 1.0)
    };
    if quorum > members {
        return 0.0;
    }
    let probability: f64 = (quorum..=members)
        .map(|k| {
            binomial(members, k)
                * success.powi(k as i32)
                * (1.0 - success).powi((members - k) as i32)
        })
        .sum();
    probability.clamp(0.0, 1.0)
}

/// Members of an equal-weight group of `members` that decide on `path`: bft
/// `n - f` with `f = (n - 1) / 3`, stake the fewest whose weight is above two
/// thirds, raft a strict majority (see `quorum.rs`). Zero members: 1 (never met).
pub fn equal_weight_quorum(path: polity_proto::ConsensusPath, members: u32) -> u32 {
    use polity_proto::ConsensusPath;
    if members == 0 {
        return 1;
    }
    match path {
        ConsensusPath::Bft => {
            u32::try_from(crate::quorum::bft_quorum(members as usize)).unwrap_or(u32::MAX)
        }
        ConsensusPath::Stake => 2 * members / 3 + 1,
        ConsensusPath::Raft | ConsensusPath::Unspecified => members / 2 + 1,
    }
}

/// The fewest members answering one value `v` that make an equal-weight group of
/// `members` decide `v` when every member answers and the others agree on one other
/// value (colluding), as rounds run (`round.rs`): `v` must be the strict majority
/// (the collector's report aggregates all observations), and either `v`'s members
/// alone are a quorum (fast path) or the dissenters attest `v` too, which an honest
/// member does only when `v`'s members rule out a quorum for its own answer
/// (`QuorumRule::excludes_quorum`: bft more than `2f`, stake at least two thirds of
/// the weight). Raft commits the majority value. So: bft `max(⌊n/2⌋+1, 2f+1)`,
/// stake `max(⌊n/2⌋+1, ⌈2n/3⌉)`, raft `⌊n/2⌋+1`. For three members every path
/// decides by plain majority (bft: f = 0, so any dissent lets the minority attest).
pub fn decisive_agreement(path: polity_proto::ConsensusPath, members: u32) -> u32 {
    use polity_proto::ConsensusPath;
    if members == 0 {
        return 1;
    }
    let majority = members / 2 + 1;
    let quorum = equal_weight_quorum(path, members);
    let attested = match path {
        ConsensusPath::Bft => {
            let faults =
                u32::try_from(crate::quorum::faults_max(members as usize)).unwrap_or(u32::MAX / 2);
            2 * faults + 1
        }
        ConsensusPath::Stake => (2 * members).div_ceil(3),
        ConsensusPath::Raft | ConsensusPath::Unspecified => majority,
    };
    majority.max(attested.min(quorum))
}

/// How one group's decision can end, as probabilities that add up to at most 1
/// (the rest: no decision).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Decided the correct value.
    pub correct: f64,
    /// Decided a wrong value.
    pub wrong: f64,
}

impl Outcome {
    /// Decided nothing.
    pub fn undecided(&self) -> f64 {
        (1.0 - self.correct - self.wrong).max(0.0)
    }
}

/// The quorum model of one region group: `members` independent members, each wrong
/// with probability `epsilon`, wrong members colluding (one wrong value), and a
/// group that decides only when `quorum` members agree (no extra replicas).
pub fn quorum_outcome(members: u32, quorum: u32, epsilon: f64) -> Outcome {
    let epsilon = clamp_probability(epsilon);
    Outcome {
        correct: at_least(members, quorum, 1.0 - epsilon),
        wrong: at_least(members, quorum, epsilon),
    }
}

/// The quorum model of a parent group over `children` identical, independent child
/// groups, each ending as `child`: every decided child sends `representatives`
/// members who all observe its value; the parent decides a value when the members
/// observing it reach `quorum(n)` for `n` = representatives × decided children.
/// Returns (all children decided and the parent decided correctly, the parent
/// decided a wrong value): a parent formed from fewer children is degraded, so
/// only the first counts as a full decision. `children` is capped at 64.
pub fn parent_outcome(
    children: u32,
    representatives: u32,
    child: Outcome,
    quorum: impl Fn(u32) -> u32,
) -> Outcome {
    let children = children.min(64);
    let correct = child.correct.clamp(0.0, 1.0);
    let wrong = child.wrong.clamp(0.0, 1.0 - correct);
    let undecided = (1.0 - correct - wrong).max(0.0);
    let mut outcome = Outcome {
        correct: 0.0,
        wrong: 0.0,
    };
    for right in 0..=children {
        for wrongs in 0..=children - right {
            let silent = children - right - wrongs;
            let probability = binomial(children, right)
                * binomial(children - right, wrongs)
                * correct.powi(right as i32)
                * wrong.powi(wrongs as i32)
                * undecided.powi(silent as i32);
            let members = representatives.saturating_mul(right + wrongs);
            if members == 0 {
                continue;
            }
            let needed = quorum(members);
            if silent == 0 && representatives.saturating_mul(right) >= needed {
                outcome.correct += probability;
            }
            if representatives.saturating_mul(wrongs) >= needed {
                outcome.wrong += probability;
            }
        }
    }
    outcome.correct = outcome.correct.clamp(0.0, 1.0);
    outcome.wrong = outcome.wrong.clamp(0.0, 1.0);
    outcome
}

/// A two-sided confidence interval for a proportion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }
}

/// The normal quantile of a two-sided 95 % interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `successes` out of `trials` at normal quantile `z`
/// (use [`Z_95`]). It stays inside [0, 1] and behaves at 0 and `trials` successes,
/// where the plain normal interval collapses to a point. No trials: [0, 1].
/// `successes` above `trials` count as `trials`; a negative or NaN `z` counts as 0.
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> Interval {
    if trials == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let z = if z.is_nan() { 0.0 } else { z.max(0.0) };
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At the ends the bound is exactly 0 or 1 (the float sum may miss it).
    let successes = successes.min(trials);
    Interval {
        low: if successes == 0 {
            0.0
        } else {
            (center - half).clamp(0.0, 1.0)
        },
        high: if successes == trials {
            1.0
        } else {
            (center + half).clamp(0.0, 1.0)
        },
    }
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
    fn wrong_majority_under_collusion() {
        // Three colluding members: wrong when at least two are wrong.
        let e: f64 = 0.3;
        check(
            majority_wrong_levels(&[3], e),
            3.0 * e * e * (1.0 - e) + e.powi(3),
        );
        for sizes in [&[3u32][..], &[3, 3], &[5, 3, 3], &[2]] {
            let sum = majority_correct_levels(sizes, e) + majority_wrong_levels(sizes, e);
            assert!(sum <= 1.0 + 1e-12, "{sizes:?}: {sum}");
        }
        // Odd groups always have a majority: correct and wrong add up to 1.
        check(
            majority_correct_levels(&[3], e) + majority_wrong_levels(&[3], e),
            1.0,
        );
    }

    #[test]
    fn binomial_tails_and_quorums() {
        check(at_least(3, 3, 0.7), 0.343);
        check(at_least(3, 2, 0.7), majority_correct(3, 0.3));
        check(at_least(3, 0, 0.7), 1.0);
        check(at_least(3, 4, 0.7), 0.0);
        check(at_least(3, 1, f64::NAN), 0.0);
        use polity_proto::ConsensusPath::{Bft, Raft, Stake};
        let quorums: Vec<(u32, u32, u32)> = (1..=7)
            .map(|n| {
                (
                    equal_weight_quorum(Bft, n),
                    equal_weight_quorum(Stake, n),
                    equal_weight_quorum(Raft, n),
                )
            })
            .collect();
        assert_eq!(
            quorums,
            [
                (1, 1, 1),
                (2, 2, 2),
                (3, 3, 2),
                (3, 3, 3),
                (4, 4, 3),
                (5, 5, 4),
                (5, 5, 4)
            ]
        );
        assert_eq!(equal_weight_quorum(Bft, 0), 1);
        // The stake rule as quorum.rs states it: 3 * count > 2 * n, the fewest such.
        for n in 1..=50u32 {
            let q = equal_weight_quorum(Stake, n);
            assert!(3 * q > 2 * n && 3 * (q - 1) <= 2 * n, "n = {n}");
        }
    }

    #[test]
    fn decisive_agreement_with_attestations() {
        use polity_proto::ConsensusPath::{Bft, Raft, Stake};
        let table: Vec<(u32, u32, u32)> = (1..=9)
            .map(|n| {
                (
                    decisive_agreement(Bft, n),
                    decisive_agreement(Stake, n),
                    decisive_agreement(Raft, n),
                )
            })
            .collect();
        assert_eq!(
            table,
            [
                (1, 1, 1),
                (2, 2, 2),
                (2, 2, 2),
                (3, 3, 3),
                (3, 4, 3),
                (4, 4, 4),
                (5, 5, 4),
                (5, 6, 5),
                (5, 6, 5)
            ]
        );
        for n in 1..=100u32 {
            for path in [Bft, Stake, Raft] {
                let t = decisive_agreement(path, n);
                // Never more than a quorum, always a strict majority.
                assert!(
                    t <= equal_weight_quorum(path, n) && 2 * t > n,
                    "{path:?} {n}"
                );
            }
        }
        assert_eq!(decisive_agreement(Bft, 0), 1);
    }

    #[test]
    fn region_and_parent_quorum_models() {
        // bft over 3: all three must agree.
        let region = quorum_outcome(3, 3, 0.3);
        check(region.correct, 0.343);
        check(region.wrong, 0.027);
        check(region.undecided(), 1.0 - 0.343 - 0.027);
        // Raft over 3 is the plain majority.
        let raft = quorum_outcome(3, 2, 0.3);
        check(raft.correct, majority_correct(3, 0.3));
        check(raft.wrong, majority_wrong_levels(&[3], 0.3));
        // A parent of one child with one representative decides what the child did.
        let one = parent_outcome(1, 1, region, |n| n / 2 + 1);
        check(one.correct, region.correct);
        check(one.wrong, region.wrong);
        // Three always-decided children, majority with two representatives each:
        // the plain majority over three.
        let sure = Outcome {
            correct: 0.8,
            wrong: 0.2,
        };
        let parent = parent_outcome(3, 2, sure, |n| n / 2 + 1);
        check(parent.correct, majority_correct(3, 0.2));
        check(parent.wrong, majority_correct(3, 0.8));
        // bft over six representatives needs five: all three children agree.
        let strict = parent_outcome(3, 2, sure, |n| {
            equal_weight_quorum(polity_proto::ConsensusPath::Bft, n)
        });
        check(strict.correct, 0.8f64.powi(3));
        check(strict.wrong, 0.2f64.powi(3));
        // Undecided children: the parent is never a full decision, but a wrong value
        // can still be decided by the children that did decide.
        let flaky = Outcome {
            correct: 0.0,
            wrong: 0.5,
        };
        let parent = parent_outcome(2, 2, flaky, |n| n / 2 + 1);
        check(parent.correct, 0.0);
        check(parent.wrong, 1.0 - 0.25);
    }

    #[test]
    fn wilson_intervals() {
        // Reference values (Wilson 1927; e.g. 81 of 263: [0.2553, 0.3662]).
        let interval = wilson_interval(81, 263, Z_95);
        assert!((interval.low - 0.2553).abs() < 1e-4, "{interval:?}");
        assert!((interval.high - 0.3662).abs() < 1e-4, "{interval:?}");
        // All successes: the upper end is 1 and the lower end is below it.
        let all = wilson_interval(30, 30, Z_95);
        assert_eq!(all.high, 1.0);
        assert!(all.contains(1.0));
        assert!((all.low - 0.8865).abs() < 1e-4, "{all:?}");
        let none = wilson_interval(0, 30, Z_95);
        assert_eq!(none.low, 0.0);
        assert!((none.high - 0.1135).abs() < 1e-4, "{none:?}");
        assert_eq!(
            wilson_interval(0, 0, Z_95),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
        // Bad input is clamped, not a panic.
        assert_eq!(wilson_interval(40, 30, Z_95), all);
        let point = wilson_interval(15, 30, f64::NAN);
        check(point.low, 0.5);
        check(point.high, 0.5);
        assert!(interval.contains(0.3) && !interval.contains(0.4));
        // Narrower with more trials.
        let wide = wilson_interval(5, 10, Z_95);
        let narrow = wilson_interval(500, 1000, Z_95);
        assert!(narrow.high - narrow.low < wide.high - wide.low);
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
