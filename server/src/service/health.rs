//! gRPC's health-checking service, as etcd serves it: the server as a whole (`""`) is
//! SERVING until the member stops, then NOT_SERVING; no other service name is known.
//!
//! Kubernetes' `grpc` probes, `grpc_health_probe` and gRPC-aware load balancers call it; a
//! deployment that probed etcd this way must keep working when pointed at Engram.

use std::pin::Pin;

use etcdpb::health::health_check_response::ServingStatus;
use etcdpb::health::health_server::Health;
use etcdpb::health::{HealthCheckRequest, HealthCheckResponse};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Answers for the server as a whole, from the member's stop signal.
pub struct HealthService {
    stopping: watch::Receiver<bool>,
}

impl HealthService {
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        HealthService { stopping }
    }
}

fn response(stopping: bool) -> HealthCheckResponse {
    let status = if stopping {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !req.get_ref().service.is_empty() {
            // gRPC-go's words, which etcd answers with.
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(response(*self.stopping.borrow())))
    }

    type WatchStream = Updates;

    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Updates>, Status> {
        let updates: Updates = if req.get_ref().service.is_empty() {
            // The current status, then each change; the stream ends with NOT_SERVING, so
            // that it does not hold up the member's shutdown.
            let first = (self.stopping.clone(), true, false);
            Box::pin(futures::stream::unfold(
                first,
                |(mut stopping, first, ended)| async move {
                    if ended || (!first && stopping.changed().await.is_err()) {
                        return None;
                    }
                    let now = *stopping.borrow_and_update();
                    Some((Ok(response(now)), (stopping, false, now)))
                },
            ))
        } else {
            // gRPC-go tells a watcher of an unknown service so once and keeps the stream
            // open: the service might be registered later.
            let unknown = HealthCheckResponse {
                status: ServingStatus::ServiceUnknown as i32,
            };
            Box::pin(
                futures::stream::once(async move { Ok(unknown) }).chain(futures::stream::pending()),
            )
        };
        Ok(Response::new(updates))
    }
}
