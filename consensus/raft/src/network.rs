//! How raft messages leave and enter a node.
//!
//! - [`RaftTransport`]: what the node implements (over libp2p request-response): deliver
//!   one raft RPC to a member and bring back what its raft answered.
//! - [`TransportNetworkFactory`] / [`TransportNetwork`]: openraft's `RaftNetworkFactory`
//!   and `RaftNetwork` on top of any transport, with timeouts and error mapping.
//! - [`RaftRpc`] / [`RaftReply`] and [`serve`]: one serde form for the wire and the
//!   receiving side, which checks the bounds before the local raft sees a request.
//!
//! A node implements the transport by sending `RaftRpc` (tagged with its group) to the
//! member's `peer_id`, calling [`serve`] on the receiving side, and unpacking the reply
//! with [`RaftReply::into_append_entries`] and friends. [`crate::MemoryRouter`] is
//! the in-process implementation tests and simulations use.

use std::future::Future;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes, Raft};
use serde::{Deserialize, Serialize};

use crate::codec::{LEDGER_VALUE_BYTES_MAX, SNAPSHOT_BYTES_MAX};
use crate::store::{APPEND_PAYLOAD_BYTES_SOFT_MAX, ENTRIES_PER_APPEND_MAX};
use crate::types::{NodeId, RaftMember, TypeConfig};

/// Largest snapshot chunk one `InstallSnapshot` carries (openraft's
/// `snapshot_max_chunk_size`); [`serve`] refuses larger chunks.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Largest encoded raft message (request or reply) a transport needs to carry: the
/// size limit for the node's request-response codec. Covers an `AppendEntries` of
/// [`APPEND_PAYLOAD_BYTES_SOFT_MAX`] plus one largest entry (hex doubles its bytes), or a
/// snapshot chunk as a JSON number array (up to 4 bytes per byte), plus membership and
/// framing.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 32 << 20;
/// Allowance for everything in a raft message besides entry payloads and chunk bytes.
const RAFT_MESSAGE_OVERHEAD_BYTES: usize = 256 << 10;

const _: () = assert!(
    APPEND_PAYLOAD_BYTES_SOFT_MAX + 2 * LEDGER_VALUE_BYTES_MAX + RAFT_MESSAGE_OVERHEAD_BYTES
        <= RAFT_MESSAGE_BYTES_MAX
);
const _: () =
    assert!(4 * SNAPSHOT_CHUNK_BYTES_MAX + RAFT_MESSAGE_OVERHEAD_BYTES <= RAFT_MESSAGE_BYTES_MAX);

/// What a member's raft answered to `AppendEntries`.
pub type AppendEntriesReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
/// What a member's raft answered to `Vote`.
pub type VoteReply = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
/// What a member's raft answered to `InstallSnapshot`.
pub type InstallSnapshotReply =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// Why a raft message did not get an answer from the member's raft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The member could not be reached (not connected, unknown, circuit open, or it
    /// refused the request); openraft backs off before retrying.
    #[error("member unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have arrived (stream reset, undecodable reply);
    /// openraft retries soon.
    #[error("network error: {0}")]
    Network(String),
    /// An `AppendEntries` encodes larger than the transport can carry: openraft retries at
    /// once with at most `entries_hint` entries (for the next few requests). Only for
    /// `AppendEntries` of more than one entry; anything else too large is a
    /// [`TransportError::Network`] error.
    #[error("append too large for the transport; retry with at most {entries_hint} entries")]
    PayloadTooLarge { entries_hint: u64 },
}

/// Carries raft RPCs to other members of one group. The node implements it over
/// libp2p request-response; [`crate::MemoryRouter`] implements it in process.
///
/// `member` is the target's record from the raft membership (its key and peer id);
/// `target == member.node_id()` is checked before any call. Implementations need not
/// time out: [`TransportNetwork`] bounds every call by openraft's TTL.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    /// Delivers `AppendEntries` (replication and heartbeats).
    fn append_entries(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> impl Future<Output = Result<AppendEntriesReply, TransportError>> + Send;

    /// Delivers `Vote` (elections).
    fn vote(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: VoteRequest<NodeId>,
    ) -> impl Future<Output = Result<VoteReply, TransportError>> + Send;

    /// Delivers one chunk of a snapshot (at most [`SNAPSHOT_CHUNK_BYTES_MAX`] bytes).
    fn install_snapshot(
        &self,
        target: NodeId,
        member: &RaftMember,
        request: InstallSnapshotRequest<TypeConfig>,
    ) -> impl Future<Output = Result<InstallSnapshotReply, TransportError>> + Send;
}

/// A raft RPC as it travels between members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    AppendEntries(AppendEntriesReply),
    Vote(VoteReply),
    InstallSnapshot(InstallSnapshotReply),
    /// The receiver refused the request before its raft saw it (over a bound, or a
    /// group it does not run).
    Refused(String),
}

impl RaftReply {
    /// The `AppendEntries` answer, or why there is none.
    pub fn into_append_entries(self) -> Result<AppendEntriesReply, TransportError> {
        match self {
            RaftReply::AppendEntries(reply) => Ok(reply),
            other => Err(other.unexpected("AppendEntries")),
        }
    }

    /// The `Vote` answer, or why there is none.
    pub fn into_vote(self) -> Result<VoteReply, TransportError> {
        match self {
            RaftReply::Vote(reply) => Ok(reply),
            other => Err(other.unexpected("Vote")),
        }
    }

    /// The `InstallSnapshot` answer, or why there is none.
    pub fn into_install_snapshot(self) -> Result<InstallSnapshotReply, TransportError> {
        match self {
            RaftReply::InstallSnapshot(reply) => Ok(reply),
            other => Err(other.unexpected("InstallSnapshot")),
        }
    }

    fn unexpected(self, expected: &str) -> TransportError {
        match self {
            RaftReply::Refused(reason) => TransportError::Unreachable(format!("refused: {reason}")),
            other => TransportError::Network(format!(
                "expected a {expected} reply, got {}",
                other.kind()
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RaftReply::AppendEntries(_) => "AppendEntries",
            RaftReply::Vote(_) => "Vote",
            RaftReply::InstallSnapshot(_) => "InstallSnapshot",
            RaftReply::Refused(_) => "Refused",
        }
    }
}

/// Why an incoming RPC is refused before the local raft sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcTooLarge {
    #[error("{0} entries exceed {ENTRIES_PER_APPEND_MAX}")]
    Entries(usize),
    #[error("snapshot chunk of {0} bytes exceeds {SNAPSHOT_CHUNK_BYTES_MAX}")]
    Chunk(usize),
    #[error("snapshot chunk at offset {0} runs past {SNAPSHOT_BYTES_MAX} bytes")]
    Snapshot(u64),
}

/// Checks the bounds of an incoming RPC before the local raft sees it.
pub fn check_rpc(rpc: &RaftRpc) -> Result<(), RpcTooLarge> {
    match rpc {
        RaftRpc::AppendEntries(request) if request.entries.len() > ENTRIES_PER_APPEND_MAX => {
            Err(RpcTooLarge::Entries(request.entries.len()))
        }
        RaftRpc::InstallSnapshot(request) if request.data.len() > SNAPSHOT_CHUNK_BYTES_MAX => {
            Err(RpcTooLarge::Chunk(request.data.len()))
        }
        RaftRpc::InstallSnapshot(request)
            if request.offset.saturating_add(request.data.len() as u64)
                > SNAPSHOT_BYTES_MAX as u64 =>
        {
            Err(RpcTooLarge::Snapshot(request.offset))
        }
        _ => Ok(()),
    }
}

/// The receiving side: checks the RPC's bounds and hands it to the local raft.
pub async fn serve(raft: &Raft<TypeConfig>, rpc: RaftRpc) -> RaftReply {
    if let Err(reason) = check_rpc(&rpc) {
        return RaftReply::Refused(reason.to_string());
    }
    match rpc {
        RaftRpc::AppendEntries(request) => {
            RaftReply::AppendEntries(raft.append_entries(request).await)
        }
        RaftRpc::Vote(request) => RaftReply::Vote(raft.vote(request).await),
        RaftRpc::InstallSnapshot(request) => {
            RaftReply::InstallSnapshot(raft.install_snapshot(request).await)
        }
    }
}

/// openraft's network factory over a [`RaftTransport`].
pub struct TransportNetworkFactory<T> {
    local: NodeId,
    transport: T,
}

impl<T: RaftTransport> TransportNetworkFactory<T> {
    /// A factory for the raft of member `local`.
    pub fn new(local: NodeId, transport: T) -> TransportNetworkFactory<T> {
        TransportNetworkFactory { local, transport }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for TransportNetworkFactory<T> {
    type Network = TransportNetwork<T>;

    async fn new_client(&mut self, target: NodeId, node: &RaftMember) -> TransportNetwork<T> {
        TransportNetwork {
            local: self.local,
            target,
            member: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's connection to one member, over a [`RaftTransport`].
pub struct TransportNetwork<T> {
    local: NodeId,
    target: NodeId,
    member: RaftMember,
    transport: T,
}

type RpcResult<R, E = openraft::error::Infallible> =
    Result<R, RPCError<NodeId, RaftMember, RaftError<NodeId, E>>>;

impl<T: RaftTransport> TransportNetwork<T> {
    /// Refuses to talk to a member whose key does not derive the target id (a node id
    /// collision or a corrupt membership); never sends to the wrong peer.
    fn check_target(&self) -> Result<(), Unreachable> {
        let derived = self.member.node_id();
        if derived == self.target {
            return Ok(());
        }
        Err(Unreachable::new(&AnyError::error(format!(
            "member key {} derives node id {derived}, not {}",
            self.member.public_key, self.target
        ))))
    }

    async fn call<R, E: std::error::Error>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        delivery: impl Future<Output = Result<Result<R, RaftError<NodeId, E>>, TransportError>>,
    ) -> RpcResult<R, E> {
        let timeout = option.hard_ttl();
        match tokio::time::timeout(timeout, delivery).await {
            Err(_elapsed) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout,
            })),
            Ok(Err(TransportError::Unreachable(reason))) => Err(RPCError::Unreachable(
                Unreachable::new(&AnyError::error(reason)),
            )),
            Ok(Err(TransportError::Network(reason))) => Err(RPCError::Network(NetworkError::new(
                &AnyError::error(reason),
            ))),
            Ok(Err(TransportError::PayloadTooLarge { entries_hint }))
                if action == RPCTypes::AppendEntries =>
            {
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries_hint.max(1)),
                ))
            }
            Ok(Err(too_large @ TransportError::PayloadTooLarge { .. })) => Err(RPCError::Network(
                NetworkError::new(&AnyError::error(too_large.to_string())),
            )),
            Ok(Ok(Err(remote))) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                remote,
            ))),
            Ok(Ok(Ok(response))) => Ok(response),
        }
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for TransportNetwork<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        debug_assert!(rpc.entries.len() <= ENTRIES_PER_APPEND_MAX);
        self.check_target()?;
        let delivery = self
            .transport
            .append_entries(self.target, &self.member, rpc);
        self.call(RPCTypes::AppendEntries, &option, delivery).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.check_target()?;
        let delivery = self
            .transport
            .install_snapshot(self.target, &self.member, rpc);
        self.call(RPCTypes::InstallSnapshot, &option, delivery)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.check_target()?;
        let delivery = self.transport.vote(self.target, &self.member, rpc);
        self.call(RPCTypes::Vote, &option, delivery).await
    }
}
