//! Seed inputs: a few small valid messages per target, made from real encoders and
//! signed by the fixed [`crate::keys`]. `cargo run -p polity-fuzz --bin fuzz_seeds`
//! writes them to `fuzz/corpus/<target>/seed-<n>`.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use polity_consensus::aggregate::{Ballot, aggregate};
use polity_consensus::certificate::{group_digest, report_digest};
use polity_consensus::registry::sign_genesis;
use polity_consensus::statement::{sign_message, statement_digest};
use polity_consensus::{TaskId, encode_task, task_id};
use polity_proto::{
    Admission, Aggregation, Assign, Attestation, Certificate, ConsensusPath, ConsensusRequest,
    EpochChain, Genesis, Level, Member, NodeInfo, Observation, RaftEnvelope, Registry,
    RegistryMember, Report, Slot, StatementKind, TaskRequest, TaskSpec,
};
use polity_raft::{LedgerEntry, RaftRpc, TypeConfig};
use prost::Message;

use crate::keys;

/// The fixed federation: the four fixed keys, members (in key order) and authorities.
pub fn registry() -> Registry {
    let mut registry = Registry {
        federation: "fuzz".into(),
        epoch: 0,
        previous: Vec::new(),
        members: keys()
            .iter()
            .map(|key| RegistryMember {
                public_key: key.verifying_key().to_bytes().to_vec(),
                region: "eu-west".into(),
                continent: "eu".into(),
                stake: 1,
                capabilities: vec!["sha256".into()],
            })
            .collect(),
        admission: Admission::Open as i32,
        authorities: keys()
            .iter()
            .map(|key| key.verifying_key().to_bytes().to_vec())
            .collect(),
    };
    registry
        .members
        .sort_by(|a, b| a.public_key.cmp(&b.public_key));
    registry
}

/// The fixed federation's genesis, signed by its four authorities.
pub fn genesis() -> Genesis {
    sign_genesis(&registry(), keys()).expect("the fixed keys are the authorities")
}

fn task() -> Vec<u8> {
    encode_task(&TaskSpec {
        capability: "sha256".into(),
        payload: b"fuzz".to_vec(),
        nonce: 1,
        ..TaskSpec::default()
    })
}

fn members() -> Vec<Member> {
    keys()
        .iter()
        .map(|key| Member {
            public_key: key.verifying_key().to_bytes().to_vec(),
            weight: 1,
        })
        .collect()
}

/// A region-level bft certificate of the four fixed keys, all answering `ok`:
/// on the fast path when `attesters` is empty, else attested by them.
pub fn certificate(attesters: &[usize]) -> Certificate {
    let task = task();
    let members = members();
    let registry_digest = [7u8; 32];
    let slot = Slot {
        task_id: task_id(&task).0.to_vec(),
        level: Level::Region as i32,
        group: "eu-west".into(),
        round: 0,
    };
    let digest = group_digest(
        ConsensusPath::Bft,
        Aggregation::Majority,
        &registry_digest,
        &members,
    );
    let observations: Vec<_> = keys()
        .iter()
        .map(|key| {
            let observation = Observation {
                slot: Some(slot.clone()),
                answer: b"ok".to_vec(),
                group_digest: digest.to_vec(),
                ..Observation::default()
            };
            sign_message(key, StatementKind::Observation, &observation)
        })
        .collect();
    let ballots: Vec<Ballot<'_>> = (0..members.len())
        .map(|index| Ballot {
            member_index: index,
            weight: 1,
            answer: Some(b"ok".as_slice()),
        })
        .collect();
    let outcome = aggregate(Aggregation::Majority, &ballots, None);
    let report = Report {
        slot: Some(slot.clone()),
        aggregation: Aggregation::Majority as i32,
        value: outcome.value.unwrap_or_default(),
        tally: outcome.tally,
        observation_digests: observations
            .iter()
            .map(|s| statement_digest(s).to_vec())
            .collect(),
        group_digest: digest.to_vec(),
        ..Report::default()
    };
    let report = sign_message(&keys()[0], StatementKind::Report, &report);
    let attestation = Attestation {
        slot: Some(slot.clone()),
        report_digest: report_digest(&report.body).to_vec(),
        ..Attestation::default()
    };
    let attestations = attesters
        .iter()
        .map(|&i| sign_message(&keys()[i], StatementKind::Attestation, &attestation))
        .collect();
    Certificate {
        task,
        slot: Some(slot),
        members,
        path: ConsensusPath::Bft as i32,
        path_reason: "fuzz seed".into(),
        report: Some(report),
        observations,
        attestations,
        raft_commit: None,
        child_digests: Vec::new(),
        children: Vec::new(),
        registry_digest: registry_digest.to_vec(),
    }
}

fn node_info_body() -> Vec<u8> {
    let key = keys()[0].verifying_key();
    let peer = polity_net::peer_id_of(key.as_bytes()).expect("an ed25519 key");
    NodeInfo {
        public_key: key.to_bytes().to_vec(),
        peer_id: peer.to_string(),
        capabilities: vec!["sha256".into()],
        region: "eu-west".into(),
        continent: "eu".into(),
        ..NodeInfo::default()
    }
    .encode_to_vec()
}

fn with_mode(mode: u8, bytes: Vec<u8>) -> Vec<u8> {
    [vec![mode], bytes].concat()
}

fn ledger_entry() -> LedgerEntry {
    let certificate = certificate(&[]);
    LedgerEntry {
        task_id: TaskId([1; 32]),
        report: certificate
            .report
            .clone()
            .unwrap_or_default()
            .encode_to_vec(),
        certificate: Some(certificate.encode_to_vec()),
    }
}

fn raft_rpcs() -> Vec<Vec<u8>> {
    let vote = Vote::new(1, 1);
    let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        leader_commit: None,
        entries: vec![
            Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
                payload: EntryPayload::Normal(ledger_entry()),
            },
        ],
    };
    [
        RaftRpc::Vote(VoteRequest::new(vote, Some(log_id))),
        RaftRpc::AppendEntries(append),
    ]
    .iter()
    .map(|rpc| serde_json::to_vec(rpc).expect("a raft rpc encodes"))
    .collect()
}

fn raft_seeds() -> Vec<Vec<u8>> {
    let entry = ledger_entry();
    let mut seeds: Vec<Vec<u8>> = raft_rpcs()
        .into_iter()
        .map(|rpc| with_mode(0, rpc))
        .collect();
    let refused = polity_raft::RaftReply::Refused("busy".into());
    seeds.push(with_mode(
        1,
        serde_json::to_vec(&refused).unwrap_or_default(),
    ));
    seeds.push(with_mode(2, serde_json::to_vec(&entry).unwrap_or_default()));
    let value = polity_raft::codec::encode_value(&entry);
    seeds.push(with_mode(3, value.clone()));
    let records = [Ok::<_, ()>((entry.task_id.0.to_vec(), value))];
    if let Ok(snapshot) = polity_raft::codec::encode_snapshot(records) {
        seeds.push(with_mode(4, snapshot));
    }
    seeds.push(with_mode(5, b"region/eu-west".to_vec()));
    seeds
}

fn peer_seeds() -> Vec<Vec<u8>> {
    use polity_proto::{consensus_request, task_request};
    let assign = TaskRequest {
        request: Some(task_request::Request::Assign(Assign {
            task: task(),
            plan: None,
            child_certificate: certificate(&[]).encode_to_vec(),
        })),
    };
    let epochs = TaskRequest {
        request: Some(task_request::Request::Epochs(chain())),
    };
    let raft = ConsensusRequest {
        request: Some(consensus_request::Request::Raft(RaftEnvelope {
            raft_group: "region/eu-west".into(),
            rpc: raft_rpcs().remove(0),
        })),
    };
    vec![
        assign.encode_to_vec(),
        epochs.encode_to_vec(),
        raft.encode_to_vec(),
    ]
}

fn chain() -> EpochChain {
    EpochChain {
        genesis: Some(genesis()),
        changes: Vec::new(),
    }
}

fn registry_seeds() -> Vec<Vec<u8>> {
    let mut next = registry();
    next.epoch = 1;
    next.previous = crate::fixed_epoch().digest().to_vec();
    next.members.pop();
    let leave = polity_consensus::registry::sign_proposal(&next, &keys()[3]);
    vec![
        with_mode(0, chain().encode_to_vec()),
        with_mode(1, chain().encode_to_vec()),
        with_mode(0, leave.encode_to_vec()),
    ]
}

fn config_seeds() -> Vec<Vec<u8>> {
    let minimal = "region = \"eu-west\"\ncontinent = \"eu\"\nlisten = [\"/ip4/0.0.0.0/tcp/0\"]\n\
                   [capabilities]\nsha256 = \"builtin:sha256\"\n";
    let default = polity_node::config::NodeConfig::default();
    vec![
        minimal.as_bytes().to_vec(),
        toml::to_string(&default).unwrap_or_default().into_bytes(),
    ]
}

/// Every seed, by target name.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let fast = certificate(&[]).encode_to_vec();
    let attested = certificate(&[0, 1, 2]).encode_to_vec();
    let observation = certificate(&[]).observations[1].encode_to_vec();
    let report = certificate(&[]).report.unwrap_or_default().encode_to_vec();
    let info = sign_message_bytes(node_info_body());
    vec![
        ("frame", vec![vec![0], vec![3, 1, 2, 3, 2, 9, 9]]),
        (
            "statement",
            vec![with_mode(0, observation.clone()), with_mode(1, report)],
        ),
        (
            "certificate",
            vec![with_mode(0, fast.clone()), with_mode(1, attested.clone())],
        ),
        (
            "node_info",
            vec![with_mode(0, info), with_mode(1, node_info_body())],
        ),
        ("peer_envelope", peer_seeds()),
        ("raft", raft_seeds()),
        ("registry", registry_seeds()),
        ("export", vec![fast, attested]),
        ("config", config_seeds()),
    ]
}

fn sign_message_bytes(body: Vec<u8>) -> Vec<u8> {
    polity_consensus::statement::sign_statement(&keys()[0], StatementKind::NodeInfo, body)
        .encode_to_vec()
}
