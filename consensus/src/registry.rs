//! Who may vote: the federation's registry (DESIGN.md §8, SIGNING.md "The registry").
//!
//! A registry is the member set of one *epoch*: each member's key, region,
//! continent, stake and the capabilities it may serve. Epoch 0 is the **genesis**,
//! signed by the genesis authorities; every later epoch is an [`EpochChange`]: the
//! next registry plus the certificate of the global bft task in which the previous
//! epoch's members approved it. A verifier that holds the genesis follows the chain
//! of changes as a light client follows validator-set changes ([`Anchor`]).
//!
//! Against an epoch, a certificate chain is checked for *membership*
//! ([`check_membership`]): every member is a registry member with its registered
//! stake as weight; a region group's members sit in that region, serve the task's
//! capability and were drawn by the seat rule ([`seat_order`]); a continent group's
//! members come from its region children, which are regions of that continent; the
//! global group's members come from its continent children.
//!
//! Pure, like the rest of this crate: bytes in, verdicts out.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey};
use polity_proto::{Admission, Genesis, Level, Registry, RegistryMember};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::certificate::{MEMBERS_MAX, VerifyError};
use crate::ids::{PublicKey, TaskId};
use crate::statement::verify_signature;

/// Domain tag of registry digests.
pub const REGISTRY_TAG: &[u8] = b"polity/v1/registry\0";
/// Domain tag of the genesis authorities' signatures.
pub const GENESIS_TAG: &[u8] = b"polity/v1/genesis\0";
/// Domain tag of a proposal's subject signature.
pub const REQUEST_TAG: &[u8] = b"polity/v1/registry-request\0";
/// Domain tag of the seat rule's ranks.
pub const SEAT_TAG: &[u8] = b"polity/v1/seat\0";

/// The capability of registry tasks: every member serves it, with a built-in
/// executor that judges a [`Proposal`] against its own registry.
pub const REGISTRY_CAPABILITY: &str = "polity.registry";

/// Longest label (federation, region, continent, capability).
pub const LABEL_BYTES_MAX: usize = 64;
/// Most members a registry holds.
pub const REGISTRY_MEMBERS_MAX: usize = 4096;
/// Most genesis authorities.
pub const AUTHORITIES_MAX: usize = 16;
/// Most capabilities one member may list.
pub const MEMBER_CAPABILITIES_MAX: usize = 64;
/// Largest stake of one member, so that sums of stakes never overflow.
pub const STAKE_MAX: u64 = 1 << 40;
/// Largest encoded registry (and proposal).
pub const REGISTRY_BYTES_MAX: usize = 4 << 20;
/// Most epoch changes a [`Federation`] may carry.
pub const EPOCH_CHANGES_MAX: usize = 100_000;

/// Why a label (a capability, region, continent or federation name) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabel {
    #[error("must not be empty")]
    Empty,
    #[error("longer than {LABEL_BYTES_MAX} bytes")]
    TooLong,
    #[error("character {0:?} is not allowed (use a-z, 0-9, '.', '_', '-')")]
    Character(char),
}

/// Labels are 1..=64 bytes of `[a-z0-9._-]`.
pub fn validate_label(name: &str) -> Result<(), InvalidLabel> {
    if name.is_empty() {
        return Err(InvalidLabel::Empty);
    }
    if name.len() > LABEL_BYTES_MAX {
        return Err(InvalidLabel::TooLong);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(InvalidLabel::Character(bad)),
        None => Ok(()),
    }
}

/// Why a registry, genesis, proposal or epoch change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} too large: {size} > {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("{what} {value:?}: {reason}")]
    Label {
        what: &'static str,
        value: String,
        reason: InvalidLabel,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("proposal: {0}")]
    Proposal(String),
    #[error("epoch {epoch}: {detail}")]
    Change { epoch: u64, detail: String },
    #[error("epoch {epoch}: its certificate does not verify: {error}")]
    Certificate { epoch: u64, error: VerifyError },
}

/// Why a chain's members are not the ones its registry epoch allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("drawn from registry epoch {digest}, which the anchor does not know")]
    UnknownEpoch { digest: String },
    #[error("{group}: {key} is not a registry member")]
    NotMember { group: String, key: PublicKey },
    #[error("{group}: {key} has weight {found}, the registry gives it stake {expected}")]
    WrongWeight {
        group: String,
        key: PublicKey,
        expected: u64,
        found: u64,
    },
    #[error("{group}: {key} sits in {found}, not in {expected}")]
    WrongPlace {
        group: String,
        key: PublicKey,
        expected: String,
        found: String,
    },
    #[error("{group}: {key} does not serve {capability:?}")]
    NotServing {
        group: String,
        key: PublicKey,
        capability: String,
    },
    #[error("{group}: {key} is not among the first {allowed} seats the seat rule draws")]
    NotDrawn {
        group: String,
        key: PublicKey,
        allowed: usize,
    },
    #[error("{group}: {found} members, the task's replication needs {needed}")]
    TooFew {
        group: String,
        needed: usize,
        found: usize,
    },
    #[error("{group}: {key} observed a child group it did not sit in")]
    NotRepresentative { group: String, key: PublicKey },
    #[error("{group}: child {child} is not a {level} of {group}")]
    ForeignChild {
        group: String,
        child: String,
        level: &'static str,
    },
    #[error("{group}: the raft commit is signed by {key}, not a registry member of {place}")]
    RaftSigner {
        group: String,
        place: String,
        key: PublicKey,
    },
    #[error("{0}")]
    Malformed(String),
}

fn label(what: &'static str, value: &str) -> Result<(), RegistryError> {
    validate_label(value).map_err(|reason| RegistryError::Label {
        what,
        value: value.to_string(),
        reason,
    })
}

fn invalid(what: &'static str, detail: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        what,
        detail: detail.into(),
    }
}

/// `sha256("polity/v1/registry\0" || registry_bytes)`.
pub fn registry_digest(registry_bytes: &[u8]) -> [u8; 32] {
    tagged_digest(REGISTRY_TAG, &[registry_bytes])
}

fn tagged_digest(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(tag);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The rank of `key` for `task` under the seat rule:
/// `sha256("polity/v1/seat\0" || task_id || registry_digest || public_key)`. Lower
/// ranks sit first. Nobody picks it: not the entry node, not the member.
pub fn seat_rank(task: &TaskId, registry_digest: &[u8; 32], key: &PublicKey) -> [u8; 32] {
    tagged_digest(SEAT_TAG, &[&task.0, registry_digest, &key.0])
}

/// How many of a region's drawn seats a group of `replication` may use: the first
/// `k` plus a bounded slack (`2 + k/2`) for seats that are dead, refuse, or are
/// added as extra replicas. An entry node chooses only within this prefix.
pub fn seats_allowed(replication: usize) -> usize {
    replication + 2 + replication / 2
}

/// One registry epoch, decoded and checked, with its exact bytes and digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Epoch {
    bytes: Vec<u8>,
    digest: [u8; 32],
    registry: Registry,
    index: BTreeMap<PublicKey, usize>,
    /// Region -> its continent.
    regions: BTreeMap<String, String>,
    total_stake: u64,
}

impl Epoch {
    /// Decodes and checks a registry (see [`check_registry`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Epoch, RegistryError> {
        if bytes.len() > REGISTRY_BYTES_MAX {
            return Err(RegistryError::TooLarge {
                what: "registry",
                size: bytes.len(),
                limit: REGISTRY_BYTES_MAX,
            });
        }
        let registry =
            Registry::decode(bytes.as_slice()).map_err(|e| RegistryError::Decode(e.to_string()))?;
        let (index, regions) = check_registry(&registry)?;
        let total_stake = registry.members.iter().map(|m| m.stake).sum();
        Ok(Epoch {
            digest: registry_digest(&bytes),
            bytes,
            registry,
            index,
            regions,
            total_stake,
        })
    }

    /// Encodes `registry` and checks it.
    pub fn from_registry(registry: &Registry) -> Result<Epoch, RegistryError> {
        Epoch::from_bytes(registry.encode_to_vec())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn number(&self) -> u64 {
        self.registry.epoch
    }

    pub fn members(&self) -> &[RegistryMember] {
        &self.registry.members
    }

    pub fn total_stake(&self) -> u64 {
        self.total_stake
    }

    pub fn admission(&self) -> Admission {
        Admission::try_from(self.registry.admission).unwrap_or(Admission::Unspecified)
    }

    pub fn member(&self, key: &PublicKey) -> Option<&RegistryMember> {
        self.index.get(key).map(|&i| &self.registry.members[i])
    }

    /// Whether `member` stands for `place` at `level`: its region, its continent, or
    /// (global) any member. A place's raft group has exactly these voters, and its
    /// leader, who signs a raft commit, is one of them.
    pub fn in_place(member: &RegistryMember, level: Level, place: &str) -> bool {
        match level {
            Level::Region => member.region == place,
            Level::Continent => member.continent == place,
            Level::Global => place == crate::binding::GLOBAL_GROUP,
            Level::Unspecified => false,
        }
    }

    /// The members that stand for `place` at `level` ([`Self::in_place`]), in registry
    /// order.
    pub fn place_members(&self, level: Level, place: &str) -> Vec<&RegistryMember> {
        self.members()
            .iter()
            .filter(|member| Epoch::in_place(member, level, place))
            .collect()
    }

    /// The continent a region belongs to, if the registry has the region.
    pub fn continent_of(&self, region: &str) -> Option<&str> {
        self.regions.get(region).map(String::as_str)
    }

    /// Regions of the registry, with their continents.
    pub fn regions(&self) -> &BTreeMap<String, String> {
        &self.regions
    }

    /// Whether `member` may sit for `capability` (every member serves the registry).
    pub fn serves(member: &RegistryMember, capability: &str) -> bool {
        capability == REGISTRY_CAPABILITY || member.capabilities.iter().any(|c| c == capability)
    }

    /// The region's members that serve `capability`, in the seat rule's order for
    /// `task`: the entry node seats them in this order, and a verifier recomputes it.
    pub fn seat_order(&self, task: &TaskId, capability: &str, region: &str) -> Vec<PublicKey> {
        let mut ranked: Vec<([u8; 32], PublicKey)> = self
            .registry
            .members
            .iter()
            .filter(|m| m.region == region && Epoch::serves(m, capability))
            .filter_map(|m| PublicKey::from_slice(&m.public_key).ok())
            .map(|key| (seat_rank(task, &self.digest, &key), key))
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, key)| key).collect()
    }
}

/// A registry's own rules: labels, members in strictly increasing key order with
/// valid keys, stakes in `1..=STAKE_MAX`, one continent per region, bounded counts,
/// a known admission policy, 1..=16 distinct valid authorities. Returns the member
/// index and the region -> continent map.
#[allow(clippy::type_complexity)]
fn check_registry(
    registry: &Registry,
) -> Result<(BTreeMap<PublicKey, usize>, BTreeMap<String, String>), RegistryError> {
    label("federation", &registry.federation)?;
    if registry.members.is_empty() || registry.members.len() > REGISTRY_MEMBERS_MAX {
        return Err(invalid(
            "members",
            format!(
                "{} members, a registry has 1..={REGISTRY_MEMBERS_MAX}",
                registry.members.len()
            ),
        ));
    }
    match Admission::try_from(registry.admission) {
        Ok(Admission::Open | Admission::Vote) => {}
        _ => return Err(invalid("admission", registry.admission.to_string())),
    }
    check_authorities(&registry.authorities)?;
    if (registry.epoch == 0) != registry.previous.is_empty()
        || !(registry.previous.is_empty() || registry.previous.len() == 32)
    {
        return Err(invalid(
            "previous",
            "empty at epoch 0, a 32-byte digest after",
        ));
    }
    let mut index = BTreeMap::new();
    let mut regions: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<PublicKey> = None;
    for (i, member) in registry.members.iter().enumerate() {
        let key = check_member(member)?;
        if last.is_some_and(|last| last >= key) {
            return Err(invalid(
                "members",
                "not in strictly increasing key order (or a key repeats)",
            ));
        }
        last = Some(key);
        index.insert(key, i);
        let continent = regions
            .entry(member.region.clone())
            .or_insert_with(|| member.continent.clone());
        if *continent != member.continent {
            return Err(invalid(
                "regions",
                format!(
                    "region {:?} is in continents {continent:?} and {:?}",
                    member.region, member.continent
                ),
            ));
        }
    }
    let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
    for member in &registry.members {
        *per_region.entry(member.region.as_str()).or_default() += 1;
    }
    if let Some((region, count)) = per_region.iter().find(|(_, count)| **count > MEMBERS_MAX) {
        return Err(invalid(
            "regions",
            format!("region {region:?} has {count} members; a group holds at most {MEMBERS_MAX}"),
        ));
    }
    Ok((index, regions))
}

fn check_authorities(authorities: &[Vec<u8>]) -> Result<(), RegistryError> {
    if authorities.is_empty() || authorities.len() > AUTHORITIES_MAX {
        return Err(invalid(
            "authorities",
            format!(
                "{}, a registry has 1..={AUTHORITIES_MAX}",
                authorities.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for authority in authorities {
        let key =
            PublicKey::from_slice(authority).map_err(|e| invalid("authority", e.to_string()))?;
        key.to_verifying_key()
            .map_err(|e| invalid("authority", e.to_string()))?;
        if !seen.insert(key) {
            return Err(invalid("authorities", format!("{key} repeats")));
        }
    }
    Ok(())
}

fn check_member(member: &RegistryMember) -> Result<PublicKey, RegistryError> {
    let key = PublicKey::from_slice(&member.public_key)
        .map_err(|e| invalid("member key", e.to_string()))?;
    key.to_verifying_key()
        .map_err(|e| invalid("member key", format!("{key}: {e}")))?;
    label("region", &member.region)?;
    label("continent", &member.continent)?;
    if !(1..=STAKE_MAX).contains(&member.stake) {
        return Err(invalid(
            "stake",
            format!("{key}: {} is outside 1..={STAKE_MAX}", member.stake),
        ));
    }
    if member.capabilities.len() > MEMBER_CAPABILITIES_MAX {
        return Err(invalid(
            "capabilities",
            format!("{key}: more than {MEMBER_CAPABILITIES_MAX}"),
        ));
    }
    for capability in &member.capabilities {
        label("capability", capability)?;
    }
    Ok(key)
}

/// The genesis authorities' signed message: `"polity/v1/genesis\0" || registry`.
fn genesis_message(registry_bytes: &[u8]) -> Vec<u8> {
    [GENESIS_TAG, registry_bytes].concat()
}

/// Signs `registry` (epoch 0) with every authority key, in the registry's order.
/// Every key of `registry.authorities` must be among `keys`.
pub fn sign_genesis(registry: &Registry, keys: &[SigningKey]) -> Result<Genesis, RegistryError> {
    let epoch = Epoch::from_registry(registry)?;
    if epoch.number() != 0 {
        return Err(RegistryError::Genesis("a genesis is epoch 0".into()));
    }
    let message = genesis_message(epoch.bytes());
    let signatures = registry
        .authorities
        .iter()
        .map(|authority| {
            keys.iter()
                .find(|key| key.verifying_key().as_bytes().as_slice() == authority)
                .map(|key| key.sign(&message).to_bytes().to_vec())
                .ok_or_else(|| {
                    RegistryError::Genesis(format!(
                        "no key given for authority {}",
                        hex::encode(authority)
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Genesis {
        registry: epoch.bytes,
        signatures,
    })
}

/// Checks a genesis: a valid epoch-0 registry, signed by every one of its
/// authorities (strict rule), one signature each, in order.
pub fn verify_genesis(genesis: &Genesis) -> Result<Epoch, RegistryError> {
    let epoch = Epoch::from_bytes(genesis.registry.clone())?;
    if epoch.number() != 0 {
        return Err(RegistryError::Genesis(format!(
            "a genesis is epoch 0, this is epoch {}",
            epoch.number()
        )));
    }
    let authorities = &epoch.registry.authorities;
    if genesis.signatures.len() != authorities.len() {
        return Err(RegistryError::Genesis(format!(
            "{} signatures for {} authorities",
            genesis.signatures.len(),
            authorities.len()
        )));
    }
    let message = genesis_message(&genesis.registry);
    for (authority, signature) in authorities.iter().zip(&genesis.signatures) {
        let key = PublicKey::from_slice(authority)
            .and_then(|key| key.to_verifying_key())
            .map_err(|e| RegistryError::Genesis(e.to_string()))?;
        let signature = Signature::from_slice(signature)
            .map_err(|_| RegistryError::Genesis("a signature is not 64 bytes".into()))?;
        verify_signature(&key, &message, &signature).map_err(|_| {
            RegistryError::Genesis(format!(
                "authority {} did not sign this registry",
                hex::encode(authority)
            ))
        })?;
    }
    Ok(epoch)
}

mod change;
mod membership;

pub use change::{
    Anchor, Change, check_proposal, proposal_request, registry_task, sign_proposal, verify_change,
};
pub use membership::{check_membership, check_seats, verify_in};

#[cfg(test)]
mod tests;
