//! The node as a process: its identity key, its sled data dir, and the start-up and
//! shutdown order that wires every other part together ([`start`]).

pub mod identity;
pub mod start;
pub mod storage;
