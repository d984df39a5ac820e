//! An in-process [`RaftTransport`]: a router from node id to the member's `Raft` handle.
//! Every message is encoded to JSON and decoded again on the way, so what works here is
//! known to survive the wire (and to fit [`RAFT_MESSAGE_BYTES_MAX`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::network::{
    AppendEntriesReply, InstallSnapshotReply, RAFT_MESSAGE_BYTES_MAX, RaftReply, RaftRpc,
    RaftTransport, TransportError, VoteReply, serve,
};
use crate::types::{NodeId, RaftMember, TypeConfig};

/// Most rafts one router connects.
pub const MEMORY_ROUTER_NODES_MAX: usize = 64;

/// Why a raft could not join the router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryRouterError {
    #[error("router already holds {MEMORY_ROUTER_NODES_MAX} rafts")]
    Full,
    #[error("node {0} is already registered")]
    Duplicate(NodeId),
}

/// Routes raft RPCs between rafts of one process. Clones share the routing table.
/// A node that is not registered (never was, or was unregistered to simulate a crash
/// or partition) is unreachable.
#[derive(Clone, Default)]
pub struct MemoryRouter {
    rafts: Arc<RwLock<BTreeMap<NodeId, Raft<TypeConfig>>>>,
}

impl MemoryRouter {
    /// An empty router.
    pub fn new() -> MemoryRouter {
        MemoryRouter::default()
    }

    /// Makes `raft` reachable as `id`.
    pub fn register(&self, id: NodeId, raft: Raft<TypeConfig>) -> Result<(), MemoryRouterError> {
        let mut rafts = self
            .rafts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if rafts.contains_key(&id) {
            return Err(MemoryRouterError::Duplicate(id));
        }
        if rafts.len() >= MEMORY_ROUTER_NODES_MAX {
            return Err(MemoryRouterError::Full);
        }
        rafts.insert(id, raft);
        Ok(())
    }

    /// Makes `id` unreachable; returns its handle if it was registered.
    pub fn unregister(&self, id: NodeId) -> Option<Raft<TypeConfig>> {
        self.rafts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id)
    }

    async fn deliver(
        &self,
        target: NodeId,
        member: &RaftMember,
        rpc: RaftRpc,
    ) -> Result<RaftReply, TransportError> {
        debug_assert_eq!(member.node_id(), target);
        let raft = self
            .rafts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&target)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("node {target} not registered")))?;
        let rpc = through_wire(&rpc)?;
        let reply = serve(&raft, rpc).await;
        through_wire(&reply)
    }
}

/// Encodes and decodes a message as the wire would, within the wire's size limit.
fn through_wire<T: Serialize + DeserializeOwned>(message: &T) -> Result<T, TransportError> {
    let bytes = serde_json::to_vec(message)
        .map_err(|error| TransportError::Network(format!("encode: {error}")))?;
    if bytes.len() > RAFT_MESSAGE_BYTES_MAX {
        return Err(TransportError::Network(format!(
            "message of {} bytes exceeds {RAFT_MESSAGE_BYTES_MAX}",
            bytes.len()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| TransportError::Network(format!("decode: {error}")))
}

impl RaftTransport for MemoryRouter {
    async fn append_entries(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesReply, TransportError> {
        self.deliver(target, member, RaftRpc::AppendEntries(request))
            .await?
            .into_append_entries()
    }

    async fn vote(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<VoteReply, TransportError> {
        self.deliver(target, member, RaftRpc::Vote(request))
            .await?
            .into_vote()
    }

    async fn install_snapshot(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotReply, TransportError> {
        self.deliver(target, member, RaftRpc::InstallSnapshot(request))
            .await?
            .into_install_snapshot()
    }
}
