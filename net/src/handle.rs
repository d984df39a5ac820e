//! The client side of the network: [`NetHandle`], and the [`Command`]s it sends to
//! the event loop, each with a `oneshot` for its reply (the shape of rust-libp2p's
//! file-sharing example). The handle never touches the swarm; when the loop has
//! stopped, every call returns [`NetError::Stopped`].

use std::collections::HashSet;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::link_faults::LinkFaults;
use crate::network::{AppProtocol, NetError};
use crate::peers::PeerView;

/// Commands queued to the event loop at most; a full queue makes callers wait.
const COMMANDS_MAX: usize = 256;

/// What a [`NetHandle`] asks of the event loop.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerView>>),
    Request {
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
        /// Whether the peer's circuit breaker gates the request and counts its outcome.
        guarded: bool,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    FindProviders {
        key: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    PublishEvidence(Vec<u8>),
    ListenAddresses(oneshot::Sender<Vec<Multiaddr>>),
    Reachability(oneshot::Sender<crate::reach::Reachability>),
    SetBlocked(HashSet<PeerId>),
    Ban {
        peer: PeerId,
        for_ms: u64,
    },
}

/// A cloneable handle on the event loop.
#[derive(Clone, Debug)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    /// Shared by every clone, so a fault plan set through one acts on all.
    link: Arc<LinkFaults>,
}

impl NetHandle {
    /// A handle for the node `peer_id`, and the receiving end of its bounded
    /// command queue, which the event loop takes.
    pub(crate) fn channel(peer_id: PeerId) -> (NetHandle, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(COMMANDS_MAX);
        let handle = NetHandle {
            commands,
            peer_id,
            link: Arc::default(),
        };
        (handle, receiver)
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, receive) = oneshot::channel();
        self.send(make(reply)).await?;
        receive.await.map_err(|_| NetError::Stopped)
    }

    /// Queues a command that has no reply.
    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Every peer the node knows.
    pub async fn peers(&self) -> Result<Vec<PeerView>, NetError> {
        self.call(Command::Peers).await
    }

    /// Sends `bytes` to `peer` on `protocol` and waits for the response.
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        self.send_request(peer, protocol, bytes, true).await
    }

    /// [`Self::request`] outside the peer's circuit breaker: sent even while it is
    /// open, and its outcome neither counts for or against the peer nor is reported as
    /// [`crate::NetEvent::RequestFailed`] (a peer that answers raft but drops task
    /// traffic must still trip its breaker). For
    /// traffic with its own retry and backoff that keeps probing peers which may be
    /// down, such as raft heartbeats: counted, it would keep a recovered peer's breaker
    /// open long after it is back.
    pub async fn request_unguarded(
        &self,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        self.send_request(peer, protocol, bytes, false).await
    }

    async fn send_request(
        &self,
        peer: PeerId,
        protocol: AppProtocol,
        bytes: Vec<u8>,
        guarded: bool,
    ) -> Result<Vec<u8>, NetError> {
        self.link.before_request(peer).await?;
        self.call(|reply| Command::Request {
            peer,
            protocol,
            bytes,
            guarded,
            reply,
        })
        .await?
    }

    /// Providers of a Kademlia key (`capability/<name>`, `region/<r>`, `continent/<c>`).
    pub async fn find_providers(&self, key: String) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::FindProviders { key, reply })
            .await
    }

    pub async fn dial(&self, address: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { address, reply }).await?
    }

    /// Gossips evidence bytes to the federation.
    pub async fn publish_evidence(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::PublishEvidence(bytes)).await
    }

    pub async fn listen_addresses(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(Command::ListenAddresses).await
    }

    /// Our addresses: bound, confirmed reachable (AutoNAT or the operator), relayed.
    pub async fn reachability(&self) -> Result<crate::reach::Reachability, NetError> {
        self.call(Command::Reachability).await
    }

    /// Fault injection: from now on, drop each outbound request with probability
    /// `drop_rate` (clamped to [0, 1]; a dropped request fails at once with
    /// [`NetError::Request`]) and delay each by `delay_ms` before it is sent.
    pub fn set_link_faults(&self, drop_rate: f64, delay_ms: u64, seed: u64) {
        self.link.set(drop_rate, delay_ms, seed);
    }

    /// Fault injection: refuse every connection with `peers` (closing the open
    /// ones) and unblock everyone else: one side of a partition.
    pub async fn set_blocked(&self, peers: HashSet<PeerId>) -> Result<(), NetError> {
        self.send(Command::SetBlocked(peers)).await
    }

    /// Disconnects `peer` and refuses its connections for `duration` (a peer that
    /// keeps breaking the protocol). Independent of [`Self::set_blocked`]: both sets
    /// are blocked, and a ban ends by itself.
    pub async fn ban(&self, peer: PeerId, duration: std::time::Duration) -> Result<(), NetError> {
        let for_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.send(Command::Ban { peer, for_ms }).await
    }
}
