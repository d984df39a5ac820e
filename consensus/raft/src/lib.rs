//! # polity-raft
//!
//! The `raft` consensus path: a group commits its decisions to a replicated ledger with
//! openraft 0.9 (storage v2), on the node's sled database.
//!
//! **Outside the pure core, on purpose.** This crate runs on tokio (openraft needs a
//! runtime) and touches a disk (sled), which `polity-consensus` must never do; it was
//! split out so that `polity-consensus` has no tokio, sled or openraft dependency at
//! all. It uses the core's identifiers ([`polity_consensus::PublicKey`],
//! [`polity_consensus::TaskId`]); the core never calls into it, and nothing here is
//! needed to verify a certificate. The node's driver (`polity-node`'s `raftnet`) is
//! its one user.
//!
//! # Layout
//!
//! - [`types`]: the one type config ([`TypeConfig`]), [`NodeId`] from a member key
//!   ([`node_id`]), [`RaftMember`], [`Members`] (collision-checked), [`GroupName`],
//!   [`LedgerEntry`] and [`LedgerResponse`].
//! - [`store`]: [`SledLogStore`] and [`SledStateMachine`] (the ledger, with snapshots),
//!   trees `raft/<group>/…` on one `sled::Db`; [`LedgerReader`] for lookups.
//! - [`codec`]: the byte layouts of ledger values and snapshots, checked on decode.
//! - [`network`]: [`RaftTransport`] (the node implements it over libp2p), openraft's
//!   network on top of it, the wire form ([`RaftRpc`], [`RaftReply`]) and [`serve`].
//! - [`memory`]: [`MemoryRouter`], an in-process transport for tests and simulations.
//! - [`group`]: [`RaftGroup`], one running group (start, initialize, propose, read,
//!   shutdown), and [`raft_config`].
//! - `tests` (unit tests): the sled store against openraft's storage suite, the
//!   ledger's apply rules, and a three-member cluster over [`MemoryRouter`].
//!
//! # Limits
//!
//! Ledger: [`LEDGER_REPORT_BYTES_MAX`], [`LEDGER_CERTIFICATE_BYTES_MAX`],
//! [`LEDGER_ENTRIES_MAX`], [`LEDGER_BYTES_MAX`], hence [`SNAPSHOT_BYTES_MAX`] (snapshots
//! are held in memory). Replication: [`ENTRIES_PER_APPEND_MAX`],
//! [`APPEND_PAYLOAD_BYTES_SOFT_MAX`], [`SNAPSHOT_CHUNK_BYTES_MAX`], hence
//! [`RAFT_MESSAGE_BYTES_MAX`] for the node's codec. Groups: [`RAFT_MEMBERS_MAX`],
//! [`GROUP_NAME_BYTES_MAX`].

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod group;
pub mod memory;
pub mod network;
pub mod store;
pub mod types;

#[cfg(test)]
mod tests;

pub use codec::{LEDGER_BYTES_MAX, LEDGER_ENTRIES_MAX, SNAPSHOT_BYTES_MAX};
pub use group::{AppendedBy, Proposed, RaftGroup, RaftGroupError, raft_config};
pub use memory::MemoryRouter;
pub use network::{
    RAFT_MESSAGE_BYTES_MAX, RaftReply, RaftRpc, RaftTransport, SNAPSHOT_CHUNK_BYTES_MAX,
    TransportError, TransportNetworkFactory, serve,
};
pub use store::{
    APPEND_PAYLOAD_BYTES_SOFT_MAX, ENTRIES_PER_APPEND_MAX, LedgerReader, SledLogStore,
    SledStateMachine, StoreError, drop_group, open_group,
};
pub use types::{
    GROUP_NAME_BYTES_MAX, GroupName, LEDGER_CERTIFICATE_BYTES_MAX, LEDGER_REPORT_BYTES_MAX,
    LedgerEntry, LedgerOutcome, LedgerResponse, Members, NodeId, RAFT_MEMBERS_MAX, RaftMember,
    TypeConfig, node_id,
};
