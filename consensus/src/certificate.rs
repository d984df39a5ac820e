//! Certificates: building their digests and verifying a chain offline, from the
//! certificate alone, with nothing but the public keys it names.
//!
//! [`verify_chain`] checks, for the root and recursively for every carried child:
//! sizes and counts within limits; the task id is the digest of the carried task;
//! every signature (one by one, by [`crate::statement::verify_signature`]'s rule);
//! every signer is a member and no member is counted twice; every statement is for
//! the certificate's slot and carries its [`group_digest`] (path, aggregation,
//! members, weights — so a signature cannot be re-presented under a smaller member
//! list or a weaker path); the report is signed by the round's collector
//! (`members[round % n]`); the report's value and tally recomputed from the included
//! observations equal the report's; the path's quorum rule ([`crate::quorum`]); and
//! the child links (digest, level, task, value, one child per group).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, VerifyingKey};
use polity_proto::{
    Aggregation, Attestation, Certificate, ConsensusPath, Level, Observation, RaftCommit, Report,
    SignedStatement, Slot, StatementKind,
};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::aggregate::{AnswerVerifier, Ballot, aggregate, normalize};
use crate::ids::{IdError, PublicKey, TaskId};
use crate::quorum::QuorumRule;
use crate::statement::{
    ANSWER_BYTES_MAX, StatementError, batch_verify, check_lengths, decode_body, domain_tag,
    signed_message, statement_digest,
};
use crate::task::{TASK_BYTES_MAX, task_id};

/// Domain tag of group digests.
pub const GROUP_TAG: &[u8] = b"polity/v1/group\0";
/// Domain tag of certificate digests.
pub const CERTIFICATE_TAG: &[u8] = b"polity/v1/certificate\0";
/// Largest group a certificate (or a round) may name.
pub const MEMBERS_MAX: usize = 1024;
/// Levels in a chain: region, continent, global.
pub const LEVELS_MAX: usize = 3;
/// Largest encoded certificate, children included.
pub const CERTIFICATE_BYTES_MAX: usize = 64 << 20;
/// Longest group name.
pub const GROUP_BYTES_MAX: usize = 256;
/// Longest `path_reason`.
pub const PATH_REASON_BYTES_MAX: usize = 1024;
/// Rounds per group decision; a slot's round is below this.
pub const ROUNDS_MAX: u32 = 64;

/// What a verified chain decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Certificates verified: the root and every carried descendant.
    pub certificates: u32,
    /// Signatures verified across the chain.
    pub signatures: u32,
    /// The root report's value.
    pub value: Vec<u8>,
    /// [`certificate_digest`] of the root.
    pub root_digest: [u8; 32],
    /// The root's path.
    pub path: ConsensusPath,
    /// Members of the root group.
    pub members: usize,
    pub task_id: TaskId,
    /// The root's level.
    pub level: Level,
    /// True only from [`verify_degraded`].
    pub degraded: bool,
}

/// Why a certificate chain does not verify. `level` says at which level of the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("chain deeper than {LEVELS_MAX} levels")]
    TooDeep,
    #[error("{what} too large: {size} > {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{what} missing")]
    Missing { what: &'static str },
    #[error("member {index}: {error}")]
    MemberKey { index: usize, error: IdError },
    #[error("member {index} listed twice")]
    DuplicateMember { index: usize },
    #[error("group must have 1..={MEMBERS_MAX} members, has {members}")]
    MemberCount { members: usize },
    #[error("task id in slot is not the digest of the carried task")]
    TaskIdMismatch,
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
    #[error("{what}: {error}")]
    Statement {
        what: &'static str,
        error: StatementError,
    },
    #[error("{what} signed by a non-member {signer}")]
    NotMember {
        what: &'static str,
        signer: PublicKey,
    },
    #[error("{what} signed twice by member {index}")]
    CountedTwice { what: &'static str, index: usize },
    #[error("observations are not in member order")]
    NotMemberOrder,
    #[error("signature batch does not verify")]
    BadSignature,
    #[error("{what} is for another slot")]
    SlotMismatch { what: &'static str },
    #[error("report is degraded: {reason}")]
    Degraded { reason: String },
    #[error("report is not degraded")]
    NotDegraded,
    #[error(
        "report signed by member {signer_index}, but round {round}'s collector is {collector_index}"
    )]
    NotCollector {
        signer_index: usize,
        collector_index: usize,
        round: u32,
    },
    #[error("{what} was signed for another group (path, aggregation or members)")]
    GroupMismatch { what: &'static str },
    #[error("report's observation digests do not match the observations")]
    ObservationDigests,
    #[error("report's tally does not match the observations")]
    TallyMismatch,
    #[error("report's value does not match the aggregation of the observations")]
    ValueMismatch,
    #[error("{what} names another report")]
    ReportDigestMismatch { what: &'static str },
    #[error("no quorum: {detail}")]
    NoQuorum { detail: String },
    #[error("{what} not allowed on this path or level")]
    Unexpected { what: &'static str },
    #[error("child {index}: {detail}")]
    Child { index: usize, detail: String },
    #[error("in child {index}: {error}")]
    InChild {
        index: usize,
        error: Box<VerifyError>,
    },
    #[error("the root decides {found}, but the task's scope is {expected}")]
    WrongScope { expected: String, found: String },
    #[error("a {level} certificate used {what} {found}, but the task's policy selects {expected}")]
    WrongPolicy {
        level: &'static str,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("membership: {0}")]
    Membership(#[from] crate::registry::MembershipError),
}

/// The digest every observation and report carries in `group_digest`:
/// `sha256("polity/v1/group\0" || u32be(path) || u32be(aggregation) ||
/// registry_digest (32 bytes) || u32be(n) || for each member in order: public_key
/// (32 bytes) || u64be(weight))`, with the aggregation normalized (unspecified means
/// majority). It binds each signature to the group's path, aggregation, registry
/// epoch, member list and weights.
pub fn group_digest(
    path: ConsensusPath,
    aggregation: Aggregation,
    registry_digest: &[u8; 32],
    members: &[polity_proto::Member],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(GROUP_TAG);
    hasher.update((path as i32 as u32).to_be_bytes());
    hasher.update((normalize(aggregation) as i32 as u32).to_be_bytes());
    hasher.update(registry_digest);
    hasher.update(
        u32::try_from(members.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for member in members {
        hasher.update(&member.public_key);
        hasher.update(member.weight.to_be_bytes());
    }
    hasher.finalize().into()
}

/// `sha256("polity/v1/certificate\0" || certificate_bytes)`.
pub fn certificate_bytes_digest(certificate_bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(CERTIFICATE_TAG);
    hasher.update(certificate_bytes);
    hasher.finalize().into()
}

/// `sha256("polity/v1/certificate\0" || prost encoding of certificate)`.
pub fn certificate_digest(certificate: &Certificate) -> [u8; 32] {
    certificate_bytes_digest(&certificate.encode_to_vec())
}

/// `sha256("polity/v1/report\0" || report_body)`: what attestations and raft commits sign.
pub fn report_digest(report_body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(domain_tag(StatementKind::Report));
    hasher.update(report_body);
    hasher.finalize().into()
}

/// Verifies a certificate chain offline (see the module doc). `first-valid` reports
/// are only checked to pick one of the included answers, since the task's verifier
/// is not in the certificate; use [`verify_chain_with`] to supply it.
pub fn verify_chain(root: &Certificate) -> Result<ChainSummary, VerifyError> {
    verify_chain_with(root, None)
}

/// [`verify_chain`] with the task's answer verifier for `first-valid` aggregation.
pub fn verify_chain_with(
    root: &Certificate,
    verifier: Option<&dyn AnswerVerifier>,
) -> Result<ChainSummary, VerifyError> {
    verify_certificate(root, verifier, 0, Mode::Final)
}

/// Verifies a degraded certificate: every check of [`verify_chain`] except the quorum
/// and the collector (a degraded report is signed by whichever member gave up), and
/// the report must say it is degraded. A degraded certificate proves who said what;
/// it does not prove the group decided.
pub fn verify_degraded(root: &Certificate) -> Result<ChainSummary, VerifyError> {
    verify_certificate(root, None, 0, Mode::Degraded)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Final,
    Degraded,
}

/// The signed statements of one certificate, shape-checked, waiting for one batch.
/// Who signed a queued statement.
enum Signer {
    Member(usize),
    Outsider(PublicKey),
}

struct Batch<'a> {
    members: &'a BTreeMap<PublicKey, usize>,
    keys: &'a [VerifyingKey],
    messages: Vec<Vec<u8>>,
    signatures: Vec<Signature>,
    verifying_keys: Vec<VerifyingKey>,
}

impl Batch<'_> {
    /// Checks shape and membership and queues the signature; returns the member index.
    fn add(
        &mut self,
        what: &'static str,
        statement: &SignedStatement,
        kind: StatementKind,
    ) -> Result<usize, VerifyError> {
        match self.queue(what, statement, kind, false)? {
            Signer::Member(index) => Ok(index),
            Signer::Outsider(signer) => Err(VerifyError::NotMember { what, signer }),
        }
    }

    /// Queues a statement whose signer need not be a member (the raft commit, signed by
    /// the place's raft leader); an outsider's key is checked as a member's would be.
    fn add_any_signer(
        &mut self,
        what: &'static str,
        statement: &SignedStatement,
        kind: StatementKind,
    ) -> Result<(), VerifyError> {
        self.queue(what, statement, kind, true).map(|_| ())
    }

    fn queue(
        &mut self,
        what: &'static str,
        statement: &SignedStatement,
        kind: StatementKind,
        outsider_may_sign: bool,
    ) -> Result<Signer, VerifyError> {
        if statement.kind != kind as i32 {
            return Err(VerifyError::Statement {
                what,
                error: StatementError::WrongKind {
                    expected: kind,
                    found: statement.kind,
                },
            });
        }
        let statement_error = |error| VerifyError::Statement { what, error };
        let (kind, signer, signature) = check_lengths(statement).map_err(statement_error)?;
        // A member's key was decompressed and checked (valid, not weak) by
        // `member_keys`; only a non-member's key is checked here, so the error is the
        // one `check_shape` would give (a bad key before "not a member").
        let (signer, key) = match self.members.get(&signer) {
            Some(&index) => (Signer::Member(index), self.keys[index]),
            None => {
                let key = signer
                    .to_verifying_key()
                    .map_err(|error| statement_error(error.into()))?;
                if !outsider_may_sign {
                    return Ok(Signer::Outsider(signer));
                }
                (Signer::Outsider(signer), key)
            }
        };
        self.messages.push(signed_message(kind, &statement.body));
        self.signatures.push(signature);
        self.verifying_keys.push(key);
        Ok(signer)
    }

    fn verify(self) -> Result<u32, VerifyError> {
        batch_verify(&self.messages, &self.signatures, &self.verifying_keys)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(u32::try_from(self.messages.len()).unwrap_or(u32::MAX))
    }
}

fn limit(what: &'static str, size: usize, limit: usize) -> Result<(), VerifyError> {
    if size > limit {
        Err(VerifyError::TooLarge { what, size, limit })
    } else {
        Ok(())
    }
}

fn decode<M: Message + Default>(what: &'static str, body: &[u8]) -> Result<M, VerifyError> {
    decode_body(body).map_err(|error| VerifyError::Statement { what, error })
}

fn check_slot(what: &'static str, found: Option<&Slot>, slot: &Slot) -> Result<(), VerifyError> {
    if found == Some(slot) {
        Ok(())
    } else {
        Err(VerifyError::SlotMismatch { what })
    }
}

/// Checks the slot's own fields and returns its level.
pub(crate) fn check_slot_fields(slot: &Slot) -> Result<Level, VerifyError> {
    let level = match Level::try_from(slot.level) {
        Ok(Level::Unspecified) | Err(_) => {
            return Err(VerifyError::Invalid {
                what: "level",
                value: slot.level.to_string(),
            });
        }
        Ok(level) => level,
    };
    if slot.group.is_empty() {
        return Err(VerifyError::Invalid {
            what: "group",
            value: "empty".into(),
        });
    }
    limit("group", slot.group.len(), GROUP_BYTES_MAX)?;
    if slot.round >= ROUNDS_MAX {
        return Err(VerifyError::Invalid {
            what: "round",
            value: slot.round.to_string(),
        });
    }
    Ok(level)
}

/// Member keys, checked: count, valid, not weak, distinct.
pub(crate) fn member_keys(
    members: &[polity_proto::Member],
) -> Result<(Vec<VerifyingKey>, BTreeMap<PublicKey, usize>), VerifyError> {
    if members.is_empty() || members.len() > MEMBERS_MAX {
        return Err(VerifyError::MemberCount {
            members: members.len(),
        });
    }
    let mut keys = Vec::with_capacity(members.len());
    let mut index_of = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        let public_key = PublicKey::from_slice(&member.public_key)
            .map_err(|error| VerifyError::MemberKey { index, error })?;
        let key = public_key
            .to_verifying_key()
            .map_err(|error| VerifyError::MemberKey { index, error })?;
        if index_of.insert(public_key, index).is_some() {
            return Err(VerifyError::DuplicateMember { index });
        }
        keys.push(key);
    }
    Ok((keys, index_of))
}

/// Ballots of decoded observations, with their member indices and weights.
pub(crate) fn ballots<'a>(
    observations: &'a [(usize, Observation)],
    members: &[polity_proto::Member],
) -> Vec<Ballot<'a>> {
    observations
        .iter()
        .map(|(index, observation)| Ballot {
            member_index: *index,
            weight: members[*index].weight,
            answer: observation
                .error
                .is_empty()
                .then_some(observation.answer.as_slice()),
        })
        .collect()
}

/// Verifies one certificate and, through [`verify_children`], everything it carries.
/// The order of the checks is part of the contract (the first failing check names the
/// error), so each step below runs strictly after the one before it.
fn verify_certificate(
    certificate: &Certificate,
    verifier: Option<&dyn AnswerVerifier>,
    depth: usize,
    mode: Mode,
) -> Result<ChainSummary, VerifyError> {
    let header = check_header(certificate, depth)?;
    // Signatures first: nothing is decoded before its signature is checked.
    let report_statement = certificate
        .report
        .as_ref()
        .ok_or(VerifyError::Missing { what: "report" })?;
    let signers = verify_signatures(certificate, report_statement, &header)?;
    let checked = check_report(report_statement, &header, signers.report, mode)?;
    let report = checked.report;
    let observations = decode_observations(
        certificate,
        &signers.observations,
        header.slot,
        &checked.group,
        &report.observation_digests,
    )?;
    check_outcome(
        checked.aggregation,
        &report,
        &observations,
        &certificate.members,
        verifier,
    )?;

    let children = verify_children(certificate, header.level, &observations, verifier, depth)?;

    if mode == Mode::Final {
        let digest = report_digest(&report_statement.body);
        check_quorum(
            certificate,
            header.path,
            header.slot,
            &digest,
            &report.value,
            &observations,
            &signers.attestations,
        )?;
    }
    Ok(ChainSummary {
        certificates: 1u32.saturating_add(children.certificates),
        signatures: signers.signatures.saturating_add(children.signatures),
        value: report.value,
        root_digest: certificate_digest(certificate),
        path: header.path,
        members: certificate.members.len(),
        task_id: header.task_id,
        level: header.level,
        degraded: report.degraded,
    })
}

/// What [`check_header`] established about a certificate before any signature is
/// checked; it lives for one [`verify_certificate`] call.
struct Header<'a> {
    members: &'a [polity_proto::Member],
    /// The members' keys, decompressed and checked (valid, not weak, distinct).
    keys: Vec<VerifyingKey>,
    /// Member index by key, to find each signer's index and key.
    index_of: BTreeMap<PublicKey, usize>,
    slot: &'a Slot,
    task_id: TaskId,
    level: Level,
    path: ConsensusPath,
    registry_digest: [u8; 32],
}

/// Depth, sizes and counts within limits, the member keys, the slot (whose task id
/// must be the digest of the carried task) and the path: everything checkable without
/// signatures.
fn check_header(certificate: &Certificate, depth: usize) -> Result<Header<'_>, VerifyError> {
    if depth >= LEVELS_MAX {
        return Err(VerifyError::TooDeep);
    }
    limit(
        "certificate",
        certificate.encoded_len(),
        CERTIFICATE_BYTES_MAX,
    )?;
    limit("task", certificate.task.len(), TASK_BYTES_MAX)?;
    limit(
        "path_reason",
        certificate.path_reason.len(),
        PATH_REASON_BYTES_MAX,
    )?;
    let (keys, index_of) = member_keys(&certificate.members)?;
    let members = certificate.members.len();
    let slot = certificate
        .slot
        .as_ref()
        .ok_or(VerifyError::Missing { what: "slot" })?;
    let task_id = task_id(&certificate.task);
    if slot.task_id != task_id.0 {
        return Err(VerifyError::TaskIdMismatch);
    }
    let level = check_slot_fields(slot)?;
    let path = match ConsensusPath::try_from(certificate.path) {
        Ok(ConsensusPath::Unspecified) | Err(_) => {
            return Err(VerifyError::Invalid {
                what: "path",
                value: certificate.path.to_string(),
            });
        }
        Ok(path) => path,
    };
    limit("observations", certificate.observations.len(), members)?;
    limit("attestations", certificate.attestations.len(), members)?;
    let registry_digest =
        <[u8; 32]>::try_from(certificate.registry_digest.as_slice()).map_err(|_| {
            VerifyError::Invalid {
                what: "registry_digest (32 bytes)",
                value: format!("{} bytes", certificate.registry_digest.len()),
            }
        })?;
    Ok(Header {
        members: &certificate.members,
        keys,
        index_of,
        slot,
        task_id,
        level,
        path,
        registry_digest,
    })
}

/// The member index of each statement's signer, after one batch verification.
struct Signers {
    report: usize,
    observations: Vec<usize>,
    attestations: Vec<usize>,
    /// Signatures verified, the raft commit's included.
    signatures: u32,
}

/// Verifies every signature of the certificate (report, observations, attestations,
/// raft commit) in one batch; every signer must be a member, but the raft commit's: the
/// place's raft leader signs it, and whether it may is a registry question
/// (`registry::check_membership`).
fn verify_signatures(
    certificate: &Certificate,
    report_statement: &SignedStatement,
    header: &Header<'_>,
) -> Result<Signers, VerifyError> {
    let mut batch = Batch {
        members: &header.index_of,
        keys: &header.keys,
        messages: Vec::new(),
        signatures: Vec::new(),
        verifying_keys: Vec::new(),
    };
    let report = batch.add("report", report_statement, StatementKind::Report)?;
    let observations = certificate
        .observations
        .iter()
        .map(|statement| batch.add("observation", statement, StatementKind::Observation))
        .collect::<Result<Vec<usize>, VerifyError>>()?;
    let attestations = certificate
        .attestations
        .iter()
        .map(|statement| batch.add("attestation", statement, StatementKind::Attestation))
        .collect::<Result<Vec<usize>, VerifyError>>()?;
    if let Some(commit) = &certificate.raft_commit {
        batch.add_any_signer("raft_commit", commit, StatementKind::RaftCommit)?;
    }
    let signatures = batch.verify()?;
    Ok(Signers {
        report,
        observations,
        attestations,
        signatures,
    })
}

/// The decoded report, with what it fixes for the rest of the certificate.
struct CheckedReport {
    report: Report,
    /// The report's aggregation, normalized.
    aggregation: Aggregation,
    /// [`group_digest`] of the certificate's path, aggregation and members.
    group: [u8; 32],
}

/// Decodes the (signature-checked) report: for this slot, degraded exactly when `mode`
/// allows it, signed by the round's collector (final certificates only), with a known
/// aggregation and this group's digest.
fn check_report(
    report_statement: &SignedStatement,
    header: &Header<'_>,
    report_signer: usize,
    mode: Mode,
) -> Result<CheckedReport, VerifyError> {
    let report: Report = decode("report", &report_statement.body)?;
    check_slot("report", report.slot.as_ref(), header.slot)?;
    match mode {
        Mode::Final if report.degraded => {
            return Err(VerifyError::Degraded {
                reason: report.degraded_reason,
            });
        }
        Mode::Degraded if !report.degraded => return Err(VerifyError::NotDegraded),
        _ => {}
    }
    let collector_index = header.slot.round as usize % header.members.len();
    if mode == Mode::Final && report_signer != collector_index {
        return Err(VerifyError::NotCollector {
            signer_index: report_signer,
            collector_index,
            round: header.slot.round,
        });
    }
    let aggregation = match Aggregation::try_from(report.aggregation) {
        Ok(aggregation) => normalize(aggregation),
        Err(_) => {
            return Err(VerifyError::Invalid {
                what: "aggregation",
                value: report.aggregation.to_string(),
            });
        }
    };
    let group = group_digest(
        header.path,
        aggregation,
        &header.registry_digest,
        header.members,
    );
    if report.group_digest != group {
        return Err(VerifyError::GroupMismatch { what: "report" });
    }
    Ok(CheckedReport {
        report,
        aggregation,
        group,
    })
}

/// Decodes the (signature-checked) observations: in member order, for this slot and
/// group, an answer or an error but not both, and exactly the ones the report lists by
/// digest.
fn decode_observations(
    certificate: &Certificate,
    signers: &[usize],
    slot: &Slot,
    group: &[u8; 32],
    report_digests: &[Vec<u8>],
) -> Result<Vec<(usize, Observation)>, VerifyError> {
    if signers.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(VerifyError::NotMemberOrder);
    }
    let mut observations: Vec<(usize, Observation)> = Vec::with_capacity(signers.len());
    for (statement, &index) in certificate.observations.iter().zip(signers) {
        let observation: Observation = decode("observation", &statement.body)?;
        check_slot("observation", observation.slot.as_ref(), slot)?;
        if observation.group_digest != group {
            return Err(VerifyError::GroupMismatch {
                what: "observation",
            });
        }
        limit("answer", observation.answer.len(), ANSWER_BYTES_MAX)?;
        if !observation.error.is_empty() && !observation.answer.is_empty() {
            return Err(VerifyError::Invalid {
                what: "observation",
                value: "both an answer and an error".into(),
            });
        }
        observations.push((index, observation));
    }
    let digests: Vec<Vec<u8>> = certificate
        .observations
        .iter()
        .map(|s| statement_digest(s).to_vec())
        .collect();
    if digests != report_digests {
        return Err(VerifyError::ObservationDigests);
    }
    Ok(observations)
}

/// The report's tally and value, recomputed from the included observations.
fn check_outcome(
    aggregation: Aggregation,
    report: &Report,
    observations: &[(usize, Observation)],
    members: &[polity_proto::Member],
    verifier: Option<&dyn AnswerVerifier>,
) -> Result<(), VerifyError> {
    let outcome = aggregate(aggregation, &ballots(observations, members), verifier);
    if outcome.tally != report.tally {
        return Err(VerifyError::TallyMismatch);
    }
    let value_matches = match (&outcome.value, aggregation, verifier) {
        // Without the task's verifier, first-valid can only be checked to be an answer.
        (_, Aggregation::FirstValid, None) if !report.degraded => outcome
            .tally
            .iter()
            .any(|entry| entry.answer == report.value),
        (Some(value), _, _) => *value == report.value,
        (None, _, _) => report.degraded && report.value.is_empty(),
    };
    if !value_matches {
        return Err(VerifyError::ValueMismatch);
    }
    Ok(())
}

/// The path's quorum rule over a final certificate: bft and stake by a quorum of
/// identical observations or by attestations, raft by a commit statement.
fn check_quorum(
    certificate: &Certificate,
    path: ConsensusPath,
    slot: &Slot,
    digest: &[u8; 32],
    value: &[u8],
    observations: &[(usize, Observation)],
    attestation_signers: &[usize],
) -> Result<(), VerifyError> {
    let rule = QuorumRule::new(path, &certificate.members);
    let observed: Vec<usize> = observations.iter().map(|(index, _)| *index).collect();
    match path {
        ConsensusPath::Bft | ConsensusPath::Stake => {
            if certificate.raft_commit.is_some() {
                return Err(VerifyError::Unexpected {
                    what: "raft_commit",
                });
            }
            if certificate.attestations.is_empty() {
                return check_fast_quorum(&rule, path, value, observations);
            }
            check_attestations(certificate, path, slot, digest, attestation_signers)?;
            if !rule.is_quorum(&observed) || !rule.is_quorum(attestation_signers) {
                return Err(VerifyError::NoQuorum {
                    detail: format!(
                        "{} observations and {} attestations of {} members on {path:?}",
                        observed.len(),
                        attestation_signers.len(),
                        rule.members()
                    ),
                });
            }
            Ok(())
        }
        ConsensusPath::Raft => {
            check_raft_quorum(certificate, &rule, slot, digest, &observed)?;
            check_attestations(certificate, path, slot, digest, attestation_signers)?;
            if !rule.is_quorum(attestation_signers) {
                return Err(VerifyError::NoQuorum {
                    detail: format!(
                        "{} attestations of the raft commit of {} members",
                        attestation_signers.len(),
                        rule.members()
                    ),
                });
            }
            Ok(())
        }
        ConsensusPath::Unspecified => Err(VerifyError::Invalid {
            what: "path",
            value: "0".into(),
        }),
    }
}

/// Fast path: a quorum of identical observations attests by itself.
fn check_fast_quorum(
    rule: &QuorumRule,
    path: ConsensusPath,
    value: &[u8],
    observations: &[(usize, Observation)],
) -> Result<(), VerifyError> {
    let agreeing: Vec<usize> = observations
        .iter()
        .filter(|(_, o)| o.error.is_empty() && o.answer == value)
        .map(|(index, _)| *index)
        .collect();
    if !rule.is_quorum(&agreeing) {
        return Err(VerifyError::NoQuorum {
            detail: format!(
                "{} of {} identical observations on {path:?}",
                agreeing.len(),
                rule.members()
            ),
        });
    }
    Ok(())
}

/// Each attestation: from a member not counted before, for this slot and this report;
/// on the raft path, of the certificate's raft commit (its term, index and signer).
fn check_attestations(
    certificate: &Certificate,
    path: ConsensusPath,
    slot: &Slot,
    digest: &[u8; 32],
    attestation_signers: &[usize],
) -> Result<(), VerifyError> {
    let mut seen = BTreeSet::new();
    for (statement, &index) in certificate.attestations.iter().zip(attestation_signers) {
        if !seen.insert(index) {
            return Err(VerifyError::CountedTwice {
                what: "attestation",
                index,
            });
        }
        let attestation: Attestation = decode("attestation", &statement.body)?;
        check_slot("attestation", attestation.slot.as_ref(), slot)?;
        if attestation.report_digest != digest {
            return Err(VerifyError::ReportDigestMismatch {
                what: "attestation",
            });
        }
        check_raft_mark(&attestation, path)?;
        if let Some(commit) = &certificate.raft_commit
            && !attests_commit(statement, commit)
        {
            return Err(VerifyError::Invalid {
                what: "attestation",
                value: "names another raft term, index or leader than the raft commit".into(),
            });
        }
    }
    Ok(())
}

/// An attestation's raft fields fit its path: all set on raft (a term and index from
/// 1, a 32-byte leader key), all zero or empty on bft and stake.
pub(crate) fn check_raft_mark(
    attestation: &Attestation,
    path: ConsensusPath,
) -> Result<(), VerifyError> {
    let fits = if path == ConsensusPath::Raft {
        attestation.raft_term != 0
            && attestation.raft_index != 0
            && attestation.raft_leader.len() == 32
    } else {
        attestation.raft_term == 0
            && attestation.raft_index == 0
            && attestation.raft_leader.is_empty()
    };
    if fits {
        return Ok(());
    }
    Err(VerifyError::Invalid {
        what: "attestation raft fields",
        value: format!(
            "term {}, index {}, leader of {} bytes on {path:?}",
            attestation.raft_term,
            attestation.raft_index,
            attestation.raft_leader.len()
        ),
    })
}

/// A raft commit's own rule: raft's first term is 1, and index 0 is before the first
/// entry.
pub(crate) fn check_commit_fields(commit: &RaftCommit) -> Result<(), VerifyError> {
    if commit.term == 0 || commit.commit_index == 0 {
        return Err(VerifyError::Invalid {
            what: "raft_commit term and index",
            value: format!("term {}, index {}", commit.term, commit.commit_index),
        });
    }
    Ok(())
}

/// Whether a signed attestation names the signed raft commit's term, index and signer
/// (the statements' signatures are checked elsewhere; undecodable ones never match).
pub(crate) fn attests_commit(attestation: &SignedStatement, commit: &SignedStatement) -> bool {
    let (Ok(attestation), Ok(body)) = (
        Attestation::decode(attestation.body.as_slice()),
        RaftCommit::decode(commit.body.as_slice()),
    ) else {
        return false;
    };
    attestation.raft_term == body.term
        && attestation.raft_index == body.commit_index
        && attestation.raft_leader == commit.signer
}

/// Raft: a commit statement for this slot and report, and a majority of observations
/// (the caller checks the attestations of the commit).
fn check_raft_quorum(
    certificate: &Certificate,
    rule: &QuorumRule,
    slot: &Slot,
    digest: &[u8; 32],
    observed: &[usize],
) -> Result<(), VerifyError> {
    let statement = certificate
        .raft_commit
        .as_ref()
        .ok_or(VerifyError::Missing {
            what: "raft_commit",
        })?;
    let commit: RaftCommit = decode("raft_commit", &statement.body)?;
    check_slot("raft_commit", commit.slot.as_ref(), slot)?;
    if commit.report_digest != digest {
        return Err(VerifyError::ReportDigestMismatch {
            what: "raft_commit",
        });
    }
    check_commit_fields(&commit)?;
    if !rule.is_quorum(observed) {
        return Err(VerifyError::NoQuorum {
            detail: format!(
                "{} observations of {} members on raft",
                observed.len(),
                rule.members()
            ),
        });
    }
    Ok(())
}

/// Certificates and signatures verified below a certificate.
#[derive(Default)]
struct ChildTotals {
    certificates: u32,
    signatures: u32,
}

/// Levels 2 and 3: every answering observation names a child certificate; the
/// certificate carries each child, which hashes to its digest, verifies, is one level
/// down, is for the same task, and decided the observation's answer. Several members
/// may represent one child group (the node's `representatives`), but then they name the
/// identical certificate: two different certificates of one child group are refused
/// (one group, one decision). A repeated child is verified once. Level 1 has no
/// children.
fn verify_children(
    certificate: &Certificate,
    level: Level,
    observations: &[(usize, Observation)],
    verifier: Option<&dyn AnswerVerifier>,
    depth: usize,
) -> Result<ChildTotals, VerifyError> {
    let mut totals = ChildTotals::default();
    if level == Level::Region {
        check_no_children(certificate, observations)?;
        return Ok(totals);
    }
    let answering = answering_observations(certificate, observations)?;
    // Child group -> (digest, value) of the one certificate it may have.
    let mut groups: BTreeMap<String, (&[u8], Vec<u8>)> = BTreeMap::new();
    for (index, ((bytes, digest), observation)) in certificate
        .children
        .iter()
        .zip(&certificate.child_digests)
        .zip(&answering)
        .enumerate()
    {
        let child = ChildLink {
            index,
            bytes,
            digest,
            observation,
        };
        let Some(summary) = verify_child(certificate, level, child, &mut groups, verifier, depth)?
        else {
            continue; // the same child, verified already
        };
        totals.certificates = totals.certificates.saturating_add(summary.certificates);
        totals.signatures = totals.signatures.saturating_add(summary.signatures);
    }
    Ok(totals)
}

/// Level 1: no children, and no observation names one.
fn check_no_children(
    certificate: &Certificate,
    observations: &[(usize, Observation)],
) -> Result<(), VerifyError> {
    if !certificate.child_digests.is_empty() || !certificate.children.is_empty() {
        return Err(VerifyError::Unexpected { what: "children" });
    }
    if observations
        .iter()
        .any(|(_, o)| !o.child_certificate_digest.is_empty())
    {
        return Err(VerifyError::Unexpected {
            what: "child_certificate_digest",
        });
    }
    Ok(())
}

/// The observations that name a child (answers, and errors that name one anyway), after
/// checking that `child_digests` lists exactly their digests and a child is carried for
/// each.
fn answering_observations<'a>(
    certificate: &Certificate,
    observations: &'a [(usize, Observation)],
) -> Result<Vec<&'a Observation>, VerifyError> {
    let answering: Vec<&Observation> = observations
        .iter()
        .map(|(_, observation)| observation)
        .filter(|observation| {
            observation.error.is_empty() || !observation.child_certificate_digest.is_empty()
        })
        .collect();
    let named: Vec<&[u8]> = answering
        .iter()
        .map(|o| o.child_certificate_digest.as_slice())
        .collect();
    let listed: Vec<&[u8]> = certificate
        .child_digests
        .iter()
        .map(Vec::as_slice)
        .collect();
    if named != listed {
        return Err(VerifyError::Child {
            index: 0,
            detail: "child_digests differ from the observations' child digests".into(),
        });
    }
    if certificate.children.len() != certificate.child_digests.len() {
        return Err(VerifyError::Missing {
            what: "children (levels 2 and 3 carry them)",
        });
    }
    Ok(answering)
}

/// One carried child, with the digest and the observation that name it.
struct ChildLink<'a> {
    index: usize,
    bytes: &'a [u8],
    digest: &'a [u8],
    observation: &'a Observation,
}

/// Verifies one child of `parent` (see [`verify_children`]) and records its group in
/// `groups`. `None` when the child repeats one verified already.
fn verify_child<'a>(
    parent: &Certificate,
    level: Level,
    child: ChildLink<'a>,
    groups: &mut BTreeMap<String, (&'a [u8], Vec<u8>)>,
    verifier: Option<&dyn AnswerVerifier>,
    depth: usize,
) -> Result<Option<ChainSummary>, VerifyError> {
    let ChildLink {
        index,
        bytes,
        digest,
        observation,
    } = child;
    let child_error = |detail: String| VerifyError::Child { index, detail };
    if certificate_bytes_digest(bytes).as_slice() != digest {
        return Err(child_error("does not hash to its digest".into()));
    }
    if !observation.error.is_empty() {
        return Err(child_error("an error observation names a child".into()));
    }
    if let Some((_, value)) = groups.values().find(|(seen, _)| *seen == digest) {
        if *value != observation.answer {
            return Err(child_error(
                "observation's answer is not the child's value".into(),
            ));
        }
        return Ok(None);
    }
    let child = Certificate::decode(bytes).map_err(|error| child_error(error.to_string()))?;
    let summary =
        verify_certificate(&child, verifier, depth + 1, Mode::Final).map_err(|error| {
            VerifyError::InChild {
                index,
                error: Box::new(error),
            }
        })?;
    let child_slot = child
        .slot
        .as_ref()
        .ok_or(VerifyError::Missing { what: "child slot" })?;
    if summary.level as i32 != level as i32 - 1 {
        return Err(child_error("not one level down".into()));
    }
    if child.task != parent.task {
        return Err(child_error("for another task".into()));
    }
    if child.registry_digest != parent.registry_digest {
        return Err(child_error("drawn from another registry epoch".into()));
    }
    if groups.contains_key(&child_slot.group) {
        return Err(child_error(format!(
            "group {} has two different certificates",
            child_slot.group
        )));
    }
    groups.insert(child_slot.group.clone(), (digest, summary.value.clone()));
    if summary.value != observation.answer {
        return Err(child_error(
            "observation's answer is not the child's value".into(),
        ));
    }
    Ok(Some(summary))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::statement::sign_message;
    use ed25519_dalek::SigningKey;
    use polity_proto::{Member, TaskSpec};
    use proptest::prelude::*;

    /// The registry digest test certificates are drawn from.
    pub(crate) const TEST_REGISTRY: [u8; 32] = [7; 32];

    /// Signs certificates by hand, so tests control every field.
    pub(crate) struct Fixture {
        pub keys: Vec<SigningKey>,
        pub members: Vec<Member>,
        pub task: Vec<u8>,
        pub path: ConsensusPath,
        pub aggregation: Aggregation,
        pub level: Level,
        pub round: u32,
        pub registry: [u8; 32],
        /// The slot's group name; `group-<level>` when not set.
        pub group: Option<String>,
    }

    impl Fixture {
        pub fn new(members: usize, path: ConsensusPath) -> Fixture {
            let keys: Vec<SigningKey> = (0..members)
                .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
                .collect();
            Fixture {
                members: keys
                    .iter()
                    .map(|k| Member {
                        public_key: k.verifying_key().to_bytes().to_vec(),
                        weight: 1,
                    })
                    .collect(),
                keys,
                task: crate::task::encode_task(&TaskSpec {
                    nonce: 1,
                    ..TaskSpec::default()
                }),
                path,
                aggregation: Aggregation::Majority,
                level: Level::Region,
                round: 0,
                registry: TEST_REGISTRY,
                group: None,
            }
        }

        pub fn slot(&self) -> Slot {
            Slot {
                task_id: task_id(&self.task).0.to_vec(),
                level: self.level as i32,
                group: self
                    .group
                    .clone()
                    .unwrap_or_else(|| format!("group-{}", self.level as i32)),
                round: self.round,
            }
        }

        pub fn observe(&self, member: usize, answer: &str) -> SignedStatement {
            let observation = Observation {
                slot: Some(self.slot()),
                answer: answer.as_bytes().to_vec(),
                group_digest: self.group_digest().to_vec(),
                ..Observation::default()
            };
            sign_message(&self.keys[member], StatementKind::Observation, &observation)
        }

        pub fn group_digest(&self) -> [u8; 32] {
            group_digest(self.path, self.aggregation, &self.registry, &self.members)
        }

        /// A report by the round's collector over `observations` (with the honest
        /// aggregate, or `value` when given), and attestations by `attesters`.
        pub fn certify(
            &self,
            observations: Vec<SignedStatement>,
            attesters: &[usize],
            value: Option<&str>,
        ) -> Certificate {
            let decoded: Vec<(usize, Observation)> = observations
                .iter()
                .map(|s| {
                    let index = self
                        .keys
                        .iter()
                        .position(|k| k.verifying_key().to_bytes().as_slice() == s.signer)
                        .unwrap();
                    (index, decode_body(&s.body).unwrap())
                })
                .collect();
            let outcome = aggregate(self.aggregation, &ballots(&decoded, &self.members), None);
            let report = Report {
                slot: Some(self.slot()),
                aggregation: self.aggregation as i32,
                value: value
                    .map(|v| v.as_bytes().to_vec())
                    .or(outcome.value)
                    .unwrap_or_default(),
                tally: outcome.tally,
                observation_digests: observations
                    .iter()
                    .map(|s| statement_digest(s).to_vec())
                    .collect(),
                degraded: false,
                degraded_reason: String::new(),
                group_digest: self.group_digest().to_vec(),
            };
            let collector = &self.keys[self.round as usize % self.keys.len()];
            let report = sign_message(collector, StatementKind::Report, &report);
            let digest = report_digest(&report.body);
            let attestations = attesters
                .iter()
                .map(|&i| {
                    let attestation = Attestation {
                        slot: Some(self.slot()),
                        report_digest: digest.to_vec(),
                        ..Attestation::default()
                    };
                    sign_message(&self.keys[i], StatementKind::Attestation, &attestation)
                })
                .collect();
            Certificate {
                task: self.task.clone(),
                slot: Some(self.slot()),
                members: self.members.clone(),
                path: self.path as i32,
                path_reason: "test".into(),
                report: Some(report),
                observations,
                attestations,
                raft_commit: None,
                child_digests: Vec::new(),
                children: Vec::new(),
                registry_digest: self.registry.to_vec(),
            }
        }
    }

    impl Fixture {
        /// Raft: `leader` commits the certificate's report at term 1, index 9, and
        /// `attesters` attest that commit with `term`, `index` and `leader` (as they
        /// found it in their logs; the honest values are 1, 9 and the leader's key).
        pub fn commit(
            &self,
            certificate: &mut Certificate,
            leader: usize,
            attesters: &[usize],
            mark: (u64, u64, usize),
        ) {
            let digest = report_digest(&certificate.report.as_ref().unwrap().body);
            let commit = RaftCommit {
                slot: Some(self.slot()),
                report_digest: digest.to_vec(),
                term: 1,
                commit_index: 9,
            };
            let (term, index, named) = mark;
            let attestation = Attestation {
                slot: Some(self.slot()),
                report_digest: digest.to_vec(),
                raft_term: term,
                raft_index: index,
                raft_leader: self.keys[named].verifying_key().to_bytes().to_vec(),
            };
            certificate.raft_commit = Some(sign_message(
                &self.keys[leader],
                StatementKind::RaftCommit,
                &commit,
            ));
            certificate.attestations = attesters
                .iter()
                .map(|&i| sign_message(&self.keys[i], StatementKind::Attestation, &attestation))
                .collect();
        }
    }

    /// Verifies `certificate`; `expected` is `Ok(value)` or a fragment of the error.
    fn check(certificate: &Certificate, expected: Result<&str, &str>) {
        match (verify_chain(certificate), expected) {
            (Ok(summary), Ok(value)) => assert_eq!(summary.value, value.as_bytes()),
            (Err(error), Err(fragment)) => {
                assert!(
                    error.to_string().contains(fragment),
                    "{error} should contain {fragment}"
                )
            }
            (result, expected) => panic!("got {result:?}, expected {expected:?}"),
        }
    }

    fn four() -> (Fixture, Vec<SignedStatement>) {
        let fixture = Fixture::new(4, ConsensusPath::Bft);
        let observations = (0..3).map(|i| fixture.observe(i, "v")).collect();
        (fixture, observations)
    }

    #[test]
    fn fast_and_attested_certificates_verify() {
        let (fixture, observations) = four();
        check(&fixture.certify(observations.clone(), &[], None), Ok("v"));
        check(
            &fixture.certify(observations[..2].to_vec(), &[], None),
            Err("no quorum"),
        );
        let mut mixed = observations.clone();
        mixed[2] = fixture.observe(2, "w");
        check(&fixture.certify(mixed.clone(), &[], None), Err("no quorum"));
        check(&fixture.certify(mixed.clone(), &[0, 1, 3], None), Ok("v"));
        check(
            &fixture.certify(mixed.clone(), &[0, 1], None),
            Err("no quorum"),
        );
        check(
            &fixture.certify(mixed[..2].to_vec(), &[0, 1, 2], None),
            Err("no quorum"),
        );
    }

    // A table of tampered fields, one `check` per row: longer than the ~80-line limit on
    // functions, but it reads better whole than split.
    #[test]
    fn every_field_is_checked() {
        let (fixture, observations) = four();
        let good = fixture.certify(observations.clone(), &[0, 1, 2], None);
        check(&good, Ok("v"));
        let tampered = |edit: &dyn Fn(&mut Certificate)| {
            let mut certificate = good.clone();
            edit(&mut certificate);
            certificate
        };
        check(&tampered(&|c| c.task.push(0)), Err("task id"));
        check(
            &tampered(&|c| c.observations[1].signature[5] ^= 1),
            Err("signature batch"),
        );
        check(
            &tampered(&|c| c.attestations[0].body[3] ^= 1),
            Err("signature batch"),
        );
        check(&tampered(&|c| c.members.truncate(3)), Err("another group"));
        check(
            &tampered(&|c| {
                let outsider = SigningKey::from_bytes(&[99; 32]);
                let body = c.attestations[0].body.clone();
                c.attestations[0] =
                    crate::statement::sign_statement(&outsider, StatementKind::Attestation, body);
            }),
            Err("non-member"),
        );
        // A non-member's key is still checked first: a weak one is a key error.
        check(
            &tampered(&|c| {
                c.attestations[0].signer = {
                    let mut k = vec![0; 32];
                    k[0] = 1;
                    k
                }
            }),
            Err("attestation: signer key: weak"),
        );
        check(
            &tampered(&|c| c.members[0].weight = 5),
            Err("another group"),
        );
        check(
            &tampered(&|c| {
                c.members[3].public_key = {
                    let mut k = vec![0; 32];
                    k[0] = 1;
                    k
                }
            }),
            Err("weak"),
        );
        check(
            &tampered(&|c| c.members.push(c.members[0].clone())),
            Err("listed twice"),
        );
        check(&tampered(&|c| c.members.clear()), Err("1..=1024 members"));
        check(
            &tampered(&|c| c.observations.swap(0, 1)),
            Err("member order"),
        );
        check(
            &tampered(&|c| c.observations.insert(1, c.observations[0].clone())),
            Err("member order"),
        );
        check(
            &tampered(&|c| c.attestations.push(c.attestations[0].clone())),
            Err("signed twice"),
        );
        check(
            &tampered(&|c| c.observations.pop().map(drop).unwrap_or(())),
            Err("digests"),
        );
        check(&tampered(&|c| c.path = 0), Err("invalid path"));
        check(
            &tampered(&|c| c.path = ConsensusPath::Raft as i32),
            Err("another group"),
        );
        check(&tampered(&|c| c.report = None), Err("report missing"));
        check(
            &tampered(&|c| c.report.as_mut().unwrap().kind = StatementKind::Attestation as i32),
            Err("expected a Report"),
        );
        check(
            &tampered(&|c| c.slot.as_mut().unwrap().round = 1),
            Err("another slot"),
        );
        check(
            &tampered(&|c| c.slot.as_mut().unwrap().round = ROUNDS_MAX),
            Err("invalid round"),
        );
        check(
            &tampered(&|c| c.children.push(vec![1])),
            Err("children not allowed"),
        );

        let mut other_round = Fixture::new(4, ConsensusPath::Bft);
        other_round.round = 1;
        let mut stray = observations.clone();
        stray[2] = other_round.observe(2, "v");
        check(
            &fixture.certify(stray, &[0, 1, 2], None),
            Err("another slot"),
        );
        check(
            &fixture.certify(observations.clone(), &[0, 1, 2], Some("w")),
            Err("value does not match"),
        );
        let mut by_stranger = fixture.certify(observations, &[0, 1, 2], None);
        let report: Report = decode_body(&by_stranger.report.as_ref().unwrap().body).unwrap();
        by_stranger.report = Some(sign_message(
            &fixture.keys[1],
            StatementKind::Report,
            &report,
        ));
        check(&by_stranger, Err("collector"));
    }

    #[test]
    fn raft_needs_a_commit_and_a_majority() {
        let fixture = Fixture::new(3, ConsensusPath::Raft);
        let observations: Vec<SignedStatement> = (0..2).map(|i| fixture.observe(i, "v")).collect();
        let honest = (1, 9, 2);
        let mut certificate = fixture.certify(observations.clone(), &[], None);
        check(&certificate, Err("raft_commit missing"));
        fixture.commit(&mut certificate, 2, &[0, 1], honest);
        check(&certificate, Ok("v"));
        let mut moved = certificate.clone();
        let RaftCommit {
            slot,
            term,
            commit_index,
            ..
        } = decode_body(&moved.raft_commit.as_ref().unwrap().body).unwrap();
        let elsewhere = RaftCommit {
            slot,
            report_digest: vec![0; 32],
            term,
            commit_index,
        };
        moved.raft_commit = Some(sign_message(
            &fixture.keys[2],
            StatementKind::RaftCommit,
            &elsewhere,
        ));
        check(&moved, Err("names another report"));
        let mut minority = fixture.certify(observations[..1].to_vec(), &[], None);
        fixture.commit(&mut minority, 2, &[0, 1], honest);
        check(&minority, Err("no quorum"));
    }

    #[test]
    fn a_raft_commit_needs_a_majority_attesting_its_term_index_and_leader() {
        let fixture = Fixture::new(3, ConsensusPath::Raft);
        let observations: Vec<SignedStatement> = (0..3).map(|i| fixture.observe(i, "v")).collect();
        let mut certificate = fixture.certify(observations, &[], None);
        let honest = (1, 9, 2);
        fixture.commit(&mut certificate, 2, &[0, 1, 2], honest);
        check(&certificate, Ok("v"));
        // Member 2 signs a commit it did not append as leader: the others' logs name
        // member 0 as the appender, and one forged attestation is no majority.
        fixture.commit(&mut certificate, 2, &[2], honest);
        check(&certificate, Err("1 attestations of the raft commit of 3"));
        fixture.commit(&mut certificate, 2, &[], honest);
        check(&certificate, Err("0 attestations"));
        for (mark, why) in [
            ((1, 9, 0), "another raft term, index or leader"),
            ((2, 9, 2), "another raft term, index or leader"),
            ((1, 8, 2), "another raft term, index or leader"),
            ((0, 9, 2), "attestation raft fields"),
        ] {
            fixture.commit(&mut certificate, 2, &[0, 1], mark);
            check(&certificate, Err(why));
        }
        // Attestations without raft fields attest no commit.
        let plain = fixture.certify(certificate.observations.clone(), &[0, 1], None);
        let mut unmarked = certificate.clone();
        unmarked.attestations = plain.attestations;
        check(&unmarked, Err("attestation raft fields"));
        // And raft fields have no place on bft.
        let bft = Fixture::new(3, ConsensusPath::Bft);
        let observations: Vec<SignedStatement> = (0..3).map(|i| bft.observe(i, "v")).collect();
        let mut attested = bft.certify(observations, &[0, 1, 2], None);
        check(&attested, Ok("v"));
        bft.commit(&mut attested, 2, &[0, 1, 2], honest);
        attested.raft_commit = None;
        check(&attested, Err("attestation raft fields"));
    }

    #[test]
    fn stake_counts_weight() {
        let mut fixture = Fixture::new(4, ConsensusPath::Stake);
        fixture.members[0].weight = 10;
        fixture.aggregation = Aggregation::FirstValid;
        // Member 0 alone has 10 of 13: a fast-path quorum, though a minority by count.
        let observations = [fixture.observe(0, "v"), fixture.observe(1, "w")];
        check(
            &fixture.certify(vec![observations[0].clone()], &[], None),
            Ok("v"),
        );
        check(
            &fixture.certify(vec![observations[1].clone()], &[], None),
            Err("no quorum"),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Quorum intersection: with at most `f` byzantine members that sign anything
        /// (including two reports as collector) and honest members that sign one
        /// observation and follow the attestation rule, two certificates of one slot
        /// never both verify with different values. (Without the rule's dissent check
        /// this fails: see `round::tests::a_fast_certificate_and_an_attested_one_cannot_disagree`.)
        #[test]
        fn no_two_certificates_for_one_slot(
            members in 1usize..8,
            stake in any::<bool>(),
            honest_answers in proptest::collection::vec(any::<bool>(), 8),
            honest_attests in proptest::collection::vec(0u8..3, 8),
            byzantine_first in any::<bool>(),
        ) {
            let path = if stake { ConsensusPath::Stake } else { ConsensusPath::Bft };
            let fixture = Fixture::new(members, path);
            let f = crate::quorum::faults_max(members);
            // Byzantine members: the first `f` (or the last `f`), collector included.
            let byzantine = |i: usize| if byzantine_first { i < f } else { i >= members - f };
            let answer = |i: usize| if honest_answers[i] { "a" } else { "b" };
            let build = |value: &str, mine: u8| {
                let observations: Vec<SignedStatement> = (0..members)
                    .map(|i| fixture.observe(i, if byzantine(i) { value } else { answer(i) }))
                    .collect();
                // Honest members attest at most one report, and a value other than
                // their own answer only when the report's dissent rules out a quorum
                // for their answer (the round's attestation rule).
                let rule = QuorumRule::new(path, &fixture.members);
                let said = |i: usize| if byzantine(i) { value } else { answer(i) };
                let attesters: Vec<usize> = (0..members)
                    .filter(|&i| {
                        let dissent: Vec<usize> =
                            (0..members).filter(|&j| said(j) != answer(i)).collect();
                        byzantine(i)
                            || (honest_attests[i] == mine
                                && (answer(i) == value || rule.excludes_quorum(&dissent)))
                    })
                    .collect();
                // The collector may be honest; then it only signs the report it was
                // going to sign anyway, which this test over-approximates.
                let fast: Vec<SignedStatement> = observations
                    .iter()
                    .zip(0..)
                    .filter(|(_, i)| byzantine(*i) || answer(*i) == value)
                    .map(|(s, _)| s.clone())
                    .collect();
                [fixture.certify(observations, &attesters, Some(value)), fixture.certify(fast, &[], Some(value))]
            };
            let a_ok = build("a", 1).iter().any(|c| verify_chain(c).is_ok());
            let b_ok = build("b", 2).iter().any(|c| verify_chain(c).is_ok());
            prop_assert!(!(a_ok && b_ok), "two certificates for one slot");
        }
    }
}

#[cfg(test)]
mod flipped_bits {
    use super::tests::Fixture;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any flipped bit in any signed statement of a certificate (kind, body,
        /// signer or signature) makes it fail verification.
        #[test]
        fn any_flipped_bit_in_a_certificate_is_rejected(
            statement in 0usize..7, field in 0usize..4, bit in any::<usize>(),
        ) {
            let fixture = Fixture::new(4, ConsensusPath::Bft);
            let observations = (0..3).map(|i| fixture.observe(i, "v")).collect();
            let mut certificate = fixture.certify(observations, &[0, 1, 2], None);
            prop_assert!(verify_chain(&certificate).is_ok());
            let target = match statement {
                0 => certificate.report.as_mut().unwrap(),
                1..=3 => &mut certificate.observations[statement - 1],
                _ => &mut certificate.attestations[statement - 4],
            };
            match field {
                0 => target.kind ^= 1 << (bit % 31),
                1 => { let n = target.body.len() * 8; target.body[(bit % n) / 8] ^= 1 << (bit % 8); }
                2 => target.signer[(bit % 256) / 8] ^= 1 << (bit % 8),
                _ => target.signature[(bit % 512) / 8] ^= 1 << (bit % 8),
            }
            prop_assert!(verify_chain(&certificate).is_err());
        }
    }
}
