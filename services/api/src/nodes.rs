//! Nodes: list, get, cordon / uncordon, delete (refused while connected), join tokens and
//! certificate issue for a node's CSR (503 with the operator page's message when no reachable
//! CA replica holds the key).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use mongodb::bson::{Document, doc};
use prexor_pki::client::SignerError;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Body};

const NODES: &str = "nodes";
const NODE_ALLOCATIONS: &str = "node_allocations";
const NODE_DRAINS: &str = "node_drains";
/// Default and longest drain timeouts (past it, the node's remaining instances are killed).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Join tokens live at most this long.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/nodes", get(list))
        .route("/nodes/{id}", get(show).delete(remove))
        .route("/nodes/{id}/cordon", post(cordon))
        .route("/nodes/{id}/uncordon", post(uncordon))
        .route("/nodes/{id}/drain", post(drain).get(drain_status))
        .route("/nodes/{id}/undrain", post(undrain))
        .route("/nodes/{id}/join-token", post(join_token))
        .route("/nodes/{id}/cert-issue", post(cert_issue))
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    tag = "nodes",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<serde_json::Value>>> {
    who.require("nodes:read")?;
    let store = app.store();
    let (nodes, allocations, drains) = tokio::try_join!(
        store.find_sorted(NODES, "listing nodes", doc! {}, doc! { "_id": 1 }, None),
        store.find_all(NODE_ALLOCATIONS, "reading node allocations", doc! {}),
        store.find_all(NODE_DRAINS, "reading node drains", doc! {}),
    )?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|node| decorated(node, &allocations, &drains))
            .collect(),
    ))
}

/// The node record plus the memory the schedulers reserved on it and its drain, if any.
fn decorated(
    mut node: Document,
    allocations: &[Document],
    drains: &[Document],
) -> serde_json::Value {
    let id = node.get_str("_id").unwrap_or_default().to_owned();
    let by_id = |docs: &[Document]| {
        docs.iter()
            .find(|d| d.get_str("_id") == Ok(id.as_str()))
            .cloned()
    };
    let reserved = by_id(allocations)
        .and_then(|a| a.get_i64("reservedMb").ok())
        .unwrap_or(0);
    node.insert("reservedMb", reserved);
    node.insert("cordoned", node.get_bool("cordoned").unwrap_or(false));
    let mut json = crate::json::record(node);
    json["drain"] = by_id(drains).map_or(serde_json::Value::Null, drain_view);
    json
}

fn drain_view(mut drain: Document) -> serde_json::Value {
    drain.remove("_id");
    crate::json::record(drain)
}

async fn find(app: &App, id: &str) -> ApiResult<Document> {
    app.must_find(NODES, "node", id).await
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn show(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("nodes:read")?;
    let node = find(&app, &id).await?;
    let store = app.store();
    let (allocations, drains) = tokio::try_join!(
        store.find_all(
            NODE_ALLOCATIONS,
            "reading node allocations",
            doc! { "_id": &id }
        ),
        store.find_all(NODE_DRAINS, "reading the node's drain", doc! { "_id": &id }),
    )?;
    Ok(Json(decorated(node, &allocations, &drains)))
}

async fn set_cordon(app: App, who: Principal, id: String, cordoned: bool) -> ApiResult<StatusCode> {
    who.require("nodes:write")?;
    let before = find(&app, &id).await?;
    let store = app.store();
    // `$set` of one field: the gateway's own `$set`s of the node's state never erase it.
    store
        .bounded(
            "cordoning a node",
            store.documents(NODES).update_one(
                doc! { "_id": &id },
                doc! { "$set": { "cordoned": cordoned } },
            ),
        )
        .await?;
    let action = if cordoned { "cordon" } else { "uncordon" };
    app.audit(
        &who,
        &format!("node.{action}"),
        &id,
        Some(&before.get_bool("cordoned").unwrap_or(false)),
        Some(&cordoned),
    )
    .await;
    let kind = if cordoned {
        "NODE_CORDONED"
    } else {
        "NODE_UNCORDONED"
    };
    app.service
        .events
        .publish(kind, &id, serde_json::json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/cordon",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn cordon(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    set_cordon(app, who, id, true).await
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/uncordon",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn uncordon(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    set_cordon(app, who, id, false).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/nodes/{id}",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn remove(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("nodes:write")?;
    let node = find(&app, &id).await?;
    if node.get_str("state") == Ok("ONLINE") {
        return Err(ApiError::conflict(format!(
            "node {id:?} is connected (through gateway {}); stop its daemon first",
            node.get_str("gateway").unwrap_or("?")
        )));
    }
    let store = app.store();
    store
        .bounded(
            "deleting a node",
            store
                .documents(NODES)
                .delete_one(doc! { "_id": &id, "state": { "$ne": "ONLINE" } }),
        )
        .await?;
    // A deleted node cannot come back with the certificate it had.
    let revoked =
        prexor_pki::records::revoke_node(app.store(), &id, "the node was deleted").await?;
    tracing::info!(node = %id, certificates = revoked, "node deleted; its certificates are revoked");
    app.audit(
        &who,
        "node.delete",
        &id,
        Some(&crate::json::record(node)),
        None::<&()>,
    )
    .await;
    app.service
        .events
        .publish("NODE_DELETED", &id, serde_json::json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinTokenRequest {
    /// How long the token may be redeemed (e.g. "1h", at most 7 days; default 1h).
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinTokenReply {
    node_id: String,
    /// Shown once; put it into the node's `daemon.joinToken`.
    token: String,
    expires_at_ms: i64,
    ca_fingerprint: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/join-token",
    tag = "nodes",
    params(("id" = String, Path)),
    request_body(content = Option<JoinTokenRequest>, content_type = "application/json"),
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn join_token(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<JoinTokenReply>)> {
    who.require("nodes:write")?;
    prexor_domain::validate_name(&id)
        .map_err(|e| ApiError::field("nodeId", format!("{id:?}: {e}")))?;
    let request: JoinTokenRequest = crate::error::optional_body(&body)?;
    let ttl = match &request.expires_in {
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::field("expiresIn", format!("{text:?} is not a duration: {e}"))
        })?,
        None => Duration::from_secs(3600),
    };
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::field(
            "expiresIn",
            "must be more than zero and at most 7 days",
        ));
    }
    let store = app.store();
    let ca = prexor_pki::records::published_ca(store)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "NO_CA",
                "the cluster has no CA yet: start prexor-ca with --bootstrap on the first controller",
            )
        })?;
    let (token, expires_at_ms) = prexor_pki::records::create_join_token(
        store,
        &id,
        &ca.certificate,
        ttl,
        &format!("{} via {}", who.user, app.service.config.replica_id),
    )
    .await?;
    app.audit::<(), _>(
        &who,
        "node.join-token",
        &id,
        None,
        Some(&serde_json::json!({ "expiresAtMs": expires_at_ms })),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenReply {
            node_id: id,
            token: token.to_string(),
            expires_at_ms,
            ca_fingerprint: ca.certificate.fingerprint.clone(),
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertIssueRequest {
    /// PEM `CERTIFICATE REQUEST` generated on the node (its key never leaves it); subject and SAN
    /// must name this node.
    csr_pem: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertIssueReply {
    node_id: String,
    /// The node certificate followed by the CA certificate.
    chain_pem: String,
    serial: String,
    not_after_unix: i64,
    ca_fingerprint: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/cert-issue",
    tag = "nodes",
    params(("id" = String, Path)),
    request_body = CertIssueRequest,
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn cert_issue(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
    Body(request): Body<CertIssueRequest>,
) -> ApiResult<(StatusCode, Json<CertIssueReply>)> {
    who.require("nodes:write")?;
    prexor_domain::validate_name(&id)
        .map_err(|e| ApiError::field("nodeId", format!("{id:?}: {e}")))?;
    if !request.csr_pem.contains("BEGIN CERTIFICATE REQUEST") {
        return Err(ApiError::field(
            "csrPem",
            "is not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)",
        ));
    }
    let signed = app
        .signer
        .sign_node(&id, &request.csr_pem)
        .await
        .map_err(|err| match err {
            SignerError::NoSigner { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NO_CA_KEY",
                err.to_string(),
            ),
            SignerError::Refused(message) => ApiError::field("csrPem", message),
        })?;
    app.audit::<(), _>(
        &who,
        "node.cert-issue",
        &id,
        None,
        Some(
            &serde_json::json!({ "serial": &signed.serial, "notAfterUnix": signed.not_after_unix }),
        ),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CertIssueReply {
            node_id: id,
            chain_pem: signed.chain_pem,
            serial: signed.serial,
            not_after_unix: signed.not_after_unix,
            ca_fingerprint: signed.ca_fingerprint,
        }),
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DrainRequest {
    /// How long the node's instances get to stop before they are killed (default 10m).
    #[serde(default)]
    timeout: Option<String>,
    /// Shut the daemon down once the node is empty (default: leave it running, cordoned).
    #[serde(default)]
    shutdown: bool,
}

fn open_drain(drain: &Document) -> bool {
    matches!(drain.get_str("state"), Ok("PENDING" | "DRAINING"))
}

async fn find_drain(app: &App, id: &str) -> ApiResult<Option<Document>> {
    Ok(app.by_id(NODE_DRAINS, id).await?)
}

/// Creates the durable drain intent; a scheduler replica carries it out under
/// `workflow:drain-<node>`.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/drain",
    tag = "nodes",
    params(("id" = String, Path)),
    request_body(content = Option<DrainRequest>, content_type = "application/json"),
    responses((status = 202, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn drain(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("nodes:write")?;
    let request: DrainRequest = crate::error::optional_body(&body)?;
    let timeout = match &request.timeout {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| ApiError::field("timeout", format!("{text:?} is not a duration: {e}")))?,
        None => DEFAULT_DRAIN_TIMEOUT,
    };
    if timeout.is_zero() || timeout > MAX_DRAIN_TIMEOUT {
        return Err(ApiError::field(
            "timeout",
            "must be more than zero and at most 24h",
        ));
    }
    find(&app, &id).await?;
    let scope = prexor_domain::Scope::Workflow(format!("drain-{id}"));
    if prexor_domain::validate_name(&format!("drain-{id}")).is_err() {
        return Err(ApiError::field(
            "nodeId",
            format!("{id:?} is too long to name its drain workflow (at most 57 characters)"),
        ));
    }
    if let Some(current) = find_drain(&app, &id).await?
        && open_drain(&current)
    {
        return Err(ApiError::conflict(format!(
            "node {id:?} is already being drained (since {}); cancel it with POST /nodes/{id}/undrain",
            current.get_i64("requestedAtMs").unwrap_or(0)
        )));
    }
    let intent = doc! {
        "state": "PENDING",
        "timeoutMs": timeout.as_millis() as i64,
        "shutdown": request.shutdown,
        "requestedBy": &who.user,
        "requestedAtMs": prexor_domain::now_ms(),
        "workflow": scope.to_string(),
    };
    let store = app.store();
    // Replaces a finished drain's record; an open one is never overwritten.
    let written = store
        .bounded(
            "recording the drain",
            store
                .documents(NODE_DRAINS)
                .update_one(
                    doc! { "_id": &id, "state": { "$nin": ["PENDING", "DRAINING"] } },
                    doc! { "$set": &intent, "$unset": { "startedAtMs": "", "finishedAtMs": "" } },
                )
                .upsert(true),
        )
        .await;
    match written {
        Ok(_) => {}
        Err(err) if err.is_duplicate_key() => {
            return Err(ApiError::conflict(format!(
                "node {id:?} is already being drained"
            )));
        }
        Err(err) => return Err(err.into()),
    }
    app.audit::<(), _>(&who, "node.drain", &id, None, Some(&intent))
        .await;
    app.service
        .events
        .publish("NODE_DRAIN_REQUESTED", &id, serde_json::json!({}))
        .await;
    let drain = find_drain(&app, &id).await?.unwrap_or(intent);
    Ok((StatusCode::ACCEPTED, Json(drain_view(drain))))
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/drain",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn drain_status(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("nodes:read")?;
    let drain = find_drain(&app, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {id:?} was never drained")))?;
    Ok(Json(drain_view(drain)))
}

/// Cancels an open drain and uncordons the node.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/undrain",
    tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn undrain(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("nodes:write")?;
    find(&app, &id).await?;
    let store = app.store();
    store
        .bounded(
            "cancelling the drain",
            store.documents(NODE_DRAINS).update_one(
                doc! { "_id": &id, "state": { "$in": ["PENDING", "DRAINING"] } },
                doc! { "$set": { "state": "CANCELLED", "cancelledBy": &who.user, "finishedAtMs": prexor_domain::now_ms() } },
            ),
        )
        .await?;
    app.audit::<(), ()>(&who, "node.undrain", &id, None, None)
        .await;
    set_cordon(app, who, id, false).await
}
