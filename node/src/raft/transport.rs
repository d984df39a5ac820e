//! The libp2p transport of the node's raft groups: how one group's raft RPCs travel
//! between members. Apart from [`super::RaftGroups`] because it is the only part that
//! knows the wire (a JSON RPC in a `RaftEnvelope` in a `ConsensusRequest`) and the
//! frame limit; the group logic above it only sees [`RaftTransport`].

use polity_net::codec::FRAME_BYTES_MAX;
use polity_net::{AppProtocol, NetHandle};
use polity_proto::consensus_request::Request as ConsensusRequestKind;
use polity_proto::{ConsensusRequest, RaftEnvelope};
use polity_raft::{
    GroupName, NodeId, RaftMember, RaftReply, RaftRpc, RaftTransport, TransportError,
};
use prost::Message;

/// The libp2p side of one group's raft: each RPC is JSON in a `RaftEnvelope` in a
/// `ConsensusRequest`, sent to the member's peer id (derived from its key) on
/// `/polity/consensus/1`; the reply is a JSON `RaftReply`.
#[derive(Clone)]
pub(super) struct Libp2pTransport {
    pub(super) group: GroupName,
    pub(super) net: NetHandle,
}

impl Libp2pTransport {
    async fn deliver(
        &self,
        member: &RaftMember,
        rpc: RaftRpc,
    ) -> Result<RaftReply, TransportError> {
        let peer = polity_net::peer_id_of(member.public_key.as_bytes()).map_err(|_| {
            TransportError::Unreachable(format!("member key {} is not ed25519", member.public_key))
        })?;
        let entries = match &rpc {
            RaftRpc::AppendEntries(request) => request.entries.len(),
            _ => 0,
        };
        let json = serde_json::to_vec(&rpc)
            .map_err(|error| TransportError::Network(format!("encode: {error}")))?;
        let request = ConsensusRequest {
            request: Some(ConsensusRequestKind::Raft(RaftEnvelope {
                raft_group: self.group.to_string(),
                rpc: json,
            })),
        };
        let bytes = request.encode_to_vec();
        if bytes.len() > FRAME_BYTES_MAX {
            if entries > 1 {
                return Err(TransportError::PayloadTooLarge {
                    entries_hint: (entries / 2) as u64,
                });
            }
            return Err(TransportError::Network(format!(
                "raft message of {} bytes exceeds the frame limit of {FRAME_BYTES_MAX}",
                bytes.len()
            )));
        }
        // Outside the peer's breaker: raft retries and backs off on its own, and its
        // heartbeats to a member that is down (or cut off) would otherwise keep that
        // member's breaker open, and so its seats closed, long after it is back.
        let reply = self
            .net
            .request_unguarded(peer, AppProtocol::Consensus, bytes)
            .await
            // Every failure to get a reply counts as unreachable, so openraft backs off
            // (500 ms) instead of redialing a dead member at every heartbeat.
            .map_err(|error| TransportError::Unreachable(error.to_string()))?;
        serde_json::from_slice(&reply)
            .map_err(|error| TransportError::Network(format!("undecodable raft reply: {error}")))
    }
}

impl RaftTransport for Libp2pTransport {
    async fn append_entries(
        &self,
        _target: NodeId,
        member: &RaftMember,
        request: openraft::raft::AppendEntriesRequest<polity_raft::TypeConfig>,
    ) -> Result<polity_raft::network::AppendEntriesReply, TransportError> {
        self.deliver(member, RaftRpc::AppendEntries(request))
            .await?
            .into_append_entries()
    }

    async fn vote(
        &self,
        _target: NodeId,
        member: &RaftMember,
        request: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<polity_raft::network::VoteReply, TransportError> {
        self.deliver(member, RaftRpc::Vote(request))
            .await?
            .into_vote()
    }

    async fn install_snapshot(
        &self,
        _target: NodeId,
        member: &RaftMember,
        request: openraft::raft::InstallSnapshotRequest<polity_raft::TypeConfig>,
    ) -> Result<polity_raft::network::InstallSnapshotReply, TransportError> {
        self.deliver(member, RaftRpc::InstallSnapshot(request))
            .await?
            .into_install_snapshot()
    }
}
