//! Epoch changes: proposals, their approval, and the chain of epochs from genesis.
//!
//! A change is a [`Proposal`] (the next registry, and its subject's signature) run as
//! a registry task: capability [`REGISTRY_CAPABILITY`], global scope, bft, majority,
//! every member of every region seated. Each member's built-in executor answers the
//! next registry's digest (hex) to approve, or an error to refuse. The change holds
//! when the root decided that digest and the region members whose observations
//! approved it hold more than 2/3 of the epoch's stake.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey};
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, EpochChain, EpochChange, Genesis, Level, Observation,
    Proposal, Registry, RegistryMember, RiskPolicy, Scope, StatementKind, TaskSpec,
};
use prost::Message;

use super::{
    EPOCH_CHANGES_MAX, Epoch, REGISTRY_BYTES_MAX, REGISTRY_CAPABILITY, REQUEST_TAG, RegistryError,
    verify_genesis,
};
use crate::binding::verify_task_chain;
use crate::certificate::LEVELS_MAX;
use crate::ids::PublicKey;
use crate::statement::verify_signature;

/// What a proposal changes: one member joins, leaves, or has its entry updated.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Join(RegistryMember),
    Leave(RegistryMember),
    Update {
        before: RegistryMember,
        after: RegistryMember,
    },
}

impl Change {
    /// The member the change is about.
    pub fn subject(&self) -> &RegistryMember {
        match self {
            Change::Join(member) | Change::Leave(member) => member,
            Change::Update { after, .. } => after,
        }
    }
}

/// What a proposal's subject signs: `"polity/v1/registry-request\0" || registry`.
pub fn proposal_request(registry_bytes: &[u8]) -> Vec<u8> {
    [REQUEST_TAG, registry_bytes].concat()
}

/// A proposal of `next`, signed by `subject` (the joining, leaving or updated member).
pub fn sign_proposal(next: &Registry, subject: &SigningKey) -> Proposal {
    let registry = next.encode_to_vec();
    let subject_signature = subject
        .sign(&proposal_request(&registry))
        .to_bytes()
        .to_vec();
    Proposal {
        registry,
        subject_signature,
    }
}

/// The registry task that asks `current`'s members to approve `proposal_bytes`:
/// every member of every region seated (replication = the largest region).
pub fn registry_task(current: &Epoch, proposal_bytes: Vec<u8>, deadline_ms: u64) -> TaskSpec {
    let mut sizes: BTreeMap<&str, u32> = BTreeMap::new();
    for member in current.members() {
        *sizes.entry(member.region.as_str()).or_default() += 1;
    }
    TaskSpec {
        capability: REGISTRY_CAPABILITY.into(),
        payload: proposal_bytes,
        scope: Some(Scope {
            level: Level::Global as i32,
            name: String::new(),
        }),
        replication: sizes.values().copied().max().unwrap_or(1),
        aggregation: Aggregation::Majority as i32,
        policy: Some(RiskPolicy {
            adversarial_risk: 1.0,
            consistency: 0.0,
            path_override: ConsensusPath::Bft as i32,
        }),
        deadline_ms,
        nonce: current.number() + 1,
    }
}

/// Checks that `proposal_bytes` proposes a well-formed next epoch of `current`: the
/// next number, `previous` = `current`'s digest, the same federation, admission and
/// authorities, exactly one member joined, left or updated, and, for a join or an
/// update, the subject's signature over the next registry. A leave may come without
/// one (the subject did not ask): whether to approve that is the members' call.
pub fn check_proposal(
    current: &Epoch,
    proposal_bytes: &[u8],
) -> Result<(Epoch, Change), RegistryError> {
    let refuse = |detail: String| RegistryError::Proposal(detail);
    if proposal_bytes.len() > REGISTRY_BYTES_MAX {
        return Err(refuse(format!(
            "{} bytes, the limit is {REGISTRY_BYTES_MAX}",
            proposal_bytes.len()
        )));
    }
    let proposal =
        Proposal::decode(proposal_bytes).map_err(|e| RegistryError::Decode(e.to_string()))?;
    let next = Epoch::from_bytes(proposal.registry)?;
    let (now, then) = (current.registry(), next.registry());
    if then.epoch != now.epoch + 1 || then.previous != current.digest() {
        return Err(refuse(format!(
            "proposes epoch {} after {:?}, but the current epoch is {} ({})",
            then.epoch,
            hex::encode(&then.previous),
            now.epoch,
            hex::encode(current.digest())
        )));
    }
    if then.federation != now.federation
        || then.admission != now.admission
        || then.authorities != now.authorities
    {
        return Err(refuse(
            "a change may not touch the federation, admission or authorities".into(),
        ));
    }
    let change = one_change(now, then).map_err(refuse)?;
    check_subject(&change, next.bytes(), &proposal.subject_signature)?;
    Ok((next, change))
}

/// The single member that differs between two registries.
fn one_change(now: &Registry, then: &Registry) -> Result<Change, String> {
    let by_key = |registry: &Registry| -> BTreeMap<Vec<u8>, RegistryMember> {
        registry
            .members
            .iter()
            .map(|m| (m.public_key.clone(), m.clone()))
            .collect()
    };
    let (before, after) = (by_key(now), by_key(then));
    let keys: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        match (before.get(key), after.get(key)) {
            (None, Some(joined)) => changes.push(Change::Join(joined.clone())),
            (Some(left), None) => changes.push(Change::Leave(left.clone())),
            (Some(b), Some(a)) if b != a => changes.push(Change::Update {
                before: b.clone(),
                after: a.clone(),
            }),
            _ => {}
        }
    }
    match changes.len() {
        1 => Ok(changes.remove(0)),
        n => Err(format!(
            "changes {n} members; a proposal changes exactly one"
        )),
    }
}

fn check_subject(
    change: &Change,
    registry_bytes: &[u8],
    signature: &[u8],
) -> Result<(), RegistryError> {
    if signature.is_empty() && matches!(change, Change::Leave(_)) {
        return Ok(());
    }
    let subject = change.subject();
    let key = PublicKey::from_slice(&subject.public_key)
        .and_then(|key| key.to_verifying_key())
        .map_err(|e| RegistryError::Proposal(e.to_string()))?;
    let signature = Signature::from_slice(signature)
        .map_err(|_| RegistryError::Proposal("the subject's signature is not 64 bytes".into()))?;
    verify_signature(&key, &proposal_request(registry_bytes), &signature).map_err(|_| {
        RegistryError::Proposal(format!(
            "{} did not sign this proposal",
            hex::encode(&subject.public_key)
        ))
    })
}

/// Checks that `change` moves `current` to its next epoch (see the module doc) and
/// returns that epoch.
pub fn verify_change(current: &Epoch, change: &EpochChange) -> Result<Epoch, RegistryError> {
    let epoch = current.number() + 1;
    let fail = |detail: String| RegistryError::Change { epoch, detail };
    let (next, _) = check_proposal(current, &change.proposal)?;
    let root = change
        .certificate
        .as_ref()
        .ok_or_else(|| fail("no certificate".into()))?;
    let summary = verify_task_chain(root, None)
        .map_err(|error| RegistryError::Certificate { epoch, error })?;
    super::check_membership(root, current).map_err(|error| RegistryError::Certificate {
        epoch,
        error: error.into(),
    })?;
    let spec = TaskSpec::decode(root.task.as_slice()).map_err(|e| fail(e.to_string()))?;
    let expected = registry_task(current, change.proposal.clone(), spec.deadline_ms);
    if spec != expected {
        return Err(fail(
            "the certificate's task is not this proposal's registry task".into(),
        ));
    }
    let approve = hex::encode(next.digest()).into_bytes();
    if summary.value != approve {
        return Err(fail("the federation did not approve this registry".into()));
    }
    let approving = approving_stake(current, root, &approve);
    if approving.saturating_mul(3) <= current.total_stake().saturating_mul(2) {
        return Err(fail(format!(
            "approved by stake {approving} of {}; a change needs more than 2/3",
            current.total_stake()
        )));
    }
    Ok(next)
}

/// The stake of the distinct registry members whose region-level observation in the
/// (verified) chain answered `approve`.
fn approving_stake(epoch: &Epoch, root: &Certificate, approve: &[u8]) -> u64 {
    let mut approvers = BTreeSet::new();
    let mut stack = vec![(root.clone(), 0usize)];
    while let Some((certificate, depth)) = stack.pop() {
        let level = certificate.slot.as_ref().map_or(0, |slot| slot.level);
        if level == Level::Region as i32 {
            for statement in &certificate.observations {
                let Ok(observation) = Observation::decode(statement.body.as_slice()) else {
                    continue;
                };
                if statement.kind == StatementKind::Observation as i32
                    && observation.error.is_empty()
                    && observation.answer == approve
                    && let Ok(key) = PublicKey::from_slice(&statement.signer)
                {
                    approvers.insert(key);
                }
            }
        } else if depth + 1 < LEVELS_MAX {
            let unique: BTreeSet<&Vec<u8>> = certificate.children.iter().collect();
            for bytes in unique {
                if let Ok(child) = Certificate::decode(bytes.as_slice()) {
                    stack.push((child, depth + 1));
                }
            }
        }
    }
    approvers
        .iter()
        .filter_map(|key| epoch.member(key))
        .map(|member| member.stake)
        .sum()
}

/// A verifier's trust anchor: the genesis and every epoch since, each checked.
#[derive(Debug, Clone)]
pub struct Anchor {
    genesis: Genesis,
    changes: Vec<EpochChange>,
    epochs: Vec<Epoch>,
}

impl Anchor {
    pub fn from_genesis(genesis: Genesis) -> Result<Anchor, RegistryError> {
        let epoch = verify_genesis(&genesis)?;
        Ok(Anchor {
            genesis,
            changes: Vec::new(),
            epochs: vec![epoch],
        })
    }

    /// The genesis, then each change in order.
    pub fn from_chain(chain: EpochChain) -> Result<Anchor, RegistryError> {
        let genesis = chain
            .genesis
            .ok_or_else(|| RegistryError::Genesis("missing".into()))?;
        if chain.changes.len() > EPOCH_CHANGES_MAX {
            return Err(RegistryError::TooLarge {
                what: "epoch changes",
                size: chain.changes.len(),
                limit: EPOCH_CHANGES_MAX,
            });
        }
        let mut anchor = Anchor::from_genesis(genesis)?;
        for change in chain.changes {
            anchor.apply(change)?;
        }
        Ok(anchor)
    }

    /// Moves to the next epoch if `change` proves it.
    pub fn apply(&mut self, change: EpochChange) -> Result<&Epoch, RegistryError> {
        let next = verify_change(self.current(), &change)?;
        self.changes.push(change);
        self.epochs.push(next);
        Ok(self.current())
    }

    pub fn current(&self) -> &Epoch {
        self.epochs.last().expect("an anchor holds its genesis")
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// The epoch whose digest is `digest`, if this anchor has reached it.
    pub fn epoch_named(&self, digest: &[u8]) -> Option<&Epoch> {
        self.epochs
            .iter()
            .rev()
            .find(|epoch| epoch.digest() == digest)
    }

    /// Everything a peer or verifier needs to follow this anchor from its genesis.
    pub fn to_chain(&self) -> EpochChain {
        EpochChain {
            genesis: Some(self.genesis.clone()),
            changes: self.changes.clone(),
        }
    }

    /// The changes from epoch `from` (exclusive) on, for a peer at that epoch.
    pub fn changes_after(&self, from: u64) -> &[EpochChange] {
        let skip = usize::try_from(from).unwrap_or(usize::MAX);
        self.changes.get(skip..).unwrap_or(&[])
    }
}
