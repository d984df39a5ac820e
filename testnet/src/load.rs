//! The one load loop behind `bench`, `chaos run` and `chaos reliability`.
//!
//! `clients` client tasks each loop "ask the [`Load`] what to send, submit it and
//! wait for the record (at most the submission's timeout), hand the reply back",
//! so each client has at most one request in flight and the client tasks are the
//! only parallelism. What differs between the commands is the [`Load`]: where a
//! request goes, when a client stops (a count, a time, a flag), what it keeps of a
//! reply, and how long it pauses after one (so a dead or shedding node is not
//! hammered in a hot loop). Each client keeps its own state, handed back when it
//! stops, so nothing is shared between clients but what the load itself shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use polity_node::client::Client;
use polity_proto::{SubmitTaskRequest, TaskRecord};
use tokio::task::JoinHandle;

use crate::rpc::{self, SubmitError};

/// What the clients of a load send, and what they keep.
pub trait Load: Send + Sync + 'static {
    /// One client's own state (its choices, what it recorded); returned when the
    /// client stops.
    type Client: Send + 'static;
    /// What the load remembers of a request until its reply is recorded.
    type Sent: Send + 'static;

    /// The state of client `index` before its first request.
    fn client(&self, index: usize) -> anyhow::Result<Self::Client>;

    /// What the client does next.
    fn next(&self, client: &mut Self::Client) -> Step<Self::Sent>;

    /// Records the reply to a request; returns how long the client pauses before
    /// its next one.
    fn record(&self, client: &mut Self::Client, sent: Self::Sent, reply: Reply) -> Duration;
}

/// A client's next move.
pub enum Step<S> {
    /// Submit this (boxed: a request is large, and it is about to be copied into
    /// a gRPC call anyway).
    Send(Box<Submission<S>>),
    /// Nothing to send to now: ask again after this long.
    Wait(Duration),
    /// The client is done.
    Stop,
}

/// One request and where it goes.
pub struct Submission<S> {
    /// The entry node's client.
    pub client: Client,
    pub request: tonic::Request<SubmitTaskRequest>,
    /// How long the client waits for the record.
    pub timeout: Duration,
    /// Kept for [`Load::record`].
    pub sent: S,
}

/// What came back for one submission.
pub struct Reply {
    /// When the request was sent.
    pub sent_at: Instant,
    /// From sending until the reply (or the timeout).
    pub latency: Duration,
    pub record: Result<TaskRecord, SubmitError>,
}

/// Client tasks that are running.
pub struct Running<L: Load> {
    clients: Vec<JoinHandle<anyhow::Result<L::Client>>>,
}

/// Starts `clients` client tasks of `load`.
pub fn start<L: Load>(load: Arc<L>, clients: usize) -> Running<L> {
    let clients = (0..clients)
        .map(|index| tokio::spawn(client_loop(Arc::clone(&load), index)))
        .collect();
    Running { clients }
}

impl<L: Load> Running<L> {
    /// Waits until every client stopped; their states in client order.
    pub async fn finish(self) -> anyhow::Result<Vec<L::Client>> {
        let mut states = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            states.push(client.await.context("a client task panicked")??);
        }
        Ok(states)
    }
}

/// Runs `clients` client tasks of `load` until every one stopped.
pub async fn run<L: Load>(load: Arc<L>, clients: usize) -> anyhow::Result<Vec<L::Client>> {
    start(load, clients).finish().await
}

async fn client_loop<L: Load>(load: Arc<L>, index: usize) -> anyhow::Result<L::Client> {
    let mut state = load.client(index)?;
    loop {
        match load.next(&mut state) {
            Step::Stop => return Ok(state),
            Step::Wait(pause) => tokio::time::sleep(pause).await,
            Step::Send(submission) => {
                let Submission {
                    mut client,
                    request,
                    timeout,
                    sent,
                } = *submission;
                let sent_at = Instant::now();
                let record = rpc::submit(&mut client, request, timeout).await;
                let reply = Reply {
                    sent_at,
                    latency: sent_at.elapsed(),
                    record,
                };
                let pause = load.record(&mut state, sent, reply);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A load with nowhere to send: each client waits `waits` times, then stops.
    struct Idle {
        waits: usize,
        asked: AtomicUsize,
    }

    impl Load for Idle {
        type Client = (usize, usize);
        type Sent = ();

        fn client(&self, index: usize) -> anyhow::Result<(usize, usize)> {
            Ok((index, 0))
        }

        fn next(&self, client: &mut (usize, usize)) -> Step<()> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            if client.1 == self.waits {
                return Step::Stop;
            }
            client.1 += 1;
            Step::Wait(Duration::from_millis(1))
        }

        fn record(&self, _: &mut (usize, usize), _: (), _: Reply) -> Duration {
            unreachable!("nothing is sent")
        }
    }

    #[tokio::test]
    async fn clients_come_back_in_order_once_they_stop() {
        let load = Arc::new(Idle {
            waits: 3,
            asked: AtomicUsize::new(0),
        });
        let states = run(Arc::clone(&load), 4).await.unwrap();
        assert_eq!(states, vec![(0, 3), (1, 3), (2, 3), (3, 3)]);
        assert_eq!(load.asked.load(Ordering::Relaxed), 4 * 4);
    }
}
