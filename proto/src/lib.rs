//! # polity-proto
//!
//! The protocols of Polity, package `polity.v1`:
//!
//! - `polity/v1/wire.proto`: what nodes exchange and sign (tasks, slots,
//!   observations, reports, attestations, certificates, evidence, node info);
//! - `polity/v1/federation.proto`: the gRPC client API (`polity.v1.Federation`).
//!
//! The Rust types are generated at build time by protox + tonic-prost-build, so no
//! system `protoc` is needed. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.
//!
//! This crate must never hold logic: conversions to domain types live next to those
//! types (in `polity-consensus` and `polity-node`), one place per type.

/// Generated code for `polity.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("polity.v1");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of every `polity.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("polity_descriptor");
