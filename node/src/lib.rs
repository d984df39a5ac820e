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
//! Along the life of a task (ARCHITECTURE.md has the full codemap):
//!
//! - [`api`]: where clients and operators come in: gRPC `Federation` and `Admin`,
//!   HTTP health, readiness and metrics.
//! - [`entry`]: the entry node's side of a task: validation and plan, the level
//!   engine (a pure state machine) and its async driver, records and watchers.
//! - [`member`]: the member side: the peer protocol router, one round driver per
//!   slot, executors, worker slots.
//! - [`raft`]: long-lived raft groups over libp2p for the raft path.
//! - [`peers`]: peers joined with trust; discovery by capability; topology.
//! - [`runtime`]: identity, storage, start-up and shutdown.
//! - [`telemetry`]: metrics and recovery learning.
//! - [`chaos`]: fault injection.
//! - [`config`]: flags + TOML file, merged into one [`config::NodeConfig`].
//! - [`client`]: the CLI's gRPC client, a library `polity-testnet` uses too.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod chaos;
pub mod client;
pub mod config;
pub mod entry;
pub mod member;
pub mod peers;
pub mod raft;
pub mod registry;
pub mod runtime;
pub mod telemetry;

/// Selects ring as the process's TLS crypto provider. rustls needs one chosen when
/// more than one is compiled in (libp2p's QUIC brings aws-lc-rs, tonic uses ring);
/// call before any TLS is configured. Calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds on this process's monotonic clock (since its first reading): what
/// drives rounds and level deadlines. It never goes back, so an NTP step cannot
/// expire or stretch a live round; wall time ([`unix_ms`]) is only for what is shown
/// or stored.
pub fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch, from the wall clock: for times that are shown,
/// stored or signed, never for deadlines.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
