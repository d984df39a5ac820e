//! An outsider's verifier against ours. `scripts/verify_chain.py` was written from
//! SIGNING.md alone (its own protobuf reader, libsodium through PyNaCl); this test
//! builds real chains through the public API (rounds driven to their certificates:
//! regions on every path, a continent and a global chain with their children), forges
//! variants of them, exports each with `certificate_json`, and checks that the script's
//! verdict (valid / invalid) is `verify_task_chain`'s on every one. Good chains must be
//! valid and forged ones invalid, so a verifier that accepts or refuses everything
//! fails here.
//!
//! Skipped with a note when python3 or PyNaCl is missing, unless
//! POLITY_REQUIRE_PYNACL=1 (as in `.ci/run`), like `eddsa_vectors.rs`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use polity_consensus::registry::{REGISTRY_CAPABILITY, registry_task, sign_genesis, sign_proposal};
use polity_consensus::statement::signed_message;
use polity_consensus::{
    Action, Anchor, Epoch, Input, PublicKey, Round, RoundConfig, certificate_json, encode_task,
    report_digest, sign_message, verify_in, verify_task_chain,
};
use polity_proto::{
    Admission, Aggregation, Attestation, Certificate, ConsensusPath, EpochChain, EpochChange,
    Genesis, Level, Member, Proposal, RaftCommit, Registry, RegistryMember, Report, RiskPolicy,
    Scope, SignedStatement, StatementKind, TaskSpec,
};
use prost::Message;
use sha2::{Digest, Sha512};

const START_MS: u64 = 10_000;
const ROUND_MS: u64 = 1_000;
/// Every key a chain here uses is `key(seed)` for a seed below this.
const SEEDS: u8 = 64;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn key_of(public: &[u8]) -> SigningKey {
    (1..SEEDS)
        .map(key)
        .find(|key| key.verifying_key().to_bytes().as_slice() == public)
        .expect("a test key")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify_chain.py")
}

/// A task at `scope` whose policy selects `path` (by its risks, not an override,
/// where the risks can say it) with `aggregation`.
fn task(level: Level, name: &str, path: ConsensusPath, aggregation: Aggregation) -> Vec<u8> {
    let policy = match path {
        ConsensusPath::Bft => RiskPolicy {
            adversarial_risk: 0.9,
            ..RiskPolicy::default()
        },
        ConsensusPath::Raft => RiskPolicy {
            consistency: 0.95,
            ..RiskPolicy::default()
        },
        _ => RiskPolicy {
            path_override: path as i32,
            ..RiskPolicy::default()
        },
    };
    encode_task(&TaskSpec {
        capability: "echo".into(),
        payload: b"ping".to_vec(),
        scope: Some(Scope {
            level: level as i32,
            name: name.into(),
        }),
        replication: 3,
        aggregation: aggregation as i32,
        policy: Some(policy),
        deadline_ms: 60_000,
        nonce: 11,
    })
}

/// One member of a group and what it answers (levels 2 and 3: with its child).
struct Seat {
    seed: u8,
    weight: u64,
    answer: Result<Vec<u8>, String>,
    child: Option<Vec<u8>>,
}

fn seat(seed: u8, answer: &str) -> Seat {
    Seat {
        seed,
        weight: 1,
        answer: Ok(answer.as_bytes().to_vec()),
        child: None,
    }
}

/// A representative: answers its child certificate's value and carries it.
fn representative(seed: u8, child: &Certificate) -> Seat {
    let value = Report::decode(child.report.as_ref().unwrap().body.as_slice())
        .unwrap()
        .value;
    Seat {
        seed,
        weight: 1,
        answer: Ok(value),
        child: Some(child.encode_to_vec()),
    }
}

fn config(
    task: &[u8],
    level: Level,
    group: &str,
    path: ConsensusPath,
    seats: &[Seat],
) -> RoundConfig {
    config_in([0x42; 32], task, level, group, path, seats)
}

/// A group's config for a chain drawn from the registry epoch `registry_digest`.
fn config_in(
    registry_digest: [u8; 32],
    task: &[u8],
    level: Level,
    group: &str,
    path: ConsensusPath,
    seats: &[Seat],
) -> RoundConfig {
    let spec = TaskSpec::decode(task).unwrap();
    RoundConfig {
        task: task.to_vec(),
        level,
        group: group.into(),
        members: seats
            .iter()
            .map(|seat| Member {
                public_key: key(seat.seed).verifying_key().to_bytes().to_vec(),
                weight: seat.weight,
            })
            .collect(),
        registry_digest,
        path,
        path_reason: "independent verifier test".into(),
        aggregation: Aggregation::try_from(spec.aggregation).unwrap(),
        round_timeout_ms: ROUND_MS,
        rounds_max: 3,
        started_at_ms: START_MS,
    }
}

/// Runs every seat's round over a perfect network (the test plays the raft log,
/// committing the first proposal, and every member's copy of it confirms that commit)
/// until one decides; returns its certificate.
fn decide(config: &RoundConfig, seats: &[Seat]) -> Certificate {
    let mut rounds: Vec<Round> = seats
        .iter()
        .map(|seat| Round::new(config.clone(), key(seat.seed)).unwrap())
        .collect();
    let publics: Vec<PublicKey> = seats
        .iter()
        .map(|seat| PublicKey::from_verifying_key(&key(seat.seed).verifying_key()))
        .collect();
    let mut queue: VecDeque<(usize, Input)> = seats
        .iter()
        .enumerate()
        .map(|(index, seat)| {
            let input = Input::LocalAnswer {
                answer: seat.answer.clone(),
                child_certificate: seat.child.clone(),
            };
            (index, input)
        })
        .collect();
    let mut committed = false;
    let mut now_ms = START_MS;
    while now_ms < START_MS + 3 * ROUND_MS {
        while let Some((to, input)) = queue.pop_front() {
            for action in rounds[to].step(now_ms, input) {
                match action {
                    Action::Broadcast(message) => {
                        for other in (0..seats.len()).filter(|&other| other != to) {
                            queue.push_back((other, message.clone().into_input(publics[to])));
                        }
                    }
                    Action::SendTo(public, message) => {
                        let other = publics.iter().position(|p| *p == public).unwrap();
                        queue.push_back((other, message.into_input(publics[to])));
                    }
                    Action::Commit {
                        report,
                        report_digest,
                    } if !committed => {
                        // The proposer plays the place's raft leader and signs the commit.
                        committed = true;
                        let commit = RaftCommit {
                            slot: decoded::<Report>(&report).slot,
                            report_digest: report_digest.to_vec(),
                            term: 2,
                            commit_index: 5,
                        };
                        let commit =
                            sign_message(&key(seats[to].seed), StatementKind::RaftCommit, &commit);
                        queue.push_back((to, Input::Committed { commit }));
                    }
                    // Every member's log holds the one committed report.
                    Action::ConfirmCommit { commit } => {
                        queue.push_back((to, Input::Committed { commit }));
                    }
                    Action::Decided(certificate) => return *certificate,
                    _ => {}
                }
            }
        }
        now_ms += 100;
        queue.extend((0..seats.len()).map(|index| (index, Input::Tick)));
    }
    panic!("{} {:?} did not decide", config.group, config.path);
}

fn region(task: &[u8], group: &str, path: ConsensusPath, seats: &[Seat]) -> Certificate {
    decide(&config(task, Level::Region, group, path, seats), seats)
}

/// A global chain: regions eu-west (3 members), eu-east (1) and us-east (2); the
/// continent europe seats two representatives of eu-west (the same child twice) and
/// one of eu-east; america one of us-east; global one of each continent.
fn global_chain(path: ConsensusPath, aggregation: Aggregation) -> Certificate {
    let task = task(Level::Global, "", path, aggregation);
    let eu_west = region(
        &task,
        "eu-west",
        path,
        &[seat(10, "42"), seat(11, "42"), seat(12, "42")],
    );
    let eu_east = region(&task, "eu-east", path, &[seat(13, "42")]);
    let us_east = region(&task, "us-east", path, &[seat(14, "42"), seat(15, "42")]);
    let europe_seats = [
        representative(10, &eu_west),
        representative(11, &eu_west),
        representative(13, &eu_east),
    ];
    let europe = decide(
        &config(&task, Level::Continent, "europe", path, &europe_seats),
        &europe_seats,
    );
    let america_seats = [representative(14, &us_east)];
    let america = decide(
        &config(&task, Level::Continent, "america", path, &america_seats),
        &america_seats,
    );
    let global_seats = [representative(10, &europe), representative(14, &america)];
    decide(
        &config(&task, Level::Global, "global", path, &global_seats),
        &global_seats,
    )
}

/// A continent chain over regions `eu-west` (2 members) and `eu-east` (1).
fn continent_chain(path: ConsensusPath, aggregation: Aggregation, second: &str) -> Certificate {
    let task = task(Level::Continent, "europe", path, aggregation);
    let eu_west = region(&task, "eu-west", path, &[seat(20, "7"), seat(21, "7")]);
    let eu_east = region(&task, second, path, &[seat(22, "7")]);
    let seats = [representative(20, &eu_west), representative(22, &eu_east)];
    decide(
        &config(&task, Level::Continent, "europe", path, &seats),
        &seats,
    )
}

// --- Forgeries ----------------------------------------------------------------------

fn decoded<M: Message + Default>(statement: &SignedStatement) -> M {
    M::decode(statement.body.as_slice()).unwrap()
}

/// `certificate` with its report edited and re-signed by `signer` (its own signer
/// when `None`), and its attestations and raft commit re-signed over the new report,
/// so that only the check the edit breaks can refuse it.
fn resign_report(
    certificate: &Certificate,
    signer: Option<u8>,
    edit: impl Fn(&mut Report),
) -> Certificate {
    let mut forged = certificate.clone();
    let statement = forged.report.as_ref().unwrap();
    let signer = signer.map_or_else(|| key_of(&statement.signer), key);
    let mut report: Report = decoded(statement);
    edit(&mut report);
    let statement = sign_message(&signer, StatementKind::Report, &report);
    let digest = report_digest(&statement.body).to_vec();
    forged.report = Some(statement);
    for attestation in &mut forged.attestations {
        let mut body: Attestation = decoded(attestation);
        body.report_digest = digest.clone();
        *attestation = sign_message(
            &key_of(&attestation.signer),
            StatementKind::Attestation,
            &body,
        );
    }
    if let Some(commit) = &mut forged.raft_commit {
        let mut body: RaftCommit = decoded(commit);
        body.report_digest = digest;
        *commit = sign_message(&key_of(&commit.signer), StatementKind::RaftCommit, &body);
    }
    forged
}

/// `certificate` (raft) with its commit edited and re-signed by `leader`, and its
/// attestations re-signed to name the new commit, so that only the check the edit
/// breaks can refuse it.
fn relead(
    certificate: &Certificate,
    leader: &SigningKey,
    edit: impl Fn(&mut RaftCommit),
) -> Certificate {
    let mut forged = certificate.clone();
    let commit = forged.raft_commit.as_mut().unwrap();
    let mut body: RaftCommit = decoded(commit);
    edit(&mut body);
    *commit = sign_message(leader, StatementKind::RaftCommit, &body);
    let leader_key = leader.verifying_key().to_bytes().to_vec();
    for attestation in &mut forged.attestations {
        let mut mark: Attestation = decoded(attestation);
        (mark.raft_term, mark.raft_index) = (body.term, body.commit_index);
        mark.raft_leader = leader_key.clone();
        let signer = key_of(&attestation.signer);
        *attestation = sign_message(&signer, StatementKind::Attestation, &mark);
    }
    forged
}

/// The secret scalar of `key` (RFC 8032 5.1.5).
fn secret_scalar(key: &SigningKey) -> Scalar {
    let digest = Sha512::digest(key.to_bytes());
    let mut low: [u8; 32] = digest[..32].try_into().unwrap();
    low[0] &= 248;
    low[31] &= 127;
    low[31] |= 64;
    Scalar::from_bytes_mod_order(low)
}

/// A signature only the signer can make, with `R = [r]B + T` (`T` of order 8): the
/// cofactored equation holds, libsodium's cofactorless one does not.
fn signature_with_torsion(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(b"polity test: nonce").into());
    let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1])
        .compress()
        .to_bytes();
    let mut challenge = Sha512::new();
    challenge.update(big_r);
    challenge.update(key.verifying_key().to_bytes());
    challenge.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&challenge.finalize().into());
    let s = r + k * secret_scalar(key);
    [big_r, s.to_bytes()].concat()
}

fn edited(certificate: &Certificate, edit: impl Fn(&mut Certificate)) -> Certificate {
    let mut forged = certificate.clone();
    edit(&mut forged);
    forged
}

fn child(certificate: &Certificate, index: usize) -> Certificate {
    Certificate::decode(certificate.children[index].as_slice()).unwrap()
}

/// A chain to judge, and the verdict it must get.
struct Case {
    name: &'static str,
    certificate: Certificate,
    valid: bool,
}

fn good(name: &'static str, certificate: Certificate) -> Case {
    Case {
        name,
        certificate,
        valid: true,
    }
}

fn forged(name: &'static str, certificate: Certificate) -> Case {
    Case {
        name,
        certificate,
        valid: false,
    }
}

// --- The chains -----------------------------------------------------------------------

/// Region chains on every path, and chains with children.
struct Chains {
    bft: Certificate,
    stake_median: Certificate,
    raft_tally: Certificate,
    global: Certificate,
}

fn chains() -> Chains {
    let bft_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Bft,
        Aggregation::Majority,
    );
    let bft_seats: Vec<Seat> = (1..=4).map(|seed| seat(seed, "v")).collect();
    let median_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Stake,
        Aggregation::Median,
    );
    let mut median_seats = [
        seat(5, "1"),
        seat(6, " 5\n"),
        seat(7, "3.0"),
        seat(8, "2"),
        seat(9, "-0"),
    ];
    for (seat, weight) in median_seats.iter_mut().zip([2, 1, 1, 1, 2]) {
        seat.weight = weight;
    }
    let tally_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Raft,
        Aggregation::Tally,
    );
    let tally_seats = [seat(30, "b"), seat(31, "a"), seat(32, "b")];
    Chains {
        bft: region(&bft_task, "eu-west", ConsensusPath::Bft, &bft_seats),
        stake_median: region(&median_task, "eu-west", ConsensusPath::Stake, &median_seats),
        raft_tally: region(&tally_task, "eu-west", ConsensusPath::Raft, &tally_seats),
        global: global_chain(ConsensusPath::Stake, Aggregation::Majority),
    }
}

/// More good chains: errors, number spellings, first-valid, attempts, children on
/// bft and raft.
fn more_good_cases() -> Vec<Case> {
    // Majority counts the non-error answers: "v" has 4 of the 7 weight and 2 of the 3
    // answers (not of the 5 observations), so no fast path, and the report is attested.
    let majority_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Stake,
        Aggregation::Majority,
    );
    let failed = |seed| Seat {
        answer: Err("executor failed".into()),
        ..seat(seed, "")
    };
    let mut with_errors = [
        seat(1, "v"),
        seat(2, "v"),
        seat(3, "w"),
        failed(4),
        failed(5),
    ];
    with_errors[0].weight = 2;
    with_errors[1].weight = 2;
    // Rust's f64 grammar: "0_1" and an Arabic-Indic zero are not numbers (Python's
    // float takes both); an em space around "8" is trimmed, U+001C around "6" is not
    // (Python's strip takes it). The median of 7, 8, 9 is 8.
    let spelling_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Stake,
        Aggregation::Median,
    );
    let spellings = [
        seat(40, "0_1"),
        seat(41, "\u{660}"),
        seat(42, "\u{2003}8"),
        seat(43, "7"),
        seat(44, "9"),
        seat(47, "\u{1c}6"),
    ];
    let first_task = task(
        Level::Region,
        "us",
        ConsensusPath::Bft,
        Aggregation::FirstValid,
    );
    let attempt_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Raft,
        Aggregation::Majority,
    );
    vec![
        good(
            "stake majority of the non-error answers",
            region(
                &majority_task,
                "eu-west",
                ConsensusPath::Stake,
                &with_errors,
            ),
        ),
        good(
            "stake median over odd spellings",
            region(&spelling_task, "eu-west", ConsensusPath::Stake, &spellings),
        ),
        good(
            "first-valid, one member",
            region(&first_task, "us", ConsensusPath::Bft, &[seat(45, "p")]),
        ),
        good(
            "a second attempt of the task's region",
            region(
                &attempt_task,
                "eu-west~2",
                ConsensusPath::Raft,
                &[seat(46, "x")],
            ),
        ),
        good(
            "bft continent with two regions",
            continent_chain(ConsensusPath::Bft, Aggregation::Majority, "eu-east"),
        ),
        good(
            "raft continent with two regions",
            continent_chain(ConsensusPath::Raft, Aggregation::Tally, "eu-east~3"),
        ),
    ]
}

/// Forged variants of the bft region (members 1 to 4, collector 1, fast path).
fn forged_bft(bft: &Certificate) -> Vec<Case> {
    let report = bft.report.as_ref().unwrap();
    let message = signed_message(StatementKind::Report, &report.body);
    let torsion = signature_with_torsion(&key(1), &message);
    let commit = RaftCommit {
        slot: decoded::<Report>(report).slot,
        report_digest: report_digest(&report.body).to_vec(),
        term: 1,
        commit_index: 1,
    };
    let commit = sign_message(&key(1), StatementKind::RaftCommit, &commit);
    vec![
        forged(
            "flipped signature bit",
            edited(bft, |c| c.observations[1].signature[7] ^= 1),
        ),
        forged(
            "small-order R in the report's signature",
            edited(bft, |c| {
                c.report.as_mut().unwrap().signature = torsion.clone()
            }),
        ),
        forged("a member removed", edited(bft, |c| drop(c.members.pop()))),
        forged(
            "duplicate member",
            edited(bft, |c| c.members.push(c.members[0].clone())),
        ),
        forged("wrong collector", resign_report(bft, Some(2), |_| {})),
        forged(
            "observations reordered",
            resign_report(&edited(bft, |c| c.observations.swap(0, 1)), None, |r| {
                r.observation_digests.swap(0, 1)
            }),
        ),
        forged(
            "too few observations for a bft quorum",
            resign_report(&edited(bft, |c| c.observations.truncate(2)), None, |r| {
                r.observation_digests.truncate(2);
                r.tally[0].count = 2;
                r.tally[0].weight = 2;
            }),
        ),
        forged(
            "degraded report",
            resign_report(bft, None, |r| r.degraded = true),
        ),
        forged("tampered task", edited(bft, |c| c.task.push(0))),
        forged(
            "raft commit on bft",
            edited(bft, |c| c.raft_commit = Some(commit.clone())),
        ),
    ]
}

/// Forged variants of the stake median region (weights 2, 1, 1, 1, 2; attested).
fn forged_stake(stake: &Certificate) -> Vec<Case> {
    let outsider = sign_message(
        &key(60),
        StatementKind::Attestation,
        &decoded::<Attestation>(&stake.attestations[0]),
    );
    vec![
        forged(
            "tampered value",
            resign_report(stake, None, |r| r.value = b"1".to_vec()),
        ),
        forged(
            "tampered tally count",
            resign_report(stake, None, |r| r.tally[0].count += 1),
        ),
        forged(
            "tampered tally weight",
            resign_report(stake, None, |r| r.tally[0].weight += 1),
        ),
        forged(
            "tally out of order",
            resign_report(stake, None, |r| r.tally.swap(0, 1)),
        ),
        forged(
            "tampered aggregation",
            resign_report(stake, None, |r| r.aggregation = Aggregation::Tally as i32),
        ),
        forged(
            "a member's weight changed",
            edited(stake, |c| c.members[0].weight += 1),
        ),
        forged(
            "an outsider's attestation",
            edited(stake, |c| c.attestations[0] = outsider.clone()),
        ),
        forged(
            "one attestation counted twice",
            edited(stake, |c| {
                c.attestations.truncate(1);
                c.attestations.push(c.attestations[0].clone());
            }),
        ),
    ]
}

/// Forged variants of the raft tally region and of the global chain.
fn forged_raft_and_global(raft: &Certificate, global: &Certificate) -> Vec<Case> {
    let report = raft.report.as_ref().unwrap();
    let leader = key_of(&raft.raft_commit.as_ref().unwrap().signer);
    let other = raft
        .members
        .iter()
        .map(|member| key_of(&member.public_key))
        .find(|member| member.verifying_key() != leader.verifying_key())
        .unwrap();
    let mut other_term = relead(raft, &leader, |body| body.term += 1);
    other_term.raft_commit = raft.raft_commit.clone();
    let attestation = Attestation {
        slot: decoded::<Report>(report).slot,
        report_digest: report_digest(&report.body).to_vec(),
        ..Attestation::default()
    };
    let attestation = sign_message(&key(31), StatementKind::Attestation, &attestation);
    let europe = child(global, 0);
    let mut tampered_child = europe.clone();
    tampered_child.path_reason.push('!');
    vec![
        forged(
            "attestation on raft",
            edited(raft, |c| c.attestations.push(attestation.clone())),
        ),
        forged(
            "raft without its commit",
            edited(raft, |c| c.raft_commit = None),
        ),
        forged(
            "raft commit at term 0",
            relead(raft, &leader, |body| body.term = 0),
        ),
        forged(
            "raft commit signed by a member its attesters do not name as leader",
            edited(raft, |c| {
                let commit = c.raft_commit.as_mut().unwrap();
                let body: RaftCommit = decoded(commit);
                *commit = sign_message(&other, StatementKind::RaftCommit, &body);
            }),
        ),
        forged("raft commit whose attesters name another term", other_term),
        forged(
            "raft commit attested by one member of three",
            edited(raft, |c| c.attestations.truncate(1)),
        ),
        forged(
            "raft attestation without raft fields",
            edited(raft, |c| {
                let mut body: Attestation = decoded(&c.attestations[0]);
                (body.raft_term, body.raft_index, body.raft_leader) = (0, 0, Vec::new());
                c.attestations[0] = sign_message(
                    &key_of(&c.attestations[0].signer),
                    StatementKind::Attestation,
                    &body,
                );
            }),
        ),
        forged(
            "a child whose bytes do not match its digest",
            edited(global, |c| c.children[0] = tampered_child.encode_to_vec()),
        ),
        forged(
            "a child's digest changed with its bytes",
            edited(global, |c| {
                c.children[0] = tampered_child.encode_to_vec();
                c.child_digests[0] =
                    polity_consensus::certificate::certificate_bytes_digest(&c.children[0])
                        .to_vec();
            }),
        ),
        forged("a global task's continent as root", europe.clone()),
        forged("a global task's region as root", child(&europe, 0)),
        forged(
            "a child dropped",
            edited(global, |c| drop(c.children.pop())),
        ),
    ]
}

/// Chains that verify but answer another rule than their task's.
fn forged_binding() -> Vec<Case> {
    let stake_task = task(
        Level::Region,
        "eu-west",
        ConsensusPath::Stake,
        Aggregation::Majority,
    );
    let seats = [seat(50, "v"), seat(51, "v"), seat(52, "v")];
    let mut tally = config(
        &stake_task,
        Level::Region,
        "eu-west",
        ConsensusPath::Stake,
        &seats,
    );
    tally.aggregation = Aggregation::Tally;
    vec![
        forged(
            "a path other than the task's policy selects",
            region(&stake_task, "eu-west", ConsensusPath::Bft, &seats),
        ),
        forged(
            "an aggregation other than the task's",
            decide(&tally, &seats),
        ),
        forged(
            "another region than the task's scope",
            region(&stake_task, "eu-east", ConsensusPath::Stake, &seats),
        ),
        forged(
            "two attempts of one region among the children",
            continent_chain(ConsensusPath::Stake, Aggregation::Majority, "eu-west~1"),
        ),
    ]
}

// --- The outsider's verdict ---------------------------------------------------------

/// Why the script cannot run here (python3 or PyNaCl missing), if it cannot.
fn python_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import nacl.signing"])
        .output()
    {
        Err(error) => Some(format!("python3 did not run: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "PyNaCl is not importable: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Skips (returns false) with a note when the script cannot run, unless required.
fn python_available(test: &str) -> bool {
    let required = std::env::var("POLITY_REQUIRE_PYNACL").is_ok_and(|value| value == "1");
    match python_missing() {
        Some(reason) => {
            assert!(!required, "POLITY_REQUIRE_PYNACL=1 but {reason}");
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
        None => true,
    }
}

/// The script's exit code and output for one JSON document on stdin.
fn run_script(json: &str) -> (Option<i32>, String) {
    run_script_with(&[], json)
}

/// The same, with command-line arguments before the (stdin) document.
fn run_script_with(args: &[&str], json: &str) -> (Option<i32>, String) {
    let mut child = Command::new("python3")
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text.trim().to_string())
}

/// The script's verdict on `certificate`: valid, or invalid with its reason.
fn python_verdict(certificate: &Certificate) -> Result<String, String> {
    let json = certificate_json(certificate).to_string();
    match run_script(&json) {
        (Some(0), text) if text.starts_with("valid") => Ok(text),
        (Some(1), text) if text.starts_with("invalid: ") => Err(text),
        (code, text) => panic!("verify_chain.py exited {code:?}: {text}"),
    }
}

#[test]
fn the_python_verifier_agrees_with_verify_task_chain() {
    if !python_available("the_python_verifier_agrees_with_verify_task_chain") {
        return;
    }
    let chains = chains();
    let mut cases = vec![
        good("bft region, fast path", chains.bft.clone()),
        good("stake region, attested median", chains.stake_median.clone()),
        good("raft region, tally", chains.raft_tally.clone()),
        good(
            "global chain (stake, 6 certificates)",
            chains.global.clone(),
        ),
    ];
    cases.extend(more_good_cases());
    cases.extend(forged_bft(&chains.bft));
    cases.extend(forged_stake(&chains.stake_median));
    cases.extend(forged_raft_and_global(&chains.raft_tally, &chains.global));
    cases.extend(forged_binding());

    let mut disagreements = Vec::new();
    for case in &cases {
        let rust = verify_task_chain(&case.certificate, None);
        let python = python_verdict(&case.certificate);
        eprintln!(
            "{:50} rust {:7} python {}",
            case.name,
            if rust.is_ok() { "valid" } else { "invalid" },
            python.as_ref().unwrap_or_else(|e| e).replace('\n', ": ")
        );
        if rust.is_ok() != case.valid {
            disagreements.push(format!("{}: Rust says {rust:?}", case.name));
        }
        if python.is_ok() != rust.is_ok() {
            disagreements.push(format!("{}: Rust {rust:?}, Python {python:?}", case.name));
        }
    }
    let forgeries = cases.iter().filter(|case| !case.valid).count();
    assert!(
        forgeries >= 20 && cases.len() - forgeries >= 10,
        "{} cases",
        cases.len()
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// The script reads a file path too, and calls an export whose fields disagree with
/// its `bytes` unusable (exit 2), not valid or invalid.
#[test]
fn the_python_verifier_reads_files_and_refuses_inconsistent_exports() {
    if !python_available("the_python_verifier_reads_files_and_refuses_inconsistent_exports") {
        return;
    }
    let task = task(
        Level::Region,
        "eu",
        ConsensusPath::Stake,
        Aggregation::Majority,
    );
    let certificate = region(&task, "eu", ConsensusPath::Stake, &[seat(55, "yes")]);
    let mut json = certificate_json(&certificate);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(json.to_string().as_bytes()).unwrap();
    let output = Command::new("python3")
        .arg(script())
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("valid\nregion 'eu' decided \"yes\" on stake"),
        "{stdout}"
    );

    json["report"]["signature"] = serde_json::Value::String("00".repeat(64));
    let (code, text) = run_script(&json.to_string());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("disagrees with bytes"), "{text}");
    let (code, text) = run_script("{\"format\": \"something else\"}");
    assert_eq!(code, Some(2), "{text}");
}

// --- Membership against a federation (SIGNING.md "The registry") --------------------
//
// Chains drawn from a real registry: a genesis signed by an authority, members
// seated by the seat rule (`Epoch::seat_order`), weights = stakes, the groups' group
// digests bound to the epoch's registry digest. Each case is a federation file (an
// `EpochChain`) and a chain; Rust's verdict is `Anchor::from_chain` then `verify_in`,
// the script's is `verify_chain.py --federation FILE`.

/// The genesis authority's key seed.
const AUTHORITY: u8 = 63;
/// A key that is in no registry.
const STRANGER: u8 = 40;
/// The member that joins in epoch 1.
const JOINER: u8 = 22;

/// The genesis members: (seed, region, continent, stake, capability). Seeds 10 and
/// 11 hold 60 of the 87 stake, so the federation cannot change without them, though
/// eu-west (7 members, bft quorum 5) decides without them; seed 16 does not serve
/// `echo`.
const GENESIS_MEMBERS: &[(u8, &str, &str, u64, &str)] = &[
    (10, "eu-west", "europe", 30, "echo"),
    (11, "eu-west", "europe", 30, "echo"),
    (12, "eu-west", "europe", 2, "echo"),
    (13, "eu-west", "europe", 5, "echo"),
    (14, "eu-west", "europe", 1, "echo"),
    (15, "eu-west", "europe", 4, "echo"),
    (16, "eu-west", "europe", 1, "other"),
    (17, "eu-east", "europe", 2, "echo"),
    (18, "eu-east", "europe", 3, "echo"),
    (19, "us-east", "america", 2, "echo"),
    (20, "us-east", "america", 1, "echo"),
    (21, "us-east", "america", 6, "echo"),
];

fn public(seed: u8) -> PublicKey {
    PublicKey::from_verifying_key(&key(seed).verifying_key())
}

fn seed_of(key: &PublicKey) -> u8 {
    (1..SEEDS).find(|&seed| public(seed) == *key).unwrap()
}

fn registry_member(
    (seed, region, continent, stake, capability): (u8, &str, &str, u64, &str),
) -> RegistryMember {
    RegistryMember {
        public_key: public(seed).0.to_vec(),
        region: region.into(),
        continent: continent.into(),
        stake,
        capabilities: vec![capability.into()],
    }
}

/// A registry of `members`, sorted by key.
fn registry_of(epoch: u64, previous: Vec<u8>, mut members: Vec<RegistryMember>) -> Registry {
    members.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Registry {
        federation: "independent-test".into(),
        epoch,
        previous,
        members,
        admission: Admission::Open as i32,
        authorities: vec![public(AUTHORITY).0.to_vec()],
    }
}

fn signed_genesis() -> (Genesis, Epoch) {
    let members = GENESIS_MEMBERS
        .iter()
        .copied()
        .map(registry_member)
        .collect();
    let genesis = sign_genesis(&registry_of(0, Vec::new(), members), &[key(AUTHORITY)]).unwrap();
    let epoch = Epoch::from_bytes(genesis.registry.clone()).unwrap();
    (genesis, epoch)
}

fn federation_file(genesis: &Genesis, changes: Vec<EpochChange>) -> Vec<u8> {
    EpochChain {
        genesis: Some(genesis.clone()),
        changes,
    }
    .encode_to_vec()
}

/// An `echo` task at `scope`, with `replication`, on the bft path: with at most 3
/// members a bft group decides only when all observe, so a parent carries a child for
/// every representative (`check_membership` wants every member of a parent in a carried child).
fn echo_task(level: Level, name: &str, replication: u32) -> Vec<u8> {
    echo_task_on(level, name, replication, ConsensusPath::Bft)
}

fn echo_task_on(level: Level, name: &str, replication: u32, path: ConsensusPath) -> Vec<u8> {
    encode_task(&TaskSpec {
        capability: "echo".into(),
        payload: b"ping".to_vec(),
        scope: Some(Scope {
            level: level as i32,
            name: name.into(),
        }),
        replication,
        aggregation: Aggregation::Majority as i32,
        policy: Some(RiskPolicy {
            path_override: path as i32,
            ..RiskPolicy::default()
        }),
        deadline_ms: 60_000,
        nonce: 7,
    })
}

/// The seeds of `region`'s members in the seat order for `task`.
fn drawn_seeds(epoch: &Epoch, task: &[u8], capability: &str, region: &str) -> Vec<u8> {
    epoch
        .seat_order(&polity_consensus::task_id(task), capability, region)
        .iter()
        .map(seed_of)
        .collect()
}

/// A seat whose weight is the member's stake in `epoch` (1 for a stranger).
fn staked(epoch: &Epoch, seed: u8, answer: &str) -> Seat {
    Seat {
        weight: epoch.member(&public(seed)).map_or(1, |member| member.stake),
        ..seat(seed, answer)
    }
}

fn staked_seats(epoch: &Epoch, seeds: &[u8], answer: &str) -> Vec<Seat> {
    seeds
        .iter()
        .map(|&seed| staked(epoch, seed, answer))
        .collect()
}

/// A representative of `child` with its stake as weight.
fn staked_representative(epoch: &Epoch, seed: u8, child: &Certificate) -> Seat {
    Seat {
        weight: epoch.member(&public(seed)).unwrap().stake,
        ..representative(seed, child)
    }
}

/// One group of `task` drawn from `epoch` (or from the digest `registry`).
fn decide_in(
    registry: [u8; 32],
    task: &[u8],
    level: Level,
    group: &str,
    path: ConsensusPath,
    seats: &[Seat],
) -> Certificate {
    decide(&config_in(registry, task, level, group, path, seats), seats)
}

/// A continent chain of `task` in `epoch`: one child per (region, seated seeds), and
/// the continent's seats (seed, index of the child it represents).
fn continent_in(
    epoch: &Epoch,
    task: &[u8],
    continent: &str,
    regions: &[(&str, Vec<u8>)],
    representatives: &[(u8, usize)],
) -> Certificate {
    let bft = ConsensusPath::Bft;
    let children: Vec<Certificate> = regions
        .iter()
        .map(|(region, seeds)| {
            let seats = staked_seats(epoch, seeds, "7");
            decide_in(*epoch.digest(), task, Level::Region, region, bft, &seats)
        })
        .collect();
    let seats: Vec<Seat> = representatives
        .iter()
        .map(|&(seed, child)| staked_representative(epoch, seed, &children[child]))
        .collect();
    decide_in(
        *epoch.digest(),
        task,
        Level::Continent,
        continent,
        bft,
        &seats,
    )
}

/// The registry task that asks `epoch` to approve `proposal`, run as a global bft
/// chain: every member of every region seated (replication = the largest region),
/// largest stake first;
/// each answers `answer` (the next registry's hex digest, to approve) except the
/// `refusing` seeds, which answer an error; each continent and the global group seat
/// the first non-refusing member of each child.
fn registry_change(
    epoch: &Epoch,
    proposal: &Proposal,
    answer: &str,
    refusing: &[u8],
) -> EpochChange {
    let proposal_bytes = proposal.encode_to_vec();
    let task = encode_task(&registry_task(epoch, proposal_bytes.clone(), 60_000));
    let bft = ConsensusPath::Bft;
    let digest = *epoch.digest();
    let region = |name: &str| {
        // The largest stake first: the collector (member 0) includes its own
        // observation, and only the observations a certificate includes count.
        let mut seeds = drawn_seeds(epoch, &task, REGISTRY_CAPABILITY, name);
        seeds.sort_by_key(|&seed| std::cmp::Reverse(epoch.member(&public(seed)).unwrap().stake));
        let seats: Vec<Seat> = seeds
            .iter()
            .map(|&seed| {
                let mut seat = staked(epoch, seed, answer);
                if refusing.contains(&seed) {
                    seat.answer = Err("refused".into());
                }
                seat
            })
            .collect();
        decide_in(digest, &task, Level::Region, name, bft, &seats)
    };
    let first_approver = |child: &Certificate| {
        child
            .members
            .iter()
            .map(|member| seed_of(&PublicKey::from_slice(&member.public_key).unwrap()))
            .find(|seed| !refusing.contains(seed))
            .unwrap()
    };
    let parent = |level: Level, name: &str, children: &[Certificate]| {
        let seats: Vec<Seat> = children
            .iter()
            .map(|child| staked_representative(epoch, first_approver(child), child))
            .collect();
        decide_in(digest, &task, level, name, bft, &seats)
    };
    let europe = parent(
        Level::Continent,
        "europe",
        &[region("eu-west"), region("eu-east")],
    );
    let america = parent(Level::Continent, "america", &[region("us-east")]);
    EpochChange {
        proposal: proposal_bytes,
        certificate: Some(parent(Level::Global, "global", &[europe, america])),
    }
}

/// Epoch 1: the genesis plus `JOINER` in us-east, proposed and signed by `signer`.
fn join_proposal(epoch: &Epoch, signer: u8) -> (Proposal, [u8; 32]) {
    let mut members = epoch.members().to_vec();
    members.push(registry_member((JOINER, "us-east", "america", 2, "echo")));
    let next = registry_of(1, epoch.digest().to_vec(), members);
    let digest = *Epoch::from_registry(&next).unwrap().digest();
    (sign_proposal(&next, &key(signer)), digest)
}

/// A chain against a federation file, the verdict it must get (`None`: valid), and
/// a fragment of Rust's reason (so that each forgery is refused for its own flaw).
struct AnchoredCase {
    name: &'static str,
    federation: Vec<u8>,
    certificate: Certificate,
    refused_for: Option<&'static str>,
}

fn anchored(name: &'static str, federation: &[u8], certificate: Certificate) -> AnchoredCase {
    AnchoredCase {
        name,
        federation: federation.to_vec(),
        certificate,
        refused_for: None,
    }
}

fn refused(
    name: &'static str,
    federation: &[u8],
    certificate: Certificate,
    reason: &'static str,
) -> AnchoredCase {
    AnchoredCase {
        refused_for: Some(reason),
        ..anchored(name, federation, certificate)
    }
}

fn anchored_cases() -> Vec<AnchoredCase> {
    let (genesis, epoch) = signed_genesis();
    let file = federation_file(&genesis, Vec::new());
    let digest = *epoch.digest();
    let bft = ConsensusPath::Bft;

    // Regions: replication 2, so the allowed prefix is 2 + 2 + 1 = 5 of the 6 seats
    // that serve `echo` in eu-west.
    let region_task = echo_task(Level::Region, "eu-west", 2);
    let order = drawn_seeds(&epoch, &region_task, "echo", "eu-west");
    assert_eq!(order.len(), 6);
    let region_of = |seeds: &[u8]| {
        let seats = staked_seats(&epoch, seeds, "v");
        decide_in(digest, &region_task, Level::Region, "eu-west", bft, &seats)
    };
    let good_region = region_of(&order[..2]);
    let mut heavy = staked_seats(&epoch, &order[..2], "v");
    heavy[1].weight += 1;
    let stranger_task = echo_task(Level::Region, "eu-west", 1);
    let stranger = decide_in(
        digest,
        &stranger_task,
        Level::Region,
        "eu-west",
        bft,
        &[seat(STRANGER, "v")],
    );

    // A continent: eu-west (k = 2 of 6) and eu-east (both of its 2 members).
    let continent_task = echo_task(Level::Continent, "europe", 2);
    let west = drawn_seeds(&epoch, &continent_task, "echo", "eu-west");
    let east = drawn_seeds(&epoch, &continent_task, "echo", "eu-east");
    let america = drawn_seeds(&epoch, &continent_task, "echo", "us-east");
    let europe = |regions: &[(&str, Vec<u8>)], seats: &[(u8, usize)]| {
        continent_in(&epoch, &continent_task, "europe", regions, seats)
    };
    let two_regions = [("eu-west", west[..2].to_vec()), ("eu-east", east.clone())];
    let good_continent = europe(&two_regions, &[(west[0], 0), (west[1], 0), (east[0], 1)]);
    let foreign_child = europe(
        &[
            ("eu-west", west[..2].to_vec()),
            ("us-east", america[..2].to_vec()),
        ],
        &[(west[0], 0), (west[1], 0), (america[0], 1)],
    );
    let mut east_with_foreigner = east.clone();
    east_with_foreigner.push(america[0]);
    let foreign_member = europe(
        &[
            ("eu-west", west[..2].to_vec()),
            ("eu-east", east_with_foreigner),
        ],
        &[(west[0], 0), (west[1], 0), (america[0], 1)],
    );
    // west[2] sits in eu-west but not in its child: it may not represent it. It is
    // the collector (first), so its observation is surely included.
    let unrepresented = europe(
        &two_regions,
        &[(west[2], 0), (west[0], 0), (west[1], 0), (east[0], 1)],
    );

    // A global chain: europe (eu-west, eu-east) and america (us-east).
    let global_task = echo_task(Level::Global, "", 2);
    let global_chain = {
        let drawn = |region| drawn_seeds(&epoch, &global_task, "echo", region);
        let (west, east, us) = (drawn("eu-west"), drawn("eu-east"), drawn("us-east"));
        let europe = continent_in(
            &epoch,
            &global_task,
            "europe",
            &[("eu-west", west[..2].to_vec()), ("eu-east", east.clone())],
            &[(west[0], 0), (east[0], 1)],
        );
        let america = continent_in(
            &epoch,
            &global_task,
            "america",
            &[("us-east", us[..2].to_vec())],
            &[(us[0], 0), (us[1], 0)],
        );
        let seats = [
            staked_representative(&epoch, west[0], &europe),
            staked_representative(&epoch, us[0], &america),
        ];
        decide_in(digest, &global_task, Level::Global, "global", bft, &seats)
    };

    // A raft region: its commit is the word of eu-west's raft leader, any eu-west
    // member (seated or not), never a member of another region nor a stranger.
    let raft_task = echo_task_on(Level::Region, "eu-west", 2, ConsensusPath::Raft);
    let raft_order = drawn_seeds(&epoch, &raft_task, "echo", "eu-west");
    let raft_region = decide_in(
        digest,
        &raft_task,
        Level::Region,
        "eu-west",
        ConsensusPath::Raft,
        &staked_seats(&epoch, &raft_order[..2], "v"),
    );
    let led_by = |seed: u8| relead(&raft_region, &key(seed), |_| {});
    let america_seed = drawn_seeds(&epoch, &raft_task, "echo", "us-east")[0];

    let mut broken_genesis = genesis.clone();
    broken_genesis.signatures[0][5] ^= 1;

    // Epoch changes: seed 22 joins (signed by itself, approved by everyone); the same
    // with the two 30-stake members refusing; approving another value than the digest;
    // a proposal the joiner did not sign.
    let (proposal, next_digest) = join_proposal(&epoch, JOINER);
    let approve = hex::encode(next_digest);
    let joined = registry_change(&epoch, &proposal, &approve, &[]);
    let with_join = federation_file(&genesis, vec![joined.clone()]);
    let epoch1 = Anchor::from_chain(EpochChain::decode(with_join.as_slice()).unwrap())
        .map(|anchor| anchor.current().clone())
        .unwrap();
    let epoch1_task = echo_task(Level::Region, "us-east", 3);
    let epoch1_seats = staked_seats(
        &epoch1,
        &drawn_seeds(&epoch1, &epoch1_task, "echo", "us-east")[..3],
        "v",
    );
    let epoch1_region = decide_in(
        *epoch1.digest(),
        &epoch1_task,
        Level::Region,
        "us-east",
        bft,
        &epoch1_seats,
    );
    let low_approval = federation_file(
        &genesis,
        vec![registry_change(&epoch, &proposal, &approve, &[10, 11])],
    );
    let not_the_digest = federation_file(
        &genesis,
        vec![registry_change(&epoch, &proposal, "yes", &[])],
    );
    let (unsigned, _) = join_proposal(&epoch, STRANGER);
    let unsigned_join = federation_file(
        &genesis,
        vec![registry_change(&epoch, &unsigned, &approve, &[])],
    );

    vec![
        anchored("region drawn by the seat rule", &file, good_region.clone()),
        anchored(
            "region using the last allowed seat",
            &file,
            region_of(&[order[0], order[4]]),
        ),
        anchored("continent of two regions", &file, good_continent.clone()),
        anchored("raft region", &file, raft_region.clone()),
        anchored(
            "raft region led by an unseated member of the region",
            &file,
            led_by(raft_order[5]),
        ),
        refused(
            "raft commit by a member of another region",
            &file,
            led_by(america_seed),
            "not a registry member of eu-west",
        ),
        refused(
            "raft commit by a stranger",
            &file,
            led_by(STRANGER),
            "not a registry member of eu-west",
        ),
        anchored("global chain", &file, global_chain.clone()),
        anchored(
            "epoch-0 region after a good join",
            &with_join,
            good_region.clone(),
        ),
        anchored(
            "epoch-1 region after a good join",
            &with_join,
            epoch1_region,
        ),
        refused(
            "a stranger's one-member chain",
            &file,
            stranger,
            "not a registry member",
        ),
        refused(
            "a weight other than the stake",
            &file,
            decide_in(digest, &region_task, Level::Region, "eu-west", bft, &heavy),
            "has weight",
        ),
        refused(
            "a seat past the allowed prefix",
            &file,
            region_of(&[order[0], order[5]]),
            "first 5 seats",
        ),
        refused(
            "a member that does not serve the capability",
            &file,
            region_of(&[order[0], 16]),
            "does not serve",
        ),
        refused(
            "too few members for the replication",
            &file,
            region_of(&order[..1]),
            "replication needs 2",
        ),
        refused(
            "a continent child from another continent",
            &file,
            foreign_child,
            "is not a region of europe",
        ),
        refused(
            "a continent member from another continent",
            &file,
            foreign_member,
            "sits in continent \"america\"",
        ),
        refused(
            "a parent member observing a child it did not sit in",
            &file,
            unrepresented,
            "did not sit in",
        ),
        refused(
            "an unknown registry digest",
            &file,
            region(
                &region_task,
                "eu-west",
                bft,
                &staked_seats(&epoch, &order[..2], "v"),
            ),
            "does not know",
        ),
        refused(
            "a federation whose genesis signature is broken",
            &federation_file(&broken_genesis, Vec::new()),
            good_region.clone(),
            "did not sign this registry",
        ),
        refused(
            "a change approved by less than 2/3 of the stake",
            &low_approval,
            good_region.clone(),
            "needs more than 2/3",
        ),
        refused(
            "a change whose value is not the digest",
            &not_the_digest,
            good_region.clone(),
            "did not approve this registry",
        ),
        refused(
            "a join the joiner did not sign",
            &unsigned_join,
            good_region,
            "did not sign this proposal",
        ),
    ]
}

/// Rust's verdict: the anchor from the file, then `verify_in`.
fn rust_anchored_verdict(federation: &[u8], certificate: &Certificate) -> Result<(), String> {
    let chain = EpochChain::decode(federation).map_err(|e| format!("federation: {e}"))?;
    let anchor = Anchor::from_chain(chain).map_err(|e| format!("federation: {e}"))?;
    verify_in(&anchor, certificate, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The script's verdict with `--federation`.
fn python_anchored_verdict(federation: &[u8], certificate: &Certificate) -> Result<String, String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(federation).unwrap();
    let json = certificate_json(certificate).to_string();
    let path = file.path().to_str().unwrap();
    match run_script_with(&["--federation", path], &json) {
        (Some(0), text) if text.starts_with("valid") => Ok(text),
        (Some(1), text) if text.starts_with("invalid: ") => Err(text),
        (code, text) => panic!("verify_chain.py --federation exited {code:?}: {text}"),
    }
}

#[test]
fn the_python_verifier_agrees_with_verify_in() {
    if !python_available("the_python_verifier_agrees_with_verify_in") {
        return;
    }
    let cases = anchored_cases();
    let mut disagreements = Vec::new();
    for case in &cases {
        let rust = rust_anchored_verdict(&case.federation, &case.certificate);
        let python = python_anchored_verdict(&case.federation, &case.certificate);
        eprintln!(
            "{:50} rust {:60} python {}",
            case.name,
            rust.as_ref().err().map_or("valid", String::as_str),
            python.as_ref().unwrap_or_else(|e| e).replace('\n', ": ")
        );
        match (&rust, case.refused_for) {
            (Ok(()), None) => {}
            (Err(error), Some(reason)) if error.contains(reason) => {}
            _ => disagreements.push(format!(
                "{}: Rust says {rust:?}, expected {}",
                case.name,
                case.refused_for
                    .map_or("valid".to_string(), |r| format!("refused for {r:?}"))
            )),
        }
        if python.is_ok() != rust.is_ok() {
            disagreements.push(format!("{}: Rust {rust:?}, Python {python:?}", case.name));
        }
    }
    let forgeries = cases
        .iter()
        .filter(|case| case.refused_for.is_some())
        .count();
    assert!(
        forgeries >= 12 && cases.len() - forgeries >= 6,
        "{} cases",
        cases.len()
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
