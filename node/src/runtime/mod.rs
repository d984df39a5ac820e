//! The node as a process: its identity key, its sled data dir, and the start-up and
//! shutdown order that wires every other part together ([`start`]), and the budgets
//! peers' requests are served within ([`inbound`]).

pub mod identity;
pub mod inbound;
pub mod start;
pub mod storage;
