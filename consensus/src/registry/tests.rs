use ed25519_dalek::SigningKey;
use polity_proto::Level;
use polity_proto::{
    Admission, Certificate, ConsensusPath, EpochChange, Proposal, Registry, RegistryMember,
    TaskSpec,
};
use prost::Message;

use super::*;
use crate::binding::verify_task_chain;
use crate::certificate::tests::Fixture;
use crate::task::{encode_task, task_id};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn member(n: u8, region: &str, continent: &str, stake: u64) -> RegistryMember {
    RegistryMember {
        public_key: key(n).verifying_key().to_bytes().to_vec(),
        region: region.into(),
        continent: continent.into(),
        stake,
        capabilities: vec!["echo".into()],
    }
}

/// A registry of `members`, sorted by key, with authority key 200.
fn registry(mut members: Vec<RegistryMember>) -> Registry {
    members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Registry {
        federation: "test".into(),
        epoch: 0,
        previous: Vec::new(),
        members,
        admission: Admission::Open as i32,
        authorities: vec![key(200).verifying_key().to_bytes().to_vec()],
    }
}

/// Members 1..=n of region r1 / continent c1, stake 1.
fn genesis(n: u8) -> (Genesis, Epoch) {
    let members = (1..=n).map(|i| member(i, "r1", "c1", 1)).collect();
    let genesis = sign_genesis(&registry(members), &[key(200)]).unwrap();
    let epoch = verify_genesis(&genesis).unwrap();
    (genesis, epoch)
}

#[test]
fn genesis_needs_every_authority_signature() {
    let (mut genesis, epoch) = genesis(3);
    assert_eq!(epoch.number(), 0);
    assert_eq!(epoch.digest(), &registry_digest(&genesis.registry));
    genesis.signatures[0][0] ^= 1;
    let error = verify_genesis(&genesis).unwrap_err().to_string();
    assert!(error.contains("did not sign"), "{error}");
    let stranger = sign_genesis(&registry(vec![member(1, "r1", "c1", 1)]), &[key(9)]);
    assert!(stranger.unwrap_err().to_string().contains("no key given"));
}

#[test]
fn a_registry_keeps_its_own_rules() {
    let check = |registry: Registry| Epoch::from_registry(&registry).map(|_| ());
    let mut unsorted = registry(vec![member(1, "r1", "c1", 1), member(2, "r1", "c1", 1)]);
    unsorted.members.reverse();
    assert!(
        check(unsorted)
            .unwrap_err()
            .to_string()
            .contains("increasing key order")
    );
    let two_continents = registry(vec![member(1, "r1", "c1", 1), member(2, "r1", "c2", 1)]);
    assert!(
        check(two_continents)
            .unwrap_err()
            .to_string()
            .contains("continents")
    );
    let zero_stake = registry(vec![member(1, "r1", "c1", 0)]);
    assert!(check(zero_stake).unwrap_err().to_string().contains("stake"));
    let bad_label = registry(vec![member(1, "R 1", "c1", 1)]);
    assert!(check(bad_label).unwrap_err().to_string().contains("region"));
    let mut no_authority = registry(vec![member(1, "r1", "c1", 1)]);
    no_authority.authorities.clear();
    assert!(
        check(no_authority)
            .unwrap_err()
            .to_string()
            .contains("authorities")
    );
}

#[test]
fn the_seat_rule_depends_on_task_and_epoch_only() {
    let (_, epoch) = genesis(8);
    let task = |nonce| {
        task_id(&encode_task(&TaskSpec {
            nonce,
            ..TaskSpec::default()
        }))
    };
    let first = epoch.seat_order(&task(1), "echo", "r1");
    assert_eq!(first.len(), 8);
    assert_eq!(first, epoch.seat_order(&task(1), "echo", "r1"));
    assert_ne!(first, epoch.seat_order(&task(2), "echo", "r1"));
    assert!(epoch.seat_order(&task(1), "other", "r1").is_empty());
    assert_eq!(
        epoch.seat_order(&task(1), REGISTRY_CAPABILITY, "r1").len(),
        8
    );
    assert_eq!(seats_allowed(4), 8);
}

/// A region certificate of `seated` (indices into keys 1..=n, as the fixture
/// numbers them) for an `echo` task with `replication`, drawn from `epoch`.
fn region_certificate(epoch: &Epoch, replication: u32, seated: &[usize]) -> Certificate {
    let mut fixture = Fixture::new(8, ConsensusPath::Bft);
    fixture.registry = *epoch.digest();
    fixture.group = Some("r1".into());
    fixture.task = encode_task(&TaskSpec {
        capability: "echo".into(),
        replication,
        scope: Some(polity_proto::Scope {
            level: Level::Region as i32,
            name: "r1".into(),
        }),
        policy: Some(polity_proto::RiskPolicy {
            path_override: ConsensusPath::Bft as i32,
            ..Default::default()
        }),
        ..TaskSpec::default()
    });
    fixture.keys = seated.iter().map(|&i| fixture.keys[i].clone()).collect();
    fixture.members = seated.iter().map(|&i| fixture.members[i].clone()).collect();
    let observations = (0..seated.len()).map(|i| fixture.observe(i, "x")).collect();
    fixture.certify(observations, &[], None)
}

/// The fixture's member `i` has key `i + 1`; the seat order's first `n` by index.
fn drawn(epoch: &Epoch, task: &[u8], n: usize) -> Vec<usize> {
    epoch
        .seat_order(&task_id(task), "echo", "r1")
        .iter()
        .take(n)
        .map(|seat| {
            (1..=8u8)
                .position(|i| key(i).verifying_key().to_bytes() == seat.0)
                .unwrap()
        })
        .collect()
}

#[test]
fn membership_follows_the_registry_and_the_seat_rule() {
    let (_, epoch) = genesis(8);
    let probe = region_certificate(&epoch, 2, &[0, 1]);
    let mut seated = drawn(&epoch, &probe.task, 2);
    seated.sort();
    let good = region_certificate(&epoch, 2, &seated);
    verify_task_chain(&good, None).unwrap();
    check_membership(&good, &epoch).unwrap();

    // Seats past the allowed prefix (2 + 2 + 1 = 5 of 8) are refused.
    let mut late = drawn(&epoch, &probe.task, 8)[6..].to_vec();
    late.sort();
    let error = check_membership(&region_certificate(&epoch, 2, &late), &epoch).unwrap_err();
    assert!(matches!(error, MembershipError::NotDrawn { .. }), "{error}");

    // Fewer members than the replication asks for.
    let error = check_membership(&region_certificate(&epoch, 2, &seated[..1]), &epoch);
    assert!(
        matches!(error, Err(MembershipError::TooFew { .. })),
        "{error:?}"
    );

    // A registry epoch the chain was not drawn from.
    let (_, other) = genesis(7);
    let error = check_membership(&good, &other).unwrap_err();
    assert!(
        matches!(error, MembershipError::UnknownEpoch { .. }),
        "{error}"
    );
}

#[test]
fn a_stranger_or_a_wrong_weight_is_refused() {
    let (_, small) = genesis(3);
    let probe = region_certificate(&small, 1, &[0]);
    let seat = drawn(&small, &probe.task, 1);
    // Fixture key 8 (index 7) is no member of the 3-member registry.
    let stranger = region_certificate(&small, 1, &[7]);
    let error = check_membership(&stranger, &small).unwrap_err();
    assert!(
        matches!(error, MembershipError::NotMember { .. }),
        "{error}"
    );
    let mut heavy = region_certificate(&small, 1, &seat);
    heavy.members[0].weight = 1_000_000;
    let error = check_membership(&heavy, &small).unwrap_err();
    assert!(
        matches!(error, MembershipError::WrongWeight { .. }),
        "{error}"
    );
}

#[test]
fn proposals_change_exactly_one_member_and_are_signed() {
    let (_, epoch) = genesis(3);
    let next = |members: Vec<RegistryMember>| {
        let mut next = registry(members);
        next.epoch = 1;
        next.previous = epoch.digest().to_vec();
        next
    };
    let mut joined: Vec<RegistryMember> = epoch.members().to_vec();
    joined.push(member(4, "r2", "c1", 5));
    let proposal = sign_proposal(&next(joined.clone()), &key(4));
    let (after, change) = check_proposal(&epoch, &proposal.encode_to_vec()).unwrap();
    assert_eq!(after.number(), 1);
    assert!(matches!(change, Change::Join(ref m) if m.stake == 5));

    let forged = sign_proposal(&next(joined.clone()), &key(9));
    let error = check_proposal(&epoch, &forged.encode_to_vec()).unwrap_err();
    assert!(error.to_string().contains("did not sign"), "{error}");

    joined.push(member(5, "r2", "c1", 1));
    let two = sign_proposal(&next(joined), &key(4));
    let error = check_proposal(&epoch, &two.encode_to_vec()).unwrap_err();
    assert!(error.to_string().contains("exactly one"), "{error}");

    let mut stale = next(epoch.members()[..2].to_vec());
    stale.previous = vec![0; 32];
    let error = check_proposal(&epoch, &sign_proposal(&stale, &key(3)).encode_to_vec());
    assert!(error.unwrap_err().to_string().contains("current epoch"));

    // A leave needs no signature to be well formed (approving it is the members' call).
    let leave = Proposal {
        registry: next(epoch.members()[..2].to_vec()).encode_to_vec(),
        subject_signature: Vec::new(),
    };
    let (_, change) = check_proposal(&epoch, &leave.encode_to_vec()).unwrap();
    assert!(matches!(change, Change::Leave(_)));
}

#[test]
fn an_anchor_refuses_a_change_without_its_certificate() {
    let (genesis, epoch) = genesis(3);
    let mut anchor = Anchor::from_genesis(genesis).unwrap();
    let mut members = epoch.members().to_vec();
    members.push(member(4, "r1", "c1", 1));
    let mut next = registry(members);
    next.epoch = 1;
    next.previous = epoch.digest().to_vec();
    let change = EpochChange {
        proposal: sign_proposal(&next, &key(4)).encode_to_vec(),
        certificate: None,
    };
    let error = anchor.apply(change).unwrap_err().to_string();
    assert!(error.contains("no certificate"), "{error}");
    assert_eq!(anchor.current().number(), 0);
}
