//! `polity propose join|leave` and `polity genesis show`: registry changes as a
//! member's operator asks for them. The proposer fetches the node's epoch chain,
//! checks it (against its own federation file when given), builds the next
//! registry, signs it with its own key (a join proves the key is held; a leave is
//! the member's own request), and submits the registry task; the federation's
//! members decide it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use polity_consensus::registry::{Anchor, Epoch, registry_task, sign_proposal};
use polity_proto::{GetEpochChainRequest, Registry, RegistryMember, SubmitTaskRequest, TaskState};
use prost::Message;

use super::{Connection, status_error};
use crate::registry::read_chain;
use crate::runtime::identity::Identity;

/// Time the federation gets to decide a proposal.
const PROPOSAL_DEADLINE_MS: u64 = 30_000;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProposeCommand {
    /// Ask the federation to admit the node whose data dir is --data-dir.
    Join {
        #[command(flatten)]
        proposer: Proposer,
        #[arg(long)]
        region: String,
        #[arg(long)]
        continent: String,
        /// The stake asked for; the members decide whether to grant it.
        #[arg(long, default_value_t = 1)]
        stake: u64,
        /// A capability the member may serve (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
    /// Ask the federation to let the node whose data dir is --data-dir leave.
    Leave {
        #[command(flatten)]
        proposer: Proposer,
    },
}

/// Who proposes: the member's own key, and the anchor it trusts.
#[derive(Debug, Clone, clap::Args)]
pub struct Proposer {
    /// The member's data dir: its identity key signs the proposal.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The federation file the proposer trusts; the node's chain must start at
    /// its genesis.
    #[arg(long)]
    pub federation: Option<PathBuf>,
    /// Print the proposed registry's digest and stop: under `vote` admission the
    /// members' operators vote on it (`polity vote`) before the proposal is sent.
    #[arg(long)]
    pub digest_only: bool,
}

/// Proposes the change, waits for the decision, and returns the new epoch.
pub async fn propose(connection: &Connection, command: &ProposeCommand) -> anyhow::Result<u64> {
    let proposer = match command {
        ProposeCommand::Join { proposer, .. } | ProposeCommand::Leave { proposer } => proposer,
    };
    let identity = Identity::load_or_create(&proposer.data_dir)?;
    let mut client = connection.connect().await?;
    let chain = client
        .get_epoch_chain(GetEpochChainRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if let Some(path) = &proposer.federation
        && read_chain(path)?.genesis != chain.genesis
    {
        bail!(
            "the node follows another federation than {}",
            path.display()
        );
    }
    let anchor = Anchor::from_chain(chain).context("the node's epoch chain does not verify")?;
    let current = anchor.current();
    let next = next_registry(current, &identity, command)?;
    let digest = polity_consensus::registry::registry_digest(&next.encode_to_vec());
    println!(
        "proposing registry epoch {} ({})",
        next.epoch,
        hex::encode(digest)
    );
    if proposer.digest_only {
        return Ok(current.number());
    }
    let proposal = sign_proposal(&next, identity.signing_key()).encode_to_vec();
    let spec = registry_task(current, proposal, PROPOSAL_DEADLINE_MS);
    let record = client
        .submit_task(SubmitTaskRequest {
            capability: spec.capability,
            payload: spec.payload,
            scope: spec.scope,
            replication: spec.replication,
            aggregation: spec.aggregation,
            policy: spec.policy,
            deadline_ms: spec.deadline_ms,
            nonce: spec.nonce,
            wait: true,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if record.state != TaskState::Decided as i32 || !record.error.is_empty() {
        bail!(
            "the federation did not approve: {} {}",
            TaskState::try_from(record.state).map_or("?", |s| s.as_str_name()),
            record.error
        );
    }
    println!(
        "approved: the registry moves to epoch {} ({})",
        next.epoch,
        hex::encode(polity_consensus::registry::registry_digest(
            &next.encode_to_vec()
        ))
    );
    Ok(next.epoch)
}

/// `current` with this node joined or gone, as the next epoch.
fn next_registry(
    current: &Epoch,
    identity: &Identity,
    command: &ProposeCommand,
) -> anyhow::Result<Registry> {
    let key = identity.public_key().0.to_vec();
    let mut next = current.registry().clone();
    next.epoch += 1;
    next.previous = current.digest().to_vec();
    let position = next.members.iter().position(|m| m.public_key == key);
    match (command, position) {
        (ProposeCommand::Join { .. }, Some(_)) => bail!("this node is a member already"),
        (ProposeCommand::Leave { .. }, None) => bail!("this node is no member"),
        (ProposeCommand::Leave { .. }, Some(index)) => {
            next.members.remove(index);
        }
        (
            ProposeCommand::Join {
                region,
                continent,
                stake,
                capabilities,
                ..
            },
            None,
        ) => {
            next.members.push(RegistryMember {
                public_key: key,
                region: region.clone(),
                continent: continent.clone(),
                stake: *stake,
                capabilities: capabilities.clone(),
            });
            next.members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        }
    }
    Ok(next)
}

/// `polity vote`: this node's operator's ballot on a proposed registry.
#[derive(Debug, Clone, clap::Args)]
pub struct VoteArgs {
    /// The proposed registry's digest (`polity propose ... --digest-only` prints it).
    #[arg(long)]
    pub registry: String,
    /// Refuse the proposal (default: approve).
    #[arg(long)]
    pub reject: bool,
}

pub async fn vote(connection: &Connection, args: &VoteArgs) -> anyhow::Result<()> {
    let digest = hex::decode(&args.registry)
        .ok()
        .filter(|digest| digest.len() == 32)
        .ok_or_else(|| anyhow::anyhow!("--registry is not 64 hex digits"))?;
    let response = connection
        .connect_admin()
        .await?
        .vote(polity_proto::VoteRequest {
            registry_digest: digest,
            approve: !args.reject,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{} registry {}; this node holds {} ballot(s)",
        if args.reject { "rejected" } else { "approved" },
        args.registry,
        response.ballots
    );
    Ok(())
}
