//! `GET /api/v1/system/info` and `GET /api/v1/system/status`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prexor_coord::ReplicaRecord;
use serde::Serialize;

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, Json};

/// A replica whose clock differs from the coordination store's by more than this is reported
/// `clock.synchronized = false` (fencing stays safe; lease expiry timing moves).
pub const CLOCK_SKEW_LIMIT_MS: i64 = 500;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/system/info", get(info))
        .route("/system/status", get(status))
        .route("/system/ca", get(ca))
}

/// Unauthenticated: the cluster CA certificate (public by nature), for a client that has not
/// trusted it yet. `prexorctl login` shows its fingerprint and keeps it only once the operator
/// confirmed it (or it matches `--ca-fingerprint`).
#[utoipa::path(
    get, path = "/api/v1/system/ca", tag = "system",
    responses(
        (status = 200, description = "the CA certificate (PEM) and its SHA-256 fingerprint", body = CaView),
    )
)]
async fn ca(State(app): State<App>) -> Result<Json<CaView>, ApiError> {
    let ca = prexor_model::pki::published_ca(app.store())
        .await?
        .ok_or_else(|| ApiError::conflict("the cluster has no CA yet"))?;
    Ok(Json(CaView {
        certificate: ca.certificate.pem,
        fingerprint: ca.certificate.fingerprint,
    }))
}

/// The cluster CA certificate.
#[derive(Serialize, utoipa::ToSchema)]
struct CaView {
    /// PEM.
    certificate: String,
    /// SHA-256 of the DER, hex.
    fingerprint: String,
}

/// What this replica is.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Info {
    version: &'static str,
    profile: String,
    cluster_id: Option<String>,
    replica_id: String,
}

/// Unauthenticated: what a load balancer or `prexorctl --controller URL system info` checks.
#[utoipa::path(
    get, path = "/api/v1/system/info", tag = "system",
    responses((status = 200, body = Info))
)]
async fn info(State(app): State<App>) -> Json<Info> {
    let service = &app.service;
    Json(Info {
        version: prexor_domain::VERSION,
        profile: service.config.profile.to_string(),
        cluster_id: Some(service.cluster_id.clone()),
        replica_id: service.config.replica_id.clone(),
    })
}

/// The cluster as this replica sees it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
    /// Every live replica of every service.
    pub(crate) replicas: Vec<ReplicaStatus>,
    pub(crate) coordination: Coordination,
    /// The api replica that answered.
    pub(crate) answered_by: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReplicaStatus {
    /// The replica's registration (`kind`, `id`, `version`, `profile`, `httpAddress`,
    /// `grpcAddress`, `startedAtMs`, `ready`, `leasesHeld`, `heartbeatAgeMs`, `notes`,
    /// `clockSkewMs`, `coordination`), as `prexor-coord` keeps it.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub(crate) record: ReplicaRecord,
    pub(crate) clock: ClockStatus,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClockStatus {
    /// `false` when the replica's clock is more than 500 ms off the coordination store's, or
    /// not measured yet.
    pub(crate) synchronized: bool,
    pub(crate) skew_ms: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Coordination {
    /// `available`; `unavailable` (this replica cannot reach the coordination store);
    /// `mismatched` (its Valkey is not the cluster's: split brain, it refuses mutations);
    /// `restamping` (its Valkey lost its data; mutations wait until it is stamped again).
    pub(crate) store: String,
    /// The cluster's coordination store id (MongoDB) and the one in this replica's Valkey.
    pub(crate) expected_store_id: Option<String>,
    pub(crate) found_store_id: Option<String>,
    pub(crate) backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/system/status", tag = "system",
    responses((status = 200, body = Status))
)]
async fn status(Caller(app, who): Caller) -> Result<Json<Status>, ApiError> {
    status_of(&app, &who).await.map(Json)
}

/// The cluster as this replica sees it, for `who` (403 without `system:read`): the REST answer
/// and the dashboard's overview alike.
pub(crate) async fn status_of(app: &App, who: &Principal) -> Result<Status, ApiError> {
    who.require("system:read")?;
    let service = &app.service;
    let backend = service.leases.backend();
    let ping = backend.ping().await;
    let replicas = service.registry.list(None).await.map_err(|e| {
        ApiError::unavailable(format!("cannot list replicas from the registry: {e}"))
    })?;
    let replicas = replicas
        .into_iter()
        .map(|record| ReplicaStatus {
            clock: ClockStatus {
                synchronized: record
                    .clock_skew_ms
                    .is_some_and(|s| s.abs() <= CLOCK_SKEW_LIMIT_MS),
                skew_ms: record.clock_skew_ms,
            },
            record,
        })
        .collect();
    let guard = service.guard.state();
    let store = match (&ping, guard.store.as_str()) {
        (Err(_), _) => "unavailable".to_owned(),
        (Ok(()), state) => state.to_owned(),
    };
    Ok(Status {
        replicas,
        coordination: Coordination {
            store,
            backend: backend.describe(),
            error: ping.err().map(|e| e.to_string()).or(guard.detail.clone()),
            expected_store_id: guard.expected,
            found_store_id: guard.found,
        },
        answered_by: service.config.replica_id.clone(),
    })
}
