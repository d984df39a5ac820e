//! What clients and operators reach: the gRPC `polity.v1.Federation` service and its
//! gate ([`federation`]), the token-guarded `polity.v1.Admin` service ([`admin`]), and
//! HTTP health, readiness and metrics ([`http`]); both listeners are capped in open
//! connections ([`connections`]).

pub mod admin;
pub mod connections;
pub mod federation;
pub mod http;
