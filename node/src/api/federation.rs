//! The gRPC service `polity.v1.Federation`, and the checks every request passes
//! before it reaches it: bearer token (when configured) and a per-client-IP rate
//! limit.
//!
//! Errors are statuses with a reason a person can act on: INVALID_ARGUMENT for a
//! malformed request, FAILED_PRECONDITION for a request this federation cannot
//! serve now, UNAUTHENTICATED, RESOURCE_EXHAUSTED, NOT_FOUND.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use polity_consensus::{ChainSummary, TaskId, VerifyError, certificate_digest, sign_message};
use polity_proto::federation_server::Federation;
use polity_proto::verify_certificate_request::Source;
use polity_proto::{
    Certificate, EpochChain, GetEpochChainRequest, GetNodeInfoRequest, GetNodeInfoResponse,
    GetTaskRequest, GetTopologyRequest, GetTrustRequest, GetTrustResponse, ListPeersRequest,
    ListPeersResponse, NodeInfo, StatementKind, SubmitTaskRequest, TaskEvent, TaskEventKind,
    TaskRecord, Topology, VerifyCertificateRequest, VerifyCertificateResponse, WatchTaskRequest,
};
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::validate_label;
use crate::entry::{Submission, SubmitError, TaskEngine, Watch};
use crate::peers::Peers;
use crate::telemetry::metrics::Metrics;
use crate::unix_ms;

/// Events buffered per WatchTask stream.
const WATCH_BUFFER: usize = 32;
/// Largest certificate accepted by VerifyCertificate.
pub const CERTIFICATE_BYTES_MAX: usize = 16 * 1024 * 1024;

pub struct Api {
    engine: Arc<TaskEngine>,
    metrics: Arc<Metrics>,
    /// Also holds this node's own NodeInfo (see [`Peers::local`]).
    peers: Peers,
    started: Instant,
}

impl Api {
    pub fn new(engine: Arc<TaskEngine>, metrics: Arc<Metrics>, peers: Peers) -> Api {
        Api {
            engine,
            metrics,
            peers,
            started: Instant::now(),
        }
    }

    /// This node's NodeInfo, dated now (GetNodeInfo signs it fresh).
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            issued_at_ms: unix_ms(),
            ..self.peers.local().clone()
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> Status {
        self.metrics.reject("invalid_argument");
        Status::invalid_argument(reason)
    }

    fn task_id(&self, bytes: &[u8]) -> Result<TaskId, Status> {
        <[u8; 32]>::try_from(bytes)
            .map(TaskId)
            .map_err(|_| self.invalid(format!("task_id must be 32 bytes, got {}", bytes.len())))
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(error.to_string())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Api {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<TaskRecord>, Status> {
        let request = request.into_inner();
        let wait = request.wait;
        let submission = self
            .engine
            .submit(request)
            .await
            .map_err(|error| match error {
                SubmitError::InvalidArgument(reason) => self.invalid(reason),
                SubmitError::FailedPrecondition(reason) => Status::failed_precondition(reason),
                SubmitError::NoQuorumReachable { .. } => Status::unavailable(error.to_string()),
                SubmitError::Overloaded(_) => {
                    self.metrics.reject("overloaded");
                    Status::resource_exhausted(error.to_string())
                }
                SubmitError::ShuttingDown => Status::unavailable(error.to_string()),
                SubmitError::Store(error) => internal(error),
            })?;
        let record = match submission {
            Submission::Known(record) => *record,
            Submission::Started(id, mut done) => {
                if wait {
                    match done.wait_for(Option::is_some).await {
                        Ok(record) => record.clone().expect("waited for Some"),
                        Err(_) => return Err(Status::internal("the task's driver stopped")),
                    }
                } else {
                    self.engine
                        .get(&id)
                        .map_err(internal)?
                        .ok_or_else(|| Status::internal("a started task has no record"))?
                }
            }
        };
        Ok(Response::new(record))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<TaskRecord>, Status> {
        let id = self.task_id(&request.get_ref().task_id)?;
        match self.engine.get(&id).map_err(internal)? {
            Some(record) => Ok(Response::new(record)),
            None => Err(Status::not_found(format!("no task {id} on this node"))),
        }
    }

    type WatchTaskStream = EventStream;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let id = self.task_id(&request.get_ref().task_id)?;
        let watch = self
            .engine
            .watch(&id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no task {id} on this node")))?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            match watch {
                Watch::Finished(record) => {
                    let _ = sender.send(Ok(final_event(id, *record))).await;
                }
                Watch::Live(events, done) => forward_live(id, events, done, sender).await,
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_node_info(
        &self,
        _request: Request<GetNodeInfoRequest>,
    ) -> Result<Response<GetNodeInfoResponse>, Status> {
        let mut info = self.node_info();
        let reach = self.peers.net().reachability().await.unwrap_or_default();
        let mut addresses: Vec<String> = reach.listen.iter().map(ToString::to_string).collect();
        addresses.extend(reach.relayed.iter().map(ToString::to_string));
        addresses.extend(reach.confirmed.iter().map(ToString::to_string));
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|address| seen.insert(address.clone()));
        info.listen_addrs = addresses;
        let signed = sign_message(
            self.engine.identity().signing_key(),
            StatementKind::NodeInfo,
            &info,
        );
        Ok(Response::new(GetNodeInfoResponse {
            info: Some(info),
            signed: Some(signed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            tasks_stored: self.engine.store().task_count(),
            confirmed_addrs: reach.confirmed.iter().map(ToString::to_string).collect(),
            relayed_addrs: reach.relayed.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_peers(
        &self,
        request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        let request = request.into_inner();
        for (what, value) in [
            ("capability", &request.capability),
            ("region", &request.region),
            ("continent", &request.continent),
        ] {
            if !value.is_empty() {
                validate_label(value)
                    .map_err(|reason| self.invalid(format!("{what} {value:?}: {reason}")))?;
            }
        }
        if request.compatible_only && request.capability.is_empty() {
            return Err(self.invalid("compatible_only needs a capability"));
        }
        let peers = self
            .peers
            .list(
                &request.capability,
                &request.region,
                &request.continent,
                request.compatible_only,
            )
            .await
            .map_err(internal)?;
        Ok(Response::new(ListPeersResponse { peers }))
    }

    async fn get_trust(
        &self,
        request: Request<GetTrustRequest>,
    ) -> Result<Response<GetTrustResponse>, Status> {
        let peer_id = request.into_inner().peer_id;
        if !peer_id.is_empty() && peer_id.parse::<polity_net::PeerId>().is_err() {
            return Err(self.invalid(format!("peer_id {peer_id:?} is not a libp2p PeerId")));
        }
        Ok(Response::new(
            self.peers.trust_table(&peer_id).map_err(internal)?,
        ))
    }

    async fn get_topology(
        &self,
        _request: Request<GetTopologyRequest>,
    ) -> Result<Response<Topology>, Status> {
        Ok(Response::new(
            self.peers.topology().await.map_err(internal)?,
        ))
    }

    async fn verify_certificate(
        &self,
        request: Request<VerifyCertificateRequest>,
    ) -> Result<Response<VerifyCertificateResponse>, Status> {
        let certificate = match request.into_inner().source {
            Some(Source::Certificate(bytes)) => {
                if bytes.len() > CERTIFICATE_BYTES_MAX {
                    return Err(self.invalid(format!(
                        "certificate is {} bytes, the limit is {CERTIFICATE_BYTES_MAX}",
                        bytes.len()
                    )));
                }
                Certificate::decode(bytes.as_slice()).map_err(|e| {
                    self.invalid(format!(
                        "certificate is not a valid polity.v1.Certificate: {e}"
                    ))
                })?
            }
            Some(Source::TaskId(bytes)) => {
                let id = self.task_id(&bytes)?;
                let record = self
                    .engine
                    .get(&id)
                    .map_err(internal)?
                    .ok_or_else(|| Status::not_found(format!("no task {id} on this node")))?;
                record.certificate.ok_or_else(|| {
                    Status::failed_precondition(format!("task {id} has no certificate"))
                })?
            }
            None => return Err(self.invalid("give a certificate or a task_id")),
        };
        let checked = self
            .engine
            .federation
            .registry()
            .verify(&certificate)
            .map(|(summary, _epoch)| summary);
        Ok(Response::new(verification(&certificate, checked)))
    }

    async fn get_epoch_chain(
        &self,
        _request: Request<GetEpochChainRequest>,
    ) -> Result<Response<EpochChain>, Status> {
        Ok(Response::new(self.engine.federation.registry().chain()))
    }
}

/// The answer of VerifyCertificate for one certificate: the chain verifies, is
/// bound to its task (root at the task's scope; the policy's path and aggregation
/// at every level), and sat only members its registry epoch allows.
pub fn verification(
    certificate: &Certificate,
    checked: Result<ChainSummary, VerifyError>,
) -> VerifyCertificateResponse {
    match checked {
        Ok(summary) => VerifyCertificateResponse {
            valid: true,
            error: String::new(),
            certificates: summary.certificates,
            signatures: summary.signatures,
            value: summary.value,
            root_digest: hex::encode(summary.root_digest),
        },
        Err(error) => VerifyCertificateResponse {
            valid: false,
            error: error.to_string(),
            root_digest: hex::encode(certificate_digest(certificate)),
            ..VerifyCertificateResponse::default()
        },
    }
}

/// Forwards a running task's events until FINAL. When the task finishes while
/// events are still queued, they are drained first; FINAL is always the last event.
async fn forward_live(
    id: TaskId,
    mut events: broadcast::Receiver<TaskEvent>,
    mut done: watch::Receiver<Option<TaskRecord>>,
    sender: mpsc::Sender<Result<TaskEvent, Status>>,
) {
    let is_final = |event: &TaskEvent| event.kind == TaskEventKind::Final as i32;
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Ok(event) => {
                    let last = is_final(&event);
                    if sender.send(Ok(event)).await.is_err() || last {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = done.changed() => if changed.is_err() || done.borrow().is_some() {
                break;
            },
        }
    }
    // Finished: drain what is queued, then make sure FINAL was sent.
    loop {
        match events.try_recv() {
            Ok(event) => {
                let last = is_final(&event);
                if sender.send(Ok(event)).await.is_err() || last {
                    return;
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    let record = done.borrow().clone();
    if let Some(record) = record {
        let _ = sender.send(Ok(final_event(id, record))).await;
    }
}

fn final_event(id: TaskId, record: TaskRecord) -> TaskEvent {
    TaskEvent {
        task_id: id.as_bytes().to_vec(),
        kind: TaskEventKind::Final as i32,
        at_ms: record.finished_at_ms,
        record: Some(record),
        ..TaskEvent::default()
    }
}

/// Token and rate checks run before any Federation method.
#[derive(Clone)]
pub struct Gate {
    /// The expected `authorization` header value ("Bearer TOKEN"), when auth is on.
    expected_authorization: Option<Arc<[u8]>>,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub fn new(token: Option<String>, per_second: u32, burst: u32, metrics: Arc<Metrics>) -> Gate {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Gate {
            expected_authorization: token.map(|t| format!("Bearer {t}").into_bytes().into()),
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            metrics,
        }
    }

    /// Forgets clients idle long enough to be back at full burst; keeps the
    /// limiter's memory bounded by recent clients.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(expected) = &self.expected_authorization {
            let given = request
                .metadata()
                .get("authorization")
                .map(|value| value.as_bytes())
                .unwrap_or_default();
            if !constant_time_eq(given, expected) {
                self.metrics.reject("unauthenticated");
                return Err(Status::unauthenticated(
                    "missing or wrong bearer token (send `authorization: Bearer <token>`)",
                ));
            }
        }
        let client = request
            .remote_addr()
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if self.limiter.check_key(&client).is_err() {
            self.metrics.reject("rate_limited");
            return Err(Status::resource_exhausted(format!(
                "rate limit exceeded for {client}; slow down"
            )));
        }
        Ok(request)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
