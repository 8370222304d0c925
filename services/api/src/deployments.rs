//! Rolling deployments of a group to a new spec: create, list, show progress, pause, resume,
//! roll back (restores the previous spec and rolls the instances back to it). The group's lease
//! holder carries them out (`services/scheduler/src/groups/deployments.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use mongodb::bson::{self, Document, doc};
use prexor_domain::{GroupSpec, ScalingMode, now_ms};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Body};
use crate::groups::INSTANCES;

pub const DEPLOYMENTS: &str = "deployments";
const OPEN: [&str; 2] = ["ROLLING", "PAUSED"];

pub fn routes() -> Router<App> {
    Router::new()
        .route("/groups/{name}/deployments", get(list).post(create))
        .route("/deployments/{id}", get(show))
        .route("/deployments/{id}/pause", post(pause))
        .route("/deployments/{id}/resume", post(resume))
        .route("/deployments/{id}/rollback", post(rollback))
}

/// The group's open deployment, if any.
pub async fn open_deployment(app: &App, group: &str) -> ApiResult<Option<Document>> {
    let store = app.store();
    Ok(store
        .bounded(
            "reading deployments",
            store
                .documents(DEPLOYMENTS)
                .find_one(doc! { "group": group, "state": { "$in": OPEN.to_vec() } }),
        )
        .await?)
}

/// The record plus live progress from the instances (updated / active, by spec hash).
async fn view(app: &App, deployment: Document) -> ApiResult<serde_json::Value> {
    let group = deployment.get_str("group").unwrap_or_default();
    let target = deployment.get_str("targetSpecHash").unwrap_or_default();
    let instances = app
        .store()
        .find_all(
            INSTANCES,
            "reading the group's instances",
            doc! { "group": group, "state": { "$nin": ["STOPPED", "CRASHED"], "$exists": true } },
        )
        .await?;
    let updated = instances
        .iter()
        .filter(|i| i.get_str("specHash") == Ok(target) && i.get_str("state") == Ok("RUNNING"))
        .count();
    let mut json = crate::json::record(deployment);
    if let Some(object) = json.as_object_mut() {
        object.remove("fromSpec");
        object.insert(
            "live".into(),
            serde_json::json!({ "updated": updated, "active": instances.len() }),
        );
    }
    Ok(json)
}

async fn find(app: &App, id: &str) -> ApiResult<Document> {
    app.must_find(DEPLOYMENTS, "deployment", id).await
}

#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}/deployments",
    tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    who.require("deployments:read")?;
    let docs = app
        .store()
        .find_sorted(
            DEPLOYMENTS,
            "listing deployments",
            doc! { "group": &name },
            doc! { "createdAtMs": -1 },
            Some(50),
        )
        .await?;
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        out.push(view(&app, doc).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/api/v1/deployments/{id}",
    tag = "deployments",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn show(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("deployments:read")?;
    let deployment = find(&app, &id).await?;
    Ok(Json(view(&app, deployment).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewDeployment {
    /// The spec to roll out; without it the current spec is rolled out again (every instance
    /// not running it is replaced).
    #[serde(default)]
    spec: Option<GroupSpec>,
    #[serde(default = "one")]
    batch_size: i64,
    #[serde(default = "one")]
    max_unavailable: i64,
}

fn one() -> i64 {
    1
}

fn encode(spec: &GroupSpec) -> ApiResult<Document> {
    bson::to_document(spec).map_err(|e| ApiError::internal(format!("encoding the spec: {e}")))
}

#[utoipa::path(
    post,
    path = "/api/v1/groups/{name}/deployments",
    tag = "deployments",
    params(("name" = String, Path)),
    request_body = NewDeployment,
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn create(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(new): Body<NewDeployment>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("deployments:write")?;
    who.require("groups:write")?;
    if !(1..=1000).contains(&new.batch_size) {
        return Err(ApiError::field("batchSize", "must be between 1 and 1000"));
    }
    if !(1..=1000).contains(&new.max_unavailable) {
        return Err(ApiError::field(
            "maxUnavailable",
            "must be between 1 and 1000",
        ));
    }
    let store = app.store();
    let current = prexor_store::get_group(store, &name)
        .await?
        .and_then(|d| prexor_store::GroupRecord::from_doc(&d))
        .ok_or_else(|| ApiError::not_found(format!("no group {name:?}")))?;
    if current.deleting {
        return Err(ApiError::conflict(format!(
            "group {name:?} is being deleted"
        )));
    }
    if current.spec.scaling == ScalingMode::Manual {
        return Err(ApiError::conflict(format!(
            "group {name:?} is MANUAL: its instances are only started by hand, so there is nothing to roll; stop and start them instead"
        )));
    }
    if let Some(open) = open_deployment(&app, &name).await? {
        return Err(ApiError::conflict(format!(
            "deployment {} of group {name:?} is {}; wait for it, or roll it back",
            open.get_str("_id").unwrap_or("?"),
            open.get_str("state").unwrap_or("?")
        )));
    }
    let mut new = new;
    if let Some(spec) = new.spec.as_mut() {
        crate::templates::resolve(&app, spec).await?;
        crate::modules::check_attached(&app, &spec.modules).await?;
    }
    let target = match &new.spec {
        Some(spec) => {
            let problems = spec.problems(&name);
            if !problems.is_empty() {
                return Err(ApiError::invalid("the spec", &problems));
            }
            if spec.scaling == ScalingMode::Manual {
                return Err(ApiError::field(
                    "spec.scaling",
                    "a deployment cannot make a group MANUAL; update the group instead",
                ));
            }
            match prexor_store::update_group(store, &name, spec, Some(current.revision)).await {
                Ok(Some(record)) => record,
                Ok(None) => current.clone(),
                Err(prexor_store::GroupWriteError::Store(err)) => return Err(err.into()),
                Err(err) => return Err(ApiError::conflict(err.to_string())),
            }
        }
        None => current.clone(),
    };
    let id = format!("{name}-r{}-{}", target.revision, now_ms() % 100_000);
    let record = doc! {
        "_id": &id,
        "group": &name,
        "state": "ROLLING",
        "batchSize": new.batch_size,
        "maxUnavailable": new.max_unavailable,
        "fromRevision": current.revision,
        "fromSpec": encode(&current.spec)?,
        "fromSpecHash": current.spec.hash(),
        "toRevision": target.revision,
        "targetSpecHash": target.spec.hash(),
        "rolledBack": false,
        "createdBy": &who.user,
        "createdAtMs": now_ms(),
    };
    store
        .bounded(
            "recording the deployment",
            store.documents(DEPLOYMENTS).insert_one(&record),
        )
        .await?;
    app.audit::<(), _>(&who, "deployment.create", &id, None, Some(&target.spec))
        .await;
    app.service
        .events
        .publish(
            "DEPLOYMENT_CREATED",
            &id,
            serde_json::json!({ "group": &name, "revision": target.revision }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(view(&app, record).await?)))
}

/// Moves an open deployment from `from` to `to`; 409 naming its actual state otherwise.
async fn transition(
    app: &App,
    who: &Principal,
    id: &str,
    from: &str,
    to: &str,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("deployments:write")?;
    let store = app.store();
    let changed = store
        .bounded(
            "changing the deployment",
            store.documents(DEPLOYMENTS).update_one(
                doc! { "_id": id, "state": from },
                doc! { "$set": { "state": to, "updatedAtMs": now_ms() } },
            ),
        )
        .await?;
    let deployment = find(app, id).await?;
    if changed.matched_count == 0 {
        return Err(ApiError::conflict(format!(
            "deployment {id} is {}, not {from}",
            deployment.get_str("state").unwrap_or("?")
        )));
    }
    app.audit(
        who,
        &format!("deployment.{}", to.to_lowercase()),
        id,
        Some(&from),
        Some(&to),
    )
    .await;
    app.service
        .events
        .publish(
            &format!("DEPLOYMENT_{to}"),
            id,
            serde_json::json!({ "group": deployment.get_str("group").unwrap_or_default() }),
        )
        .await;
    Ok(Json(view(app, deployment).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/pause",
    tag = "deployments",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn pause(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    transition(&app, &who, &id, "ROLLING", "PAUSED").await
}

#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/resume",
    tag = "deployments",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn resume(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    transition(&app, &who, &id, "PAUSED", "ROLLING").await
}

/// Restores the spec the deployment started from and rolls every instance back to it (those
/// never updated are left alone: they already run it).
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{id}/rollback",
    tag = "deployments",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn rollback(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("deployments:write")?;
    who.require("groups:write")?;
    let deployment = find(&app, &id).await?;
    let state = deployment.get_str("state").unwrap_or_default();
    if !OPEN.contains(&state) {
        return Err(ApiError::conflict(format!(
            "deployment {id} is {state}; only a ROLLING or PAUSED deployment can be rolled back (create a new deployment with the old spec instead)"
        )));
    }
    if deployment.get_bool("rolledBack").unwrap_or(false) {
        return Err(ApiError::conflict(format!(
            "deployment {id} is already rolling back"
        )));
    }
    let group = deployment.get_str("group").unwrap_or_default().to_owned();
    let from: GroupSpec = bson::from_document(
        deployment
            .get_document("fromSpec")
            .cloned()
            .unwrap_or_default(),
    )
    .map_err(|e| {
        ApiError::internal(format!("the deployment's previous spec is unreadable: {e}"))
    })?;
    let store = app.store();
    match prexor_store::update_group(store, &group, &from, None).await {
        Ok(_) => {}
        Err(prexor_store::GroupWriteError::Store(err)) => return Err(err.into()),
        Err(err) => return Err(ApiError::conflict(err.to_string())),
    }
    store
        .bounded(
            "rolling the deployment back",
            store.documents(DEPLOYMENTS).update_one(
                doc! { "_id": &id, "state": { "$in": OPEN.to_vec() } },
                doc! { "$set": {
                    "state": "ROLLING",
                    "rolledBack": true,
                    "targetSpecHash": from.hash(),
                    "rolledBackBy": &who.user,
                    "updatedAtMs": now_ms(),
                } },
            ),
        )
        .await?;
    app.audit::<(), _>(&who, "deployment.rollback", &id, None, Some(&from))
        .await;
    app.service
        .events
        .publish(
            "DEPLOYMENT_ROLLED_BACK",
            &id,
            serde_json::json!({ "group": &group }),
        )
        .await;
    let deployment = find(&app, &id).await?;
    Ok(Json(view(&app, deployment).await?))
}
