//! `polity genesis init|add-member|show|export`: federation files. A federation
//! file is an `EpochChain`: the genesis (epoch 0's registry, signed by its
//! authorities) and the epoch changes since. `init` and `add-member` write a genesis
//! signed by the authority key in `--authority-dir` (made when missing); every
//! edit re-signs it, and nodes refuse a file whose signatures do not verify.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polity_consensus::registry::{Anchor, sign_genesis};
use polity_proto::{Admission, EpochChain, GetEpochChainRequest, Registry, RegistryMember};
use prost::Message;

use super::{Connection, status_error};
use crate::registry::read_chain;
use crate::runtime::identity::Identity;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum GenesisCommand {
    /// Write a new genesis with its first member.
    Init {
        /// The federation file to write.
        #[arg(long)]
        out: PathBuf,
        /// The federation's name (a label).
        #[arg(long)]
        federation: String,
        /// Where the genesis authority's key lives (made when missing).
        #[arg(long)]
        authority_dir: PathBuf,
        /// open: members approve joins; vote: each member's operator decides.
        #[arg(long, default_value = "open")]
        admission: String,
        #[command(flatten)]
        member: MemberArgs,
    },
    /// Add a member to a genesis (re-signed by the authority).
    AddMember {
        file: PathBuf,
        #[arg(long)]
        authority_dir: PathBuf,
        #[command(flatten)]
        member: MemberArgs,
    },
    /// Check a federation file and print its epochs and current members.
    Show { file: PathBuf },
    /// Write the node's verified epoch chain to a file: a trust anchor for
    /// `polity verify --federation` that includes every change since genesis.
    Export {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        out: PathBuf,
    },
}

/// One member of a genesis.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// The member's public key (64 hex digits)...
    #[arg(long, conflicts_with = "member_dir")]
    pub key: Option<String>,
    /// ... or its node's data dir (its identity key is made there when missing).
    #[arg(long)]
    pub member_dir: Option<PathBuf>,
    #[arg(long)]
    pub region: String,
    #[arg(long)]
    pub continent: String,
    #[arg(long, default_value_t = 1)]
    pub stake: u64,
    /// A capability the member may serve (repeatable).
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
}

impl MemberArgs {
    fn member(&self) -> anyhow::Result<RegistryMember> {
        let public_key = match (&self.key, &self.member_dir) {
            (Some(key), _) => {
                let key: polity_consensus::PublicKey = key
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--key is not 64 hex digits"))?;
                key.0.to_vec()
            }
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Identity::load_or_create(dir)?.public_key().0.to_vec()
            }
            (None, None) => bail!("give the member's --key or --member-dir"),
        };
        Ok(RegistryMember {
            public_key,
            region: self.region.clone(),
            continent: self.continent.clone(),
            stake: self.stake,
            capabilities: self.capabilities.clone(),
        })
    }
}

pub async fn genesis(command: &GenesisCommand) -> anyhow::Result<()> {
    match command {
        GenesisCommand::Init {
            out,
            federation,
            authority_dir,
            admission,
            member,
        } => {
            if out.exists() {
                bail!("{} exists; add members with add-member", out.display());
            }
            let admission = match admission.as_str() {
                "open" => Admission::Open,
                "vote" => Admission::Vote,
                other => bail!("admission {other:?}: use open or vote"),
            };
            let authority = authority(authority_dir)?;
            let registry = Registry {
                federation: federation.clone(),
                epoch: 0,
                previous: Vec::new(),
                members: vec![member.member()?],
                admission: admission as i32,
                authorities: vec![authority.public_key().0.to_vec()],
            };
            write_genesis(out, &registry, &authority)
        }
        GenesisCommand::AddMember {
            file,
            authority_dir,
            member,
        } => add_member(file, &authority(authority_dir)?, member.member()?),
        GenesisCommand::Show { file } => show_federation(file),
        GenesisCommand::Export { connection, out } => export(connection, out).await,
    }
}

fn authority(dir: &Path) -> anyhow::Result<Identity> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Identity::load_or_create(dir)
}

fn add_member(file: &Path, authority: &Identity, member: RegistryMember) -> anyhow::Result<()> {
    let chain = read_chain(file)?;
    if !chain.changes.is_empty() {
        bail!(
            "{} has epoch changes: its members change by proposals now (polity propose)",
            file.display()
        );
    }
    let genesis = chain.genesis.context("no genesis in the file")?;
    let mut registry = Registry::decode(genesis.registry.as_slice())?;
    if registry
        .members
        .iter()
        .any(|m| m.public_key == member.public_key)
    {
        bail!("{} is a member already", hex::encode(&member.public_key));
    }
    registry.members.push(member);
    registry
        .members
        .sort_by(|a, b| a.public_key.cmp(&b.public_key));
    write_genesis(file, &registry, authority)
}

/// Signs `registry` as a genesis and writes it as a federation file.
fn write_genesis(out: &Path, registry: &Registry, authority: &Identity) -> anyhow::Result<()> {
    let genesis = sign_genesis(registry, std::slice::from_ref(authority.signing_key()))
        .context("the genesis is not valid")?;
    let chain = EpochChain {
        genesis: Some(genesis),
        changes: Vec::new(),
    };
    std::fs::write(out, chain.encode_to_vec())
        .with_context(|| format!("writing {}", out.display()))?;
    show_federation(out)
}

async fn export(connection: &Connection, out: &Path) -> anyhow::Result<()> {
    let chain = connection
        .connect()
        .await?
        .get_epoch_chain(GetEpochChainRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let anchor =
        Anchor::from_chain(chain.clone()).context("the node's epoch chain does not verify")?;
    std::fs::write(out, chain.encode_to_vec())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (epoch {})",
        out.display(),
        anchor.current().number()
    );
    Ok(())
}

/// `polity genesis show FILE`: checks a federation file and prints every epoch.
pub fn show_federation(path: &Path) -> anyhow::Result<()> {
    let anchor = Anchor::from_chain(read_chain(path)?)
        .with_context(|| format!("{} does not verify", path.display()))?;
    for epoch in anchor.epochs() {
        let registry = epoch.registry();
        println!(
            "federation {:?} epoch {} ({}), admission {}, {} member(s), total stake {}",
            registry.federation,
            epoch.number(),
            hex::encode(epoch.digest()),
            epoch.admission().as_str_name(),
            registry.members.len(),
            epoch.total_stake()
        );
    }
    for member in anchor.current().members() {
        println!(
            "  {} {}/{} stake {} serves {}",
            hex::encode(&member.public_key),
            member.continent,
            member.region,
            member.stake,
            member.capabilities.join(",")
        );
    }
    Ok(())
}
