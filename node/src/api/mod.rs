//! What clients and operators reach: the gRPC `polity.v1.Federation` service and its
//! gate ([`federation`]), the token-guarded `polity.v1.Admin` service ([`admin`]), and
//! HTTP health, readiness and metrics ([`http`]).

pub mod admin;
pub mod federation;
pub mod http;
