//! # polity-fuzz
//!
//! Fuzz targets for every decoder a peer or a client can reach, as plain functions
//! `fn(&[u8])` that must return on any input, never panic. The AFL++ binaries under
//! `src/bin/` (feature `afl`, built with `cargo afl build`) call them, and
//! `tests/corpus.rs` replays every committed corpus file through them under a plain
//! `cargo test`. How to run: RELIABILITY.md, "Fuzzing".
//!
//! Signatures stop a blind fuzzer at the first check, so the statement, node-info,
//! certificate and registry targets use the first input byte as a mode: an even byte
//! feeds the rest as is; an odd byte first re-signs, with the fixed [`keys`], every
//! statement (or genesis) whose signer is one of those keys, so that mutated bodies
//! reach the checks behind the signature.

// The targets must return on any input: a panic is a finding, never a shortcut.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use futures::executor::block_on;
use futures::io::Cursor;
use polity_consensus::registry::{GENESIS_TAG, check_proposal};
use polity_consensus::statement::{open, sign_statement, verify_statement};
use polity_consensus::{Anchor, Epoch, certificate_json, verify_task_chain};
use polity_proto::{
    Ack, Attestation, Certificate, ConsensusRequest, EpochChain, Genesis, NodeInfo, Observation,
    ProposeReply, RaftCommit, Report, RoundMessage, SignedStatement, StatementKind, TaskRequest,
    TaskSpec,
};
use prost::Message;

pub mod seeds;

/// A fuzz target: returns on any input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory (`corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("statement", statement),
    ("certificate", certificate),
    ("node_info", node_info),
    ("peer_envelope", peer_envelope),
    ("raft", raft),
    ("registry", registry),
    ("export", export),
    ("config", config),
];

/// The fixed keys of the re-signing modes and of the seeds: `[i; 32]` for i in 1..=4,
/// the keys of `polity_consensus`'s own test fixtures.
pub fn keys() -> &'static [SigningKey] {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1..=4u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect()
    })
}

/// Splits off the mode byte: `(resign, rest)`.
fn mode(data: &[u8]) -> Option<(bool, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first & 1 == 1, rest))
}

/// Re-signs `statement` in place when its signer is one of [`keys`].
pub fn resign(statement: &mut SignedStatement) {
    let Some(key) = keys()
        .iter()
        .find(|key| key.verifying_key().as_bytes().as_slice() == statement.signer)
    else {
        return;
    };
    let kind = StatementKind::try_from(statement.kind).unwrap_or(StatementKind::Unspecified);
    if kind == StatementKind::Unspecified {
        return;
    }
    *statement = sign_statement(key, kind, std::mem::take(&mut statement.body));
}

/// Net frames: the length-prefixed reader of `polity_net::codec`, over an in-memory
/// stream, frame after frame until it refuses or the bytes end.
pub fn frame(data: &[u8]) {
    let mut stream = Cursor::new(data);
    for _ in 0..64 {
        match block_on(polity_net::codec::read_frame(&mut stream)) {
            Ok(frame) => assert!(frame.0.len() <= polity_net::codec::FRAME_BYTES_MAX),
            Err(_) => return,
        }
    }
}

/// A `SignedStatement`: shape and signature, then `open` as every kind.
pub fn statement(data: &[u8]) {
    let Some((resigning, rest)) = mode(data) else {
        return;
    };
    let Ok(mut statement) = SignedStatement::decode(rest) else {
        return;
    };
    if resigning {
        resign(&mut statement);
    }
    let _ = verify_statement(&statement);
    let _ = open::<Observation>(&statement, StatementKind::Observation);
    let _ = open::<Report>(&statement, StatementKind::Report);
    let _ = open::<Attestation>(&statement, StatementKind::Attestation);
    let _ = open::<NodeInfo>(&statement, StatementKind::NodeInfo);
    let _ = open::<RaftCommit>(&statement, StatementKind::RaftCommit);
    let _ = polity_consensus::export::statement_json(&statement);
}

/// A `Certificate`: `verify_task_chain` (which is `verify_chain`, then the binding
/// to the task: one call, so the signatures are checked once per input) and the JSON
/// export.
pub fn certificate(data: &[u8]) {
    let Some((resigning, rest)) = mode(data) else {
        return;
    };
    let Ok(mut certificate) = Certificate::decode(rest) else {
        return;
    };
    if resigning {
        resign_certificate(&mut certificate);
    }
    let _ = verify_task_chain(&certificate, None);
    let _ = certificate_json(&certificate);
}

/// Re-signs a certificate's statements signed by [`keys`] and, one level down, its
/// carried children's, refreshing `child_digests` to the re-encoded children.
pub fn resign_certificate(certificate: &mut Certificate) {
    resign_statements(certificate);
    for (index, child) in certificate.children.iter_mut().enumerate() {
        if let Ok(mut decoded) = Certificate::decode(child.as_slice()) {
            resign_statements(&mut decoded);
            *child = decoded.encode_to_vec();
            if let Some(digest) = certificate.child_digests.get_mut(index) {
                *digest = polity_consensus::certificate::certificate_bytes_digest(child).to_vec();
            }
        }
    }
}

fn resign_statements(certificate: &mut Certificate) {
    let singles = [&mut certificate.report, &mut certificate.raft_commit];
    singles.into_iter().flatten().for_each(resign);
    certificate.observations.iter_mut().for_each(resign);
    certificate.attestations.iter_mut().for_each(resign);
}

/// A peer's signed `NodeInfo` (`polity_net::verify_node_info`), gossiped (no claimed
/// sender) and as an answer from the first fixed key's peer. In the re-signing mode
/// the rest of the input is the `NodeInfo` body, signed by the first fixed key.
pub fn node_info(data: &[u8]) {
    let Some((resigning, rest)) = mode(data) else {
        return;
    };
    let statement = if resigning {
        sign_statement(&keys()[0], StatementKind::NodeInfo, rest.to_vec())
    } else {
        match SignedStatement::decode(rest) {
            Ok(statement) => statement,
            Err(_) => return,
        }
    };
    let claimed = polity_net::peer_id_of(keys()[0].verifying_key().as_bytes()).ok();
    let _ = polity_net::network::verify_node_info(None, &statement);
    let _ = polity_net::network::verify_node_info(claimed, &statement);
}

/// Every `peer.proto` request and reply, and the messages they carry as bytes.
pub fn peer_envelope(data: &[u8]) {
    if let Ok(request) = TaskRequest::decode(data) {
        task_request_inner(request);
    }
    if let Ok(request) = ConsensusRequest::decode(data) {
        consensus_request_inner(request);
    }
    let _ = Ack::decode(data);
    let _ = ProposeReply::decode(data);
    let _ = RoundMessage::decode(data);
}

fn task_request_inner(request: TaskRequest) {
    use polity_proto::task_request::Request;
    match request.request {
        Some(Request::Assign(assign)) => {
            let _ = TaskSpec::decode(assign.task.as_slice());
            let _ = Certificate::decode(assign.child_certificate.as_slice());
        }
        Some(Request::Epochs(chain)) => {
            let _ = Anchor::from_chain(chain);
        }
        Some(Request::Outcome(_)) | Some(Request::EpochsAfter(_)) | None => {}
    }
}

fn consensus_request_inner(request: ConsensusRequest) {
    use polity_proto::consensus_request::Request;
    match request.request {
        Some(Request::Raft(envelope)) => {
            let _ = polity_raft::GroupName::new(envelope.raft_group);
            raft_rpc(&envelope.rpc);
        }
        Some(Request::Propose(propose)) => {
            let _ = polity_raft::GroupName::new(propose.raft_group);
            ledger_entry_json(&propose.entry);
        }
        Some(Request::Round(_)) | None => {}
    }
}

fn raft_rpc(bytes: &[u8]) {
    if let Ok(rpc) = serde_json::from_slice::<polity_raft::RaftRpc>(bytes) {
        let _ = polity_raft::network::check_rpc(&rpc);
    }
}

fn ledger_entry_json(bytes: &[u8]) {
    if let Ok(entry) = serde_json::from_slice::<polity_raft::LedgerEntry>(bytes) {
        let _ = entry.check();
        let _ = entry.payload_bytes();
    }
}

/// The raft path's decoders; the first byte picks one: the JSON `RaftRpc` (then
/// `check_rpc`), `RaftReply`, `LedgerEntry` (then its checks), the stored ledger
/// value, the snapshot format, a group name.
pub fn raft(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => raft_rpc(rest),
        1 => {
            let _ = serde_json::from_slice::<polity_raft::RaftReply>(rest);
        }
        2 => ledger_entry_json(rest),
        3 => {
            let task = polity_consensus::TaskId([0; 32]);
            let _ = polity_raft::codec::decode_value(task, rest);
        }
        4 => {
            let _ = polity_raft::codec::decode_snapshot(rest);
        }
        _ => {
            if let Ok(name) = std::str::from_utf8(rest) {
                let _ = polity_raft::GroupName::new(name);
            }
        }
    }
}

/// A small epoch 0: the four fixed keys as members and authorities, open admission.
pub fn fixed_epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| {
        let genesis = seeds::genesis();
        polity_consensus::registry::verify_genesis(&genesis).expect("the fixed genesis verifies")
    })
}

/// The registry: an `EpochChain` through `Anchor::from_chain`, and the same bytes as
/// a proposal against [`fixed_epoch`] (`check_proposal`). The re-signing mode signs
/// the chain's genesis with the fixed keys that are its authorities.
pub fn registry(data: &[u8]) {
    let Some((resigning, rest)) = mode(data) else {
        return;
    };
    let _ = check_proposal(fixed_epoch(), rest);
    let Ok(mut chain) = EpochChain::decode(rest) else {
        return;
    };
    if resigning && let Some(genesis) = chain.genesis.as_mut() {
        resign_genesis(genesis);
    }
    let _ = Anchor::from_chain(chain);
}

fn resign_genesis(genesis: &mut Genesis) {
    let Ok(registry) = polity_proto::Registry::decode(genesis.registry.as_slice()) else {
        return;
    };
    let message = [GENESIS_TAG, &genesis.registry].concat();
    genesis.signatures = registry
        .authorities
        .iter()
        .map(|authority| {
            keys()
                .iter()
                .find(|key| key.verifying_key().as_bytes().as_slice() == authority)
                .map(|key| key.sign(&message).to_bytes().to_vec())
                .unwrap_or_default()
        })
        .collect();
}

/// The JSON export of a decoded (unverified) certificate and of its statements.
/// (Certificates are parsed from JSON only by `scripts/verify_chain.py`, not in Rust.)
pub fn export(data: &[u8]) {
    if let Ok(certificate) = Certificate::decode(data) {
        let json = certificate_json(&certificate);
        let _ = serde_json::to_vec(&json);
    }
}

/// The node's TOML config file: parse (`toml::from_str`, as `NodeConfig::from_file`),
/// then `NodeConfig::validate`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<polity_node::config::NodeConfig>(text) {
        let _ = config.validate();
    }
}
