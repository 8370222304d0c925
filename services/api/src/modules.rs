//! Platform modules: versioned artifacts (tar.gz layers, stored by hash) installed cluster-wide
//! and attached to groups, whose instances get the active version in their plans. Uploading a
//! version stores it; install / upgrade / uninstall / storage deletion are mutation intents that
//! the holder of `prexor:v1:lease:platform-module` carries out step by step. One mutation at a
//! time, cluster-wide: a second request while one is in flight is a 409.

use axum::body::Body as Raw;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use mongodb::bson::{Document, doc};
use prexor_domain::now_ms;
use serde::Deserialize;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Body};
use crate::templates::{Layer, receive_layer};

pub const MODULES: &str = "modules";
/// The one mutation in flight (`_id: "current"`), created here, completed by the scheduler.
pub const MODULE_MUTATION: &str = "module_mutation";

pub fn routes() -> Router<App> {
    Router::new()
        .route("/modules", get(list))
        .route("/modules/{name}", get(show).delete(delete_storage))
        .route("/modules/{name}/versions/{version}", put(upload))
        .route("/modules/{name}/install", post(install))
        .route("/modules/{name}/upgrade", post(upgrade))
        .route("/modules/{name}/uninstall", post(uninstall))
        .route("/modules/mutation", get(mutation))
}

async fn find(app: &App, name: &str) -> ApiResult<Document> {
    app.must_find(MODULES, "module", name).await
}

fn version_hash(module: &Document, version: &str) -> Option<String> {
    module
        .get_array("versions")
        .ok()?
        .iter()
        .filter_map(|v| v.as_document())
        .find(|v| v.get_str("version") == Ok(version))
        .and_then(|v| v.get_str("hash").ok().map(str::to_owned))
}

#[utoipa::path(
    get,
    path = "/api/v1/modules",
    tag = "modules",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<serde_json::Value>>> {
    who.require("modules:read")?;
    let modules = app
        .store()
        .find_sorted(MODULES, "listing modules", doc! {}, doc! { "_id": 1 }, None)
        .await?;
    Ok(Json(modules.into_iter().map(crate::json::record).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/modules/{name}",
    tag = "modules",
    params(("name" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn show(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("modules:read")?;
    Ok(Json(crate::json::record(find(&app, &name).await?)))
}

/// The mutation in flight, if any (`null` otherwise).
#[utoipa::path(
    get,
    path = "/api/v1/modules/mutation",
    tag = "modules",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn mutation(State(app): State<App>, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    who.require("modules:read")?;
    let store = app.store();
    let current = store
        .bounded(
            "reading the module mutation",
            store
                .documents(MODULE_MUTATION)
                .find_one(doc! { "_id": "current" }),
        )
        .await?;
    Ok(Json(
        current.map_or(serde_json::Value::Null, crate::json::record),
    ))
}

fn check_version(version: &str) -> ApiResult<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "version",
            "must be 1 to 64 characters of letters, digits and . _ - +",
        ))
    }
}

/// `PUT /modules/{name}/versions/{version}` with the artifact (tar.gz): stores a version.
#[utoipa::path(
    put,
    path = "/api/v1/modules/{name}/versions/{version}",
    tag = "modules",
    params(("name" = String, Path), ("version" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the layer as .tar.gz bytes"),
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn upload(
    State(app): State<App>,
    who: Principal,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Raw,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("modules:write")?;
    prexor_domain::validate_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    check_version(&version)?;
    let Layer { hash, size, files } = receive_layer(&app, &headers, body).await?;
    let store = app.store();
    let existing = store
        .bounded(
            "reading a module",
            store.documents(MODULES).find_one(doc! { "_id": &name }),
        )
        .await?;
    if let Some(module) = &existing
        && let Some(stored) = version_hash(module, &version)
    {
        if stored == hash {
            return Ok((StatusCode::OK, Json(crate::json::record(module.clone()))));
        }
        return Err(ApiError::conflict(format!(
            "module {name:?} already has a different version {version:?}; versions are immutable, upload it under a new version"
        )));
    }
    let entry = doc! {
        "version": &version,
        "hash": &hash,
        "size": size as i64,
        "files": files as i64,
        "uploadedBy": &who.user,
        "uploadedAtMs": now_ms(),
    };
    store
        .bounded(
            "recording the module version",
            store
                .documents(MODULES)
                .update_one(
                    doc! { "_id": &name, "versions.version": { "$ne": &version } },
                    doc! {
                        "$push": { "versions": &entry },
                        "$setOnInsert": { "state": "NEW", "createdAtMs": now_ms() },
                    },
                )
                .upsert(existing.is_none()),
        )
        .await
        .map_err(|e| {
            if e.is_duplicate_key() {
                ApiError::conflict(format!(
                    "module {name:?} changed concurrently; upload again"
                ))
            } else {
                e.into()
            }
        })?;
    app.audit::<(), _>(&who, "module.upload", &name, None, Some(&entry))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(crate::json::record(find(&app, &name).await?)),
    ))
}

/// Records `action` as the cluster's one module mutation in flight (409 if there is one).
async fn request(
    app: &App,
    who: &Principal,
    name: &str,
    action: &str,
    version: Option<(&str, &str)>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let mut record = doc! {
        "_id": "current",
        "module": name,
        "action": action,
        "step": "REQUESTED",
        "requestedBy": &who.user,
        "requestedAtMs": now_ms(),
    };
    if let Some((version, hash)) = version {
        record.insert("version", version);
        record.insert("hash", hash);
    }
    let store = app.store();
    match store
        .bounded(
            "recording the module mutation",
            store.documents(MODULE_MUTATION).insert_one(&record),
        )
        .await
    {
        Ok(_) => {}
        Err(err) if err.is_duplicate_key() => {
            let current = store
                .bounded(
                    "reading the module mutation",
                    store
                        .documents(MODULE_MUTATION)
                        .find_one(doc! { "_id": "current" }),
                )
                .await?
                .unwrap_or_default();
            return Err(ApiError::conflict(format!(
                "another module mutation is in flight ({} of {}, step {}); wait until it is done",
                current.get_str("action").unwrap_or("?"),
                current.get_str("module").unwrap_or("?"),
                current.get_str("step").unwrap_or("?"),
            )));
        }
        Err(err) => return Err(err.into()),
    }
    app.audit::<(), _>(who, &format!("module.{action}"), name, None, Some(&record))
        .await;
    app.service
        .events
        .publish(
            "MODULE_MUTATION_REQUESTED",
            name,
            serde_json::json!({ "action": action, "version": version.map(|v| v.0) }),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(crate::json::record(record))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VersionRequest {
    version: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/modules/{name}/install",
    tag = "modules",
    params(("name" = String, Path)),
    request_body = VersionRequest,
    responses((status = 202, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn install(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(request_body): Body<VersionRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("modules:write")?;
    let module = find(&app, &name).await?;
    if module.get_str("state") == Ok("ACTIVE") {
        return Err(ApiError::conflict(format!(
            "module {name:?} is installed (version {}); upgrade it instead",
            active_version(&module).unwrap_or("?")
        )));
    }
    request_version(&app, &who, &name, &module, "install", &request_body.version).await
}

/// The version a module runs, if it is installed.
fn active_version(module: &Document) -> Option<&str> {
    module
        .get_document("active")
        .ok()
        .and_then(|a| a.get_str("version").ok())
}

/// Requests `action` (install, upgrade) of `version`, which must have been uploaded.
async fn request_version(
    app: &App,
    who: &Principal,
    name: &str,
    module: &Document,
    action: &str,
    version: &str,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let hash = version_hash(module, version).ok_or_else(|| {
        ApiError::field(
            "version",
            format!("module {name:?} has no version {version:?}; upload it first"),
        )
    })?;
    request(app, who, name, action, Some((version, &hash))).await
}

#[utoipa::path(
    post,
    path = "/api/v1/modules/{name}/upgrade",
    tag = "modules",
    params(("name" = String, Path)),
    request_body = VersionRequest,
    responses((status = 202, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn upgrade(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(request_body): Body<VersionRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("modules:write")?;
    let module = find(&app, &name).await?;
    if module.get_str("state") != Ok("ACTIVE") {
        return Err(ApiError::conflict(format!(
            "module {name:?} is not installed; install it instead"
        )));
    }
    let active = active_version(&module).unwrap_or_default();
    if active == request_body.version {
        return Err(ApiError::conflict(format!(
            "module {name:?} already runs version {active}"
        )));
    }
    request_version(&app, &who, &name, &module, "upgrade", &request_body.version).await
}

/// Groups that attach `name`.
async fn attached_to(app: &App, name: &str) -> ApiResult<Vec<String>> {
    let groups = app
        .store()
        .find_all(
            prexor_store::GROUPS,
            "finding the module's groups",
            doc! { "spec.modules": name },
        )
        .await?;
    Ok(groups
        .iter()
        .filter_map(|g| g.get_str("_id").ok().map(str::to_owned))
        .collect())
}

#[utoipa::path(
    post,
    path = "/api/v1/modules/{name}/uninstall",
    tag = "modules",
    params(("name" = String, Path)),
    responses((status = 202, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn uninstall(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("modules:write")?;
    let module = find(&app, &name).await?;
    if module.get_str("state") != Ok("ACTIVE") {
        return Err(ApiError::conflict(format!(
            "module {name:?} is not installed"
        )));
    }
    let groups = attached_to(&app, &name).await?;
    if !groups.is_empty() {
        return Err(ApiError::conflict(format!(
            "module {name:?} is attached to group(s) {}; detach it first",
            groups.join(", ")
        )));
    }
    request(&app, &who, &name, "uninstall", None).await
}

/// `DELETE /modules/{name}`: removes the module and its stored versions (not while installed).
#[utoipa::path(
    delete,
    path = "/api/v1/modules/{name}",
    tag = "modules",
    params(("name" = String, Path)),
    responses((status = 202, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn delete_storage(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("modules:write")?;
    let module = find(&app, &name).await?;
    if module.get_str("state") == Ok("ACTIVE") {
        return Err(ApiError::conflict(format!(
            "module {name:?} is installed; uninstall it first"
        )));
    }
    request(&app, &who, &name, "delete-storage", None).await
}

/// Every module a group spec attaches must be installed (400 naming the one that is not).
pub async fn check_attached(app: &App, modules: &[String]) -> ApiResult<()> {
    for (i, name) in modules.iter().enumerate() {
        let store = app.store();
        let module = store
            .bounded(
                "reading a module",
                store.documents(MODULES).find_one(doc! { "_id": name }),
            )
            .await?;
        if module.as_ref().and_then(|m| m.get_str("state").ok()) != Some("ACTIVE") {
            return Err(ApiError::field(
                &format!("modules[{i}]"),
                format!("module {name:?} is not installed; install it first"),
            ));
        }
    }
    Ok(())
}
