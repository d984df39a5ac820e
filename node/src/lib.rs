//! # polity-node
//!
//! The `polity` binary: one federation node, and the command-line gRPC client that
//! talks to nodes.
//!
//! A node owns an ed25519 identity, a sled data dir, a set of executors (one per
//! capability), a gRPC API (`polity.v1.Federation`, reflection, health) and an HTTP
//! endpoint (`/health`, `/ready`, `/metrics`). It turns a submitted task into a
//! signed certificate by driving `polity_consensus::Round`: the round decides, the
//! node does the I/O (executing, storing, answering).
//!
//! This crate must never decide anything itself: quorum rules, signatures and
//! certificate checks belong to `polity-consensus`. It must never let a client or a
//! peer crash the process: every input is validated at the edge and every queue is
//! bounded.
//!
//! # Layout
//!
//! - [`config`]: flags + TOML file, merged into one [`config::NodeConfig`].
//! - [`identity`]: the node's key file in the data dir.
//! - [`storage`]: the [`storage::Store`] trait and its sled implementation.
//! - [`executor`]: `builtin:`, `exec:` and `http:` executors.
//! - [`tasks`]: the task engine (entry side): validation, group choice, events;
//!   `orchestrator` runs a task's levels.
//! - [`federation`]: the peer protocols and the member side of a group round.
//! - [`raftnet`]: raft groups among task members, over libp2p.
//! - [`api`]: the gRPC service, auth and rate limiting.
//! - [`http`]: health, readiness and Prometheus metrics.
//! - [`metrics`]: the metric registry.
//! - [`peers`]: peers joined with trust; discovery by capability; topology.
//! - [`raftnet`]: the node's raft groups, their libp2p transport and forwarded commits.
//! - [`server`]: starts everything, shuts it down on SIGINT/SIGTERM.
//! - [`client`]: the CLI's gRPC client commands.

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod executor;
pub mod faults;
pub mod federation;
pub mod http;
pub mod identity;
pub mod metrics;
mod orchestrator;
pub mod peers;
pub mod raftnet;
pub mod recovery;
pub mod server;
pub mod storage;
pub mod tasks;
pub mod workers;

/// Selects ring as the process's TLS crypto provider. rustls needs one chosen when
/// more than one is compiled in (libp2p's QUIC brings aws-lc-rs, tonic uses ring);
/// call before any TLS is configured. Calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds since the Unix epoch, from the wall clock. The only clock read in
/// the node's task path; rounds receive it as an argument.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
