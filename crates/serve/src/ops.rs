use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::readiness::Readiness;

/// What lists the lease scopes a replica holds right now.
pub type HeldScopes = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// The leases of a replica, set once its service is built (never on a daemon).
pub type Keepers = Arc<OnceLock<HeldScopes>>;

/// Every lease scope `keepers` hold right now, sorted.
pub(crate) fn held(keepers: &Keepers) -> Vec<String> {
    let mut held = keepers.get().map(|list| list()).unwrap_or_default();
    held.sort();
    held
}

/// Who answers, for the ops endpoints.
#[derive(Clone)]
pub struct Identity {
    pub kind: String,
    pub replica_id: String,
    pub version: &'static str,
    /// Reported by `/status` (none on a daemon).
    pub keepers: Keepers,
}

#[derive(Clone)]
struct OpsState {
    identity: Arc<Identity>,
    readiness: Readiness,
    app: Arc<OnceLock<Router>>,
}

/// Serves [`router`] on `listener` until `stop` is cancelled (in-flight requests finish).
pub async fn serve_ops(
    listener: TcpListener,
    identity: Arc<Identity>,
    readiness: Readiness,
    app: Arc<OnceLock<Router>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // The peer address reaches handlers as `ConnectInfo` (login rate limits per client).
    let service = router(identity, readiness, app)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            // Answers go out at once, not after Nagle's delay (a small JSON answer is one
            // segment; waiting for the client's ACK would add up to 40 ms).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, service)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
        Some(config) => {
            // `tap_io` makes axum hand the peer's SocketAddr to handlers for this listener too.
            let listener = axum::serve::ListenerExt::tap_io(
                crate::tls::TlsListener::new(listener, config, stop.clone(), "https")?,
                |_| {},
            );
            axum::serve(listener, service)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics`, plus the service's own routes once they exist (`app`):
/// the port answers from the first moment, before the stores are connected. Its own routes are
/// counted and timed here ([`crate::red::http_metrics`]); the service's router counts its own
/// (`crate::runtime`), so a request is counted once.
pub(crate) fn router(
    identity: Arc<Identity>,
    readiness: Readiness,
    app: Arc<OnceLock<Router>>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/status", get(status))
        .route_layer(axum::middleware::from_fn(crate::red::http_metrics))
        .fallback(app_or_starting)
        .with_state(OpsState {
            identity,
            readiness,
            app,
        })
}

async fn healthz(State(state): State<OpsState>) -> Response {
    let id = &state.identity;
    axum::Json(json!({
        "status": "ok",
        "kind": id.kind,
        "replicaId": id.replica_id,
        "version": id.version,
    }))
    .into_response()
}

/// Who this replica is, whether it is ready and the lease scopes it holds (what
/// `prexor.v1.ReplicaStatus` reports on the internal port, readable without a certificate).
async fn status(State(state): State<OpsState>) -> Response {
    let id = &state.identity;
    axum::Json(json!({
        "kind": id.kind,
        "replicaId": id.replica_id,
        "version": id.version,
        "ready": state.readiness.report().await.ready,
        "leasesHeld": held(&id.keepers),
    }))
    .into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let id = &state.identity;
    let reason: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let mut body = json!({
        "ready": report.ready,
        "kind": id.kind,
        "replicaId": id.replica_id,
        "checks": report.checks,
    });
    if !reason.is_empty() {
        body["reason"] = json!(reason.join("; "));
    }
    (status, axum::Json(body)).into_response()
}

/// Every metric of the process, `prexor_replica_ready` evaluated just before (as `/readyz` would
/// answer; its checks also refresh `prexor_store_up`).
async fn render_metrics(State(state): State<OpsState>) -> Response {
    let ready = state.readiness.report().await.ready;
    metrics::gauge!("prexor_replica_ready").set(if ready { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prexor_telemetry::Telemetry::render(),
    )
        .into_response()
}

async fn app_or_starting(State(state): State<OpsState>, request: Request<Body>) -> Response {
    match state.app.get() {
        Some(app) => match app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => {
            let report = state.readiness.report().await;
            let waiting: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({
                    "code": "STARTING",
                    "message": format!("this replica is still starting ({}); retry shortly or use another replica", waiting.join("; ")),
                })),
            )
                .into_response()
        }
    }
}
