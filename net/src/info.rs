//! The signed NodeInfo: ours, signed afresh for every answer and announcement;
//! theirs, asked for (`/polity/info/1`) on every new connection to a peer we know
//! nothing of, heard in gossip announcements (`polity/announce/1`), verified, and
//! kept in the peer table.
//!
//! These are methods of the [`EventLoop`], which alone owns the swarm; when to
//! announce again is an [`AnnounceSchedule`](crate::announce::AnnounceSchedule).

use std::time::Duration;

use libp2p::gossipsub::IdentTopic;
use libp2p::request_response;
use libp2p::{Multiaddr, PeerId};
use polity_consensus::{open, sign_message};
use polity_proto::{NodeInfo, SignedStatement, StatementKind};
use prost::Message;

use crate::NotAnEd25519Key;
use crate::codec::Frame;
use crate::event_loop::EventLoop;
use crate::network::{ANNOUNCE_TOPIC, GLOBAL_ANNOUNCE_EVERY, NetEvent, region_announce_topic};

/// Why a NodeInfo is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInfo {
    #[error("bad signature: {0}")]
    Signature(polity_consensus::StatementError),
    #[error("signer is not a key")]
    NotAKey,
    #[error("info for {claimed} signed by {signer}")]
    WrongSigner {
        claimed: Box<PeerId>,
        signer: Box<PeerId>,
    },
    #[error("info names another key than its signer")]
    OtherKey,
}

/// Checks a signed NodeInfo: a valid NODE_INFO signature, by the key the info
/// names, whose PeerId is the one the info names and, for an answer to our own
/// info request, the peer we asked (`claimed`). Gossiped info has no claimed
/// sender: the signature alone says whose it is.
pub fn verify_node_info(
    claimed: Option<PeerId>,
    statement: &SignedStatement,
) -> Result<(PeerId, NodeInfo), InvalidInfo> {
    let (signer, info) =
        open::<NodeInfo>(statement, StatementKind::NodeInfo).map_err(InvalidInfo::Signature)?;
    let signer_peer =
        crate::peer_id_of(signer.as_bytes()).map_err(|NotAnEd25519Key| InvalidInfo::NotAKey)?;
    if let Some(claimed) = claimed
        && claimed != signer_peer
    {
        return Err(InvalidInfo::WrongSigner {
            claimed: Box::new(claimed),
            signer: Box::new(signer_peer),
        });
    }
    if info.public_key != signer.as_bytes().as_slice() || info.peer_id != signer_peer.to_string() {
        return Err(InvalidInfo::OtherKey);
    }
    Ok((signer_peer, info))
}

impl EventLoop {
    /// Our NodeInfo, freshly signed.
    fn signed_info(&self) -> SignedStatement {
        let info = NodeInfo {
            public_key: self.signing_key.verifying_key().to_bytes().to_vec(),
            peer_id: self.swarm.local_peer_id().to_string(),
            capabilities: self.local.capabilities.clone(),
            region: self.local.region.clone(),
            continent: self.local.continent.clone(),
            grpc_endpoint: self.local.grpc_endpoint.clone(),
            version: self.local.version.clone(),
            issued_at_ms: unix_ms(),
            listen_addrs: self.advertised_addresses(),
            registry_epoch: self.local.registry.read().map_or(0, |mark| mark.0),
            registry_digest: self
                .local
                .registry
                .read()
                .map_or_else(|_| Vec::new(), |mark| mark.1.clone()),
        };
        sign_message(&self.signing_key, StatementKind::NodeInfo, &info)
    }

    /// When the next announcement is due, on the tokio clock.
    pub(crate) fn announce_due(&self) -> tokio::time::Instant {
        let due = self.started + Duration::from_millis(self.announce.next_ms());
        tokio::time::Instant::from_std(due)
    }

    /// Gossips our signed NodeInfo to our region, and one time in
    /// [`GLOBAL_ANNOUNCE_EVERY`] (the first included) to everyone, and tells the
    /// schedule whether anyone took it.
    pub(crate) fn announce(&mut self) {
        let bytes = self.signed_info().encode_to_vec();
        let region_topic = IdentTopic::new(region_announce_topic(&self.local.region));
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        // No subscribed peer yet is normal right after start: retried soon.
        let mut reached = gossipsub.publish(region_topic, bytes.clone()).is_ok();
        if self.announcements.is_multiple_of(GLOBAL_ANNOUNCE_EVERY) || !reached {
            reached |= gossipsub
                .publish(IdentTopic::new(ANNOUNCE_TOPIC), bytes)
                .is_ok();
        }
        self.announcements = self.announcements.wrapping_add(1);
        let now_ms = self.now_ms();
        self.announce.published(now_ms, reached);
    }

    /// Asks a newly connected peer for its NodeInfo, unless we have it or asked already.
    pub(crate) fn ask_info_if_unknown(&mut self, peer: PeerId, now_ms: u64) {
        let needs_info = self
            .peers
            .get(&peer)
            .is_some_and(|r| r.info.is_none() && !r.info_requested);
        if !needs_info {
            return;
        }
        self.peers.entry(peer, now_ms).info_requested = true;
        let id = self
            .swarm
            .behaviour_mut()
            .info
            .send_request(&peer, Frame::default());
        self.pending_info.insert(id);
    }

    /// A gossiped announcement: `source` is the gossip author, blamed if it fails.
    pub(crate) fn on_announcement(&mut self, source: Option<PeerId>, data: &[u8]) {
        let Ok(statement) = SignedStatement::decode(data) else {
            self.metrics.malformed_messages.inc();
            return;
        };
        if let Err(reason) = self.accept_info(None, statement) {
            self.metrics.infos_rejected.inc();
            let source = source.unwrap_or(*self.swarm.local_peer_id());
            self.emit(NetEvent::InvalidInfo {
                peer: source,
                reason: reason.to_string(),
            });
        }
    }

    /// `/polity/info/1`: answered here with our signed NodeInfo; responses verified.
    pub(crate) fn on_info_event(
        &mut self,
        event: request_response::Event<Frame, Frame>,
        now_ms: u64,
    ) {
        use request_response::{Event, Message as RpcMessage};
        match event {
            Event::Message {
                message: RpcMessage::Request { channel, .. },
                ..
            } => {
                let info = self.signed_info().encode_to_vec();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .info
                    .send_response(channel, Frame(info));
            }
            Event::Message {
                peer,
                message:
                    RpcMessage::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.pending_info.remove(&request_id);
                self.peers.entry(peer, now_ms).info_requested = false;
                let result = SignedStatement::decode(response.0.as_slice())
                    .map_err(|e| format!("undecodable info: {e}"))
                    .and_then(|statement| {
                        self.accept_info(Some(peer), statement)
                            .map_err(|e| e.to_string())
                    });
                self.on_probe_result(&request_id, result.is_ok());
                if let Err(reason) = result {
                    self.metrics.infos_rejected.inc();
                    self.emit(NetEvent::InvalidInfo { peer, reason });
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.count_failure(&error.to_string());
                self.pending_info.remove(&request_id);
                self.peers.entry(peer, now_ms).info_requested = false;
                self.on_probe_result(&request_id, false);
            }
            Event::InboundFailure { error, .. } => self.count_failure(&error.to_string()),
            Event::ResponseSent { .. } => {}
        }
    }

    /// Verifies a signed NodeInfo (see [`verify_node_info`]), remembers it and the
    /// addresses it lists, and dials its signer.
    fn accept_info(
        &mut self,
        claimed: Option<PeerId>,
        statement: SignedStatement,
    ) -> Result<PeerId, InvalidInfo> {
        let (signer_peer, info) = verify_node_info(claimed, &statement)?;
        if signer_peer == *self.swarm.local_peer_id() {
            return Ok(signer_peer);
        }
        let now_ms = self.now_ms();
        if self
            .peers
            .get(&signer_peer)
            .is_none_or(|record| record.info.is_none())
        {
            // A peer new to us may not have heard of us either.
            self.announce.newcomer(now_ms);
        }
        let addresses: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if self.peers.offer_info(signer_peer, info, statement, now_ms) {
            for address in addresses {
                self.learn_address(signer_peer, address, now_ms);
            }
        }
        self.maybe_dial(signer_peer);
        Ok(signer_peer)
    }
}

/// Wall-clock time for `issued_at_ms`: it is signed and compared across nodes, so
/// it cannot be the loop's monotonic `now_ms`.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
