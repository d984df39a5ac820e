//! This node's view of the federation registry: the [`Anchor`] it verified from a
//! genesis, persisted in the data directory, the current epoch for seats and checks,
//! and the judge of registry proposals (the built-in executor of
//! [`REGISTRY_CAPABILITY`]).
//!
//! The registry is the only source of who may sit, where, and with which stake: a
//! peer's NodeInfo says how to reach it, never what it weighs.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use polity_consensus::registry::{
    Anchor, Change, Epoch, REGISTRY_CAPABILITY, check_proposal, sign_genesis,
};
use polity_proto::{Admission, EpochChain, EpochChange, Level, Registry, RegistryMember};
use prost::Message;

use crate::raft::PlaceGroup;
use crate::runtime::identity::Identity;
use polity_consensus::PublicKey;

/// The file in the data directory that holds the verified epoch chain.
pub const CHAIN_FILE: &str = "federation.pb";
/// Largest federation file read from disk or accepted from a peer.
pub const CHAIN_BYTES_MAX: usize = 64 << 20;
/// Operator ballots a node holds at once; the oldest goes first.
pub const BALLOTS_MAX: usize = 1024;
/// The changes a node pushes to its peers after an epoch change: a peer further
/// behind catches up from a later push or a restart with a newer file.
pub const PUSH_CHANGES_MAX: usize = 8;

/// The current epoch and where it is shared: the network's announcement reads
/// `mark` when it signs NodeInfo.
pub struct RegistryState {
    anchor: RwLock<Anchor>,
    current: RwLock<Arc<Epoch>>,
    /// (epoch, digest), shared with the network's NodeInfo.
    mark: Arc<RwLock<(u64, Vec<u8>)>>,
    path: PathBuf,
    /// Serializes applying changes (and writing the file).
    apply: Mutex<()>,
    /// The operator's ballots by proposed registry digest, oldest first.
    ballots: Mutex<VecDeque<([u8; 32], bool)>>,
    /// The next registry this member approved, if any: it approves no other for
    /// the same epoch, so two changes of one epoch cannot both gather its stake.
    approved: Mutex<Option<(u64, [u8; 32])>>,
    /// Place groups of the current epoch already computed (a raft task asks for its
    /// place's on every `Assign`; computing one walks the epoch chain), with the
    /// epoch they belong to. Only places that have a group are kept.
    place_groups: Mutex<(u64, PlaceGroups)>,
}

/// Place groups by (level, place).
type PlaceGroups = HashMap<(Level, String), PlaceGroup>;

/// Who this node is in a one-member dev federation.
pub struct DevMember {
    pub region: String,
    pub continent: String,
    pub capabilities: Vec<String>,
}

impl RegistryState {
    /// Opens the registry: the data directory's chain when there is one (it must
    /// start at `genesis` when that is given), else `genesis`, else a new one-member
    /// dev federation of this node (admission open), signed by this node's key.
    pub fn open(
        data_dir: &Path,
        genesis: Option<&Path>,
        identity: &Identity,
        dev: DevMember,
    ) -> anyhow::Result<RegistryState> {
        let path = data_dir.join(CHAIN_FILE);
        let given = genesis.map(read_chain).transpose()?;
        let anchor = if path.exists() {
            let stored = read_chain(&path)?;
            if let Some(given) = &given
                && given.genesis != stored.genesis
            {
                anyhow::bail!(
                    "{} belongs to another federation than {}",
                    path.display(),
                    genesis.expect("given").display()
                );
            }
            // The stored chain may be ahead of the given file; it is verified anew.
            Anchor::from_chain(stored).context("the stored federation chain")?
        } else if let Some(given) = given {
            Anchor::from_chain(given).context("the genesis")?
        } else {
            dev_federation(identity, dev)?
        };
        let state = RegistryState {
            mark: Arc::new(RwLock::new((
                anchor.current().number(),
                anchor.current().digest().to_vec(),
            ))),
            current: RwLock::new(Arc::new(anchor.current().clone())),
            anchor: RwLock::new(anchor),
            path,
            apply: Mutex::new(()),
            ballots: Mutex::new(VecDeque::new()),
            approved: Mutex::new(None),
            place_groups: Mutex::new((0, HashMap::new())),
        };
        state.persist()?;
        Ok(state)
    }

    /// The epoch seats are drawn from now.
    pub fn current(&self) -> Arc<Epoch> {
        Arc::clone(&self.current.read().expect("registry lock"))
    }

    /// The raft group of `place` at `level` in the current epoch
    /// ([`crate::raft::place::place_group`]).
    pub fn place_group(&self, level: Level, place: &str) -> Option<PlaceGroup> {
        let mut cache = self.place_groups.lock().expect("place groups lock");
        let anchor = self.anchor.read().expect("registry lock");
        let epoch = anchor.current().number();
        if cache.0 != epoch {
            *cache = (epoch, HashMap::new());
        }
        if let Some(group) = cache.1.get(&(level, place.to_string())) {
            return Some(group.clone());
        }
        let group = crate::raft::place::place_group(&anchor, level, place)?;
        cache.1.insert((level, place.to_string()), group.clone());
        Some(group)
    }

    /// The place groups `key` belongs to in the current epoch.
    pub fn own_place_groups(&self, key: &PublicKey) -> Vec<PlaceGroup> {
        let Some(member) = self.current().member(key).cloned() else {
            return Vec::new();
        };
        crate::raft::place::places_of(&member)
            .into_iter()
            .filter_map(|(level, place)| self.place_group(level, place))
            .collect()
    }

    /// The (epoch, digest) cell NodeInfo reads.
    pub fn mark(&self) -> Arc<RwLock<(u64, Vec<u8>)>> {
        Arc::clone(&self.mark)
    }

    /// Verifies a chain and its binding to its task, then its membership against
    /// the epoch it names (one this node has reached).
    pub fn verify(
        &self,
        root: &polity_proto::Certificate,
    ) -> Result<(polity_consensus::ChainSummary, u64), polity_consensus::VerifyError> {
        let anchor = self.anchor.read().expect("registry lock");
        polity_consensus::verify_in(&anchor, root, None)
            .map(|(summary, epoch)| (summary, epoch.number()))
    }

    /// The whole chain, genesis first.
    pub fn chain(&self) -> EpochChain {
        self.anchor.read().expect("registry lock").to_chain()
    }

    /// The last changes, for a push to peers.
    pub fn recent_changes(&self) -> Vec<EpochChange> {
        let anchor = self.anchor.read().expect("registry lock");
        let epoch = anchor.current().number();
        let from = epoch.saturating_sub(PUSH_CHANGES_MAX as u64);
        anchor.changes_after(from).to_vec()
    }

    /// The changes after epoch `epoch`, oldest first.
    /// At most [`PUSH_CHANGES_MAX`] of them.
    pub fn changes_after(&self, epoch: u64) -> Vec<EpochChange> {
        let anchor = self.anchor.read().expect("registry lock");
        let changes = anchor.changes_after(epoch);
        changes[..changes.len().min(PUSH_CHANGES_MAX)].to_vec()
    }

    /// Applies every change that moves past the current epoch, in order; changes
    /// this node has already are skipped. Returns the epochs gained.
    pub fn apply(&self, changes: Vec<EpochChange>) -> anyhow::Result<u64> {
        let _serial = self.apply.lock().expect("registry apply lock");
        let proposed_epoch = |change: &EpochChange| {
            polity_proto::Proposal::decode(change.proposal.as_slice())
                .ok()
                .and_then(|p| Registry::decode(p.registry.as_slice()).ok())
                .map_or(0, |registry| registry.epoch)
        };
        // Nothing newer than ours (a repeated or stale push): done before the anchor
        // is copied, so such pushes cost a decode, not a chain.
        let mine = self.current().number();
        let changes: Vec<EpochChange> = changes
            .into_iter()
            .filter(|change| proposed_epoch(change) > mine)
            .collect();
        if changes.is_empty() {
            return Ok(0);
        }
        let mut anchor = self.anchor.read().expect("registry lock").clone();
        let before = anchor.current().number();
        for change in changes {
            if proposed_epoch(&change) <= anchor.current().number() {
                continue;
            }
            anchor.apply(change)?;
        }
        let gained = anchor.current().number() - before;
        if gained > 0 {
            *self.current.write().expect("registry lock") = Arc::new(anchor.current().clone());
            *self.mark.write().expect("registry lock") = (
                anchor.current().number(),
                anchor.current().digest().to_vec(),
            );
            *self.anchor.write().expect("registry lock") = anchor;
            self.persist()?;
            tracing::info!(epoch = before + gained, "moved to a new registry epoch");
        }
        Ok(gained)
    }

    fn persist(&self) -> anyhow::Result<()> {
        let bytes = self.chain().encode_to_vec();
        let temporary = self.path.with_extension("pb.tmp");
        std::fs::write(&temporary, &bytes)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Records the operator's ballot on the proposal of the registry with `digest`;
    /// returns how many ballots the node holds.
    pub fn vote(&self, digest: [u8; 32], approve: bool) -> usize {
        let mut ballots = self.ballots.lock().expect("ballots lock");
        ballots.retain(|(held, _)| *held != digest);
        if ballots.len() >= BALLOTS_MAX {
            ballots.pop_front();
        }
        ballots.push_back((digest, approve));
        ballots.len()
    }

    /// This member's ballot on a registry proposal: the next registry's digest (hex)
    /// to approve, or why not. The operator's ballot decides when there is one
    /// (`polity vote`). Without one, `open` admission approves what
    /// [`open_admission`] allows; `vote` admission refuses.
    pub(crate) fn judge(&self, proposal: &[u8]) -> Result<Vec<u8>, Refusal> {
        let current = self.current();
        let (next, change) = check_proposal(&current, proposal)?;
        let approve = hex::encode(next.digest()).into_bytes();
        let ballot = self
            .ballots
            .lock()
            .expect("ballots lock")
            .iter()
            .find(|(digest, _)| digest == next.digest())
            .map(|(_, approve)| *approve);
        match ballot {
            Some(true) => {
                self.lock_approval(next.number(), next.digest())?;
                return Ok(approve);
            }
            Some(false) => return Err(Refusal::VotedAgainst),
            None if current.admission() != Admission::Open => return Err(Refusal::NoBallot),
            None => {}
        }
        open_admission(&current, &change, proposal)?;
        self.lock_approval(next.number(), next.digest())?;
        Ok(approve)
    }

    /// One approval per epoch: a member that approved registry `digest` as epoch
    /// `epoch` refuses any other registry for that epoch (else two concurrent
    /// proposals could each gather more than 2/3 of the stake and fork the
    /// federation). Held in memory: a restart forgets it (see ARCHITECTURE.md).
    fn lock_approval(&self, epoch: u64, digest: &[u8; 32]) -> Result<(), Refusal> {
        let mut approved = self.approved.lock().expect("approval lock");
        match *approved {
            Some((locked, held)) if locked == epoch && held != *digest => {
                Err(Refusal::ApprovedAnother {
                    epoch,
                    digest: hex::encode(held),
                })
            }
            _ => {
                *approved = Some((epoch, *digest));
                Ok(())
            }
        }
    }
}

/// Why this member does not approve a registry proposal (its observation's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Proposal(#[from] polity_consensus::registry::RegistryError),
    #[error("this member's operator voted against")]
    VotedAgainst,
    #[error("admission is by operator vote; this member has no ballot")]
    NoBallot,
    #[error(
        "a join asking stake {asked} (more than the smallest stake, {smallest}) needs the operators' ballots"
    )]
    JoinStake { asked: u64, smallest: u64 },
    #[error("raising a stake ({from} to {to}) needs the operators' ballots")]
    StakeRaise { from: u64, to: u64 },
    #[error("a leave the leaving member did not sign is not approved")]
    UnsignedLeave,
    #[error("this member approved another registry for epoch {epoch} ({digest})")]
    ApprovedAnother { epoch: u64, digest: String },
}

/// What `open` admission approves without a ballot: a join whose stake is at most
/// the smallest stake of the epoch (a newcomer cannot buy the federation), an update
/// that does not raise the member's stake, and a leave the leaving member signed.
fn open_admission(current: &Epoch, change: &Change, proposal: &[u8]) -> Result<(), Refusal> {
    let smallest = current.members().iter().map(|m| m.stake).min().unwrap_or(1);
    match change {
        Change::Join(member) if member.stake > smallest => Err(Refusal::JoinStake {
            asked: member.stake,
            smallest,
        }),
        Change::Update { before, after } if after.stake > before.stake => {
            Err(Refusal::StakeRaise {
                from: before.stake,
                to: after.stake,
            })
        }
        Change::Leave(_) => {
            let signed = polity_proto::Proposal::decode(proposal)
                .map(|p| !p.subject_signature.is_empty())
                .unwrap_or(false);
            match signed {
                true => Ok(()),
                false => Err(Refusal::UnsignedLeave),
            }
        }
        _ => Ok(()),
    }
}

/// Reads a federation file (an `EpochChain`, genesis first).
pub fn read_chain(path: &Path) -> anyhow::Result<EpochChain> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > CHAIN_BYTES_MAX {
        anyhow::bail!("{} is over {CHAIN_BYTES_MAX} bytes", path.display());
    }
    EpochChain::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a federation file", path.display()))
}

/// A federation of this node alone, for a laptop.
fn dev_federation(identity: &Identity, dev: DevMember) -> anyhow::Result<Anchor> {
    let key = identity.public_key();
    let mut capabilities = dev.capabilities;
    capabilities.retain(|c| c != REGISTRY_CAPABILITY);
    let registry = Registry {
        federation: "dev".into(),
        epoch: 0,
        previous: Vec::new(),
        members: vec![RegistryMember {
            public_key: key.0.to_vec(),
            region: dev.region,
            continent: dev.continent,
            stake: 1,
            capabilities,
        }],
        admission: Admission::Open as i32,
        authorities: vec![key.0.to_vec()],
    };
    let genesis = sign_genesis(&registry, std::slice::from_ref(identity.signing_key()))?;
    Ok(Anchor::from_genesis(genesis)?)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use polity_consensus::registry::{registry_digest, sign_proposal};

    use super::*;

    fn member(public_key: Vec<u8>) -> RegistryMember {
        RegistryMember {
            public_key,
            region: "r1".into(),
            continent: "c1".into(),
            stake: 1,
            capabilities: Vec::new(),
        }
    }

    /// A node's registry from a genesis of itself and key 5, under `admission`.
    fn state(dir: &Path, admission: Admission) -> RegistryState {
        let identity = Identity::load_or_create(dir).unwrap();
        let other = SigningKey::from_bytes(&[5; 32])
            .verifying_key()
            .to_bytes()
            .to_vec();
        let mut members = vec![member(identity.public_key().0.to_vec()), member(other)];
        members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        let registry = Registry {
            federation: "test".into(),
            epoch: 0,
            previous: Vec::new(),
            members,
            admission: admission as i32,
            authorities: vec![identity.public_key().0.to_vec()],
        };
        let genesis = sign_genesis(&registry, std::slice::from_ref(identity.signing_key()));
        let file = dir.join("genesis.pb");
        let chain = EpochChain {
            genesis: Some(genesis.unwrap()),
            changes: Vec::new(),
        };
        std::fs::write(&file, chain.encode_to_vec()).unwrap();
        let dev = DevMember {
            region: String::new(),
            continent: String::new(),
            capabilities: Vec::new(),
        };
        RegistryState::open(dir, Some(&file), &identity, dev).unwrap()
    }

    /// The next registry of `state` with `key` joined, or gone when it is a member.
    fn next(state: &RegistryState, key: &SigningKey) -> Registry {
        let current = state.current();
        let mut next = current.registry().clone();
        next.epoch += 1;
        next.previous = current.digest().to_vec();
        let public_key = key.verifying_key().to_bytes().to_vec();
        match next.members.iter().position(|m| m.public_key == public_key) {
            Some(index) => {
                next.members.remove(index);
            }
            None => {
                next.members.push(member(public_key));
                next.members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            }
        }
        next
    }

    #[test]
    fn open_admission_approves_signed_joins_and_the_operator_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), Admission::Open);
        let joiner = SigningKey::from_bytes(&[3; 32]);
        let join = next(&state, &joiner);
        let digest = registry_digest(&join.encode_to_vec());
        let proposal = sign_proposal(&join, &joiner).encode_to_vec();
        assert_eq!(state.judge(&proposal), Ok(hex::encode(digest).into_bytes()));
        // Signed by someone else: not a proposal at all.
        let forged = sign_proposal(&join, &SigningKey::from_bytes(&[4; 32])).encode_to_vec();
        assert!(
            state
                .judge(&forged)
                .unwrap_err()
                .to_string()
                .contains("did not sign")
        );
        state.vote(digest, false);
        assert!(
            state
                .judge(&proposal)
                .unwrap_err()
                .to_string()
                .contains("voted against")
        );

        // A leave of member 5 that it did not sign is refused, unless the operator
        // approves it (on another node: this one approved the join for epoch 1).
        let other = tempfile::tempdir().unwrap();
        let state = super::tests::state(other.path(), Admission::Open);
        let leave = next(&state, &SigningKey::from_bytes(&[5; 32]));
        let unsigned = polity_proto::Proposal {
            registry: leave.encode_to_vec(),
            subject_signature: Vec::new(),
        }
        .encode_to_vec();
        assert!(
            state
                .judge(&unsigned)
                .unwrap_err()
                .to_string()
                .contains("did not sign")
        );
        state.vote(registry_digest(&leave.encode_to_vec()), true);
        assert!(state.judge(&unsigned).is_ok());
    }

    #[test]
    fn open_admission_does_not_sell_the_federation() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), Admission::Open);
        let joiner = SigningKey::from_bytes(&[3; 32]);
        let mut greedy = next(&state, &joiner);
        for member in &mut greedy.members {
            if member.public_key == joiner.verifying_key().to_bytes() {
                member.stake = 1_000_000;
            }
        }
        let proposal = sign_proposal(&greedy, &joiner).encode_to_vec();
        let error = state.judge(&proposal).unwrap_err().to_string();
        assert!(error.contains("needs the operators' ballots"), "{error}");
        // The operators can still let it in.
        state.vote(registry_digest(&greedy.encode_to_vec()), true);
        assert!(state.judge(&proposal).is_ok());
    }

    #[test]
    fn a_member_approves_one_registry_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), Admission::Open);
        let first = SigningKey::from_bytes(&[3; 32]);
        let second = SigningKey::from_bytes(&[4; 32]);
        let a = sign_proposal(&next(&state, &first), &first).encode_to_vec();
        let b = sign_proposal(&next(&state, &second), &second).encode_to_vec();
        assert!(state.judge(&a).is_ok());
        assert!(state.judge(&a).is_ok(), "the same registry again is fine");
        let error = state.judge(&b).unwrap_err().to_string();
        assert!(error.contains("approved another registry"), "{error}");
    }

    #[test]
    fn vote_admission_waits_for_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), Admission::Vote);
        let joiner = SigningKey::from_bytes(&[3; 32]);
        let join = next(&state, &joiner);
        let proposal = sign_proposal(&join, &joiner).encode_to_vec();
        assert!(
            state
                .judge(&proposal)
                .unwrap_err()
                .to_string()
                .contains("no ballot")
        );
        state.vote(registry_digest(&join.encode_to_vec()), true);
        assert!(state.judge(&proposal).is_ok());
    }

    #[test]
    fn a_data_dir_of_another_federation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(state(dir.path(), Admission::Open));
        let other = tempfile::tempdir().unwrap();
        drop(state(other.path(), Admission::Vote));
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let dev = DevMember {
            region: String::new(),
            continent: String::new(),
            capabilities: Vec::new(),
        };
        let error = RegistryState::open(
            dir.path(),
            Some(&other.path().join("genesis.pb")),
            &identity,
            dev,
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("another federation"), "{error}");
    }
}
