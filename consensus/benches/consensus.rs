//! Criterion benchmarks of the consensus crate's signature paths and certificates.
//!
//! Groups (results and the command to run them are in `BENCHMARKS.md`):
//!
//! - `sign`: `sign_statement` of a ~100-byte observation vs raw `SigningKey::sign` of
//!   the same signed message (domain tag || body).
//! - `verify`: `verify_statement` vs raw `VerifyingKey::verify_strict` (key already
//!   decompressed).
//! - `batch_verify/64`: raw `ed25519_dalek::verify_batch` (keys already decompressed,
//!   messages already concatenated; a reference only, Polity no longer batches, see
//!   `statement::batch_verify`) vs `verify_statements_batch` (what `verify_chain` does
//!   per certificate, one `verify_strict` per signature), with two reference points:
//!   the raw batch plus key decompression and weak-key checks, and 64
//!   `verify_statement` calls one by one.
//! - `certificate/{build,verify}/n` for groups of 4, 16, 64 and 256 on the bft fast
//!   path: the collector's `Round` from its own answer to `Action::Decided` fed the
//!   other members' observations, and `verify_chain` of the decided certificate.
//!
//! Keys are deterministic (`SigningKey::from_bytes` of a fixed seed per member), and
//! so is everything else: dalek's batch verification derives its random coefficients
//! from a transcript of the batch.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use polity_consensus::certificate::group_digest;
use polity_consensus::statement::signed_message;
use polity_consensus::{
    Action, Input, PublicKey, Round, RoundConfig, RoundMessage, sign_statement, task_id,
    verify_chain, verify_statement, verify_statements_batch,
};
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, Level, Member, Observation, SignedStatement, Slot,
    StatementKind, TaskSpec,
};
use prost::Message;

/// Signatures per batch in `batch_verify`.
const BATCH: usize = 64;
/// Group sizes of the `certificate` group.
const GROUPS: [usize; 4] = [4, 16, 64, 256];
/// A plausible executor answer: an HTTP status and a content digest.
const ANSWER: &[u8] = b"200 sha256:9f86d081884c";

/// Member `index`'s key, from a fixed seed.
fn key(index: usize) -> SigningKey {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn members(keys: &[SigningKey]) -> Vec<Member> {
    keys.iter()
        .map(|key| Member {
            public_key: key.verifying_key().to_bytes().to_vec(),
            weight: 1,
        })
        .collect()
}

fn task() -> Vec<u8> {
    polity_consensus::encode_task(&TaskSpec {
        capability: "http-get".into(),
        nonce: 42,
        ..TaskSpec::default()
    })
}

/// A typical region-level observation body of a group of `keys`.
fn observation_body(keys: &[SigningKey]) -> Vec<u8> {
    let observation = Observation {
        slot: Some(Slot {
            task_id: task_id(&task()).0.to_vec(),
            level: Level::Region as i32,
            group: "eu-west".into(),
            round: 0,
        }),
        answer: ANSWER.to_vec(),
        group_digest: group_digest(
            ConsensusPath::Bft,
            Aggregation::Majority,
            &[9; 32],
            &members(keys),
        )
        .to_vec(),
        ..Observation::default()
    };
    observation.encode_to_vec()
}

fn bench_sign(c: &mut Criterion) {
    let key = key(1);
    let body = observation_body(std::slice::from_ref(&key));
    eprintln!("observation body: {} bytes", body.len());
    let message = signed_message(StatementKind::Observation, &body);
    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_statement", |b| {
        b.iter_batched(
            || body.clone(),
            |body| sign_statement(&key, StatementKind::Observation, black_box(body)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("raw_sign", |b| b.iter(|| key.sign(black_box(&message))));
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let key = key(1);
    let body = observation_body(std::slice::from_ref(&key));
    let statement = sign_statement(&key, StatementKind::Observation, body.clone());
    let message = signed_message(StatementKind::Observation, &body);
    let signature = key.sign(&message);
    let verifying_key = key.verifying_key();
    assert!(verify_statement(&statement).is_ok());
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_statement", |b| {
        b.iter(|| verify_statement(black_box(&statement)))
    });
    group.bench_function("raw_verify_strict", |b| {
        b.iter(|| verifying_key.verify_strict(black_box(&message), black_box(&signature)))
    });
    group.finish();
}

fn bench_batch(c: &mut Criterion) {
    let keys: Vec<SigningKey> = (1..=BATCH).map(key).collect();
    let body = observation_body(&keys);
    let statements: Vec<SignedStatement> = keys
        .iter()
        .map(|key| sign_statement(key, StatementKind::Observation, body.clone()))
        .collect();
    let messages: Vec<Vec<u8>> = statements
        .iter()
        .map(|s| signed_message(StatementKind::Observation, &s.body))
        .collect();
    let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let signatures: Vec<Signature> = statements
        .iter()
        .map(|s| Signature::from_slice(&s.signature).unwrap())
        .collect();
    let verifying_keys: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
    ed25519_dalek::verify_batch(&message_refs, &signatures, &verifying_keys).unwrap();
    assert_eq!(verify_statements_batch(&statements).unwrap().len(), BATCH);

    let mut group = c.benchmark_group("batch_verify");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("raw_verify_batch", BATCH), &(), |b, _| {
        b.iter(|| {
            ed25519_dalek::verify_batch(
                black_box(&message_refs),
                black_box(&signatures),
                black_box(&verifying_keys),
            )
        })
    });
    group.bench_with_input(
        BenchmarkId::new("verify_statements_batch", BATCH),
        &(),
        |b, _| b.iter(|| verify_statements_batch(black_box(&statements))),
    );
    // Reference: the raw batch when the keys arrive as bytes (decompression and the
    // weak-key check every verifier of received statements must do).
    group.bench_with_input(
        BenchmarkId::new("raw_verify_batch_keys_from_bytes", BATCH),
        &(),
        |b, _| {
            b.iter(|| {
                let keys = black_box(&statements)
                    .iter()
                    .map(|s| {
                        let bytes: [u8; 32] = s.signer.as_slice().try_into().unwrap();
                        let key = VerifyingKey::from_bytes(&bytes).unwrap();
                        assert!(!key.is_weak());
                        key
                    })
                    .collect::<Vec<_>>();
                ed25519_dalek::verify_batch(&message_refs, &signatures, &keys)
            })
        },
    );
    // Reference: what batching saves.
    group.bench_with_input(
        BenchmarkId::new("verify_statement_each", BATCH),
        &(),
        |b, _| {
            b.iter(|| {
                black_box(&statements)
                    .iter()
                    .map(verify_statement)
                    .collect::<Result<Vec<PublicKey>, _>>()
            })
        },
    );
    group.finish();
}

/// The config every member of a benchmark group of `keys` runs.
fn round_config(keys: &[SigningKey]) -> RoundConfig {
    RoundConfig {
        task: task(),
        level: Level::Region,
        group: "eu-west".into(),
        registry_digest: [9; 32],
        members: members(keys),
        path: ConsensusPath::Bft,
        path_reason: "bench".into(),
        aggregation: Aggregation::Majority,
        round_timeout_ms: 10_000,
        rounds_max: 3,
        started_at_ms: 0,
    }
}

fn local_answer() -> Input {
    Input::LocalAnswer {
        answer: Ok(ANSWER.to_vec()),
        child_certificate: None,
    }
}

/// Every non-collector member's round-0 observation, as its own `Round` sends it to
/// the collector (member 0), with the sender's key.
fn observations(keys: &[SigningKey], config: &RoundConfig) -> Vec<(PublicKey, SignedStatement)> {
    keys.iter()
        .skip(1)
        .map(|key| {
            let mut round = Round::new(config.clone(), key.clone()).unwrap();
            let from = PublicKey::from_verifying_key(&key.verifying_key());
            let statement = round
                .step(1, local_answer())
                .into_iter()
                .find_map(|action| match action {
                    Action::SendTo(_, RoundMessage::Statement(statement)) => Some(statement),
                    _ => None,
                })
                .expect("a member sends its observation to the collector");
            (from, statement)
        })
        .collect()
}

/// The collector's part of a fast-path decision: its own answer, then the other
/// members' observations until it decides.
fn collect(mut round: Round, observations: &[(PublicKey, SignedStatement)]) -> Box<Certificate> {
    round.step(1, local_answer());
    for (from, statement) in observations {
        let input = Input::Message {
            from: *from,
            statement: statement.clone(),
        };
        for action in round.step(2, input) {
            if let Action::Decided(certificate) = action {
                return certificate;
            }
        }
    }
    panic!("no fast-path decision");
}

fn bench_certificate(c: &mut Criterion) {
    let mut group = c.benchmark_group("certificate");
    group.sample_size(20);
    group.sampling_mode(SamplingMode::Flat);
    for n in GROUPS {
        let keys: Vec<SigningKey> = (1..=n).map(key).collect();
        let config = round_config(&keys);
        let observations = observations(&keys, &config);
        let collector = || Round::new(config.clone(), keys[0].clone()).unwrap();
        let certificate = collect(collector(), &observations);
        let summary = verify_chain(&certificate).unwrap();
        assert_eq!(summary.value, ANSWER);
        // The report and a bft quorum (n - f) of observations.
        let statements = certificate.observations.len() + 1;
        assert_eq!(summary.signatures as usize, statements);
        eprintln!(
            "n = {n}: certificate of {statements} statements, {} bytes",
            certificate.encoded_len()
        );
        group.throughput(Throughput::Elements(statements as u64));
        // The collector's `Round` is made outside the timing (it decompresses the n
        // member keys once per task, before any message arrives).
        group.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter_batched(
                collector,
                |round| collect(round, black_box(&observations)),
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("verify_chain", n), &n, |b, _| {
            b.iter(|| verify_chain(black_box(&certificate)).unwrap())
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_sign(&mut criterion);
    bench_verify(&mut criterion);
    bench_batch(&mut criterion);
    bench_certificate(&mut criterion);
    criterion.final_summary();
}
