//! The raft type config and the values it carries: node ids derived from member keys,
//! the member record a raft membership stores, group names, and the ledger entry a
//! group commits (task id → report and certificate) with its apply result.

use std::collections::BTreeMap;
// `declare_raft_types!` names `Cursor` unqualified for its default `SnapshotData`.
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use polity_consensus::ids::{PublicKey, TaskId};

/// A raft node id: the first 8 bytes of the member's ed25519 public key, big-endian.
/// See [`node_id`].
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The one raft type config of Polity: ledger entries in, ledger responses out,
    /// members keyed by [`NodeId`], snapshots as in-memory byte buffers, tokio runtime.
    pub TypeConfig:
        D = LedgerEntry,
        R = LedgerResponse,
        NodeId = NodeId,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Largest report (the exact signed report statement bytes) a ledger entry may carry.
/// A level-1 report tallies at most a handful of distinct answers of at most
/// [`polity_consensus::statement::ANSWER_BYTES_MAX`] each; larger reports go through `bft`/`stake`.
pub const LEDGER_REPORT_BYTES_MAX: usize = 1 << 20;
/// Largest certificate a ledger entry may carry.
pub const LEDGER_CERTIFICATE_BYTES_MAX: usize = 4 << 20;
/// Most members a raft group may have; openraft's cost grows with every member.
pub const RAFT_MEMBERS_MAX: usize = 64;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 128;
/// Longest peer id text a [`RaftMember`] may carry (a libp2p `PeerId` is ~52 chars).
pub const PEER_ID_BYTES_MAX: usize = 128;

/// The raft node id of a member: `u64::from_be_bytes(public_key[0..8])`.
///
/// Deterministic, so every member computes the same id for every other member with
/// nothing but its key. Two distinct keys share an id with probability 2^-64 per pair
/// for honest keys; an adversary needs ~2^64 work to collide with a given member. A
/// collision is never silent: [`Members::new`] rejects a membership in which two keys
/// map to one id, and the network refuses to send to a member whose key does not
/// derive the target id.
pub fn node_id(public_key: &PublicKey) -> NodeId {
    let bytes = public_key.as_bytes();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&bytes[..8]);
    NodeId::from_be_bytes(prefix)
}

/// A member of a raft group as openraft stores it in its membership: the member's
/// ed25519 key (which derives its [`NodeId`]) and the libp2p peer id the node dials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    /// The member's identity key; `node_id(&public_key)` is its raft id.
    #[serde(with = "serde_key")]
    pub public_key: PublicKey,
    /// The libp2p `PeerId` (base58 text) the transport addresses.
    pub peer_id: String,
}

impl Default for RaftMember {
    /// openraft requires `Default` for its `Node` type; an all-zero key belongs to no one.
    fn default() -> RaftMember {
        RaftMember {
            public_key: PublicKey([0; 32]),
            peer_id: String::new(),
        }
    }
}

impl RaftMember {
    /// A member record, if the peer id is within [`PEER_ID_BYTES_MAX`].
    pub fn new(
        public_key: PublicKey,
        peer_id: impl Into<String>,
    ) -> Result<RaftMember, MemberError> {
        let peer_id = peer_id.into();
        if peer_id.len() > PEER_ID_BYTES_MAX {
            return Err(MemberError::PeerIdTooLong {
                length_bytes: peer_id.len(),
            });
        }
        Ok(RaftMember {
            public_key,
            peer_id,
        })
    }

    /// This member's raft id.
    pub fn node_id(&self) -> NodeId {
        node_id(&self.public_key)
    }
}

/// Why a set of members cannot form a raft membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("two member keys derive node id {node_id:#018x}: {first} and {second}")]
    NodeIdCollision {
        node_id: NodeId,
        first: PublicKey,
        second: PublicKey,
    },
    #[error("member {0} listed twice")]
    Duplicate(PublicKey),
    #[error("more than {RAFT_MEMBERS_MAX} members")]
    TooMany,
    #[error("a raft group needs at least one member")]
    Empty,
    #[error("peer id of {length_bytes} bytes exceeds {PEER_ID_BYTES_MAX}")]
    PeerIdTooLong { length_bytes: usize },
}

/// A raft membership with distinct derived node ids: what `Raft::initialize` and
/// `change_membership` should be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members(BTreeMap<NodeId, RaftMember>);

impl Members {
    /// Indexes members by derived node id, rejecting duplicates and id collisions.
    pub fn new(members: impl IntoIterator<Item = RaftMember>) -> Result<Members, MemberError> {
        let mut map = BTreeMap::new();
        for member in members {
            if map.len() == RAFT_MEMBERS_MAX {
                return Err(MemberError::TooMany);
            }
            let id = member.node_id();
            match map.get(&id) {
                None => {
                    map.insert(id, member);
                }
                Some(existing) if existing.public_key == member.public_key => {
                    return Err(MemberError::Duplicate(member.public_key));
                }
                Some(existing) => {
                    return Err(MemberError::NodeIdCollision {
                        node_id: id,
                        first: existing.public_key,
                        second: member.public_key,
                    });
                }
            }
        }
        if map.is_empty() {
            return Err(MemberError::Empty);
        }
        debug_assert!(map.iter().all(|(id, member)| member.node_id() == *id));
        Ok(Members(map))
    }

    /// The members by node id.
    pub fn as_map(&self) -> &BTreeMap<NodeId, RaftMember> {
        &self.0
    }

    /// The members by node id, for `Raft::initialize`.
    pub fn into_map(self) -> BTreeMap<NodeId, RaftMember> {
        self.0
    }
}

/// The name of a raft group; it namespaces the group's sled trees (`raft/<name>/…`), so
/// one node's database hosts many groups. 1 to [`GROUP_NAME_BYTES_MAX`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` and `:`; never `/`, so names cannot alias each other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

/// Why text is not a group name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupNameError {
    #[error("group name is empty")]
    Empty,
    #[error("group name of {length_bytes} bytes exceeds {GROUP_NAME_BYTES_MAX}")]
    TooLong { length_bytes: usize },
    #[error("group name has a character outside [A-Za-z0-9._:-]: {0:?}")]
    BadCharacter(char),
}

impl GroupName {
    /// Validates a group name.
    pub fn new(name: impl Into<String>) -> Result<GroupName, GroupNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(GroupNameError::Empty);
        }
        if name.len() > GROUP_NAME_BYTES_MAX {
            return Err(GroupNameError::TooLong {
                length_bytes: name.len(),
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(GroupNameError::BadCharacter(bad));
        }
        Ok(GroupName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for GroupName {
    type Error = GroupNameError;
    fn try_from(name: String) -> Result<GroupName, GroupNameError> {
        GroupName::new(name)
    }
}

impl From<GroupName> for String {
    fn from(name: GroupName) -> String {
        name.0
    }
}

/// What a raft group commits: the group's decision for one task.
///
/// The ledger keeps the **first** committed report of a task: a decision is final once
/// committed. A later entry with the same report may attach a certificate (which is
/// built after the commit, since it carries the commit index); anything else that
/// disagrees with the stored entry is refused as [`LedgerOutcome::Conflict`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The task decided.
    #[serde(with = "serde_task_id")]
    pub task_id: TaskId,
    /// The exact signed report statement bytes (a protobuf `SignedStatement`).
    #[serde(with = "serde_bytes_hex")]
    pub report: Vec<u8>,
    /// The certificate bytes, once built.
    #[serde(with = "serde_option_bytes_hex")]
    pub certificate: Option<Vec<u8>>,
}

/// Why a ledger entry is refused before it is proposed (and, identically, when applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerEntryError {
    #[error("report of {length_bytes} bytes exceeds {LEDGER_REPORT_BYTES_MAX}")]
    ReportTooLarge { length_bytes: usize },
    #[error("certificate of {length_bytes} bytes exceeds {LEDGER_CERTIFICATE_BYTES_MAX}")]
    CertificateTooLarge { length_bytes: usize },
    #[error("report is empty")]
    EmptyReport,
}

impl LedgerEntry {
    /// A ledger entry within the size limits.
    pub fn new(
        task_id: TaskId,
        report: Vec<u8>,
        certificate: Option<Vec<u8>>,
    ) -> Result<LedgerEntry, LedgerEntryError> {
        let entry = LedgerEntry {
            task_id,
            report,
            certificate,
        };
        entry.check()?;
        Ok(entry)
    }

    /// Checks the size limits; the state machine applies the same check, so an entry
    /// that slipped past the proposer is refused identically on every member.
    pub fn check(&self) -> Result<(), LedgerEntryError> {
        if self.report.is_empty() {
            return Err(LedgerEntryError::EmptyReport);
        }
        if self.report.len() > LEDGER_REPORT_BYTES_MAX {
            return Err(LedgerEntryError::ReportTooLarge {
                length_bytes: self.report.len(),
            });
        }
        if let Some(certificate) = &self.certificate
            && certificate.len() > LEDGER_CERTIFICATE_BYTES_MAX
        {
            return Err(LedgerEntryError::CertificateTooLarge {
                length_bytes: certificate.len(),
            });
        }
        Ok(())
    }

    /// Report plus certificate bytes: what the entry counts against
    /// [`crate::LEDGER_BYTES_MAX`].
    pub fn payload_bytes(&self) -> usize {
        self.report.len() + self.certificate.as_ref().map_or(0, Vec::len)
    }
}

/// What applying one log entry did to the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    /// A new task decision was stored.
    Inserted,
    /// The stored report had no certificate; this entry's certificate was attached.
    CertificateAttached,
    /// The stored entry already said exactly this.
    Unchanged,
    /// The stored entry disagrees (another report, or another certificate); it is kept.
    Conflict,
    /// The entry is over a size limit ([`LedgerEntry::check`]); nothing was stored.
    TooLarge,
    /// The ledger is at [`crate::LEDGER_ENTRIES_MAX`] or
    /// [`crate::LEDGER_BYTES_MAX`]; nothing was stored.
    LedgerFull,
    /// A blank or membership log entry: the ledger is untouched.
    NotLedgerEntry,
}

/// The state machine's answer to one applied log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerResponse {
    /// The log index the entry was applied at (the raft commit index of the decision).
    pub applied_index: u64,
    /// What happened.
    pub outcome: LedgerOutcome,
    /// The entry stored for the task before this one was applied, if any (not looked up
    /// for [`LedgerOutcome::TooLarge`] and [`LedgerOutcome::NotLedgerEntry`]).
    pub previous: Option<LedgerEntry>,
}

impl LedgerOutcome {
    /// Whether the ledger now holds the proposed report for the task (a proposer that
    /// gets `true` may treat its decision as final).
    pub fn is_accepted(self) -> bool {
        matches!(
            self,
            LedgerOutcome::Inserted | LedgerOutcome::CertificateAttached | LedgerOutcome::Unchanged
        )
    }
}

mod serde_key {
    use serde::{Deserialize, Deserializer, Serializer};

    use polity_consensus::ids::PublicKey;

    pub fn serialize<S: Serializer>(key: &PublicKey, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&key.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod serde_task_id {
    use serde::{Deserialize, Deserializer, Serializer};

    use polity_consensus::ids::TaskId;

    pub fn serialize<S: Serializer>(id: &TaskId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TaskId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod serde_bytes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

mod serde_option_bytes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| hex::decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(first_bytes: [u8; 8], fill: u8) -> RaftMember {
        let mut key = [fill; 32];
        key[..8].copy_from_slice(&first_bytes);
        RaftMember::new(PublicKey(key), format!("peer-{fill}")).unwrap()
    }

    #[test]
    fn node_id_is_the_big_endian_key_prefix() {
        let member = member([0, 0, 0, 0, 0, 0, 1, 2], 9);
        assert_eq!(member.node_id(), 0x0102);
        assert_eq!(node_id(&PublicKey([0xff; 32])), u64::MAX);
    }

    #[test]
    fn members_reject_collisions_duplicates_and_empty() {
        let a = member([1; 8], 1);
        let b = member([2; 8], 2);
        let colliding = member([1; 8], 3);
        let members = Members::new([a.clone(), b.clone()]).unwrap();
        assert_eq!(members.as_map().len(), 2);
        assert_eq!(members.as_map()[&a.node_id()], a);
        assert!(matches!(
            Members::new([a.clone(), colliding]),
            Err(MemberError::NodeIdCollision { .. })
        ));
        assert_eq!(
            Members::new([a.clone(), a.clone()]),
            Err(MemberError::Duplicate(a.public_key))
        );
        assert_eq!(Members::new([]), Err(MemberError::Empty));
        let many = (0..=RAFT_MEMBERS_MAX as u8).map(|i| member([i; 8], i));
        assert!(matches!(Members::new(many), Err(MemberError::TooMany)));
    }

    #[test]
    fn group_names_are_validated() {
        assert!(GroupName::new("eu-west.sha256:1").is_ok());
        assert_eq!(GroupName::new(""), Err(GroupNameError::Empty));
        assert_eq!(
            GroupName::new("a/b"),
            Err(GroupNameError::BadCharacter('/'))
        );
        assert!(matches!(
            GroupName::new("x".repeat(GROUP_NAME_BYTES_MAX + 1)),
            Err(GroupNameError::TooLong { .. })
        ));
        assert!(serde_json::from_str::<GroupName>("\"a/b\"").is_err());
    }

    #[test]
    fn ledger_entry_limits_and_serde() {
        let entry = LedgerEntry::new(TaskId([7; 32]), vec![1, 2, 3], Some(vec![4])).unwrap();
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(&"07".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), entry);
        let member = member([3; 8], 3);
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(serde_json::from_str::<RaftMember>(&json).unwrap(), member);

        assert_eq!(
            LedgerEntry::new(TaskId([0; 32]), vec![], None),
            Err(LedgerEntryError::EmptyReport)
        );
        assert!(matches!(
            LedgerEntry::new(TaskId([0; 32]), vec![0; LEDGER_REPORT_BYTES_MAX + 1], None),
            Err(LedgerEntryError::ReportTooLarge { .. })
        ));
        assert!(matches!(
            LedgerEntry::new(
                TaskId([0; 32]),
                vec![0; 1],
                Some(vec![0; LEDGER_CERTIFICATE_BYTES_MAX + 1])
            ),
            Err(LedgerEntryError::CertificateTooLarge { .. })
        ));
    }
}
