//! `GET /api/v1/system/info` and `GET /api/v1/system/status`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use prexor_coord::ReplicaRecord;
use prexor_serve::Service;
use serde::Serialize;

use crate::error::ApiError;

pub fn routes(service: Service) -> Router {
    Router::new()
        .route("/system/info", get(info))
        .route("/system/status", get(status))
        .with_state(service)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    version: &'static str,
    profile: String,
    cluster_id: Option<String>,
    replica_id: String,
}

async fn info(State(service): State<Service>) -> Json<Info> {
    Json(Info {
        version: prexor_domain::VERSION,
        profile: service.config.profile.to_string(),
        cluster_id: service.config.cluster_id.clone(),
        replica_id: service.config.replica_id.clone(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    /// Every live replica of every service.
    replicas: Vec<ReplicaRecord>,
    coordination: Coordination,
    /// The api replica that answered.
    answered_by: String,
}

#[derive(Serialize)]
struct Coordination {
    /// `available` or `unavailable` (this replica cannot reach the coordination store).
    store: &'static str,
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn status(State(service): State<Service>) -> Result<Json<Status>, ApiError> {
    let backend = service.leases.backend();
    let ping = backend.ping().await;
    let replicas = service.registry.list(None).await.map_err(|e| {
        ApiError::unavailable(format!("cannot list replicas from the registry: {e}"))
    })?;
    Ok(Json(Status {
        replicas,
        coordination: Coordination {
            store: if ping.is_ok() {
                "available"
            } else {
                "unavailable"
            },
            backend: backend.describe(),
            error: ping.err().map(|e| e.to_string()),
        },
        answered_by: service.config.replica_id.clone(),
    }))
}
