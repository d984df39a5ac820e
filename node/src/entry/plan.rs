//! From a client's request to a [`Plan`]: validation, scope, and the seats that may
//! sit in each region group. Pure: the caller hands in the seats it knows of.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use polity_consensus::binding::ATTEMPT_SEPARATOR;
use polity_consensus::registry::{
    Epoch, REGISTRY_CAPABILITY, check_proposal, registry_task, seats_allowed,
};
use polity_consensus::{PublicKey, TaskId, encode_task, select, task_id};
use polity_proto::{
    Aggregation, ConsensusPath, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskSpec,
};

use super::{SubmitError, level_name};
use crate::config::{NodeConfig, validate_capability_name};

/// Largest replication a client may ask for, per region group.
pub const REPLICATION_MAX: u32 = 64;

/// A node that may sit in a group: this node or a peer, as the entry node sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seat {
    pub key: PublicKey,
    pub region: String,
    pub continent: String,
    pub stake: u64,
    pub trust: f64,
}

/// A validated task, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub spec_bytes: Vec<u8>,
    pub top: Level,
    pub path: ConsensusPath,
    pub path_reason: String,
    /// The capable seats of every region in scope, in the seat rule's order and
    /// within its allowed prefix; every region listed can field its group.
    pub regions: BTreeMap<String, Vec<Seat>>,
    /// Regions in scope whose registry members could field the group, but too few of
    /// them are reachable from here now: region -> why. They are not silently left
    /// out: each one degrades the task, named.
    pub unseated: BTreeMap<String, String>,
    /// The registry epoch the seats were drawn from.
    pub registry_digest: [u8; 32],
}

/// A group's name within a task: the place it stands for (a region, a continent or
/// "global") and its attempt. Attempt 0 is the first composition; each re-formed
/// group (an extra replica, a replaced member) is a new attempt, and so a new slot:
/// an honest member re-signing under another composition would otherwise look like
/// equivocation. On the wire it is `place` for attempt 0 and `place~k` after.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName {
    pub place: String,
    pub attempt: u32,
}

impl GroupName {
    pub fn first(place: impl Into<String>) -> GroupName {
        GroupName {
            place: place.into(),
            attempt: 0,
        }
    }

    /// The same place's next attempt.
    pub fn next(&self) -> GroupName {
        GroupName {
            place: self.place.clone(),
            attempt: self.attempt + 1,
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.attempt {
            0 => f.write_str(&self.place),
            // The separator is outside the label alphabet (`config::validate_label`);
            // verifiers read the place back with `binding::place_of`.
            attempt => write!(f, "{}{ATTEMPT_SEPARATOR}{attempt}", self.place),
        }
    }
}

/// Validates a submission against the node's limits and turns it into a plan over
/// `seats` (the registry members of `epoch` that serve the capability and can be
/// reached). `distrusted` are members this node will not seat for their trust (at
/// or below the floor): out for long, not merely unreachable. `serves` is what this
/// node serves, for the error message of an unknown capability.
pub(crate) fn plan(
    request: SubmitTaskRequest,
    config: &NodeConfig,
    epoch: &Epoch,
    seats: Vec<Seat>,
    distrusted: &BTreeSet<PublicKey>,
    serves: &[String],
) -> Result<Plan, SubmitError> {
    let spec = validate(request, config)?;
    let scope = spec.scope.clone().expect("validate sets the scope");
    let top = Level::try_from(scope.level).expect("validate resolves a known level");
    if spec.capability == REGISTRY_CAPABILITY {
        check_registry_task(&spec, epoch)?;
    }
    let registered = epoch
        .members()
        .iter()
        .any(|member| Epoch::serves(member, &spec.capability));
    if seats.is_empty() && !registered {
        return Err(SubmitError::InvalidArgument(format!(
            "unknown capability {:?}: no registry member serves it (this node serves {})",
            spec.capability,
            serves.join(", ")
        )));
    }
    let choice = select(spec.policy.as_ref());
    let spec_bytes = encode_task(&spec);
    let id = task_id(&spec_bytes);
    let drawn = draw(epoch, &id, &spec, seats);
    let eligible = eligible_in_scope(epoch, &spec, top, &scope, distrusted);
    let regions = regions_in_scope(&spec, top, &scope, drawn, &eligible)?;
    let unseated = unseated_regions(&spec, &regions, &eligible);
    Ok(Plan {
        unseated,
        id,
        spec,
        spec_bytes,
        top,
        path: choice.path,
        path_reason: choice.reason,
        regions,
        registry_digest: *epoch.digest(),
    })
}

/// A registry task must be the one [`registry_task`] makes of a well-formed
/// proposal for the current epoch (else members would refuse it anyway).
fn check_registry_task(spec: &TaskSpec, epoch: &Epoch) -> Result<(), SubmitError> {
    check_proposal(epoch, &spec.payload)
        .map_err(|error| SubmitError::InvalidArgument(format!("registry proposal: {error}")))?;
    let expected = registry_task(epoch, spec.payload.clone(), spec.deadline_ms);
    if *spec != expected {
        return Err(SubmitError::InvalidArgument(format!(
            "a registry task is global, bft, majority, replication {} and nonce {} \
             (use `polity propose`)",
            expected.replication, expected.nonce
        )));
    }
    Ok(())
}

/// Orders the seats of each region by the seat rule for task `id` and keeps those
/// within the allowed prefix: the entry node cannot hand-pick members.
fn draw(epoch: &Epoch, id: &TaskId, spec: &TaskSpec, seats: Vec<Seat>) -> Vec<Seat> {
    let allowed = seats_allowed(spec.replication as usize);
    let mut ranked: Vec<(usize, Seat)> = Vec::with_capacity(seats.len());
    let mut orders: BTreeMap<String, Vec<PublicKey>> = BTreeMap::new();
    for seat in seats {
        let order = orders
            .entry(seat.region.clone())
            .or_insert_with(|| epoch.seat_order(id, &spec.capability, &seat.region));
        if let Some(rank) = order.iter().position(|key| *key == seat.key)
            && rank < allowed
        {
            ranked.push((rank, seat));
        }
    }
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, seat)| seat).collect()
}

/// The request's fields checked and defaulted: the canonical spec.
fn validate(request: SubmitTaskRequest, config: &NodeConfig) -> Result<TaskSpec, SubmitError> {
    let invalid = |reason: String| SubmitError::InvalidArgument(reason);
    if request.capability.is_empty() {
        return Err(invalid("capability is required".into()));
    }
    validate_capability_name(&request.capability)
        .map_err(|reason| invalid(format!("capability {:?}: {reason}", request.capability)))?;
    let payload_max = config.api.payload_bytes_max;
    if request.payload.len() > payload_max {
        return Err(invalid(format!(
            "payload is {} bytes, the limit is {payload_max}",
            request.payload.len()
        )));
    }
    // A registry task seats every member of the largest region (at most
    // MEMBERS_MAX, which the registry's own rules keep per region).
    let replication_max = match request.capability.as_str() {
        REGISTRY_CAPABILITY => polity_consensus::certificate::MEMBERS_MAX as u32,
        _ => REPLICATION_MAX,
    };
    let replication = match request.replication {
        0 => 1,
        n if n > replication_max => {
            return Err(invalid(format!(
                "replication {n} is above the limit {replication_max}"
            )));
        }
        n => n,
    };
    let aggregation = match Aggregation::try_from(request.aggregation) {
        Ok(Aggregation::Unspecified) => Aggregation::Majority,
        Ok(aggregation) => aggregation,
        Err(_) => {
            return Err(invalid(format!(
                "unknown aggregation {}",
                request.aggregation
            )));
        }
    };
    let policy = validate_policy(request.policy)?;
    let deadline_ms = match request.deadline_ms {
        0 => config.tasks.deadline_ms_default,
        ms if ms > config.tasks.deadline_ms_max => {
            return Err(invalid(format!(
                "deadline {ms} ms is above the limit {} ms",
                config.tasks.deadline_ms_max
            )));
        }
        ms => ms,
    };
    let scope = resolve_scope(request.scope, config)?;
    Ok(TaskSpec {
        capability: request.capability,
        payload: request.payload,
        scope: Some(scope),
        replication,
        aggregation: aggregation as i32,
        policy,
        deadline_ms,
        nonce: request.nonce,
    })
}

/// The registry members in scope that may sit for a task, reachable or not: what
/// the registry promises, against which the reachable seats are judged.
#[derive(Debug, Default)]
struct Eligible {
    /// Per region: members serving the capability and not distrusted, at most the
    /// seat rule's allowed prefix.
    regions: BTreeMap<String, usize>,
    /// Per region: members in scope serving the capability that this node distrusts.
    distrusted_in: BTreeMap<String, usize>,
}

fn eligible_in_scope(
    epoch: &Epoch,
    spec: &TaskSpec,
    top: Level,
    scope: &Scope,
    distrusted: &BTreeSet<PublicKey>,
) -> Eligible {
    let allowed = seats_allowed(spec.replication as usize);
    let mut eligible = Eligible::default();
    for member in epoch.members() {
        let in_scope = match top {
            Level::Region => member.region == scope.name,
            Level::Continent => member.continent == scope.name,
            _ => true,
        };
        if !in_scope || !Epoch::serves(member, &spec.capability) {
            continue;
        }
        if PublicKey::from_slice(&member.public_key).is_ok_and(|key| distrusted.contains(&key)) {
            *eligible
                .distrusted_in
                .entry(member.region.clone())
                .or_default() += 1;
            continue;
        }
        let count = eligible.regions.entry(member.region.clone()).or_default();
        *count = (*count + 1).min(allowed);
    }
    eligible
}

/// The seats in scope, by region; regions that cannot field a full group stay out.
///
/// Two refusals: the registry itself has no region in scope with enough members
/// (FAILED_PRECONDITION: nothing changes until the registry does), or it has, but
/// too few of them can be reached from here now (UNAVAILABLE, "no quorum
/// reachable": a partition, crashed members or open circuit breakers; it passes,
/// and another node may reach them). Refused at once, so a client on the minority
/// side of a partition is not held to its deadline.
fn regions_in_scope(
    spec: &TaskSpec,
    top: Level,
    scope: &Scope,
    seats: Vec<Seat>,
    eligible: &Eligible,
) -> Result<BTreeMap<String, Vec<Seat>>, SubmitError> {
    let in_scope = |seat: &Seat| match top {
        Level::Region => seat.region == scope.name,
        Level::Continent => seat.continent == scope.name,
        _ => true,
    };
    let mut regions: BTreeMap<String, Vec<Seat>> = BTreeMap::new();
    for seat in seats.into_iter().filter(in_scope) {
        regions.entry(seat.region.clone()).or_default().push(seat);
    }
    let place = format!("{} {:?}", level_name(top), scope.name);
    let distrusted = match eligible.distrusted_in.values().sum::<usize>() {
        0 => String::new(),
        n => format!(" ({n} more distrusted: trust at or below the floor)"),
    };
    if eligible.regions.is_empty() {
        return Err(SubmitError::FailedPrecondition(format!(
            "no trusted registry member in {place} serves {:?}{distrusted}",
            spec.capability
        )));
    }
    // The registry task asks every reachable member of every region (the change
    // needs more than 2/3 of the stake, not a full house); others need `replication`
    // in one region.
    let needed = match spec.capability == REGISTRY_CAPABILITY {
        true => 1,
        false => spec.replication as usize,
    };
    let registered = eligible.regions.values().copied().max().unwrap_or(0);
    if needed > registered {
        return Err(SubmitError::FailedPrecondition(format!(
            "replication {needed} needs {needed} trusted registry members serving {:?} in a \
             region; the best region in {place} has {registered}{distrusted}",
            spec.capability
        )));
    }
    let reachable: BTreeMap<String, usize> = regions
        .iter()
        .map(|(region, seats)| (region.clone(), seats.len()))
        .collect();
    regions.retain(|_, seats| seats.len() >= needed);
    if regions.is_empty() {
        // Name the region that came closest: most reachable, then most eligible.
        let (region, eligible, reachable) = eligible
            .regions
            .iter()
            .filter(|(_, count)| **count >= needed)
            .map(|(region, count)| (region, *count, reachable.get(region).copied().unwrap_or(0)))
            .max_by_key(|(region, eligible, reachable)| {
                (*reachable, *eligible, std::cmp::Reverse(*region))
            })
            .map_or((String::new(), 0, 0), |(region, eligible, reachable)| {
                (region.clone(), eligible, reachable)
            });
        return Err(SubmitError::NoQuorumReachable {
            region,
            reachable,
            eligible,
            needed,
        });
    }
    Ok(regions)
}

/// The regions in scope that the registry says can field the group (enough members
/// serving the capability, distrusted ones counted) but that have no group in
/// `regions`, with why: too few reachable (connected, compatible, circuit closed), or
/// too many distrusted. The registry task is judged by the stake approving it, not by
/// the regions it covers, and has none.
fn unseated_regions(
    spec: &TaskSpec,
    regions: &BTreeMap<String, Vec<Seat>>,
    eligible: &Eligible,
) -> BTreeMap<String, String> {
    if spec.capability == REGISTRY_CAPABILITY {
        return BTreeMap::new();
    }
    let needed = spec.replication as usize;
    let mut places: BTreeSet<&String> = eligible.regions.keys().collect();
    places.extend(eligible.distrusted_in.keys());
    places
        .into_iter()
        .filter(|region| !regions.contains_key(*region))
        .filter_map(|region| {
            let trusted = eligible.regions.get(region).copied().unwrap_or(0);
            let distrusted = eligible.distrusted_in.get(region).copied().unwrap_or(0);
            let capability = &spec.capability;
            let reason = if trusted >= needed {
                format!(
                    "not seated: fewer than {needed} of its {trusted} trusted registry members \
                     serving {capability:?} are reachable from the entry node"
                )
            } else if trusted + distrusted >= needed {
                format!(
                    "not seated: {distrusted} of its {} registry members serving \
                     {capability:?} are distrusted, {trusted} are too few for {needed}",
                    trusted + distrusted
                )
            } else {
                return None; // the registry never gave it enough members
            };
            Some((region.clone(), reason))
        })
        .collect()
}

/// Resolves a requested scope. An empty name means the entry node's own region or
/// continent.
fn resolve_scope(scope: Option<Scope>, config: &NodeConfig) -> Result<Scope, SubmitError> {
    let scope = scope.unwrap_or(Scope {
        level: Level::Region as i32,
        name: String::new(),
    });
    let name_or = |name: String, mine: &str| {
        if name.is_empty() {
            mine.to_string()
        } else {
            name
        }
    };
    let (level, name) = match Level::try_from(scope.level) {
        Ok(Level::Region) => (Level::Region, name_or(scope.name, &config.region)),
        Ok(Level::Continent) => (Level::Continent, name_or(scope.name, &config.continent)),
        Ok(Level::Global) if scope.name.is_empty() || scope.name == "global" => {
            (Level::Global, String::new())
        }
        Ok(Level::Global) => {
            return Err(SubmitError::InvalidArgument(format!(
                "a global scope has no name, got {:?}",
                scope.name
            )));
        }
        Ok(Level::Unspecified) | Err(_) => {
            return Err(SubmitError::InvalidArgument(format!(
                "scope level {} is not region, continent or global",
                scope.level
            )));
        }
    };
    Ok(Scope {
        level: level as i32,
        name,
    })
}

fn validate_policy(policy: Option<RiskPolicy>) -> Result<Option<RiskPolicy>, SubmitError> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    for (name, value) in [
        ("adversarial_risk", policy.adversarial_risk),
        ("consistency", policy.consistency),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(SubmitError::InvalidArgument(format!(
                "policy.{name} must be in [0,1], got {value}"
            )));
        }
    }
    if ConsensusPath::try_from(policy.path_override).is_err() {
        return Err(SubmitError::InvalidArgument(format!(
            "unknown consensus path {}",
            policy.path_override
        )));
    }
    Ok(Some(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(n: u8, region: &str, continent: &str) -> Seat {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key();
        Seat {
            key: PublicKey(key.to_bytes()),
            region: region.into(),
            continent: continent.into(),
            stake: 1,
            trust: 0.8,
        }
    }

    /// A registry of exactly `seats` (one member when there are none), serving sha256.
    fn epoch_of(seats: &[Seat]) -> Epoch {
        let mut members: Vec<polity_proto::RegistryMember> = seats
            .iter()
            .map(|seat| polity_proto::RegistryMember {
                public_key: seat.key.0.to_vec(),
                region: seat.region.clone(),
                continent: seat.continent.clone(),
                stake: seat.stake,
                capabilities: vec!["sha256".into()],
            })
            .collect();
        if members.is_empty() {
            members.push(polity_proto::RegistryMember {
                public_key: seat(99, "r1", "c1").key.0.to_vec(),
                region: "r1".into(),
                continent: "c1".into(),
                stake: 1,
                capabilities: Vec::new(),
            });
        }
        members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        Epoch::from_registry(&polity_proto::Registry {
            federation: "test".into(),
            epoch: 0,
            previous: Vec::new(),
            members,
            admission: polity_proto::Admission::Open as i32,
            authorities: vec![seat(100, "r1", "c1").key.0.to_vec()],
        })
        .unwrap()
    }

    fn request(replication: u32, scope: Option<Scope>) -> SubmitTaskRequest {
        SubmitTaskRequest {
            capability: "sha256".into(),
            payload: b"hi".to_vec(),
            replication,
            scope,
            ..SubmitTaskRequest::default()
        }
    }

    fn check(
        request: SubmitTaskRequest,
        seats: Vec<Seat>,
    ) -> Result<BTreeMap<String, usize>, String> {
        let epoch = epoch_of(&seats);
        check_in(&epoch, request, seats, &BTreeSet::new()).map_err(|error| error.to_string())
    }

    /// Plans `request` over `epoch` with only `seats` reachable.
    fn check_in(
        epoch: &Epoch,
        request: SubmitTaskRequest,
        seats: Vec<Seat>,
        distrusted: &BTreeSet<PublicKey>,
    ) -> Result<BTreeMap<String, usize>, SubmitError> {
        let config = NodeConfig {
            region: "r1".into(),
            continent: "c1".into(),
            ..NodeConfig::default()
        };
        plan(
            request,
            &config,
            epoch,
            seats,
            distrusted,
            &["sha256".to_string()],
        )
        .map(|plan| {
            plan.regions
                .into_iter()
                .map(|(region, seats)| (region, seats.len()))
                .collect()
        })
    }

    #[test]
    fn group_names_on_the_wire_read_back_as_their_place() {
        use polity_consensus::binding::place_of;
        for name in [
            GroupName::first("eu-west"),
            GroupName::first("eu").next().next(),
        ] {
            assert_eq!(place_of(&name.to_string()), Ok(name.place.as_str()));
        }
        assert_eq!(GroupName::first("eu").next().to_string(), "eu~1");
    }

    #[test]
    fn regions_that_cannot_field_a_group_stay_out() {
        let seats = vec![
            seat(1, "r1", "c1"),
            seat(2, "r1", "c1"),
            seat(3, "r2", "c1"),
            seat(4, "r3", "c2"),
            seat(5, "r3", "c2"),
        ];
        let global = Some(Scope {
            level: Level::Global as i32,
            name: String::new(),
        });
        let regions = check(request(2, global), seats.clone()).unwrap();
        assert_eq!(
            regions,
            BTreeMap::from([("r1".into(), 2), ("r3".into(), 2)])
        );
        // The default scope is the entry node's own region.
        let regions = check(request(1, None), seats).unwrap();
        assert_eq!(regions, BTreeMap::from([("r1".into(), 2)]));
    }

    /// A region the registry can seat but that is out of reach is named, not dropped.
    #[test]
    fn a_registered_region_out_of_reach_is_unseated_not_forgotten() {
        let registry = vec![
            seat(1, "r1", "c1"),
            seat(2, "r1", "c1"),
            seat(3, "r2", "c1"),
            seat(4, "r3", "c2"),
            seat(5, "r3", "c2"),
        ];
        let epoch = epoch_of(&registry);
        let global = Some(Scope {
            level: Level::Global as i32,
            name: String::new(),
        });
        // r3's two members are behind a NAT nobody crossed: only r1 and r2 are seen.
        let reachable = registry[..3].to_vec();
        let config = NodeConfig {
            region: "r1".into(),
            continent: "c1".into(),
            ..NodeConfig::default()
        };
        let serves = ["sha256".to_string()];
        let none = BTreeSet::new();
        let planned = plan(
            request(2, global),
            &config,
            &epoch,
            reachable,
            &none,
            &serves,
        )
        .unwrap();
        assert_eq!(planned.regions.keys().collect::<Vec<_>>(), ["r1"]);
        // r2 has one member: it can never field replication 2 and is no omission.
        assert_eq!(planned.unseated.keys().collect::<Vec<_>>(), ["r3"]);
        assert!(planned.unseated["r3"].contains("fewer than 2 of its 2 trusted"));
        // Distrusting one of r3's members is no excuse to forget r3 either.
        let distrusted = BTreeSet::from([registry[3].key]);
        let global = Some(Scope {
            level: Level::Global as i32,
            name: String::new(),
        });
        let planned = plan(
            request(2, global),
            &config,
            &epoch,
            registry[..4].to_vec(),
            &distrusted,
            &serves,
        )
        .unwrap();
        assert!(
            planned.unseated["r3"].contains("1 of its 2 registry members"),
            "{:?}",
            planned.unseated
        );
    }

    /// Enough registry members, too few reachable: refused at once as UNAVAILABLE
    /// with the numbers; too few registered (or trusted): FAILED_PRECONDITION.
    #[test]
    fn too_few_reachable_members_is_no_quorum_reachable() {
        let registry: Vec<Seat> = (1..=5).map(|n| seat(n, "r1", "c1")).collect();
        let epoch = epoch_of(&registry);
        let none = BTreeSet::new();
        // The minority side of a 2 | 3 partition: this node and one peer.
        let minority = registry[..2].to_vec();
        let error = check_in(&epoch, request(3, None), minority.clone(), &none).unwrap_err();
        assert!(
            matches!(
                error,
                SubmitError::NoQuorumReachable {
                    reachable: 2,
                    eligible: 5,
                    needed: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("no quorum reachable in region \"r1\": 2 of the 5"),
            "{message}"
        );
        // The majority side decides.
        let majority = registry[2..].to_vec();
        let regions = check_in(&epoch, request(3, None), majority, &none).unwrap();
        assert_eq!(regions, BTreeMap::from([("r1".into(), 3)]));
        // Three of five distrusted: not a passing partition, a precondition.
        let distrusted: BTreeSet<PublicKey> = registry[2..].iter().map(|s| s.key).collect();
        let error = check_in(&epoch, request(3, None), minority, &distrusted).unwrap_err();
        assert!(
            matches!(&error, SubmitError::FailedPrecondition(reason)
                if reason.contains("has 2 (3 more distrusted")),
            "{error:?}"
        );
    }

    #[test]
    fn refusals_say_why() {
        let seats = vec![seat(1, "r1", "c1")];
        let error = check(request(2, None), seats.clone()).unwrap_err();
        assert!(error.contains("replication 2 needs 2 trusted"), "{error}");
        let error = check(request(REPLICATION_MAX + 1, None), seats.clone()).unwrap_err();
        assert!(error.contains("above the limit"), "{error}");
        let error = check(request(1, None), Vec::new()).unwrap_err();
        assert!(error.contains("unknown capability"), "{error}");
        let elsewhere = Some(Scope {
            level: Level::Region as i32,
            name: "r9".into(),
        });
        let error = check(request(1, elsewhere), seats.clone()).unwrap_err();
        assert!(
            error.contains("no trusted registry member in region \"r9\""),
            "{error}"
        );
        let named_global = Some(Scope {
            level: Level::Global as i32,
            name: "earth".into(),
        });
        let error = check(request(1, named_global), seats).unwrap_err();
        assert!(error.contains("global scope has no name"), "{error}");
    }
}
