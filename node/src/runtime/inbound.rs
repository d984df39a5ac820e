//! Peers' task and consensus requests, served with budgets: at most
//! [`PER_PEER_REQUESTS_MAX`] requests and [`PER_PEER_BYTES_MAX`] bytes in flight per
//! peer, [`REQUESTS_MAX`] requests and [`BYTES_MAX`] bytes in all. A request over a
//! budget is answered at once with a refusal (and counted as dropped). An admitted
//! request waits for one of [`CONCURRENT_MAX`] handlers in its own task, so the
//! loop never waits: the bounded queue in front of it drains, and what peers can
//! make the node hold is the byte budget, not the queue times the frame size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use polity_net::{NetEvent, PeerId};
use tokio::sync::{Semaphore, mpsc};

use crate::member::Federation;

/// Peer requests waiting for the serving loop, at most.
pub const QUEUED_MAX: usize = 1_024;
/// Handlers running at once; admitted requests wait for one.
pub const CONCURRENT_MAX: usize = 512;
/// Requests admitted (running or waiting for a handler) at once.
pub const REQUESTS_MAX: usize = 4_096;
/// Requests one peer may have in flight.
pub const PER_PEER_REQUESTS_MAX: usize = 128;
/// Request bytes one peer may have in flight.
pub const PER_PEER_BYTES_MAX: usize = 16 << 20;
/// Request bytes in flight from all peers.
pub const BYTES_MAX: usize = 96 << 20;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PeerRequests,
    PeerBytes,
    Bytes,
    Requests,
}

impl Refusal {
    /// The dropped-message reason it is counted under, and what the peer is told.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Refusal::PeerRequests => ("inflight requests", "too many of your requests in flight"),
            Refusal::PeerBytes => ("inflight bytes", "too many of your bytes in flight"),
            Refusal::Bytes => ("node bytes", "the node holds its request byte budget"),
            Refusal::Requests => ("node busy", "the node holds as many requests as it takes"),
        }
    }
}

#[derive(Default)]
struct Counts {
    per_peer: HashMap<PeerId, (usize, usize)>,
    bytes: usize,
    requests: usize,
}

/// The in-flight budgets; a [`Ticket`] holds a request's share until dropped.
#[derive(Clone)]
pub struct Budget {
    counts: Arc<Mutex<Counts>>,
    limits: Limits,
}

/// The numbers a [`Budget`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_peer_requests: usize,
    pub per_peer_bytes: usize,
    pub bytes: usize,
    pub requests: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_peer_requests: PER_PEER_REQUESTS_MAX,
            per_peer_bytes: PER_PEER_BYTES_MAX,
            bytes: BYTES_MAX,
            requests: REQUESTS_MAX,
        }
    }
}

/// One admitted request's share of the budgets.
pub struct Ticket {
    budget: Budget,
    peer: PeerId,
    bytes: usize,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            counts: Arc::new(Mutex::new(Counts::default())),
            limits,
        }
    }

    /// Admits a request of `bytes` from `peer`, or says which budget it is over.
    pub fn admit(&self, peer: PeerId, bytes: usize) -> Result<Ticket, Refusal> {
        let mut counts = self.counts.lock().expect("inbound budget lock");
        let (requests, held) = counts.per_peer.get(&peer).copied().unwrap_or((0, 0));
        if requests >= self.limits.per_peer_requests {
            return Err(Refusal::PeerRequests);
        }
        if held + bytes > self.limits.per_peer_bytes {
            return Err(Refusal::PeerBytes);
        }
        if counts.bytes + bytes > self.limits.bytes {
            return Err(Refusal::Bytes);
        }
        if counts.requests >= self.limits.requests {
            return Err(Refusal::Requests);
        }
        counts.per_peer.insert(peer, (requests + 1, held + bytes));
        counts.bytes += bytes;
        counts.requests += 1;
        Ok(Ticket {
            budget: self.clone(),
            peer,
            bytes,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.budget.counts.lock().expect("inbound budget lock");
        counts.bytes -= self.bytes;
        counts.requests -= 1;
        if let Some((requests, held)) = counts.per_peer.get_mut(&self.peer) {
            *requests -= 1;
            *held -= self.bytes;
            if *requests == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Answers peers' task and consensus requests within the budgets; returns when the
/// queue closes.
pub async fn serve(federation: Arc<Federation>, mut requests: mpsc::Receiver<NetEvent>) {
    let budget = Budget::new(Limits::default());
    let handlers = Arc::new(Semaphore::new(CONCURRENT_MAX));
    while let Some(event) = requests.recv().await {
        let NetEvent::Request {
            peer,
            protocol,
            bytes,
            responder,
        } = event
        else {
            continue;
        };
        let ticket = match budget.admit(peer, bytes.len()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                let (reason, detail) = refusal.words();
                responder.respond(federation.refuse(reason, detail));
                continue;
            }
        };
        let federation = Arc::clone(&federation);
        let handlers = Arc::clone(&handlers);
        tokio::spawn(async move {
            let Ok(_handler) = handlers.acquire_owned().await else {
                return;
            };
            let reply = federation.handle_request(peer, protocol, bytes).await;
            responder.respond(reply);
            drop(ticket);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        polity_net::peer_id_of(&key.to_bytes()).unwrap()
    }

    #[test]
    fn every_budget_refuses_and_frees() {
        let budget = Budget::new(Limits {
            per_peer_requests: 2,
            per_peer_bytes: 100,
            bytes: 150,
            requests: 3,
        });
        let a = budget.admit(peer(1), 10).unwrap();
        let _b = budget.admit(peer(1), 10).unwrap();
        assert_eq!(budget.admit(peer(1), 10).err(), Some(Refusal::PeerRequests));
        drop(a);
        assert_eq!(budget.admit(peer(1), 95).err(), Some(Refusal::PeerBytes));
        let _c = budget.admit(peer(2), 100).unwrap();
        assert_eq!(budget.admit(peer(3), 50).err(), Some(Refusal::Bytes));
        let _d = budget.admit(peer(3), 20).unwrap();
        assert_eq!(budget.admit(peer(4), 1).err(), Some(Refusal::Requests));
        drop(_c);
        drop(_d);
        let _e = budget.admit(peer(4), 1).unwrap();
        let counts = budget.counts.lock().unwrap();
        assert_eq!(counts.requests, 2);
        assert_eq!(counts.bytes, 11);
        assert_eq!(
            counts.per_peer.len(),
            2,
            "peers with nothing in flight are forgotten"
        );
    }
}
