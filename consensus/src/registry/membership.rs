//! Membership: a verified chain's members against the registry epoch it names.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use polity_proto::{Certificate, Level, Observation, TaskSpec};
use prost::Message;

use super::{Anchor, Epoch, MembershipError, REGISTRY_CAPABILITY, seats_allowed};
use crate::AnswerVerifier;
use crate::binding::{GLOBAL_GROUP, level_word, place_of, verify_task_chain};
use crate::certificate::{ChainSummary, LEVELS_MAX, VerifyError};
use crate::ids::{PublicKey, TaskId};
use crate::task::task_id;

/// [`verify_task_chain`], then [`check_membership`] against the epoch of `anchor`
/// that the root names. Returns the summary and that epoch.
pub fn verify_in<'a>(
    anchor: &'a Anchor,
    root: &Certificate,
    verifier: Option<&dyn AnswerVerifier>,
) -> Result<(ChainSummary, &'a Epoch), VerifyError> {
    let summary = verify_task_chain(root, verifier)?;
    let epoch =
        anchor
            .epoch_named(&root.registry_digest)
            .ok_or_else(|| MembershipError::UnknownEpoch {
                digest: hex::encode(&root.registry_digest),
            })?;
    check_membership(root, epoch)?;
    Ok((summary, epoch))
}

/// What every group of one task is checked with. A region's seat order is computed
/// once per task (a chain may carry many certificates of one region).
struct TaskSeats<'a> {
    epoch: &'a Epoch,
    task: TaskId,
    capability: String,
    replication: usize,
    orders: RefCell<BTreeMap<String, Rc<Vec<PublicKey>>>>,
}

impl<'a> TaskSeats<'a> {
    fn new(epoch: &'a Epoch, task: &[u8]) -> Result<TaskSeats<'a>, MembershipError> {
        let spec =
            TaskSpec::decode(task).map_err(|e| MembershipError::Malformed(format!("task: {e}")))?;
        Ok(TaskSeats {
            epoch,
            task: task_id(task),
            capability: spec.capability,
            replication: spec.replication.max(1) as usize,
            orders: RefCell::new(BTreeMap::new()),
        })
    }

    /// `region`'s seat order for this task.
    fn order(&self, region: &str) -> Rc<Vec<PublicKey>> {
        let mut orders = self.orders.borrow_mut();
        let order = orders.entry(region.to_string()).or_insert_with(|| {
            Rc::new(self.epoch.seat_order(&self.task, &self.capability, region))
        });
        Rc::clone(order)
    }
}

/// Checks that a chain which passed [`verify_task_chain`] sat only the members its
/// registry epoch allows (see the module doc of [`super`]). `epoch` must be the one
/// the root names.
pub fn check_membership(root: &Certificate, epoch: &Epoch) -> Result<(), MembershipError> {
    if root.registry_digest != epoch.digest() {
        return Err(MembershipError::UnknownEpoch {
            digest: hex::encode(&root.registry_digest),
        });
    }
    check_group(&TaskSeats::new(epoch, &root.task)?, root, 0)
}

/// What a member checks before it takes a seat in a group `plan` of `task`: every
/// member registered with its stake as weight; a region group drawn by the seat
/// rule from the region's members serving the capability; a continent group's
/// members of that continent. (Its children are checked, with
/// [`check_membership`], when they arrive.)
pub fn check_seats(
    epoch: &Epoch,
    task: &[u8],
    level: Level,
    group: &str,
    members: &[polity_proto::Member],
) -> Result<(), MembershipError> {
    let seats = TaskSeats::new(epoch, task)?;
    let place = place_of(group).map_err(|e| MembershipError::Malformed(e.to_string()))?;
    let keys = registered_members(epoch, members, group)?;
    match level {
        Level::Region => check_region(&seats, group, place, &keys),
        Level::Continent => in_continent(epoch, group, place, &keys),
        Level::Global if place == GLOBAL_GROUP => Ok(()),
        _ => Err(MembershipError::Malformed(format!(
            "no {} group is named {group:?}",
            level_word(level)
        ))),
    }
}

fn check_group(
    seats: &TaskSeats<'_>,
    certificate: &Certificate,
    depth: usize,
) -> Result<(), MembershipError> {
    if depth >= LEVELS_MAX {
        return Err(MembershipError::Malformed("chain too deep".into()));
    }
    let slot = certificate
        .slot
        .as_ref()
        .ok_or_else(|| MembershipError::Malformed("no slot".into()))?;
    let group = slot.group.clone();
    let place = place_of(&group)
        .map_err(|e| MembershipError::Malformed(e.to_string()))?
        .to_string();
    let members = registered_members(seats.epoch, &certificate.members, &group)?;
    let level = Level::try_from(slot.level).unwrap_or(Level::Unspecified);
    check_raft_signer(seats.epoch, certificate, level, &group, &place)?;
    match level {
        Level::Region => check_region(seats, &group, &place, &members),
        level @ (Level::Continent | Level::Global) => {
            let children = decode_children(certificate)?;
            check_parent(seats.epoch, level, &group, &place, &members, &children)?;
            check_representatives(certificate, &group)?;
            for child in &children {
                check_group(seats, child, depth + 1)?;
            }
            Ok(())
        }
        Level::Unspecified => Err(MembershipError::Malformed("unspecified level".into())),
    }
}

/// A raft commit is signed by the leader of the place's raft group, whose voters are
/// the place's registry members: the signer must be one of them.
fn check_raft_signer(
    epoch: &Epoch,
    certificate: &Certificate,
    level: Level,
    group: &str,
    place: &str,
) -> Result<(), MembershipError> {
    let Some(commit) = &certificate.raft_commit else {
        return Ok(());
    };
    let key = PublicKey::from_slice(&commit.signer)
        .map_err(|e| MembershipError::Malformed(format!("raft commit signer: {e}")))?;
    match epoch.member(&key) {
        Some(member) if Epoch::in_place(member, level, place) => Ok(()),
        _ => Err(MembershipError::RaftSigner {
            group: group.to_string(),
            place: place.to_string(),
            key,
        }),
    }
}

/// The members' keys, each a registry member whose weight is its registered stake.
fn registered_members(
    epoch: &Epoch,
    members: &[polity_proto::Member],
    group: &str,
) -> Result<Vec<PublicKey>, MembershipError> {
    members
        .iter()
        .map(|member| {
            let key = PublicKey::from_slice(&member.public_key)
                .map_err(|e| MembershipError::Malformed(e.to_string()))?;
            let registered = epoch
                .member(&key)
                .ok_or_else(|| MembershipError::NotMember {
                    group: group.to_string(),
                    key,
                })?;
            if member.weight != registered.stake {
                return Err(MembershipError::WrongWeight {
                    group: group.to_string(),
                    key,
                    expected: registered.stake,
                    found: member.weight,
                });
            }
            Ok(key)
        })
        .collect()
}

/// A region group: members of the region that serve the task's capability, each
/// within the seat rule's allowed prefix, and at least `min(replication, eligible)`
/// (a registry task: at least one).
fn check_region(
    seats: &TaskSeats<'_>,
    group: &str,
    region: &str,
    members: &[PublicKey],
) -> Result<(), MembershipError> {
    let order = seats.order(region);
    let allowed = seats_allowed(seats.replication);
    for key in members {
        let registered = seats.epoch.member(key).expect("registered_members checked");
        if registered.region != region {
            return Err(MembershipError::WrongPlace {
                group: group.to_string(),
                key: *key,
                expected: format!("region {region:?}"),
                found: format!("region {:?}", registered.region),
            });
        }
        match order.iter().position(|seat| seat == key) {
            None => {
                return Err(MembershipError::NotServing {
                    group: group.to_string(),
                    key: *key,
                    capability: seats.capability.clone(),
                });
            }
            Some(rank) if rank >= allowed => {
                return Err(MembershipError::NotDrawn {
                    group: group.to_string(),
                    key: *key,
                    allowed,
                });
            }
            Some(_) => {}
        }
    }
    // A registry task seats whoever of the region can be reached: its guard is the
    // approving stake (more than 2/3 of the epoch's), so a dead member cannot block
    // changes, its own removal included.
    let needed = if seats.capability == REGISTRY_CAPABILITY {
        1
    } else {
        seats.replication.min(order.len())
    };
    if members.len() < needed {
        return Err(MembershipError::TooFew {
            group: group.to_string(),
            needed,
            found: members.len(),
        });
    }
    Ok(())
}

/// A continent or the global group: its children are of its place (regions of the
/// continent; continents of the registry), and, for a continent, every member sits
/// in the continent.
fn check_parent(
    epoch: &Epoch,
    level: Level,
    group: &str,
    place: &str,
    members: &[PublicKey],
    children: &[Certificate],
) -> Result<(), MembershipError> {
    if level == Level::Global && place != GLOBAL_GROUP {
        return Err(MembershipError::Malformed(format!(
            "the global group is named {group:?}"
        )));
    }
    let child_level = if level == Level::Global {
        Level::Continent
    } else {
        Level::Region
    };
    for child in children {
        let child_group = child.slot.as_ref().map_or("", |slot| slot.group.as_str());
        let child_place =
            place_of(child_group).map_err(|e| MembershipError::Malformed(e.to_string()))?;
        let belongs = match level {
            Level::Continent => epoch.continent_of(child_place) == Some(place),
            _ => epoch.regions().values().any(|c| c == child_place),
        };
        if !belongs {
            return Err(MembershipError::ForeignChild {
                group: group.to_string(),
                child: child_group.to_string(),
                level: level_word(child_level),
            });
        }
    }
    match level {
        Level::Continent => in_continent(epoch, group, place, members),
        _ => Ok(()),
    }
}

/// Every member of a continent group sits in that continent.
fn in_continent(
    epoch: &Epoch,
    group: &str,
    continent: &str,
    members: &[PublicKey],
) -> Result<(), MembershipError> {
    for key in members {
        let registered = epoch.member(key).expect("registered_members checked");
        if registered.continent != continent {
            return Err(MembershipError::WrongPlace {
                group: group.to_string(),
                key: *key,
                expected: format!("continent {continent:?}"),
                found: format!("continent {:?}", registered.continent),
            });
        }
    }
    Ok(())
}

/// Every included observation of a (verified) parent is signed by a member of the
/// child it names: a member represents only a group it sat in. (A member whose
/// observation was not included carried nothing into the decision.)
fn check_representatives(certificate: &Certificate, group: &str) -> Result<(), MembershipError> {
    let mut members_of: BTreeMap<&[u8], BTreeSet<PublicKey>> = BTreeMap::new();
    for (digest, bytes) in certificate.child_digests.iter().zip(&certificate.children) {
        if members_of.contains_key(digest.as_slice()) {
            continue;
        }
        let child = Certificate::decode(bytes.as_slice())
            .map_err(|e| MembershipError::Malformed(format!("child: {e}")))?;
        let keys = child
            .members
            .iter()
            .filter_map(|m| PublicKey::from_slice(&m.public_key).ok())
            .collect();
        members_of.insert(digest.as_slice(), keys);
    }
    for statement in &certificate.observations {
        let observation = Observation::decode(statement.body.as_slice())
            .map_err(|e| MembershipError::Malformed(format!("observation: {e}")))?;
        if observation.child_certificate_digest.is_empty() {
            continue;
        }
        let key = PublicKey::from_slice(&statement.signer)
            .map_err(|e| MembershipError::Malformed(e.to_string()))?;
        let sat = members_of
            .get(observation.child_certificate_digest.as_slice())
            .is_some_and(|keys| keys.contains(&key));
        if !sat {
            return Err(MembershipError::NotRepresentative {
                group: group.to_string(),
                key,
            });
        }
    }
    Ok(())
}

/// The distinct children a verified parent carries, decoded.
fn decode_children(certificate: &Certificate) -> Result<Vec<Certificate>, MembershipError> {
    let mut seen = BTreeSet::new();
    let mut children = Vec::new();
    for bytes in &certificate.children {
        if !seen.insert(bytes.as_slice()) {
            continue; // one child per representative: the same bytes repeat
        }
        children.push(
            Certificate::decode(bytes.as_slice())
                .map_err(|e| MembershipError::Malformed(format!("child: {e}")))?,
        );
    }
    Ok(children)
}
