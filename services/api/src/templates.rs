//! Templates: named, versioned tar.gz layers, stored content-addressed in MongoDB (`blobs`, by
//! SHA-256). Groups refer to a layer by hash, or by name (and optionally version), which the API
//! resolves to the hash when the spec is written, so an instance's plan names exactly the bytes it
//! runs. Moving a template's current version (upload, rollback) changes nothing that runs: the next
//! group update or deployment picks it up.

use axum::body::Body as Raw;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mongodb::bson::{Document, doc};
use prexor_domain::{GroupSpec, is_sha256_hex, now_ms};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Body};
use crate::uploads;

pub const TEMPLATES: &str = "templates";

pub fn routes() -> Router<App> {
    Router::new()
        .route("/templates", get(list))
        .route("/templates/{name}", get(show).put(upload).delete(remove))
        .route("/templates/{name}/rollback", post(rollback))
        .route("/templates/{name}/versions/{version}/content", get(content))
}

async fn find(app: &App, name: &str) -> ApiResult<Document> {
    app.must_find(TEMPLATES, "template", name).await
}

fn versions(template: &Document) -> Vec<Document> {
    template
        .get_array("versions")
        .map(|a| a.iter().filter_map(|v| v.as_document().cloned()).collect())
        .unwrap_or_default()
}

fn version_of(template: &Document, version: i64) -> Option<Document> {
    versions(template)
        .into_iter()
        .find(|v| v.get_i64("version") == Ok(version))
}

fn current(template: &Document) -> Option<Document> {
    version_of(template, template.get_i64("current").ok()?)
}

#[utoipa::path(
    get,
    path = "/api/v1/templates",
    tag = "templates",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<serde_json::Value>>> {
    who.require("templates:read")?;
    let templates = app
        .store()
        .find_sorted(
            TEMPLATES,
            "listing templates",
            doc! {},
            doc! { "_id": 1 },
            None,
        )
        .await?;
    Ok(Json(
        templates
            .into_iter()
            .map(|t| {
                let head = current(&t);
                serde_json::json!({
                    "name": t.get_str("_id").unwrap_or_default(),
                    "current": t.get_i64("current").ok(),
                    "hash": head.as_ref().and_then(|v| v.get_str("hash").ok()),
                    "size": head.as_ref().and_then(|v| v.get_i64("size").ok()),
                    "versions": versions(&t).len(),
                })
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn show(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("templates:read")?;
    Ok(Json(crate::json::record(find(&app, &name).await?)))
}

/// A checked layer, stored.
pub struct Layer {
    pub hash: String,
    pub size: u64,
    pub files: u64,
}

/// Streams a tar.gz request body to a spool file, checks it within the `uploads.layer*`
/// limits (paths stay inside, no special files) and stores it content-addressed.
pub async fn receive_layer(app: &App, headers: &HeaderMap, body: Raw) -> ApiResult<Layer> {
    let spooled = uploads::spool(headers, body, app.uploads.layer_bytes, "a layer").await?;
    let summary = uploads::check(&spooled, uploads::layer_limits(app)).await?;
    app.store()
        .put_blob_file(&spooled.path, &spooled.hash)
        .await?;
    Ok(Layer {
        hash: spooled.hash,
        size: spooled.size,
        files: summary.entries,
    })
}

/// `PUT /templates/{name}` with a tar.gz body: a new version (201), or the current one again if
/// the bytes are the same (200).
#[utoipa::path(
    put,
    path = "/api/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the layer as .tar.gz bytes"),
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn upload(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Raw,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    who.require("templates:write")?;
    prexor_domain::validate_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    let Layer { hash, size, files } = receive_layer(&app, &headers, body).await?;
    let store = app.store();
    let existing = store
        .bounded(
            "reading a template",
            store.documents(TEMPLATES).find_one(doc! { "_id": &name }),
        )
        .await?;
    if let Some(template) = &existing
        && current(template).is_some_and(|v| v.get_str("hash") == Ok(hash.as_str()))
    {
        return Ok((StatusCode::OK, Json(crate::json::record(template.clone()))));
    }
    let next = existing.as_ref().map_or(1, |t| {
        versions(t)
            .iter()
            .filter_map(|v| v.get_i64("version").ok())
            .max()
            .unwrap_or(0)
            + 1
    });
    let version = doc! {
        "version": next,
        "hash": &hash,
        "size": size as i64,
        "files": files as i64,
        "uploadedBy": &who.user,
        "uploadedAtMs": now_ms(),
    };
    // Compare-and-set on the version count: two concurrent uploads never get the same number.
    let filter = match &existing {
        Some(t) => doc! { "_id": &name, "versions": { "$size": versions(t).len() as i64 } },
        None => doc! { "_id": &name },
    };
    let written = store
        .bounded(
            "recording the template version",
            store
                .documents(TEMPLATES)
                .update_one(
                    filter,
                    doc! { "$push": { "versions": &version }, "$set": { "current": next } },
                )
                .upsert(existing.is_none()),
        )
        .await;
    match written {
        Ok(result) if result.matched_count == 1 || result.upserted_id.is_some() => {}
        Ok(_) => {
            return Err(ApiError::conflict(format!(
                "template {name:?} changed concurrently; upload again"
            )));
        }
        Err(err) if err.is_duplicate_key() => {
            return Err(ApiError::conflict(format!(
                "template {name:?} was created concurrently; upload again"
            )));
        }
        Err(err) => return Err(err.into()),
    }
    app.audit::<(), _>(&who, "template.upload", &name, None, Some(&version))
        .await;
    app.service
        .events
        .publish(
            "TEMPLATE_UPLOADED",
            &name,
            serde_json::json!({ "version": next, "hash": &hash }),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(crate::json::record(find(&app, &name).await?)),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rollback {
    version: i64,
}

#[utoipa::path(
    post,
    path = "/api/v1/templates/{name}/rollback",
    tag = "templates",
    params(("name" = String, Path)),
    request_body = Rollback,
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn rollback(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(request): Body<Rollback>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require("templates:write")?;
    let template = find(&app, &name).await?;
    if version_of(&template, request.version).is_none() {
        return Err(ApiError::field(
            "version",
            format!("template {name:?} has no version {}", request.version),
        ));
    }
    let before = template.get_i64("current").ok();
    let store = app.store();
    store
        .bounded(
            "moving the template's current version",
            store.documents(TEMPLATES).update_one(
                doc! { "_id": &name },
                doc! { "$set": { "current": request.version } },
            ),
        )
        .await?;
    app.audit(
        &who,
        "template.rollback",
        &name,
        Some(&before),
        Some(&request.version),
    )
    .await;
    Ok(Json(crate::json::record(find(&app, &name).await?)))
}

#[utoipa::path(
    get,
    path = "/api/v1/templates/{name}/versions/{version}/content",
    tag = "templates",
    params(("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, description = "the layer", content_type = "application/gzip", body = Vec<u8>), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn content(
    State(app): State<App>,
    who: Principal,
    Path((name, version)): Path<(String, i64)>,
) -> ApiResult<Response> {
    who.require("templates:read")?;
    let template = find(&app, &name).await?;
    let hash = version_of(&template, version)
        .and_then(|v| v.get_str("hash").ok().map(str::to_owned))
        .ok_or_else(|| {
            ApiError::not_found(format!("template {name:?} has no version {version}"))
        })?;
    let (size, body) = uploads::blob_body(&app, &hash).await?.ok_or_else(|| {
        ApiError::internal(format!("the blob {hash} of {name}@{version} is missing"))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}-{version}.tar.gz\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn remove(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("templates:write")?;
    let template = find(&app, &name).await?;
    let hashes: Vec<String> = versions(&template)
        .iter()
        .filter_map(|v| v.get_str("hash").ok().map(str::to_owned))
        .collect();
    let groups = app
        .store()
        .find_all(
            prexor_store::GROUPS,
            "finding the template's users",
            doc! {},
        )
        .await?;
    let users: Vec<&str> = groups
        .iter()
        .filter(|g| {
            g.get_document("spec")
                .ok()
                .and_then(|s| s.get_array("templates").ok())
                .is_some_and(|refs| {
                    refs.iter().filter_map(|r| r.as_document()).any(|r| {
                        r.get_str("name") == Ok(name.as_str())
                            || r.get_str("hash")
                                .is_ok_and(|h| hashes.iter().any(|x| x == h))
                    })
                })
        })
        .filter_map(|g| g.get_str("_id").ok())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "template {name:?} is used by group(s) {}; remove it from them first",
            users.join(", ")
        )));
    }
    let store = app.store();
    store
        .bounded(
            "deleting a template",
            store.documents(TEMPLATES).delete_one(doc! { "_id": &name }),
        )
        .await?;
    app.audit(
        &who,
        "template.delete",
        &name,
        Some(&crate::json::record(template)),
        None::<&()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Resolves every template reference of `spec` to a hash: by name (the pinned `version`, else the
/// current one); a given hash must be a stored layer. 400 naming the reference otherwise.
/// Whether `hash` is the layer of some template version (and stored).
async fn is_template_layer(app: &App, hash: &str) -> ApiResult<bool> {
    let named = app
        .store()
        .find_projected(
            TEMPLATES,
            "finding a template layer",
            doc! { "versions.hash": hash },
            doc! { "_id": 1 },
        )
        .await?;
    Ok(!named.is_empty() && app.store().blob_size(hash).await?.is_some())
}

pub async fn resolve(app: &App, spec: &mut GroupSpec) -> ApiResult<()> {
    for (i, reference) in spec.templates.iter_mut().enumerate() {
        if reference.hash.is_empty() {
            if reference.name.is_empty() {
                return Err(ApiError::field(
                    &format!("templates[{i}]"),
                    "give the template's name (and optionally version) or a layer hash",
                ));
            }
            let template = find(app, &reference.name).await.map_err(|_| {
                ApiError::field(
                    &format!("templates[{i}].name"),
                    format!("no template {:?}; upload it first", reference.name),
                )
            })?;
            let chosen = match reference.version {
                Some(v) => version_of(&template, i64::from(v)),
                None => current(&template),
            }
            .ok_or_else(|| {
                ApiError::field(
                    &format!("templates[{i}].version"),
                    format!(
                        "template {:?} has no version {}",
                        reference.name,
                        reference
                            .version
                            .map_or("current".into(), |v| v.to_string())
                    ),
                )
            })?;
            reference.hash = chosen.get_str("hash").unwrap_or_default().to_owned();
            reference.version = chosen.get_i64("version").ok().map(|v| v as u32);
        } else if is_sha256_hex(&reference.hash) && !is_template_layer(app, &reference.hash).await?
        {
            // Only a template version's layer: any other blob (a module, a backup archive) is
            // not for a group's servers to unpack.
            return Err(ApiError::field(
                &format!("templates[{i}].hash"),
                format!(
                    "{} is not the layer of any template version; upload it as a template first",
                    reference.hash
                ),
            ));
        }
    }
    Ok(())
}
