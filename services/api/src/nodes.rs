//! Nodes: list, get, cordon / uncordon, delete (refused while connected), join tokens and
//! certificate issue for a node's CSR (503 with the operator page's message when no reachable
//! CA replica holds the key).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use mongodb::bson::doc;
use prexor_serve::signer::SignerError;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, ErrorCode, Json, conflict_if_taken};
use crate::paging::{Page, PageRequest};

use prexor_model::nodes::NODE_ALLOCATIONS;
use prexor_model::nodes::NODE_DRAINS;
use prexor_model::nodes::NODES;
use prexor_model::nodes::{DrainRecord, DrainState, NodeAllocation, NodeRecord, NodeState};

mod views;
pub(crate) use views::{NodeDrainView, NodeView};
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
    get, path = "/api/v1/nodes", tag = "nodes", params(PageRequest),
    responses((status = 200, body = Page<NodeView>))
)]
async fn list(Caller(app, who): Caller, page: PageRequest) -> ApiResult<Json<Page<NodeView>>> {
    Ok(Json(list_nodes(&app, &who, &page).await?))
}

/// A page of the nodes with their allocations and drains, for `who` (`nodes:read`).
pub(crate) async fn list_nodes(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<NodeView>> {
    who.require("nodes:read")?;
    let nodes: Page<NodeRecord> = app.page("listing nodes", doc! {}, page).await?;
    let ids =
        doc! { "_id": { "$in": nodes.items.iter().map(|n| n.id.as_str()).collect::<Vec<_>>() } };
    let (allocations, drains) = tokio::try_join!(
        app.records::<NodeAllocation>(
            NODE_ALLOCATIONS,
            "reading node allocations",
            ids.clone(),
            doc! {},
            None
        ),
        app.records::<DrainRecord>(NODE_DRAINS, "reading node drains", ids, doc! {}, None),
    )?;
    let reserved: HashMap<String, i64> = allocations
        .into_iter()
        .map(|a| (a.id, a.reserved_mb))
        .collect();
    let mut drains: HashMap<String, DrainRecord> =
        drains.into_iter().map(|d| (d.id.clone(), d)).collect();
    Ok(nodes.map(|node| {
        let reserved_mb = reserved.get(&node.id).copied().unwrap_or(0);
        let drain = drains.remove(&node.id);
        NodeView::new(node, reserved_mb, drain)
    }))
}

/// `node` as the API shows it (with its allocation and drain).
async fn view(app: &App, node: NodeRecord) -> ApiResult<NodeView> {
    let (allocation, drain) = tokio::try_join!(
        app.record::<NodeAllocation>(NODE_ALLOCATIONS, &node.id),
        app.record::<DrainRecord>(NODE_DRAINS, &node.id),
    )?;
    let reserved_mb = allocation.map_or(0, |a| a.reserved_mb);
    Ok(NodeView::new(node, reserved_mb, drain))
}

#[utoipa::path(
    get, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 200, body = NodeView))
)]
async fn show(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<Json<NodeView>> {
    Ok(Json(show_node(&app, &who, &id).await?))
}

/// Node `id` with its allocation and drain, for `who` (`nodes:read`).
pub(crate) async fn show_node(app: &App, who: &Principal, id: &str) -> ApiResult<NodeView> {
    who.require("nodes:read")?;
    let node = app.find(id).await?;
    view(app, node).await
}

/// Cordons (`cordoned`) or uncordons node `id` for `who` (`nodes:write`).
pub(crate) async fn set_cordon(
    app: App,
    who: Principal,
    id: String,
    cordoned: bool,
) -> ApiResult<StatusCode> {
    who.require("nodes:write")?;
    let before: NodeRecord = app.find(&id).await?;
    // `$set` of one field: the gateway's own `$set`s of the node's state never erase it.
    let set = doc! { "$set": { "cordoned": cordoned } };
    app.update_by_id(NODES, "cordoning a node", &id, set)
        .await?;
    let (action, kind) = if cordoned {
        ("node.cordon", "NODE_CORDONED")
    } else {
        ("node.uncordon", "NODE_UNCORDONED")
    };
    app.audit_and_publish(
        &who,
        action,
        &id,
        Some(&before.cordoned),
        Some(&cordoned),
        kind,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

crate::app::variants! {
    set_cordon -> StatusCode, "nodes", responses((status = 204)) {
        cordon = post "/api/v1/nodes/{id}/cordon" (true);
        uncordon = post "/api/v1/nodes/{id}/uncordon" (false);
    }
}

#[utoipa::path(
    delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 204))
)]
async fn remove(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    delete_node(&app, &who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes node `id` (refused while it is connected) and revokes its certificates, for `who`
/// (`nodes:write`).
pub(crate) async fn delete_node(app: &App, who: &Principal, id: &str) -> ApiResult<()> {
    who.require("nodes:write")?;
    let node: NodeRecord = app.find(id).await?;
    if node.is_online() {
        return Err(ApiError::conflict(format!(
            "node {id:?} is connected (through gateway {}); stop its daemon first",
            node.gateway
        )));
    }
    let before = view(app, node).await?;
    let store = app.store();
    store
        .bounded(
            "deleting a node",
            store
                .documents(NODES)
                .delete_one(doc! { "_id": id, "state": { "$ne": NodeState::Online } }),
        )
        .await?;
    // A deleted node cannot come back with the certificate it had.
    let revoked = prexor_model::pki::revoke_node(app.store(), id, "the node was deleted").await?;
    tracing::info!(node = %id, certificates = revoked, "node deleted; its certificates are revoked");
    app.audit_and_publish(
        who,
        "node.delete",
        id,
        Some(&before),
        None::<&()>,
        "NODE_DELETED",
        serde_json::json!({}),
    )
    .await;
    Ok(())
}

/// 400 unless `id` can name a node.
fn check_node_id(id: &str) -> ApiResult<()> {
    prexor_domain::validate_name(id).map_err(|e| ApiError::field("nodeId", format!("{id:?}: {e}")))
}

/// The duration a request asks for as `field` (`default` without one): more than zero and at
/// most `max` (`max_said`, as the 400 says it).
fn requested(
    field: &str,
    text: Option<&str>,
    default: Duration,
    max: Duration,
    max_said: &str,
) -> ApiResult<Duration> {
    let duration = text.map_or(Ok(default), |text| crate::error::duration(field, text))?;
    if duration.is_zero() || duration > max {
        return Err(ApiError::field(
            field,
            format!("must be more than zero and at most {max_said}"),
        ));
    }
    Ok(duration)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinTokenRequest {
    /// How long the token may be redeemed (e.g. "1h", at most 7 days; default 1h).
    #[serde(default)]
    expires_in: Option<String>,
}

/// A single-use join token for a node.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinTokenReply {
    pub(crate) node_id: String,
    /// Shown once; put it into the node's `daemon.joinToken`.
    pub(crate) token: String,
    pub(crate) expires_at_ms: i64,
    pub(crate) ca_fingerprint: String,
}

#[utoipa::path(
    post, path = "/api/v1/nodes/{id}/join-token", tag = "nodes",
    request_body(content = Option<JoinTokenRequest>, content_type = "application/json"),
    responses((status = 201, body = JoinTokenReply))
)]
async fn join_token(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<JoinTokenReply>)> {
    who.require("nodes:write")?;
    let request: JoinTokenRequest = crate::error::optional_body(&body)?;
    let reply = create_join_token(&app, &who, &id, request.expires_in.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

/// A single-use join token for node `id`, valid `expires_in` (default 1h), for `who`
/// (`nodes:write`).
pub(crate) async fn create_join_token(
    app: &App,
    who: &Principal,
    id: &str,
    expires_in: Option<&str>,
) -> ApiResult<JoinTokenReply> {
    who.require("nodes:write")?;
    check_node_id(id)?;
    let ttl = requested(
        "expiresIn",
        expires_in,
        Duration::from_secs(3600),
        MAX_JOIN_TOKEN_TTL,
        "7 days",
    )?;
    let store = app.store();
    let ca = prexor_model::pki::published_ca(store)
        .await?
        .ok_or_else(|| {
            ApiError::new(
 ErrorCode::NoCa,
                "the cluster has no CA yet: start prexor-ca with --bootstrap on the first controller",
            )
        })?;
    let (token, expires_at_ms) = prexor_model::pki::create_join_token(
        store,
        id,
        &ca.certificate,
        ttl,
        &format!("{} via {}", who.user, app.service.config.replica_id),
    )
    .await?;
    app.audit::<(), _>(
        who,
        "node.join-token",
        id,
        None,
        Some(&serde_json::json!({ "expiresAtMs": expires_at_ms })),
    )
    .await;
    Ok(JoinTokenReply {
        node_id: id.to_owned(),
        token: token.to_string(),
        expires_at_ms,
        ca_fingerprint: ca.certificate.fingerprint.clone(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertIssueRequest {
    /// PEM `CERTIFICATE REQUEST` generated on the node (its key never leaves it); subject and SAN
    /// must name this node.
    csr_pem: String,
}

/// A node certificate signed for the node's CSR.
#[derive(Serialize, utoipa::ToSchema)]
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
    post, path = "/api/v1/nodes/{id}/cert-issue", tag = "nodes",
    responses((status = 201, body = CertIssueReply))
)]
async fn cert_issue(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    Json(request): Json<CertIssueRequest>,
) -> ApiResult<(StatusCode, Json<CertIssueReply>)> {
    who.require("nodes:write")?;
    check_node_id(&id)?;
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
            SignerError::NoSigner { .. } => ApiError::new(ErrorCode::NoCaKey, err.to_string()),
            SignerError::Refused(message) => ApiError::field("csrPem", message),
            SignerError::Pki(problem) => ApiError::field("csrPem", problem.to_string()),
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

async fn find_drain(app: &App, id: &str) -> ApiResult<Option<DrainRecord>> {
    app.record(NODE_DRAINS, id).await
}

/// Creates the durable drain intent; a scheduler replica carries it out under
/// `workflow:drain-<node>`.
#[utoipa::path(
    post, path = "/api/v1/nodes/{id}/drain", tag = "nodes",
    request_body(content = Option<DrainRequest>, content_type = "application/json"),
    responses((status = 202, body = NodeDrainView))
)]
async fn drain(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<NodeDrainView>)> {
    who.require("nodes:write")?;
    let request: DrainRequest = crate::error::optional_body(&body)?;
    let drain = start_drain(
        &app,
        &who,
        &id,
        request.timeout.as_deref(),
        request.shutdown,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(drain)))
}

/// Records the drain intent for node `id` (its instances get `timeout`, default 10m; the
/// daemon is shut down once empty when `shutdown`), for `who` (`nodes:write`).
pub(crate) async fn start_drain(
    app: &App,
    who: &Principal,
    id: &str,
    timeout: Option<&str>,
    shutdown: bool,
) -> ApiResult<NodeDrainView> {
    who.require("nodes:write")?;
    let id = id.to_owned();
    let timeout = requested(
        "timeout",
        timeout,
        DEFAULT_DRAIN_TIMEOUT,
        MAX_DRAIN_TIMEOUT,
        "24h",
    )?;
    app.find::<NodeRecord>(&id).await?;
    let scope = prexor_domain::Scope::drain(&id);
    if scope.to_string().parse::<prexor_domain::Scope>().is_err() {
        return Err(ApiError::field(
            "nodeId",
            format!("{id:?} is too long to name its drain workflow (at most 57 characters)"),
        ));
    }
    if let Some(current) = find_drain(app, &id).await?
        && current.is_open()
    {
        return Err(ApiError::conflict(format!(
            "node {id:?} is already being drained (since {}); cancel it with POST /nodes/{id}/undrain",
            current.requested_at_ms
        )));
    }
    let intent = DrainRecord {
        id: id.clone(),
        state: DrainState::Pending,
        timeout_ms: timeout.as_millis() as i64,
        shutdown,
        requested_by: who.user.clone(),
        requested_at_ms: prexor_domain::now_ms(),
        workflow: scope.to_string(),
        started_at_ms: None,
        holder: None,
        shutdown_requested_at_ms: None,
        shutdown_token: None,
        finished_at_ms: None,
        cancelled_by: None,
    };
    let mut set = mongodb::bson::to_document(&intent)
        .map_err(|e| ApiError::internal(format!("encoding the drain: {e}")))?;
    set.remove("_id");
    // Replaces a finished drain's record; an open one is never overwritten.
    let finished = doc! { "_id": &id, "state": { "$nin": DrainState::any_of(DrainState::OPEN) } };
    let replace = doc! { "$set": &set, "$unset": { "startedAtMs": "", "finishedAtMs": "" } };
    app.update_one(NODE_DRAINS, "recording the drain", finished, replace, true)
        .await
        .map_err(|err| {
            conflict_if_taken(err, || format!("node {id:?} is already being drained"))
        })?;
    app.audit_and_publish::<(), _>(
        who,
        "node.drain",
        &id,
        None,
        Some(&set),
        "NODE_DRAIN_REQUESTED",
        serde_json::json!({}),
    )
    .await;
    let drain = find_drain(app, &id).await?.unwrap_or(intent);
    Ok(drain.into())
}

#[utoipa::path(
    get, path = "/api/v1/nodes/{id}/drain", tag = "nodes",
    responses((status = 200, body = NodeDrainView))
)]
async fn drain_status(
    Caller(app, who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeDrainView>> {
    who.require("nodes:read")?;
    let drain = find_drain(&app, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {id:?} was never drained")))?;
    Ok(Json(drain.into()))
}

/// Cancels an open drain and uncordons the node.
#[utoipa::path(
    post, path = "/api/v1/nodes/{id}/undrain", tag = "nodes",
    responses((status = 204))
)]
async fn undrain(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    undrain_node(app, who, id).await
}

/// Cancels node `id`'s open drain and uncordons it, for `who` (`nodes:write`).
pub(crate) async fn undrain_node(app: App, who: Principal, id: String) -> ApiResult<StatusCode> {
    who.require("nodes:write")?;
    app.find::<NodeRecord>(&id).await?;
    let open = doc! { "_id": &id, "state": DrainState::open_filter() };
    let cancel = doc! { "$set": { "state": DrainState::Cancelled, "cancelledBy": &who.user, "finishedAtMs": prexor_domain::now_ms() } };
    app.update_one(NODE_DRAINS, "cancelling the drain", open, cancel, false)
        .await?;
    app.audit::<(), ()>(&who, "node.undrain", &id, None, None)
        .await;
    set_cordon(app, who, id, false).await
}
