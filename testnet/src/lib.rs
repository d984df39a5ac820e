//! # polity-testnet
//!
//! Local Polity clusters for demos and experiments: it starts real `polity node`
//! processes on 127.0.0.1 with ephemeral ports and their own data dirs, talks to them
//! over gRPC, and stops them. It never reaches into a node's memory: what it knows
//! of a node comes from the node's `endpoints.json`, its gRPC API and its exit code.
//!
//! It must never send traffic anywhere but loopback, and it must leave no process
//! behind: every spawned node is stopped on drop.
//!
//! # Layout
//!
//! - [`process`]: spawning, waiting for and stopping node processes.
//! - [`genesis`]: the testnet's federation: node keys made up front, one genesis.
//! - [`rpc`]: every gRPC call the testnet makes to a node: connecting with or
//!   without the API token ([`rpc::Token`]), submitting, reading a task back, the
//!   Admin calls. The token is sent as the `polity` CLI sends it.
//! - [`load`]: the one load loop: N clients submitting tasks until a count, a
//!   time or a flag, each reply handed to a [`load::Load`].
//! - [`cluster`]: `up`, `status`, `down`; launching a cluster and waiting for
//!   discovery.
//! - [`show`]: printing certificate chains for people.
//! - [`demo`]: the `polity-testnet demo` walk-through.
//! - [`bench`]: `polity-testnet bench`, a gRPC load generator.
//! - [`limit`]: the signature-bound limit `bench` prints: signatures per decision
//!   from the nodes' `/metrics`, their cost measured here.
//! - [`flood`]: `polity-testnet flood`, hostile peers against one node, with an
//!   honest probe and the node's peak memory.
//! - [`chaos`]: `polity-testnet chaos`, fault injection, crash and partition
//!   schedules, measured reliability, a self-spawning supervisor.
//!
//! Dependencies point one way: `rpc` and `process` depend on no other module
//! here; `load` on `rpc`; `cluster` on `process` and `rpc`; `demo`, `bench` and
//! `chaos` on those below them. Nothing depends on `chaos`, `bench` or `demo`.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod flood;
pub mod genesis;
pub mod limit;
pub mod load;
pub mod process;
pub mod rpc;
pub mod show;
