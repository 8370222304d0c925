use std::time::Duration;

use prexor_proto::v1::replica_status_server::{ReplicaStatus, ReplicaStatusServer};
use prexor_proto::v1::{GetStatusRequest, ReadinessCheck, ReplicaStatusReport};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use std::sync::{Arc, OnceLock};

use tower::ServiceExt;

use crate::readiness::Readiness;
use crate::runtime::ReplicaInfo;

/// `prexor.v1.ReplicaStatus` on every internal gRPC port.
struct StatusService {
    info: Arc<ReplicaInfo>,
}

#[tonic::async_trait]
impl ReplicaStatus for StatusService {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<ReplicaStatusReport>, Status> {
        let report = self.info.readiness.report().await;
        let config = &self.info.config;
        Ok(Response::new(ReplicaStatusReport {
            kind: config.kind.to_string(),
            replica_id: config.replica_id.clone(),
            version: prexor_domain::VERSION.to_owned(),
            profile: config.profile.to_string(),
            ready: report.ready,
            checks: report
                .checks
                .into_iter()
                .map(|c| ReadinessCheck {
                    name: c.name,
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
            started_at_unix_ms: self.info.started_at_ms,
            leases_held: self.info.leases_held(),
        }))
    }
}

/// Serves grpc.health.v1 and ReplicaStatus from the start, and the service's own gRPC routes
/// once `late` is set (UNAVAILABLE "starting" before), until `stop` is cancelled — over TLS
/// with `tls` (internal mTLS: handshakes complete once this replica has its certificate).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    info: Arc<ReplicaInfo>,
    late: Arc<OnceLock<axum::Router>>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(track_health(reporter, info.readiness.clone(), stop.clone()));
    let status = ReplicaStatusServer::new(StatusService { info });
    let router = Routes::new(health)
        .add_service(status)
        .into_axum_router()
        .fallback(move |request: axum::extract::Request| {
            let late = late.clone();
            async move {
                match late.get() {
                    Some(router) => match router.clone().oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    None => {
                        let mut response = Status::unavailable(
                            "this replica is still starting; retry shortly or use another replica",
                        )
                        .into_http::<axum::body::Body>();
                        // Whatever path was asked for, it is not a label of its own.
                        response.extensions_mut().insert(crate::red::Unrouted);
                        response
                    }
                }
            }
        });
    crate::tls::serve_grpc(
        listener,
        tls,
        Routes::from(router),
        stop,
        "internal gRPC port",
    )
    .await
}

/// Mirrors readiness into the overall ("") grpc.health.v1 status.
async fn track_health(reporter: HealthReporter, readiness: Readiness, stop: CancellationToken) {
    let mut last = None;
    loop {
        let status = if readiness.report().await.ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
