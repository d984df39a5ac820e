//! The gRPC service `polity.v1.Admin`: fault injection and the node's load, worker
//! slots and recovery record.
//!
//! It runs behind the same [`crate::api::federation::Gate`] as the client API (bearer token,
//! rate limit) and additionally refuses everything (PERMISSION_DENIED) on a node
//! started without an API token: faults must never be switchable anonymously.

use std::sync::Arc;

use polity_proto::admin_server::Admin;
use polity_proto::{Faults as FaultPlan, GetStatusRequest, NodeStatus, RecoveryStats};
use tonic::{Request, Response, Status};

use crate::chaos::Faults;
use crate::member::workers::Workers;
use crate::telemetry::metrics::Metrics;

pub struct AdminApi {
    faults: Arc<Faults>,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
    token_configured: bool,
}

impl AdminApi {
    pub fn new(
        faults: Arc<Faults>,
        workers: Arc<Workers>,
        metrics: Arc<Metrics>,
        token_configured: bool,
    ) -> AdminApi {
        AdminApi {
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
