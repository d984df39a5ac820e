//! # polity-consensus
//!
//! The pure decision logic of a Polity node: signed statements and their domain
//! tags, task ids, path selection, aggregation, quorum rules, the round state machine
//! that turns observations into a certificate, offline certificate verification,
//! evidence of equivocation, and the reliability math the node prints.
//!
//! **Must never:** touch a socket, a clock, a disk or an async runtime; read
//! randomness it was not handed; panic or allocate without bound on anything a peer
//! sent. Time comes in as `now_ms`, randomness as a seeded RNG argument, and a round
//! is `fn step(&mut self, now_ms, input) -> Vec<Action>`: the node's driver does the
//! I/O, so the same code runs in a node, a unit test and a simulation.
//!
//! # Layout
//!
//! - [`ids`]: [`TaskId`], [`PublicKey`] (32-byte newtypes, hex on the outside).
//! - [`statement`]: signing and verifying `SignedStatement`s (domain tags, digests).
//! - [`task`]: canonical task bytes and task ids.
//! - [`select`](mod@select): which consensus path a risk policy selects, and why.
//! - [`aggregate`](mod@aggregate): majority, tally, median, first-valid; order-independent.
//! - [`quorum`]: the quorum rule of each path, shared by rounds and verifiers.
//! - [`round`]: one group's decision as a state machine ([`Round`]).
//! - [`certificate`]: certificate digests and offline chain verification.
//! - [`binding`]: what binds a verified chain to its task (scope, path, aggregation).
//! - [`registry`]: who may vote: genesis, epochs, the seat rule, membership of a chain.
//! - [`evidence`]: equivocation evidence and its verification.
//! - [`export`]: the JSON form of a certificate for independent verifiers.
//! - [`reliability`]: P(correct) per aggregation and level, for the node to print.
//! - [`trust`]: per-peer trust scores and their update rules.
//! - [`sim`]: a seeded simulator of rounds with faulty networks and members.
//!
//! The raft path's openraft types, sled storage and transport are not here: they need
//! tokio and a disk, so they live in the `polity-raft` crate (`consensus/raft/`), which
//! depends on this one and never the other way round.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod aggregate;
pub mod binding;
pub mod certificate;
pub mod evidence;
pub mod export;
pub mod ids;
pub mod quorum;
pub mod registry;
pub mod reliability;
pub mod round;
pub mod select;
pub mod sim;
pub mod statement;
pub mod task;
pub mod trust;

pub use aggregate::{AnswerVerifier, aggregate};
pub use binding::{check_binding, check_task_policy, task_rule, verify_task_chain};
pub use certificate::{
    ChainSummary, VerifyError, certificate_digest, report_digest, verify_chain, verify_chain_with,
    verify_degraded,
};
pub use evidence::{EvidenceError, verify_evidence};
pub use export::certificate_json;
pub use ids::{PublicKey, TaskId};
pub use registry::{Anchor, Epoch, check_membership, verify_in};
pub use reliability::ReliabilityTable;
pub use round::{Action, ConfigError, DegradedReason, Input, Round, RoundConfig, RoundMessage};
pub use select::{PathChoice, select};
pub use statement::{
    SignatureCounts, StatementError, Verified, domain_tag, open, sign_message, sign_statement,
    signature_counts, statement_digest, verify_statement, verify_statements_batch,
};
pub use task::{encode_task, task_id};
pub use trust::{TRUST_FLOOR, TRUST_PRIOR, TrustEvent, TrustScore};
