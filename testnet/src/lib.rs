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
//! - [`cluster`]: `up`, `status`, `down`.
//! - [`show`]: printing certificate chains for people.
//! - [`demo`]: the `polity-testnet demo` walk-through.
//! - [`bench`]: `polity-testnet bench`, a gRPC load generator.
//! - [`chaos`]: `polity-testnet chaos`, fault injection, crash and partition
//!   schedules, measured reliability, a self-spawning supervisor.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod process;
pub mod show;
