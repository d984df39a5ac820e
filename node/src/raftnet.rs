//! TEMPORARY interface stand-in while the real module is written on branch raft-node.
use std::sync::Arc;
use std::time::Duration;

use polity_consensus::PublicKey;
use polity_consensus::raft::{GroupName, LedgerEntry};
use polity_net::{NetHandle, PeerId};
use polity_proto::{Level, Member, ProposeReply, RaftEnvelope, RaftPropose};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RaftNetError(String);

pub struct Committed {
    pub term: u64,
    pub commit_index: u64,
}

pub struct RaftGroups;

impl RaftGroups {
    pub fn new(
        _key: PublicKey,
        _db: sled::Db,
        _net: NetHandle,
        _metrics: Arc<Metrics>,
    ) -> Arc<RaftGroups> {
        Arc::new(RaftGroups)
    }
    pub fn name_for(
        level: Level,
        group: &str,
        _members: &[Member],
    ) -> Result<GroupName, RaftNetError> {
        GroupName::new(format!("{}-{group}", level as i32)).map_err(|e| RaftNetError(e.to_string()))
    }
    pub async fn ensure(&self, _name: &GroupName, _members: &[Member]) -> Result<(), RaftNetError> {
        Err(RaftNetError("not yet".into()))
    }
    pub async fn commit(
        &self,
        _name: &GroupName,
        _entry: LedgerEntry,
        _timeout: Duration,
    ) -> Result<Committed, RaftNetError> {
        Err(RaftNetError("not yet".into()))
    }
    pub async fn handle_raft(&self, _from: PeerId, _envelope: RaftEnvelope) -> Vec<u8> {
        Vec::new()
    }
    pub async fn handle_propose(&self, _from: PeerId, _propose: RaftPropose) -> ProposeReply {
        ProposeReply::default()
    }
    pub async fn shutdown(&self) {}
}
