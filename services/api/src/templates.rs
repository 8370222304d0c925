//! Templates: named, versioned tar.gz layers, stored content-addressed in MongoDB (`blobs`, by
//! SHA-256). Groups refer to a layer by hash, or by name (and optionally version), which the API
//! resolves to the hash when the spec is written, so an instance's plan names exactly the bytes it
//! runs. Moving a template's current version (upload, rollback) changes nothing that runs: the next
//! group update or deployment picks it up.

use axum::Router;
use axum::body::Body as Raw;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use mongodb::bson::{self, doc};
use prexor_domain::{GroupSpec, is_sha256_hex, now_ms};
use prexor_model::workflows::templates::{LayerVersion, TemplateRecord, TemplateVersion};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, Json, conflict_if_taken};
use crate::paging::{Page, PageRequest};
use crate::uploads;

pub use prexor_model::workflows::TEMPLATES;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/templates", get(list))
        .route("/templates/{name}", get(show).put(upload).delete(remove))
        .route("/templates/{name}/rollback", post(rollback))
        .route("/templates/{name}/versions/{version}/content", get(content))
}

/// A template in the listing: its current version's layer and how many versions it has.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TemplateSummary {
    pub(crate) name: String,
    pub(crate) current: Option<i64>,
    /// The current version's layer (SHA-256) and its size in bytes.
    pub(crate) hash: Option<String>,
    pub(crate) size: Option<i64>,
    /// How many versions it has.
    pub(crate) versions: usize,
}

impl From<&TemplateRecord> for TemplateSummary {
    fn from(template: &TemplateRecord) -> TemplateSummary {
        let head = template.current_version();
        TemplateSummary {
            name: template.name.clone(),
            current: template.current,
            hash: head.map(|v| v.hash.clone()),
            size: head.map(|v| v.size),
            versions: template.versions.len(),
        }
    }
}

/// A template with every version.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TemplateView {
    /// The template's name.
    pub(crate) id: String,
    pub(crate) versions: Vec<LayerVersionView<i64>>,
    /// The version a group gets when it names the template without one.
    pub(crate) current: Option<i64>,
}

impl From<&TemplateRecord> for TemplateView {
    fn from(template: &TemplateRecord) -> TemplateView {
        TemplateView {
            id: template.name.clone(),
            versions: template
                .versions
                .iter()
                .map(LayerVersionView::from)
                .collect(),
            current: template.current,
        }
    }
}

/// One uploaded version of a layer (a template's: numbered; a module's: named).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerVersionView<V> {
    pub(crate) version: V,
    /// The layer's SHA-256 (what plans name).
    pub(crate) hash: String,
    /// Bytes of the tar.gz.
    pub(crate) size: i64,
    /// Entries in the tar.gz.
    pub(crate) files: i64,
    pub(crate) uploaded_by: String,
    pub(crate) uploaded_at_ms: i64,
}

impl<V: Clone> From<&LayerVersion<V>> for LayerVersionView<V> {
    fn from(version: &LayerVersion<V>) -> LayerVersionView<V> {
        LayerVersionView {
            version: version.version.clone(),
            hash: version.hash.clone(),
            size: version.size,
            files: version.files,
            uploaded_by: version.uploaded_by.clone(),
            uploaded_at_ms: version.uploaded_at_ms,
        }
    }
}

/// A layer version as it goes into `$push` (it always encodes).
pub fn version_document<V: Serialize>(version: &LayerVersion<V>) -> ApiResult<bson::Document> {
    bson::to_document(version)
        .map_err(|e| ApiError::internal(format!("cannot encode the layer version: {e}")))
}

#[utoipa::path(
    get, path = "/api/v1/templates", tag = "templates", params(PageRequest),
    responses((status = 200, body = Page<TemplateSummary>))
)]
async fn list(
    Caller(app, who): Caller,
    page: PageRequest,
) -> ApiResult<Json<Page<TemplateSummary>>> {
    Ok(Json(list_templates(&app, &who, &page).await?))
}

/// A page of the templates, for `who` (`templates:read`).
pub(crate) async fn list_templates(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<TemplateSummary>> {
    who.require("templates:read")?;
    let view = |record: TemplateRecord| TemplateSummary::from(&record);
    Ok(app.views("listing templates", doc! {}, page, view).await?.0)
}

#[utoipa::path(
    get, path = "/api/v1/templates/{name}", tag = "templates",
    responses((status = 200, body = TemplateView))
)]
async fn show(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<TemplateView>> {
    Ok(Json(show_template(&app, &who, &name).await?))
}

/// Template `name` with every version, for `who` (`templates:read`).
pub(crate) async fn show_template(
    app: &App,
    who: &Principal,
    name: &str,
) -> ApiResult<TemplateView> {
    who.require("templates:read")?;
    Ok(TemplateView::from(&app.find(name).await?))
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
    put, path = "/api/v1/templates/{name}", tag = "templates",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the layer as .tar.gz bytes"),
    responses(
        (status = 201, description = "a new version, now current", body = TemplateView),
        (status = 200, description = "the same bytes as the current version: nothing changed", body = TemplateView),
    )
)]
async fn upload(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Raw,
) -> ApiResult<(StatusCode, Json<TemplateView>)> {
    let (status, view) = upload_template(&app, &who, &name, &headers, body).await?;
    Ok((status, Json(view)))
}

/// Template `name`'s new version from a tar.gz `body` (streamed, checked, stored), now current
/// (201); the current one again if the bytes are the same (200). For `who`
/// (`templates:write`).
pub(crate) async fn upload_template(
    app: &App,
    who: &Principal,
    name: &str,
    headers: &HeaderMap,
    body: Raw,
) -> ApiResult<(StatusCode, TemplateView)> {
    who.require("templates:write")?;
    crate::error::check_name("name", name)?;
    let layer = receive_layer(app, headers, body).await?;
    record_version(app, who, name, layer, None).await
}

/// Records the stored `layer` as template `name`'s new version, now current (201; the current
/// one again, 200, if it holds the same bytes), for `who`; `from` names the instance it was
/// saved from (`POST /instances/{id}/save-to-template`).
pub(crate) async fn record_version(
    app: &App,
    who: &Principal,
    name: &str,
    layer: Layer,
    from: Option<&str>,
) -> ApiResult<(StatusCode, TemplateView)> {
    let name = name.to_owned();
    let Layer { hash, size, files } = layer;
    let existing: Option<TemplateRecord> = app.record(TEMPLATES, &name).await?;
    if let Some(template) = &existing
        && template.current_version().is_some_and(|v| v.hash == hash)
    {
        return Ok((StatusCode::OK, TemplateView::from(template)));
    }
    let next = existing.as_ref().map_or(1, |t| {
        t.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    });
    let version = TemplateVersion {
        version: next,
        hash: hash.clone(),
        size: size as i64,
        files: files as i64,
        uploaded_by: who.user.clone(),
        uploaded_at_ms: now_ms(),
    };
    // Compare-and-set on the version count: two concurrent uploads never get the same number.
    let filter = match &existing {
        Some(t) => doc! { "_id": &name, "versions": { "$size": t.versions.len() as i64 } },
        None => doc! { "_id": &name },
    };
    let push =
        doc! { "$push": { "versions": version_document(&version)? }, "$set": { "current": next } };
    let written = app
        .update_one(
            TEMPLATES,
            "recording the template version",
            filter,
            push,
            existing.is_none(),
        )
        .await
        .map_err(|err| {
            conflict_if_taken(err, || {
                format!("template {name:?} was created concurrently; upload again")
            })
        })?;
    if written.matched_count != 1 && written.upserted_id.is_none() {
        return Err(ApiError::conflict(format!(
            "template {name:?} changed concurrently; upload again"
        )));
    }
    app.audit_and_publish::<(), _>(
        who,
        "template.upload",
        &name,
        None,
        Some(&version),
        "TEMPLATE_UPLOADED",
        serde_json::json!({ "version": next, "hash": &hash, "fromInstance": from }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        TemplateView::from(&app.find(&name).await?),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rollback {
    version: i64,
}

#[utoipa::path(
    post, path = "/api/v1/templates/{name}/rollback", tag = "templates",
    responses((status = 200, body = TemplateView))
)]
async fn rollback(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    Json(request): Json<Rollback>,
) -> ApiResult<Json<TemplateView>> {
    Ok(Json(
        rollback_template(&app, &who, &name, request.version).await?,
    ))
}

/// Makes `version` template `name`'s current version again, for `who` (`templates:write`).
pub(crate) async fn rollback_template(
    app: &App,
    who: &Principal,
    name: &str,
    version: i64,
) -> ApiResult<TemplateView> {
    who.require("templates:write")?;
    let template: TemplateRecord = app.find(name).await?;
    if template.version(version).is_none() {
        return Err(ApiError::field(
            "version",
            format!("template {name:?} has no version {version}"),
        ));
    }
    let before = template.current;
    app.update_by_id(
        TEMPLATES,
        "moving the template's current version",
        name,
        doc! { "$set": { "current": version } },
    )
    .await?;
    app.audit(
        who,
        "template.rollback",
        name,
        Some(&before),
        Some(&version),
    )
    .await;
    Ok(TemplateView::from(&app.find(name).await?))
}

#[utoipa::path(
    get, path = "/api/v1/templates/{name}/versions/{version}/content", tag = "templates",
    responses(
        (status = 200, description = "the layer", content_type = "application/gzip", body = Vec<u8>),
    )
)]
async fn content(
    Caller(app, who): Caller,
    Path((name, version)): Path<(String, i64)>,
) -> ApiResult<Response> {
    who.require("templates:read")?;
    let template: TemplateRecord = app.find(&name).await?;
    let hash = template
        .version(version)
        .map(|v| v.hash.clone())
        .ok_or_else(|| {
            ApiError::not_found(format!("template {name:?} has no version {version}"))
        })?;
    uploads::gzip_download(&app, &hash, &format!("{name}-{version}.tar.gz"))
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!("the blob {hash} of {name}@{version} is missing"))
        })
}

#[utoipa::path(
    delete, path = "/api/v1/templates/{name}", tag = "templates",
    responses((status = 204))
)]
async fn remove(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    who.require("templates:write")?;
    let template: TemplateRecord = app.find(&name).await?;
    let hashes: Vec<&str> = template.versions.iter().map(|v| v.hash.as_str()).collect();
    let groups = app
        .store()
        .find_all(
            prexor_model::groups::GROUPS,
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
                            || r.get_str("hash").is_ok_and(|h| hashes.contains(&h))
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
    let before = TemplateView::from(&template);
    let doing = "deleting a template";
    app.delete_audited(&who, TEMPLATES, doing, "template.delete", &name, &before)
        .await
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
            let template: TemplateRecord = app.find(&reference.name).await.map_err(|_| {
                ApiError::field(
                    &format!("templates[{i}].name"),
                    format!("no template {:?}; upload it first", reference.name),
                )
            })?;
            let chosen = match reference.version {
                Some(v) => template.version(i64::from(v)),
                None => template.current_version(),
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
            reference.hash = chosen.hash.clone();
            reference.version = Some(chosen.version as u32);
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

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn a_template_is_shown_as_stored() {
        let stored = doc! {
            "_id": "base",
            "versions": [
                { "version": 1_i64, "hash": "a", "size": 10_i64, "files": 1_i64, "uploadedBy": "ann", "uploadedAtMs": 5_i64 },
                { "version": 2_i64, "hash": "b", "size": 20_i64, "files": 2_i64, "uploadedBy": "bob", "uploadedAtMs": 6_i64 },
            ],
            "current": 2_i64,
        };
        let record: TemplateRecord = bson::from_document(stored.clone()).unwrap();
        let shown = serde_json::to_value(TemplateView::from(&record)).unwrap();
        assert_eq!(shown, crate::json::record(stored));
        let listed = serde_json::to_value(TemplateSummary::from(&record)).unwrap();
        assert_eq!(
            listed,
            serde_json::json!({ "name": "base", "current": 2, "hash": "b", "size": 20, "versions": 2 })
        );
    }
}
