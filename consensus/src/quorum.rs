//! Quorum rules per consensus path, in one place, so that the round that builds a
//! certificate and the verifier that checks it cannot disagree.
//!
//! | path  | a quorum is                                   | tolerates                    |
//! |-------|-----------------------------------------------|------------------------------|
//! | bft   | `n - f` distinct members, `f = (n - 1) / 3`   | `f` byzantine members        |
//! | stake | distinct members with `3 * weight > 2 * W`    | byzantine weight `< W / 3`   |
//! | raft  | a majority of members (`2 * count > n`)       | crash faults only            |
//!
//! For `n < 4`, `f = 0` and a bft quorum is all `n` members. Two bft quorums share at
//! least `n - 2f >= f + 1` members, so at least one honest member; two stake quorums
//! share more than `W / 3` of weight, so some honest weight.

use polity_proto::{ConsensusPath, Member};

/// Byzantine members a bft group of `members` tolerates: `f = (n - 1) / 3`.
pub fn faults_max(members: usize) -> usize {
    members.saturating_sub(1) / 3
}

/// Members in a bft quorum: `n - f`.
pub fn bft_quorum(members: usize) -> usize {
    members - faults_max(members)
}

/// The quorum rule of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumRule {
    path: ConsensusPath,
    weights: Vec<u64>,
    weight_total: u128,
}

impl QuorumRule {
    /// The rule for `path` over `members` (weights matter on the stake path only).
    pub fn new(path: ConsensusPath, members: &[Member]) -> QuorumRule {
        let weights: Vec<u64> = members.iter().map(|member| member.weight).collect();
        let weight_total = weights.iter().map(|&weight| u128::from(weight)).sum();
        QuorumRule {
            path,
            weights,
            weight_total,
        }
    }

    pub fn path(&self) -> ConsensusPath {
        self.path
    }

    pub fn members(&self) -> usize {
        self.weights.len()
    }

    /// Sum of the weights of `member_indices` (distinct, in range).
    pub fn weight_of(&self, member_indices: &[usize]) -> u128 {
        debug_assert!(distinct(member_indices), "members counted once");
        member_indices
            .iter()
            .map(|&index| u128::from(self.weights[index]))
            .sum()
    }

    /// Whether these distinct members decide: matching fast-path observations or
    /// attestations on bft and stake, observations on raft.
    pub fn is_quorum(&self, member_indices: &[usize]) -> bool {
        debug_assert!(member_indices.iter().all(|&index| index < self.members()));
        debug_assert!(distinct(member_indices), "members counted once");
        let count = member_indices.len();
        match self.path {
            ConsensusPath::Bft => count >= bft_quorum(self.members()),
            ConsensusPath::Stake => {
                self.weight_total > 0 && 3 * self.weight_of(member_indices) > 2 * self.weight_total
            }
            ConsensusPath::Raft | ConsensusPath::Unspecified => 2 * count > self.members(),
        }
    }

    /// Whether members that answered something other than `A` prove that no quorum
    /// of members can ever have answered `A` (even with the byzantine members of the
    /// tolerated budget answering `A` too). An honest member only attests a value
    /// different from its own answer when this holds; that is what keeps a fast-path
    /// certificate and an attested certificate from disagreeing.
    ///
    /// bft: more than `2f` dissenters; stake: dissenting weight `>= 2W/3`.
    pub fn excludes_quorum(&self, dissenting_indices: &[usize]) -> bool {
        debug_assert!(distinct(dissenting_indices), "members counted once");
        match self.path {
            ConsensusPath::Bft => dissenting_indices.len() > 2 * faults_max(self.members()),
            ConsensusPath::Stake => 3 * self.weight_of(dissenting_indices) >= 2 * self.weight_total,
            // Raft trusts its members and has no fast path.
            ConsensusPath::Raft | ConsensusPath::Unspecified => true,
        }
    }
}

fn distinct(indices: &[usize]) -> bool {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).all(|pair| pair[0] != pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u64]) -> Vec<Member> {
        weights
            .iter()
            .map(|&weight| Member {
                public_key: vec![],
                weight,
            })
            .collect()
    }

    fn check(path: ConsensusPath, weights: &[u64], signers: &[usize], expected: bool) {
        let rule = QuorumRule::new(path, &members(weights));
        assert_eq!(
            rule.is_quorum(signers),
            expected,
            "{path:?} {weights:?} {signers:?}"
        );
    }

    #[test]
    fn bft_quorum_is_n_minus_f() {
        let table: Vec<(usize, usize, usize)> = (1..=10)
            .map(|n| (n, faults_max(n), bft_quorum(n)))
            .collect();
        assert_eq!(
            table,
            vec![
                (1, 0, 1),
                (2, 0, 2),
                (3, 0, 3),
                (4, 1, 3),
                (5, 1, 4),
                (6, 1, 5),
                (7, 2, 5),
                (8, 2, 6),
                (9, 2, 7),
                (10, 3, 7)
            ]
        );
        for n in 1..=200 {
            // Two quorums always share an honest member.
            assert!(2 * bft_quorum(n) - n > faults_max(n), "n = {n}");
        }
        check(ConsensusPath::Bft, &[1; 4], &[0, 1, 2], true);
        check(ConsensusPath::Bft, &[1; 4], &[0, 1], false);
        check(ConsensusPath::Bft, &[1], &[0], true);
    }

    #[test]
    fn stake_needs_more_than_two_thirds() {
        check(ConsensusPath::Stake, &[1, 1, 1], &[0, 1], false);
        check(ConsensusPath::Stake, &[1, 1, 1], &[0, 1, 2], true);
        check(ConsensusPath::Stake, &[10, 1, 1, 1], &[0], true);
        check(ConsensusPath::Stake, &[0, 0], &[0, 1], false);
        check(
            ConsensusPath::Stake,
            &[u64::MAX, u64::MAX, 1],
            &[0, 1],
            true,
        );
    }

    #[test]
    fn raft_needs_a_majority() {
        check(ConsensusPath::Raft, &[1; 4], &[0, 1], false);
        check(ConsensusPath::Raft, &[1; 4], &[0, 1, 2], true);
        check(ConsensusPath::Raft, &[1; 3], &[0, 1], true);
    }

    #[test]
    fn dissent_that_excludes_a_quorum() {
        let bft = QuorumRule::new(ConsensusPath::Bft, &members(&[1; 4]));
        assert!(!bft.excludes_quorum(&[0, 1]));
        assert!(bft.excludes_quorum(&[0, 1, 2]));
        let single = QuorumRule::new(ConsensusPath::Bft, &members(&[1]));
        assert!(single.excludes_quorum(&[0]));
        let stake = QuorumRule::new(ConsensusPath::Stake, &members(&[1, 1, 1]));
        assert!(!stake.excludes_quorum(&[0]));
        assert!(stake.excludes_quorum(&[0, 1]));
    }
}
