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
//! mode 0600): the Admin service refuses everything without one. The helpers here
//! open token-carrying Federation and Admin clients.

pub mod reliability;
pub mod run;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use polity_node::client::{BearerToken, Client};
use polity_proto::admin_client::AdminClient;
use polity_proto::federation_client::FederationClient;
use sha2::Digest;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// An Admin client that sends the bearer token.
pub type Admin = AdminClient<InterceptedService<Channel, BearerToken>>;

/// File (in the testnet dir) holding the API token of a chaos cluster.
pub const TOKEN_FILE: &str = "token";
/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Admin call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A token file and its value.
#[derive(Debug, Clone)]
pub struct Token {
    pub path: PathBuf,
    pub value: String,
}

impl Token {
    /// Writes a fresh random token to `<dir>/token` (mode 0600), creating `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Token> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|error| anyhow::anyhow!("drawing a random token: {error}"))?;
        let value = hex::encode(bytes);
        let path = dir.join(TOKEN_FILE);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(value.as_bytes())?;
        Ok(Token { path, value })
    }

    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let value = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?
            .trim()
            .to_string();
        Ok(Token {
            path: path.to_path_buf(),
            value,
        })
    }

    /// The node flag that makes a node require this token.
    pub fn node_arg(&self) -> String {
        format!("--api-token-file={}", self.path.display())
    }

    pub fn interceptor(&self) -> anyhow::Result<BearerToken> {
        Ok(BearerToken(Some(
            format!("Bearer {}", self.value)
                .parse()
                .context("the token must be printable ASCII")?,
        )))
    }
}

async fn channel(grpc: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(grpc.to_string())
        .with_context(|| format!("bad endpoint {grpc:?}"))?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {grpc}"))
}

/// A Federation client for `grpc` that sends `token` (if any). Its calls have no
/// deadline of their own (a waiting SubmitTask lasts as long as the task): callers
/// bound them.
pub async fn federation<'a>(
    grpc: &str,
    token: impl Into<Option<&'a Token>>,
) -> anyhow::Result<Client> {
    let interceptor = match token.into() {
        Some(token) => token.interceptor()?,
        None => BearerToken(None),
    };
    Ok(
        FederationClient::with_interceptor(channel(grpc, None).await?, interceptor)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// An Admin client for `grpc` that sends `token`; every call gives up after
/// [`ADMIN_TIMEOUT`] (a hung node must not hang the supervisor).
pub async fn admin(grpc: &str, token: &Token) -> anyhow::Result<Admin> {
    Ok(AdminClient::with_interceptor(
        channel(grpc, Some(ADMIN_TIMEOUT)).await?,
        token.interceptor()?,
    ))
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

    #[test]
    fn a_token_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = Token::create(dir.path()).unwrap();
        let mode = std::fs::metadata(&token.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::read(&token.path).unwrap();
        assert_eq!(again.value, token.value);
        assert_eq!(token.value.len(), 48);
        assert!(token.interceptor().is_ok());
        assert!(token.node_arg().starts_with("--api-token-file="));
        // A second create replaces the token.
        let other = Token::create(dir.path()).unwrap();
        assert_ne!(other.value, token.value);
    }
}
