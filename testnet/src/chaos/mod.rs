//! `polity-testnet chaos`: fault injection against real node processes.
//!
//! - [`reliability`]: `chaos reliability`, measured P(correct) under an injected
//!   per-member error rate ε, with its Wilson interval, next to the theory.
//! - [`run`]: `chaos run`, a steady task load while a seeded schedule kills and
//!   restarts nodes and partitions the cluster, then a check that no certified
//!   result was lost; with `--autoscale`, a supervisor that spawns and retires
//!   nodes from what the nodes' Admin status says.
//!
//! Every node of a chaos cluster runs with an API token (written to `<dir>/token`,
//! mode 0600, see [`crate::rpc::Token`]): the Admin service refuses everything
//! without one.

pub mod reliability;
pub mod run;
pub mod schedule;

use sha2::Digest;

#[derive(Debug, clap::Subcommand)]
pub enum ChaosCommand {
    /// Measure P(correct) under an injected per-member error rate ε and compare it
    /// with the theory.
    Reliability(reliability::ReliabilityArgs),
    /// Steady load while nodes are killed, restarted and partitioned on a seeded
    /// schedule; then check that no certified result was lost.
    Run(run::RunArgs),
}

/// `polity-testnet chaos`: a subcommand, or, without one, `reliability` with its
/// flags (`polity-testnet chaos --tasks K --epsilon E --replicas N --scope ... --path ...`).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub command: Option<ChaosCommand>,
    #[command(flatten)]
    pub reliability: reliability::ReliabilityArgs,
}

pub async fn cli(args: ChaosArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ChaosCommand::Reliability(args)) => reliability::cli(args).await,
        Some(ChaosCommand::Run(args)) => run::cli(args).await,
        None => reliability::cli(args.reliability).await,
    }
}

/// Hex SHA-256 of `payload`: what the builtin `sha256` executor answers, computed
/// here as the ground truth.
pub fn sha256_hex(payload: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(payload))
}

/// The fault seed of node `index` in a run with seed `seed` (SplitMix64 of both, so
/// neighbouring seeds and indices give unrelated streams).
pub fn node_seed(seed: u64, index: usize) -> u64 {
    schedule::SplitMix64::new(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_is_the_hex_sha256() {
        assert_eq!(
            sha256_hex(b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn node_seeds_differ_and_repeat() {
        let seeds: std::collections::BTreeSet<u64> = (0..100).map(|i| node_seed(7, i)).collect();
        assert_eq!(seeds.len(), 100);
        assert_eq!(node_seed(7, 3), node_seed(7, 3));
        assert_ne!(node_seed(7, 3), node_seed(8, 3));
    }
}
