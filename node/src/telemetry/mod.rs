//! What the node tells its operator about itself: the Prometheus registry
//! ([`metrics`]) and what it learns about recovering from failures ([`recovery`]).

pub mod metrics;
pub mod recovery;
