//! The federation a local testnet runs as: every node's identity key is made before
//! the node starts, and one genesis lists them all (admission open, stake 1, the
//! testnet's capabilities), signed by an authority key kept in the testnet's dir.
//! Nodes start with `--genesis`, so seats, regions and stakes come from it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use polity_consensus::registry::sign_genesis;
use polity_node::runtime::identity::Identity;
use polity_proto::{Admission, EpochChain, Registry, RegistryMember};
use prost::Message;

/// The genesis file in a testnet's dir.
pub const GENESIS_FILE: &str = "genesis.pb";

/// A node of the genesis: its data dir (its key is made there) and its place.
#[derive(Debug, Clone)]
pub struct Founder {
    pub data_dir: PathBuf,
    pub region: String,
    pub continent: String,
}

/// Makes every founder's identity key and writes `dir/genesis.pb`: a registry of
/// them all serving `capabilities` (specs `NAME=EXECUTOR` or bare names). Returns
/// the file's path.
pub fn write_genesis(
    dir: &Path,
    founders: &[Founder],
    capabilities: &[String],
) -> anyhow::Result<PathBuf> {
    let names: Vec<String> = capabilities
        .iter()
        .map(|spec| spec.split('=').next().unwrap_or(spec).to_string())
        .collect();
    let mut members = Vec::with_capacity(founders.len());
    for founder in founders {
        std::fs::create_dir_all(&founder.data_dir)
            .with_context(|| format!("creating {}", founder.data_dir.display()))?;
        let identity = Identity::load_or_create(&founder.data_dir)?;
        members.push(RegistryMember {
            public_key: identity.public_key().0.to_vec(),
            region: founder.region.clone(),
            continent: founder.continent.clone(),
            stake: 1,
            capabilities: names.clone(),
        });
    }
    members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    let authority_dir = dir.join("authority");
    std::fs::create_dir_all(&authority_dir)
        .with_context(|| format!("creating {}", authority_dir.display()))?;
    let authority = Identity::load_or_create(&authority_dir)?;
    let registry = Registry {
        federation: "testnet".into(),
        epoch: 0,
        previous: Vec::new(),
        members,
        admission: Admission::Open as i32,
        authorities: vec![authority.public_key().0.to_vec()],
    };
    let genesis = sign_genesis(&registry, std::slice::from_ref(authority.signing_key()))?;
    let path = dir.join(GENESIS_FILE);
    let chain = EpochChain {
        genesis: Some(genesis),
        changes: Vec::new(),
    };
    std::fs::write(&path, chain.encode_to_vec())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The node flags that make a node follow `genesis`.
pub fn genesis_args(genesis: &Path) -> Vec<String> {
    vec!["--genesis".into(), genesis.display().to_string()]
}
