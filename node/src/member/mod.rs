//! The member role: what a node does when an entry node seats it in a group.
//!
//! - [`router`]: the peer protocols (`/polity/task/1`, `/polity/consensus/1`): routes
//!   assignments, round messages and outcomes to their owners, with bounded queues.
//! - `round`: one member's round for one slot: executes, drives its
//!   `polity_consensus::Round`, commits on the raft path, reports the outcome.
//! - [`executor`]: `builtin:`, `exec:` and `http:` executors.
//! - [`workers`]: worker slots that grow and shrink with load.

pub mod executor;
mod round;
pub mod router;
pub mod workers;

pub use router::{Federation, OutcomeMessage, SlotKey};
