//! The gRPC service `polity.v1.Admin`: fault injection, the node's load, worker
//! slots and recovery record, and the operator's ballots on registry proposals.
//!
//! It runs behind the same [`crate::api::federation::Gate`] as the client API (bearer token,
//! rate limit) and additionally refuses everything (PERMISSION_DENIED) on a node
//! started without an API token: faults must never be switchable anonymously.

use std::sync::Arc;

use polity_proto::admin_server::Admin;
use polity_proto::{
    Faults as FaultPlan, GetStatusRequest, NodeStatus, RecoveryStats, VoteRequest, VoteResponse,
};
use tonic::{Request, Response, Status};

use crate::chaos::Faults;
use crate::member::workers::Workers;
use crate::registry::RegistryState;
use crate::telemetry::metrics::Metrics;

pub struct AdminApi {
    registry: Arc<RegistryState>,
    faults: Arc<Faults>,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
    token_configured: bool,
}

impl AdminApi {
    pub fn new(
        registry: Arc<RegistryState>,
        faults: Arc<Faults>,
        workers: Arc<Workers>,
        metrics: Arc<Metrics>,
        token_configured: bool,
    ) -> AdminApi {
        AdminApi {
            registry,
            faults,
            workers,
            metrics,
            token_configured,
        }
    }

    fn allowed(&self) -> Result<(), Status> {
        if self.token_configured {
            Ok(())
        } else {
            self.metrics.reject("permission_denied");
            Err(Status::permission_denied(
                "the Admin API needs an API token: start the node with --api-token-file",
            ))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteResponse>, Status> {
        self.allowed()?;
        let request = request.into_inner();
        let Ok(digest) = <[u8; 32]>::try_from(request.registry_digest.as_slice()) else {
            self.metrics.reject("invalid_argument");
            return Err(Status::invalid_argument(format!(
                "registry_digest must be 32 bytes, got {}",
                request.registry_digest.len()
            )));
        };
        let ballots = self.registry.vote(digest, request.approve);
        Ok(Response::new(VoteResponse {
            ballots: u32::try_from(ballots).unwrap_or(u32::MAX),
        }))
    }

    async fn set_faults(&self, request: Request<FaultPlan>) -> Result<Response<FaultPlan>, Status> {
        self.allowed()?;
        let plan = request.into_inner();
        if let Err(reason) = crate::chaos::validate(&plan) {
            self.metrics.reject("invalid_argument");
            return Err(Status::invalid_argument(reason.to_string()));
        }
        let now = self
            .faults
            .set(plan)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(Response::new(now))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        self.allowed()?;
        let view = self.workers.view();
        let recovery = self
            .metrics
            .recovery
            .stats()
            .into_iter()
            .map(|(failure, stats)| RecoveryStats {
                failure: failure.to_string(),
                failures: stats.failures,
                recoveries: stats.recoveries,
                recovery_ms_ewma: stats.recovery_ms_ewma.unwrap_or(0.0),
                success_rate_ewma: stats.success_ewma.unwrap_or(1.0),
                open: stats.open,
            })
            .collect();
        Ok(Response::new(NodeStatus {
            faults: Some(self.faults.current()),
            worker_slots: view.slots,
            workers_busy: view.busy,
            load: view.load,
            workers_spawned: view.spawned,
            workers_retired: view.retired,
            reliability: view.reliability,
            recovery,
            scale_signal: view.scale_signal,
        }))
    }
}
