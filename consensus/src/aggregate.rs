//! Aggregation: how the observations of a group become one value.
//!
//! Every function here is deterministic in the *set* of ballots: ballots are put in
//! member order first, and every tie has an explicit, documented break. A verifier
//! recomputing a report from a certificate gets byte-identical results.

use polity_proto::{Aggregation, TallyEntry};

/// Decides whether an answer is acceptable for `first-valid` aggregation (a task-
/// specific check, e.g. "this is a valid proof").
pub trait AnswerVerifier {
    fn accepts(&self, answer: &[u8]) -> bool;
}

impl<F: Fn(&[u8]) -> bool> AnswerVerifier for F {
    fn accepts(&self, answer: &[u8]) -> bool {
        self(answer)
    }
}

/// One member's contribution: its answer, or `None` when its executor failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ballot<'a> {
    /// Position in the group's member order; unique among the ballots.
    pub member_index: usize,
    /// The member's weight (`Member::weight`), summed per answer in the tally.
    pub weight: u64,
    pub answer: Option<&'a [u8]>,
}

/// The result of aggregating a set of ballots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The decided value; `None` when the function finds none (no answers, no strict
    /// majority, no numeric answer, no valid answer).
    pub value: Option<Vec<u8>>,
    /// One entry per distinct answer, sorted by answer bytes. Errors are not counted.
    pub tally: Vec<TallyEntry>,
}

/// The aggregation actually applied: `Unspecified` means majority.
pub fn normalize(aggregation: Aggregation) -> Aggregation {
    match aggregation {
        Aggregation::Unspecified => Aggregation::Majority,
        other => other,
    }
}

/// Aggregates `ballots` with `aggregation`.
///
/// - majority: the answer given by more than half of the non-error ballots;
/// - tally: the most frequent answer, ties broken by the smallest answer bytes;
/// - median: answers parsed as finite decimal numbers (UTF-8, surrounding whitespace
///   ignored), the lower median; ties in number broken by answer bytes, then member
///   order; the value is the chosen answer's original bytes; non-numeric answers are
///   ignored;
/// - first-valid: the first answer in member order that `verifier` accepts (every
///   answer when there is no verifier).
pub fn aggregate(
    aggregation: Aggregation,
    ballots: &[Ballot<'_>],
    verifier: Option<&dyn AnswerVerifier>,
) -> Outcome {
    let mut ordered: Vec<Ballot<'_>> = ballots.to_vec();
    ordered.sort_by_key(|ballot| ballot.member_index);
    debug_assert!(
        ordered
            .windows(2)
            .all(|pair| pair[0].member_index < pair[1].member_index),
        "one ballot per member"
    );
    let tally = tally(&ordered);
    let answered: u64 = tally.iter().map(|entry| u64::from(entry.count)).sum();
    let value = match normalize(aggregation) {
        Aggregation::Majority | Aggregation::Unspecified => tally
            .iter()
            .find(|entry| u64::from(entry.count) * 2 > answered)
            .map(|entry| entry.answer.clone()),
        Aggregation::Tally => {
            let count_max = tally.iter().map(|entry| entry.count).max();
            // Sorted by bytes, so the first entry with the top count is the smallest.
            tally
                .iter()
                .find(|entry| Some(entry.count) == count_max)
                .map(|entry| entry.answer.clone())
        }
        Aggregation::Median => median(&ordered),
        Aggregation::FirstValid => ordered
            .iter()
            .filter_map(|ballot| ballot.answer)
            .find(|answer| verifier.is_none_or(|verifier| verifier.accepts(answer)))
            .map(<[u8]>::to_vec),
    };
    debug_assert!(
        value
            .as_ref()
            .is_none_or(|value| tally.iter().any(|entry| &entry.answer == value)),
        "the value is one of the answers"
    );
    Outcome { value, tally }
}

fn tally(ordered: &[Ballot<'_>]) -> Vec<TallyEntry> {
    let mut entries: std::collections::BTreeMap<&[u8], TallyEntry> = Default::default();
    for ballot in ordered {
        if let Some(answer) = ballot.answer {
            let entry = entries.entry(answer).or_insert_with(|| TallyEntry {
                answer: answer.to_vec(),
                count: 0,
                weight: 0,
            });
            entry.count = entry.count.saturating_add(1);
            entry.weight = entry.weight.saturating_add(ballot.weight);
        }
    }
    entries.into_values().collect()
}

/// Parses an answer as a finite decimal number.
pub fn parse_number(answer: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(answer).ok()?;
    let number: f64 = text.trim().parse().ok()?;
    number.is_finite().then_some(number)
}

fn median(ordered: &[Ballot<'_>]) -> Option<Vec<u8>> {
    let mut numbers: Vec<(f64, &[u8], usize)> = ordered
        .iter()
        .filter_map(|ballot| {
            let answer = ballot.answer?;
            Some((parse_number(answer)?, answer, ballot.member_index))
        })
        .collect();
    numbers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    let lower_median = numbers.len().checked_sub(1)? / 2;
    Some(numbers[lower_median].1.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ballots(answers: &[Option<&'static str>]) -> Vec<Ballot<'static>> {
        answers
            .iter()
            .enumerate()
            .map(|(member_index, answer)| Ballot {
                member_index,
                weight: 1,
                answer: answer.map(str::as_bytes),
            })
            .collect()
    }

    fn check(aggregation: Aggregation, answers: &[Option<&'static str>], expected: Option<&str>) {
        let outcome = aggregate(aggregation, &ballots(answers), None);
        assert_eq!(
            outcome.value.as_deref(),
            expected.map(str::as_bytes),
            "{aggregation:?} {answers:?}"
        );
    }

    #[test]
    fn majority() {
        check(
            Aggregation::Majority,
            &[Some("a"), Some("a"), Some("b")],
            Some("a"),
        );
        check(Aggregation::Majority, &[Some("a"), Some("b")], None);
        check(Aggregation::Majority, &[Some("a"), None, None], Some("a"));
        check(
            Aggregation::Unspecified,
            &[Some("a"), Some("a"), Some("b")],
            Some("a"),
        );
        check(Aggregation::Majority, &[None], None);
        check(Aggregation::Majority, &[], None);
    }

    #[test]
    fn tally_breaks_ties_by_smallest_bytes() {
        check(
            Aggregation::Tally,
            &[Some("b"), Some("a"), Some("c"), Some("b")],
            Some("b"),
        );
        check(Aggregation::Tally, &[Some("b"), Some("a")], Some("a"));
        let outcome = aggregate(
            Aggregation::Tally,
            &ballots(&[Some("b"), Some("a"), Some("b")]),
            None,
        );
        let counts: Vec<(&[u8], u32)> = outcome
            .tally
            .iter()
            .map(|entry| (entry.answer.as_slice(), entry.count))
            .collect();
        assert_eq!(counts, vec![(&b"a"[..], 1), (&b"b"[..], 2)]);
    }

    #[test]
    fn median_is_lower_median_of_numbers() {
        check(
            Aggregation::Median,
            &[Some("3"), Some("1"), Some("2")],
            Some("2"),
        );
        check(
            Aggregation::Median,
            &[Some("4"), Some("1"), Some("2"), Some("3")],
            Some("2"),
        );
        check(
            Aggregation::Median,
            &[Some("x"), Some(" 10\n"), None],
            Some(" 10\n"),
        );
        check(Aggregation::Median, &[Some("NaN"), Some("inf")], None);
        check(Aggregation::Median, &[Some("2.0"), Some("2")], Some("2"));
    }

    #[test]
    fn first_valid_in_member_order() {
        check(
            Aggregation::FirstValid,
            &[None, Some("b"), Some("a")],
            Some("b"),
        );
        let even = |answer: &[u8]| answer.len().is_multiple_of(2);
        let outcome = aggregate(
            Aggregation::FirstValid,
            &ballots(&[Some("x"), Some("yy"), Some("zz")]),
            Some(&even),
        );
        assert_eq!(outcome.value.as_deref(), Some(&b"yy"[..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The outcome depends on the set of ballots, not on their arrival order.
        #[test]
        fn aggregation_is_order_independent(
            (answers, order) in proptest::collection::vec(proptest::option::of(0u8..4), 0..9)
                .prop_flat_map(|answers| {
                    let order: Vec<usize> = (0..answers.len()).collect();
                    (Just(answers), Just(order).prop_shuffle())
                }),
            kind in 1i32..5,
        ) {
            // Numeric answers with spelling variants ("1", "1.0") exercise median ties.
            let texts: Vec<Option<String>> = answers
                .iter()
                .map(|a| a.map(|n| if n == 3 { "1.0".to_string() } else { n.to_string() }))
                .collect();
            let ballots: Vec<Ballot<'_>> = texts.iter().enumerate().map(|(member_index, answer)| Ballot {
                member_index, weight: 1 + member_index as u64, answer: answer.as_deref().map(str::as_bytes),
            }).collect();
            let aggregation = Aggregation::try_from(kind).unwrap();
            let permuted: Vec<Ballot<'_>> = order.iter().map(|&index| ballots[index]).collect();
            prop_assert_eq!(aggregate(aggregation, &ballots, None), aggregate(aggregation, &permuted, None));
        }
    }
}
