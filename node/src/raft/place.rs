//! Which raft group a place has: one long-lived group per region, per continent and
//! for the global level, whose voters are that place's registry members
//! ([`Epoch::place_members`]). Pure: computed from the epoch chain.
//!
//! A group is named `<level>-<place>-e<founding epoch>`: the founding epoch is the
//! first epoch of the latest unbroken run of epochs in which the place has members (the
//! genesis for a place that always had some). Its founders, that epoch's members of
//! the place, form the group's first membership; the founder with the smallest raft id
//! initializes it, once. Every later epoch changes the voters through openraft's joint
//! consensus ([`super::RaftGroups::follow`]), so the log, the ledger and the leader
//! outlive epoch changes. A place that loses every member and gains some again starts
//! a new group (a new founding epoch): nobody is left to reconfigure the old one.

use polity_consensus::ids::PublicKey;
use polity_consensus::registry::{Anchor, Epoch};
use polity_proto::{Level, RegistryMember};
use polity_raft::GroupName;

/// A place's raft group as the registry defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceGroup {
    pub name: GroupName,
    /// The place: a region at [`Level::Region`], a continent at [`Level::Continent`],
    /// `global` at [`Level::Global`].
    pub level: Level,
    pub place: String,
    /// The founding epoch's members of the place: the group's first membership.
    pub founders: Vec<PublicKey>,
    /// The current epoch's members of the place: the voters the group moves to.
    pub members: Vec<PublicKey>,
}

impl PlaceGroup {
    /// Whether `key` is a voter now or was one at the founding.
    pub fn knows(&self, key: &PublicKey) -> bool {
        self.members.contains(key) || self.founders.contains(key)
    }
}

/// The raft group of `place` at `level` in the anchor's current epoch; `None` when the
/// place has no member (or its name makes no group name).
pub fn place_group(anchor: &Anchor, level: Level, place: &str) -> Option<PlaceGroup> {
    let epochs = anchor.epochs();
    let keys = |epoch: &Epoch| -> Vec<PublicKey> {
        epoch
            .place_members(level, place)
            .iter()
            .filter_map(|member| PublicKey::from_slice(&member.public_key).ok())
            .collect()
    };
    let current = epochs.last()?;
    let members = keys(current);
    if members.is_empty() {
        return None;
    }
    let founding = epochs
        .iter()
        .rev()
        .take_while(|epoch| !keys(epoch).is_empty())
        .last()
        .unwrap_or(current);
    let level_word = match level {
        Level::Region => "region",
        Level::Continent => "continent",
        Level::Global => "global",
        Level::Unspecified => return None,
    };
    let name = GroupName::new(format!("{level_word}-{place}-e{}", founding.number())).ok()?;
    Some(PlaceGroup {
        name,
        level,
        place: place.to_string(),
        founders: keys(founding),
        members,
    })
}

/// The places a member stands for: its region, its continent and the global level
/// (the place groups it belongs to).
pub fn places_of(member: &RegistryMember) -> [(Level, &str); 3] {
    [
        (Level::Region, member.region.as_str()),
        (Level::Continent, member.continent.as_str()),
        (Level::Global, polity_consensus::binding::GLOBAL_GROUP),
    ]
}
