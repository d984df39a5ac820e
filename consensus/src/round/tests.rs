//! Round tests. Scenarios run through one harness, [`Group`], which holds every
//! member's round and a message pool; `check` runs a group over a perfect network and
//! asserts on what each member decided. Scripted tests deliver messages one by one to
//! set up the interleavings that matter for safety.

use super::*;
use crate::certificate::{verify_chain, verify_degraded};
use crate::evidence::verify_evidence;
use crate::task::encode_task;
use polity_proto::TaskSpec;

const START_MS: u64 = 10_000;
const ROUND_MS: u64 = 1_000;

pub(crate) fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub(crate) fn config(
    keys: &[SigningKey],
    path: ConsensusPath,
    aggregation: Aggregation,
    level: Level,
) -> RoundConfig {
    RoundConfig {
        // A task that asks for this path and aggregation, as an honest entry plans.
        task: encode_task(&TaskSpec {
            capability: "echo".into(),
            nonce: 7,
            aggregation: aggregation as i32,
            policy: Some(polity_proto::RiskPolicy {
                path_override: path as i32,
                ..polity_proto::RiskPolicy::default()
            }),
            ..TaskSpec::default()
        }),
        level,
        group: format!("group-{}", level as i32),
        registry_digest: crate::certificate::tests::TEST_REGISTRY,
        members: keys
            .iter()
            .map(|key| Member {
                public_key: key.verifying_key().to_bytes().to_vec(),
                weight: 1,
            })
            .collect(),
        path,
        path_reason: "test".into(),
        aggregation,
        round_timeout_ms: ROUND_MS,
        rounds_max: 3,
        started_at_ms: START_MS,
    }
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from_verifying_key(&key.verifying_key())
}

/// Every member's round, and the messages in flight (to, from, message).
struct Group {
    keys: Vec<SigningKey>,
    rounds: Vec<Round>,
    in_flight: Vec<(usize, usize, RoundMessage)>,
    /// Raft: relayed commits a member asked to confirm; the test's log confirms every
    /// one it is asked about unless `refuse_confirm` is set.
    to_confirm: Vec<(usize, SignedStatement)>,
    refuse_confirm: bool,
    actions: Vec<Vec<Action>>,
}

impl Group {
    fn new(members: usize, path: ConsensusPath, aggregation: Aggregation) -> Group {
        let keys: Vec<SigningKey> = (1..=members as u8).map(key).collect();
        Group::with_config(
            keys.clone(),
            config(&keys, path, aggregation, Level::Region),
        )
    }

    fn with_config(keys: Vec<SigningKey>, config: RoundConfig) -> Group {
        let rounds = keys
            .iter()
            .map(|key| Round::new(config.clone(), key.clone()).unwrap())
            .collect();
        Group {
            actions: vec![Vec::new(); keys.len()],
            keys,
            rounds,
            in_flight: Vec::new(),
            to_confirm: Vec::new(),
            refuse_confirm: false,
        }
    }

    fn index(&self, key: &PublicKey) -> usize {
        self.keys.iter().position(|k| public(k) == *key).unwrap()
    }

    /// Steps member `index`; routes its messages into the pool.
    fn step(&mut self, index: usize, now_ms: u64, input: Input) -> Vec<Action> {
        let actions = self.rounds[index].step(now_ms, input);
        for action in &actions {
            match action {
                Action::Broadcast(message) => {
                    for to in (0..self.keys.len()).filter(|&to| to != index) {
                        self.in_flight.push((to, index, message.clone()));
                    }
                }
                Action::SendTo(key, message) => {
                    let to = self.index(key);
                    self.in_flight.push((to, index, message.clone()));
                }
                Action::ConfirmCommit { commit } => {
                    self.to_confirm.push((index, commit.clone()));
                }
                _ => {}
            }
        }
        self.actions[index].extend(actions.iter().cloned());
        actions
    }

    fn answer(&mut self, index: usize, now_ms: u64, answer: &str) -> Vec<Action> {
        let input = Input::LocalAnswer {
            answer: Ok(answer.as_bytes().to_vec()),
            child_certificate: None,
        };
        self.step(index, now_ms, input)
    }

    /// Delivers every message in flight (and those it causes) at `now_ms`, except
    /// the ones `drop` selects.
    fn deliver_all(&mut self, now_ms: u64, drop: &dyn Fn(usize, usize, &RoundMessage) -> bool) {
        for _ in 0..10_000 {
            if self.in_flight.is_empty() {
                if self.to_confirm.is_empty() || self.refuse_confirm {
                    return;
                }
                let (index, commit) = self.to_confirm.remove(0);
                self.step(index, now_ms, Input::Committed { commit });
                continue;
            }
            let (to, from, message) = self.in_flight.remove(0);
            if !drop(to, from, &message) {
                self.deliver(to, from, message, now_ms);
            }
        }
        panic!("message storm");
    }

    fn deliver(
        &mut self,
        to: usize,
        from: usize,
        message: RoundMessage,
        now_ms: u64,
    ) -> Vec<Action> {
        let from = public(&self.keys[from]);
        let input = match message {
            RoundMessage::Statement(statement) => Input::Message { from, statement },
            RoundMessage::Certificate(certificate) => Input::Certificate { from, certificate },
        };
        self.step(to, now_ms, input)
    }

    fn tick_all(&mut self, now_ms: u64) {
        for index in 0..self.keys.len() {
            self.step(index, now_ms, Input::Tick);
        }
    }

    fn decided(&self, index: usize) -> Option<Vec<u8>> {
        self.rounds[index]
            .decided()
            .map(|certificate| verify_chain(certificate).unwrap().value)
    }

    fn certificates(&self) -> Vec<Certificate> {
        self.actions
            .iter()
            .flatten()
            .filter_map(|action| match action {
                Action::Decided(certificate) => Some(certificate.as_ref().clone()),
                _ => None,
            })
            .collect()
    }
}

fn no_drop(_: usize, _: usize, _: &RoundMessage) -> bool {
    false
}

/// Runs a group over a perfect network, ticking every 100 ms, until every member is
/// finished; asserts each member decided `expected`. Returns the group.
fn check(
    path: ConsensusPath,
    aggregation: Aggregation,
    answers: &[Option<&str>],
    expected: Option<&str>,
) -> Group {
    let mut group = Group::new(answers.len(), path, aggregation);
    play(&mut group, answers);
    for index in 0..answers.len() {
        assert_eq!(
            group.decided(index).as_deref(),
            expected.map(str::as_bytes),
            "member {index} on {path:?}/{aggregation:?} with {answers:?}"
        );
    }
    group
}

/// Gives each member its answer, then runs the group over a perfect network, ticking
/// every 100 ms, until every member is finished or the rounds run out.
fn play(group: &mut Group, answers: &[Option<&str>]) {
    for (index, answer) in answers.iter().enumerate() {
        if let Some(answer) = answer {
            group.answer(index, START_MS, answer);
        }
    }
    run(group, START_MS, START_MS + 3 * ROUND_MS);
}

/// Runs the group from `from_ms` to `until_ms` (see [`play`]).
fn run(group: &mut Group, from_ms: u64, until_ms: u64) {
    let mut now_ms = from_ms;
    while now_ms <= until_ms && !group.rounds.iter().all(Round::is_finished) {
        group.deliver_all(now_ms, &no_drop);
        // Raft: the test plays the group's log, committing the first proposal.
        let proposals: Vec<(usize, [u8; 32])> = group
            .actions
            .iter()
            .enumerate()
            .flat_map(|(index, actions)| {
                actions.iter().filter_map(move |action| match action {
                    Action::Commit { report_digest, .. } => Some((index, *report_digest)),
                    _ => None,
                })
            })
            .collect();
        if let Some(&(index, report_digest)) = proposals.first()
            && !group.rounds[index].is_finished()
        {
            let commit = RaftCommit {
                slot: Some(group.rounds[index].slot_of(&report_digest)),
                report_digest: report_digest.to_vec(),
                term: 2,
                commit_index: 5,
            };
            let leader = SigningKey::from_bytes(&[99; 32]);
            let input = Input::Committed {
                commit: crate::statement::sign_message(&leader, StatementKind::RaftCommit, &commit),
            };
            group.step(index, now_ms, input);
        }
        group.deliver_all(now_ms, &no_drop);
        now_ms += 100;
        group.tick_all(now_ms);
    }
}

#[test]
fn a_forgery_arriving_after_the_decision_is_still_rejected() {
    let mut group = check(
        ConsensusPath::Bft,
        Aggregation::Majority,
        &[Some("x"), Some("x"), Some("x"), Some("x")],
        Some("x"),
    );
    let observation = Observation {
        slot: Some(group.rounds[0].slot(0)),
        answer: b"y".to_vec(),
        ..Observation::default()
    };
    let mut forged = sign_message(&group.keys[3], StatementKind::Observation, &observation);
    forged.signature[0] ^= 1;
    let from = public(&group.keys[3]);
    let actions = group.step(
        0,
        START_MS + 3 * ROUND_MS,
        Input::Message {
            from,
            statement: forged,
        },
    );
    assert!(
        matches!(&actions[..], [Action::Rejected { from: sender, .. }] if *sender == from),
        "{actions:?}"
    );
}

#[test]
fn a_group_of_one_decides_alone_on_the_fast_path() {
    let me = key(1);
    let mut round = Round::new(
        config(
            std::slice::from_ref(&me),
            ConsensusPath::Stake,
            Aggregation::Majority,
            Level::Region,
        ),
        me,
    )
    .unwrap();
    let actions = round.step(
        10_001,
        Input::LocalAnswer {
            answer: Ok(b"x".to_vec()),
            child_certificate: None,
        },
    );
    let decided: Vec<&Certificate> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Decided(certificate) => Some(certificate.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(decided.len(), 1, "{actions:?}");
    let certificate = decided[0];
    assert!(certificate.attestations.is_empty());
    assert_eq!(certificate.observations.len(), 1);
    let summary = verify_chain(certificate).unwrap();
    assert_eq!(summary.value, b"x");
    assert_eq!(
        (summary.signatures, summary.certificates, summary.members),
        (2, 1, 1)
    );
    assert_eq!(summary.path, ConsensusPath::Stake);
    assert!(round.is_finished());
    assert!(round.step(10_002, Input::Tick).is_empty());
}

#[test]
fn a_group_of_one_decides_on_every_path_and_aggregation() {
    for path in [
        ConsensusPath::Bft,
        ConsensusPath::Stake,
        ConsensusPath::Raft,
    ] {
        for aggregation in [
            Aggregation::Unspecified,
            Aggregation::Majority,
            Aggregation::Tally,
            Aggregation::Median,
            Aggregation::FirstValid,
        ] {
            check(path, aggregation, &[Some("7")], Some("7"));
        }
    }
}

#[test]
fn identical_answers_take_the_fast_path() {
    let group = check(
        ConsensusPath::Bft,
        Aggregation::Majority,
        &[Some("v"); 4],
        Some("v"),
    );
    let certificates = group.certificates();
    assert!(
        certificates.iter().all(|c| c.attestations.is_empty()),
        "{certificates:?}"
    );
    // A liar and a crashed member (f = 2 of 7) do not stop the fast path.
    let answers = [
        Some("v"),
        Some("v"),
        Some("lie"),
        None,
        Some("v"),
        Some("v"),
        Some("v"),
    ];
    check(
        ConsensusPath::Bft,
        Aggregation::Majority,
        &answers,
        Some("v"),
    );
}

#[test]
fn differing_answers_are_attested() {
    let answers = [Some("1"), Some("5"), Some("3"), Some("2"), Some("4")];
    let group = check(
        ConsensusPath::Stake,
        Aggregation::Median,
        &answers,
        Some("3"),
    );
    assert!(
        group
            .certificates()
            .iter()
            .all(|c| c.attestations.len() >= 4)
    );
    check(
        ConsensusPath::Bft,
        Aggregation::Tally,
        &[Some("b"), Some("a"), Some("b"), Some("c")],
        Some("b"),
    );
    check(
        ConsensusPath::Bft,
        Aggregation::FirstValid,
        &[Some("p"), Some("q"), Some("r"), Some("s")],
        Some("p"),
    );
}

#[test]
fn raft_commits_then_certifies() {
    let group = check(
        ConsensusPath::Raft,
        Aggregation::Majority,
        &[Some("x"), Some("x"), Some("y")],
        Some("x"),
    );
    let certificate = group.rounds[0].decided().unwrap();
    assert!(certificate.raft_commit.is_some() && certificate.attestations.len() >= 2);
    let (_, commit): (PublicKey, RaftCommit) = crate::statement::open(
        certificate.raft_commit.as_ref().unwrap(),
        StatementKind::RaftCommit,
    )
    .unwrap();
    assert_eq!((commit.term, commit.commit_index), (2, 5));
}

#[test]
fn a_raft_commit_no_other_member_confirms_decides_nothing() {
    // The collector's own word (its report and a leader's commit) is not enough: the
    // other members' logs must confirm the commit, and here none does.
    let mut group = Group::new(3, ConsensusPath::Raft, Aggregation::Majority);
    group.refuse_confirm = true;
    play(&mut group, &[Some("x"), Some("x"), Some("x")]);
    assert!(
        !group.to_confirm.is_empty(),
        "the commit was relayed for confirmation"
    );
    assert!((0..3).all(|index| group.decided(index).is_none()));
    assert!(group.certificates().is_empty());
}

#[test]
fn a_commit_a_member_could_not_confirm_is_relayed_again_next_round() {
    // Round 0: no member's log has the entry yet, and each says so.
    let mut group = Group::new(3, ConsensusPath::Raft, Aggregation::Majority);
    group.refuse_confirm = true;
    for index in 0..3 {
        group.answer(index, START_MS, "x");
    }
    run(&mut group, START_MS, START_MS + ROUND_MS / 2);
    assert!((0..3).all(|index| group.decided(index).is_none()));
    for (index, commit) in std::mem::take(&mut group.to_confirm) {
        group.step(
            index,
            START_MS + ROUND_MS / 2,
            Input::NotConfirmed { commit },
        );
    }
    // Round 1: the collector of round 0 relays its commit again; now the logs hold it.
    group.refuse_confirm = false;
    run(&mut group, START_MS + ROUND_MS / 2, START_MS + 3 * ROUND_MS);
    for index in 0..3 {
        assert_eq!(
            group.decided(index).as_deref(),
            Some(&b"x"[..]),
            "member {index}"
        );
    }
}

#[test]
fn only_a_round_s_collector_may_relay_its_raft_commit() {
    let mut group = Group::new(3, ConsensusPath::Raft, Aggregation::Majority);
    let commit = RaftCommit {
        slot: Some(group.rounds[1].slot(0)),
        report_digest: vec![7; 32],
        term: 1,
        commit_index: 1,
    };
    let leader = SigningKey::from_bytes(&[99; 32]);
    let statement = crate::statement::sign_message(&leader, StatementKind::RaftCommit, &commit);
    // Round 0's collector is member 0; member 2 relays instead.
    let from = public(&group.keys[2]);
    let input = Input::Message {
        from,
        statement: statement.clone(),
    };
    let actions = group.step(1, START_MS, input);
    assert!(
        matches!(&actions[..], [Action::Rejected { reason, .. }] if reason.contains("not its collector"))
    );
    let from = public(&group.keys[0]);
    let actions = group.step(1, START_MS, Input::Message { from, statement });
    assert!(matches!(&actions[..], [Action::ConfirmCommit { .. }]));
}

#[test]
fn no_value_degrades_with_a_degraded_certificate() {
    // Majority of [a, b, c, d] has no value: every round fails, then the group degrades.
    let answers = [Some("a"), Some("b"), Some("c"), Some("d")];
    let group = check(ConsensusPath::Bft, Aggregation::Majority, &answers, None);
    for (index, actions) in group.actions.iter().enumerate() {
        let degraded: Vec<&Certificate> = actions
            .iter()
            .filter_map(|action| match action {
                Action::DegradedCertificate(certificate) => Some(certificate.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(degraded.len(), 1);
        assert!(verify_degraded(degraded[0]).unwrap().degraded);
        assert!(matches!(
            verify_chain(degraded[0]),
            Err(VerifyError::Degraded { .. })
        ));
        // Collectors of rounds 0..3 saw all four answers; member 3 only its own.
        let expected = match index {
            3 => DegradedReason::RoundsExhausted {
                rounds: 3,
                observations_seen: 1,
                members: 4,
            },
            _ => DegradedReason::NoValue {
                observations_seen: 4,
                members: 4,
            },
        };
        assert_eq!(actions.last(), Some(&Action::Degraded(expected)));
    }
}

#[test]
fn silence_degrades_after_rounds_max() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Majority);
    group.answer(0, START_MS, "v");
    let actions = group.step(0, START_MS + 3 * ROUND_MS, Input::Tick);
    assert!(
        matches!(actions[0], Action::DegradedCertificate(_)),
        "{actions:?}"
    );
    assert_eq!(
        actions[1],
        Action::Degraded(DegradedReason::RoundsExhausted {
            rounds: 3,
            observations_seen: 1,
            members: 4
        })
    );
    assert!(group.rounds[0].is_finished());
    assert_eq!(group.rounds[0].deadline_ms(), START_MS + 3 * ROUND_MS);
}

#[test]
fn the_collector_rotates_with_the_round() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Majority);
    // Collector 0 withholds everything; round 1's collector (member 1) decides.
    for index in 0..4 {
        group.answer(index, START_MS, "v");
    }
    group.deliver_all(START_MS, &|_, from, _| from == 0);
    assert!(
        group.rounds[0].is_finished(),
        "member 0 took the fast path alone"
    );
    let later_ms = START_MS + ROUND_MS;
    for index in 1..4 {
        group.step(index, later_ms, Input::Tick);
    }
    group.deliver_all(later_ms, &|_, from, _| from == 0);
    for index in 1..4 {
        let certificate = group.rounds[index].decided().expect("decided in round 1");
        assert_eq!(certificate.slot.as_ref().unwrap().round, 1);
    }
}

#[test]
fn equivocation_becomes_evidence() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Majority);
    let liar = &group.keys[2].clone();
    let observation = |answer: &str| {
        let observation = Observation {
            slot: Some(group.rounds[0].slot(0)),
            answer: answer.as_bytes().to_vec(),
            group_digest: group.rounds[0].group_digest.to_vec(),
            ..Observation::default()
        };
        sign_message(liar, StatementKind::Observation, &observation)
    };
    let (first, second) = (observation("a"), observation("b"));
    let from = public(liar);
    assert!(
        group
            .step(
                0,
                START_MS,
                Input::Message {
                    from,
                    statement: first.clone()
                }
            )
            .is_empty()
    );
    assert!(
        group
            .step(
                0,
                START_MS,
                Input::Message {
                    from,
                    statement: first
                }
            )
            .is_empty()
    );
    let actions = group.step(
        0,
        START_MS,
        Input::Message {
            from,
            statement: second,
        },
    );
    let [Action::Evidence(evidence)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(verify_evidence(evidence), Ok(from));
}

#[test]
fn invalid_messages_are_rejected_and_harmless() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Majority);
    let outsider = key(99);
    let observation = Observation {
        slot: Some(group.rounds[0].slot(0)),
        answer: b"v".to_vec(),
        group_digest: group.rounds[0].group_digest.to_vec(),
        ..Observation::default()
    };
    let from = public(&outsider);
    let foreign = sign_message(&outsider, StatementKind::Observation, &observation);
    let mut forged = sign_message(&group.keys[1], StatementKind::Observation, &observation);
    forged.body[3] ^= 4;
    let mut wrong_child = sign_message(
        &group.keys[1],
        StatementKind::Observation,
        &Observation {
            child_certificate_digest: vec![1; 32],
            ..observation.clone()
        },
    );
    wrong_child.kind = StatementKind::Observation as i32;
    for statement in [foreign, forged, wrong_child] {
        let actions = group.step(0, START_MS, Input::Message { from, statement });
        assert!(
            matches!(actions.as_slice(), [Action::Rejected { .. }]),
            "{actions:?}"
        );
    }
    let mut certificate = Certificate::default();
    let actions = group.step(
        0,
        START_MS,
        Input::Certificate {
            from,
            certificate: Box::new(certificate.clone()),
        },
    );
    assert!(
        matches!(actions.as_slice(), [Action::Rejected { .. }]),
        "{actions:?}"
    );
    certificate.slot = Some(group.rounds[0].slot(0));
    let actions = group.step(
        0,
        START_MS,
        Input::Certificate {
            from,
            certificate: Box::new(certificate),
        },
    );
    assert!(
        matches!(actions.as_slice(), [Action::Rejected { .. }]),
        "{actions:?}"
    );
    assert!(!group.rounds[0].is_finished());
}

// A table of bad configs and the error each gives: longer than the ~80-line limit on
// functions, but it reads better whole than split.
#[test]
fn config_errors() {
    let keys: Vec<SigningKey> = (1..=3).map(key).collect();
    let base = config(
        &keys,
        ConsensusPath::Stake,
        Aggregation::Majority,
        Level::Region,
    );
    let cases: Vec<(RoundConfig, SigningKey, &str)> = vec![
        (base.clone(), key(9), "not a member"),
        (
            RoundConfig {
                rounds_max: 0,
                ..base.clone()
            },
            key(1),
            "rounds_max",
        ),
        (
            RoundConfig {
                rounds_max: ROUNDS_MAX + 1,
                ..base.clone()
            },
            key(1),
            "rounds_max",
        ),
        (
            RoundConfig {
                round_timeout_ms: 0,
                ..base.clone()
            },
            key(1),
            "round_timeout_ms",
        ),
        (
            RoundConfig {
                group: String::new(),
                ..base.clone()
            },
            key(1),
            "group",
        ),
        (
            RoundConfig {
                level: Level::Unspecified,
                ..base.clone()
            },
            key(1),
            "level",
        ),
        (
            RoundConfig {
                path: ConsensusPath::Unspecified,
                ..base.clone()
            },
            key(1),
            "path",
        ),
        (
            RoundConfig {
                members: Vec::new(),
                ..base.clone()
            },
            key(1),
            "members",
        ),
        (
            RoundConfig {
                members: base
                    .members
                    .iter()
                    .map(|m| Member {
                        weight: 0,
                        ..m.clone()
                    })
                    .collect(),
                ..base.clone()
            },
            key(1),
            "weight",
        ),
        (
            RoundConfig {
                members: [base.members.clone(), base.members.clone()].concat(),
                ..base.clone()
            },
            key(1),
            "twice",
        ),
    ];
    for (config, key, expected) in cases {
        let error = Round::new(config, key).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{error} should mention {expected}"
        );
    }
}

/// The interleaving behind rule 4 of the module doc. Members 0 and 1 answer 41,
/// member 2 answers 40, member 3 is byzantine. Round 0: the byzantine member tells
/// collector 0 "41", which makes a fast-path certificate for 41 that nobody else
/// hears of. Round 1: it tells collector 1 "39"; the median of [41, 41, 40, 39] is
/// 40. Members 0 and 1 must not attest 40: their own answer 41 may have had a fast
/// quorum, and the report's dissent (2 of 4 members) does not rule that out.
#[test]
fn a_fast_certificate_and_an_attested_one_cannot_disagree() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Median);
    let byzantine = group.keys[3].clone();
    let lie = |round: u32, answer: &str, group: &Group| {
        let observation = Observation {
            slot: Some(group.rounds[0].slot(round)),
            answer: answer.as_bytes().to_vec(),
            group_digest: group.rounds[0].group_digest.to_vec(),
            ..Observation::default()
        };
        sign_message(&byzantine, StatementKind::Observation, &observation)
    };
    for (index, answer) in [(0, "41"), (1, "41"), (2, "40")] {
        group.answer(index, START_MS, answer);
    }
    // Round 0: only member 1's observation and the byzantine "41" reach collector 0.
    group.deliver_all(START_MS, &|_, from, _| from == 2);
    let statement = lie(0, "41", &group);
    group.step(
        0,
        START_MS,
        Input::Message {
            from: public(&byzantine),
            statement,
        },
    );
    let fast = group.rounds[0]
        .decided()
        .expect("collector 0 took the fast path")
        .clone();
    assert_eq!(verify_chain(&fast).unwrap().value, b"41");
    group.in_flight.clear(); // Its broadcast is lost.

    // Round 1: everyone moves on; the byzantine member tells collector 1 "39".
    let round_1_ms = START_MS + ROUND_MS;
    // Member 0 is finished; whatever it sends (its catch-up replies) is lost.
    let from_0 = |_: usize, from: usize, _: &RoundMessage| from == 0;
    group.tick_all(round_1_ms);
    let statement = lie(1, "39", &group);
    let from = public(&byzantine);
    group.step(1, round_1_ms, Input::Message { from, statement });
    group.deliver_all(round_1_ms, &from_0);
    let half_ms = round_1_ms + ROUND_MS / 2;
    group.tick_all(half_ms);
    group.deliver_all(half_ms, &from_0);
    let report = group.rounds[1]
        .own_reports
        .get(&1)
        .expect("collector 1 reported");
    assert_eq!(report.report.report.value, b"40");
    // The byzantine member attests too.
    let attestation = Attestation {
        slot: Some(group.rounds[0].slot(1)),
        report_digest: report.report.digest.to_vec(),
        ..Attestation::default()
    };
    let statement = sign_message(&byzantine, StatementKind::Attestation, &attestation);
    group.step(1, half_ms, Input::Message { from, statement });
    group.deliver_all(half_ms, &from_0);
    assert_eq!(
        group.rounds[1].attested.get(&1),
        None,
        "member 1 refuses 40"
    );
    assert!(
        group.rounds[2].attested.contains_key(&1),
        "member 2 attests its own answer"
    );
    assert!(
        group.rounds[1]
            .decided()
            .is_none_or(|c| verify_chain(c).unwrap().value == b"41")
    );
}

/// An honest member attests one value per group, across rounds.
#[test]
fn an_attestation_locks_the_value() {
    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Tally);
    for (index, answer) in [(0, "a"), (1, "b"), (2, "c"), (3, "d")] {
        group.answer(index, START_MS, answer);
    }
    // Round 0: the report (tally tie -> "a") reaches everyone, attestations are lost.
    group.deliver_all(START_MS, &|_, _, message| {
        matches!(message, RoundMessage::Statement(s) if s.kind == StatementKind::Attestation as i32)
    });
    for index in 0..4 {
        assert!(
            group.rounds[index].attested.contains_key(&0),
            "member {index} attested round 0"
        );
        assert_eq!(group.rounds[index].locked_value.as_deref(), Some(&b"a"[..]));
    }
    // Round 1: member 0's round-1 observation is lost, so collector 1's report is
    // over [b, c, d]: tally tie -> "b", which every locked member refuses.
    let round_1_ms = START_MS + ROUND_MS;
    group.tick_all(round_1_ms);
    group.deliver_all(round_1_ms, &|_, from, message| {
        from == 0 && matches!(message, RoundMessage::Statement(s) if s.kind == StatementKind::Observation as i32)
    });
    group.tick_all(round_1_ms + ROUND_MS / 2);
    group.deliver_all(round_1_ms + ROUND_MS / 2, &no_drop);
    let report = &group.rounds[1].own_reports[&1].report.report;
    assert_eq!(report.value, b"b");
    for index in 0..4 {
        assert!(
            !group.rounds[index].attested.contains_key(&1),
            "member {index} keeps its lock"
        );
    }
}

/// Level 2: the member's observation is its child certificate's value; the parent
/// certificate carries the child, and the chain verifies as a whole.
/// A one-member region group of `me` answering `answer`: its certificate's bytes.
fn decided_alone(config: RoundConfig, me: &SigningKey, answer: &[u8]) -> Vec<u8> {
    let mut round = Round::new(config, me.clone()).unwrap();
    let input = Input::LocalAnswer {
        answer: Ok(answer.to_vec()),
        child_certificate: None,
    };
    round
        .step(START_MS, input)
        .iter()
        .find_map(|action| match action {
            Action::Decided(certificate) => Some(certificate.encode_to_vec()),
            _ => None,
        })
        .expect("a group of one decides at once")
}

#[test]
fn a_continent_certificate_carries_its_region() {
    let me = key(1);
    let region = config(
        std::slice::from_ref(&me),
        ConsensusPath::Bft,
        Aggregation::Majority,
        Level::Region,
    );
    let child = decided_alone(region.clone(), &me, b"r");
    let continent = RoundConfig {
        level: Level::Continent,
        group: "europe".into(),
        ..region
    };
    let mut parent = Round::new(continent.clone(), me.clone()).unwrap();
    let actions = parent.step(
        START_MS,
        Input::LocalAnswer {
            answer: Ok(b"r".to_vec()),
            child_certificate: Some(child.clone()),
        },
    );
    let certificate = parent
        .decided()
        .unwrap_or_else(|| panic!("{actions:?}"))
        .clone();
    let summary = verify_chain(&certificate).unwrap();
    assert_eq!(
        (
            summary.certificates,
            summary.signatures,
            summary.value.as_slice()
        ),
        (2, 4, &b"r"[..])
    );
    assert_eq!(certificate.children, vec![child.clone()]);

    // A child whose value differs from the answer is refused: the observation is an error.
    let mut liar = Round::new(continent, me).unwrap();
    liar.step(
        START_MS,
        Input::LocalAnswer {
            answer: Ok(b"other".to_vec()),
            child_certificate: Some(child),
        },
    );
    assert!(liar.decided().is_none());
    assert!(liar.answer.as_ref().unwrap().answer.is_err());
}

#[test]
fn limits_are_enforced() {
    let keys: Vec<SigningKey> = (0..=MEMBERS_MAX as u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let too_many = config(
        &keys,
        ConsensusPath::Bft,
        Aggregation::Majority,
        Level::Region,
    );
    assert_eq!(
        Round::new(too_many.clone(), keys[0].clone()).unwrap_err(),
        ConfigError::Members(VerifyError::MemberCount {
            members: MEMBERS_MAX + 1
        })
    );
    let most = RoundConfig {
        members: too_many.members[..MEMBERS_MAX].to_vec(),
        ..too_many
    };
    assert!(Round::new(most, keys[0].clone()).is_ok());

    // An oversized answer becomes an error observation; so does a missing child at level 2.
    let me = key(1);
    let single = config(
        std::slice::from_ref(&me),
        ConsensusPath::Bft,
        Aggregation::Majority,
        Level::Region,
    );
    let mut round = Round::new(single.clone(), me.clone()).unwrap();
    let answer = Ok(vec![b'x'; ANSWER_BYTES_MAX + 1]);
    round.step(
        START_MS,
        Input::LocalAnswer {
            answer,
            child_certificate: None,
        },
    );
    assert!(
        round
            .answer
            .as_ref()
            .unwrap()
            .answer
            .as_ref()
            .unwrap_err()
            .contains("exceeds")
    );
    let continent = RoundConfig {
        level: Level::Continent,
        ..single
    };
    let mut round = Round::new(continent, me).unwrap();
    round.step(
        START_MS,
        Input::LocalAnswer {
            answer: Ok(b"v".to_vec()),
            child_certificate: None,
        },
    );
    assert_eq!(
        round.answer.as_ref().unwrap().answer,
        Err("no child certificate".to_string())
    );
}

#[test]
fn a_round_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Round>();
    assert_send::<Action>();
}

#[test]
fn wire_messages_round_trip() {
    let statement = sign_message(&key(1), StatementKind::Attestation, &Attestation::default());
    for message in [
        RoundMessage::Statement(statement),
        RoundMessage::Certificate(Box::default()),
    ] {
        let bytes = message.to_proto().encode_to_vec();
        let decoded = polity_proto::RoundMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(RoundMessage::from_proto(decoded), Some(message));
    }
    assert_eq!(
        RoundMessage::from_proto(polity_proto::RoundMessage::default()),
        None
    );
}

/// A certificate that verifies but was made by other keys for this slot is not this
/// group's decision.
#[test]
fn a_certificate_of_strangers_is_not_adopted() {
    let strangers: Vec<SigningKey> = (50..54).map(key).collect();
    let mut fake = Group::with_config(
        strangers.clone(),
        config(
            &strangers,
            ConsensusPath::Bft,
            Aggregation::Majority,
            Level::Region,
        ),
    );
    for index in 0..4 {
        fake.answer(index, START_MS, "forged");
    }
    fake.deliver_all(START_MS, &no_drop);
    let certificate = fake.rounds[0].decided().unwrap().clone();
    verify_chain(&certificate).unwrap();

    let mut group = Group::new(4, ConsensusPath::Bft, Aggregation::Majority);
    let from = public(&strangers[0]);
    let actions = group.step(
        1,
        START_MS,
        Input::Certificate {
            from,
            certificate: Box::new(certificate),
        },
    );
    assert!(
        matches!(actions.as_slice(), [Action::Rejected { .. }]),
        "{actions:?}"
    );
    assert!(!group.rounds[1].is_finished());
}

#[test]
fn a_child_on_another_path_than_the_task_asks_is_not_represented() {
    let me = key(1);
    let bft = config(
        std::slice::from_ref(&me),
        ConsensusPath::Bft,
        Aggregation::Majority,
        Level::Region,
    );
    // A region group of the same task run on the stake path (the task asks for bft).
    let stake_region = RoundConfig {
        path: ConsensusPath::Stake,
        ..bft.clone()
    };
    let child = decided_alone(stake_region, &me, b"r");
    let continent = RoundConfig {
        level: Level::Continent,
        group: "europe".into(),
        ..bft
    };
    let mut parent = Round::new(continent, me.clone()).unwrap();
    let actions = parent.step(
        START_MS,
        Input::LocalAnswer {
            answer: Ok(b"r".to_vec()),
            child_certificate: Some(child),
        },
    );
    // Its own child breaks the task's rule: the member observes an error instead of
    // vouching for it, so the group does not decide (the same round with a bft child
    // does: `a_continent_certificate_carries_its_region`).
    assert!(parent.decided().is_none(), "{actions:?}");
    let end = parent.step(START_MS + 10 * ROUND_MS, Input::Tick);
    assert!(
        end.iter()
            .any(|action| matches!(action, Action::Degraded(_))),
        "{end:?}"
    );
}
