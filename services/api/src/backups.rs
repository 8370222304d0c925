//! Backups and restore, safe while every replica keeps running.
//!
//! A backup is a consistent snapshot (one snapshot-read transaction) of every collection the
//! system owns — except the session-signing key, the fencing marks and ephemeral registries —
//! plus the template and module blobs, in one tar.gz with a manifest (format, version, cluster
//! id, CA fingerprint, per-collection document count and SHA-256, per-blob size). The CA private
//! key is never in it: it only exists on the CA hosts. Archives are kept in the cluster's blob
//! store (visible from every api replica) and can be downloaded and uploaded.
//!
//! A restore takes every mutation lease (each group scope, the platform-module scope, each open
//! drain's workflow scope) by take-over — which raises each scope's fence mark, so anything the
//! previous holders still send is rejected — and refuses API changes meanwhile. Then, in one
//! fenced transaction, it replaces the desired configuration with the backup's (groups the
//! backup lacks are marked for deletion, so their holders stop their instances), adds the
//! certificates and join tokens the backup has and the store lacks, and releases the leases. What
//! runs (instances, nodes, reservations) is not rewritten: the schedulers reconcile it with the
//! restored configuration under new, higher tokens, keeping every process it still wants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReadConcern;
use prexor_domain::{now_ms, validate_name};
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

mod archive;
mod restore;

use archive::{Archive, pack};
pub use restore::{__path_restore, restore};

pub const BACKUPS: &str = "backups";
const FORMAT: i64 = 1;
/// The flag (in the coordination store) that makes every api replica refuse changes while a
/// restore runs.
pub const RESTORE_FLAG: &str = "restore-in-progress";

/// Never in a backup: the session-signing key, the blob store as such (template and module
/// blobs are added as files), fencing marks (they only ever go up), ephemeral registries, and the
/// backups themselves.
const NEVER: &[&str] = &[
    "cluster_secrets",
    "blobs",
    "blob_chunks",
    "fences",
    "fence_log",
    "replicas",
    "dev_claims",
    "scheduler_sync",
    BACKUPS,
];
/// Restored by replacing what is there: the desired configuration.
const REPLACED: &[&str] = &[
    "groups",
    "deployments",
    "templates",
    "modules",
    "users",
    "roles",
    "api_tokens",
];
/// Restored by adding what the store lacks, never removing: a certificate revoked or a join
/// token used since the backup stays so.
const MERGED: &[&str] = &["certificates", "join_tokens"];
/// Who may do what: restored only from an archive this cluster made (its MAC checks out).
const IDENTITY: &[&str] = &[
    "users",
    "roles",
    "api_tokens",
    "certificates",
    "join_tokens",
];

pub fn routes() -> Router<App> {
    Router::new()
        .route("/backups", get(list).post(create))
        .route("/backups/{id}", get(show).delete(remove))
        .route("/backups/{id}/archive", get(download).put(upload))
        .route("/backups/{id}/verify", post(verify))
        .route("/backups/{id}/restore", post(restore))
}

/// Every version hash of the templates and modules in `collections`.
fn referenced_blobs(collections: &BTreeMap<String, Vec<Document>>) -> BTreeSet<String> {
    ["templates", "modules"]
        .iter()
        .filter_map(|c| collections.get(*c))
        .flatten()
        .filter_map(|d| d.get_array("versions").ok())
        .flatten()
        .filter_map(|v| v.as_document()?.get_str("hash").ok().map(str::to_owned))
        .collect()
}

/// Reads every backed-up collection in one snapshot.
async fn snapshot(app: &App) -> ApiResult<BTreeMap<String, Vec<Document>>> {
    let store = app.store();
    let names: Vec<String> = store
        .bounded(
            "listing the collections",
            store.database().list_collection_names(),
        )
        .await?
        .into_iter()
        .filter(|n| !NEVER.contains(&n.as_str()) && !n.starts_with("system."))
        .collect();
    let read = async {
        let mut session = store.client().start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .await?;
        let mut out = BTreeMap::new();
        for name in &names {
            let mut cursor = store
                .documents(name)
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .session(&mut session)
                .await?;
            let docs: Vec<Document> = cursor.stream(&mut session).try_collect().await?;
            out.insert(name.clone(), docs);
        }
        session.commit_transaction().await?;
        Ok::<_, mongodb::error::Error>(out)
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| ApiError::unavailable("reading the snapshot took longer than 60 s"))?
        .map_err(|e| ApiError::unavailable(format!("reading the snapshot failed: {e}")))
}

fn backup_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(char::is_ascii_digit).collect();
    let suffix: u16 = rand::random();
    format!("backup-{stamp}-{suffix:04x}")
}

/// The listing view of a backup record.
fn view(record: &Document) -> Value {
    let manifest = record.get_document("manifest").ok();
    let counts: serde_json::Map<String, Value> = manifest
        .and_then(|m| m.get_document("collections").ok())
        .map(|c| {
            c.iter()
                .map(|(name, v)| {
                    let count = v
                        .as_document()
                        .and_then(|d| d.get("count"))
                        .and_then(Bson::as_i64)
                        .unwrap_or(0);
                    (name.clone(), json!(count))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": record.get_str("_id").unwrap_or_default(),
        "createdAtMs": record.get_i64("createdAtMs").ok(),
        "createdBy": record.get_str("createdBy").ok(),
        "size": record.get_i64("size").ok(),
        "hash": record.get_str("hash").ok(),
        "clusterId": manifest.and_then(|m| m.get_str("clusterId").ok()),
        "version": manifest.and_then(|m| m.get_str("version").ok()),
        "collections": counts,
        "blobs": manifest.and_then(|m| m.get_document("blobs").ok()).map_or(0, Document::len),
    })
}

fn spool_dir() -> ApiResult<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("prexor-backup-")
        .tempdir()
        .map_err(|e| ApiError::unavailable(format!("cannot create a spool directory: {e}")))
}

/// Records a stored archive as backup `id`.
async fn record(app: &App, id: &str, packed: &archive::Packed, by: &str) -> ApiResult<Document> {
    let manifest_doc = match Bson::try_from(packed.manifest.clone()) {
        Ok(Bson::Document(doc)) => doc,
        _ => return Err(ApiError::internal("the manifest is not a document")),
    };
    let record = doc! {
        "_id": id, "hash": &packed.hash, "size": packed.size as i64, "createdAtMs": now_ms(),
        "createdBy": by, "manifest": manifest_doc,
    };
    let inserted = app
        .store()
        .bounded(
            "recording a backup",
            app.store().documents(BACKUPS).insert_one(&record),
        )
        .await;
    match inserted {
        Ok(_) => Ok(record),
        Err(err) if err.is_duplicate_key() => {
            Err(ApiError::conflict(format!("backup {id:?} already exists")))
        }
        Err(err) => Err(err.into()),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/backups",
    tag = "backups",
    responses((status = 201, description = "created", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn create(State(app): State<App>, who: Principal) -> ApiResult<(StatusCode, Json<Value>)> {
    who.require("backups:write")?;
    let collections = snapshot(&app).await?;
    // Blobs go through a spool directory: nothing of the archive is held in memory whole.
    let spool = spool_dir()?;
    let mut blobs = BTreeMap::new();
    for hash in referenced_blobs(&collections) {
        let path = spool.path().join(&hash);
        if !app.store().blob_to_file(&hash, &path).await? {
            return Err(ApiError::conflict(format!(
                "blob {hash} (a template or module version) is missing from the store; the backup would be incomplete"
            )));
        }
        blobs.insert(hash, path);
    }
    let ca = prexor_pki::records::published_ca(app.store()).await?;
    let id = backup_id();
    let base = json!({
        "format": FORMAT,
        "version": prexor_domain::VERSION,
        "id": &id,
        "clusterId": &app.service.cluster_id,
        "createdAtMs": now_ms(),
        "createdBy": &who.user,
        "caFingerprint": ca.map(|c| c.certificate.fingerprint),
        "restoredByReplacing": REPLACED,
        "restoredByMerging": MERGED,
    });
    let key = archive::mac_key(app.store()).await?;
    let out = spool.path().join("backup.tar.gz");
    let packed = tokio::task::spawn_blocking(move || pack(&out, &key, base, &collections, &blobs))
        .await
        .map_err(|e| ApiError::internal(format!("packing the backup failed: {e}")))?
        .map_err(ApiError::internal)?;
    app.store()
        .put_blob_file(&spool.path().join("backup.tar.gz"), &packed.hash)
        .await?;
    let saved = record(&app, &id, &packed, &who.user).await?;
    app.audit::<(), _>(&who, "backup.create", &id, None, Some(&view(&saved)))
        .await;
    Ok((StatusCode::CREATED, Json(view(&saved))))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups",
    tag = "backups",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<Value>>> {
    who.require("backups:read")?;
    let records = app
        .store()
        .find_sorted(
            BACKUPS,
            "listing backups",
            doc! {},
            doc! { "createdAtMs": -1 },
            None,
        )
        .await?;
    Ok(Json(records.iter().map(view).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}",
    tag = "backups",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn show(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("backups:read")?;
    let record = app.must_find(BACKUPS, "backup", &id).await?;
    let mut shown = view(&record);
    shown["manifest"] =
        crate::json::record(record.get_document("manifest").cloned().unwrap_or_default());
    Ok(Json(shown))
}

/// Reads a backup archive from `file` within the `uploads.backup*` limits (off the async
/// threads).
async fn read_archive(app: &App, file: std::path::PathBuf) -> ApiResult<Result<Archive, String>> {
    let limits = crate::uploads::backup_limits(app);
    tokio::task::spawn_blocking(move || {
        let reader = std::fs::File::open(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        archive::read(std::io::BufReader::new(reader), &limits)
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the archive failed: {e}")))
}

/// The archive of backup `id`, read back from the store and checked.
async fn verified(app: &App, id: &str) -> ApiResult<Archive> {
    let record = app.must_find(BACKUPS, "backup", id).await?;
    let hash = record.get_str("hash").unwrap_or_default();
    let spool = spool_dir()?;
    let file = spool.path().join("backup.tar.gz");
    if !app.store().blob_to_file(hash, &file).await? {
        return Err(ApiError::conflict(format!(
            "the archive of backup {id:?} (blob {hash}) is missing from the store"
        )));
    }
    read_archive(app, file).await?.map_err(|problem| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "BACKUP_CORRUPT",
            format!("backup {id:?} is damaged: {problem}"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/backups/{id}/verify",
    tag = "backups",
    params(("id" = String, Path)),
    responses((status = 200, description = "every count and hash matches", body = serde_json::Value), (status = 422, description = "damaged", body = crate::error::ErrorBody), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn verify(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("backups:read")?;
    let archive = verified(&app, &id).await?;
    Ok(Json(json!({
        "id": id,
        "ok": true,
        "collections": archive.collections.iter().map(|(n, d)| (n.clone(), json!(d.len()))).collect::<serde_json::Map<_, _>>(),
        "blobs": archive.blobs.len(),
        "clusterId": archive.manifest["clusterId"],
    })))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}/archive",
    tag = "backups",
    params(("id" = String, Path)),
    responses((status = 200, description = "the tar.gz", content_type = "application/gzip"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn download(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    who.require("backups:read")?;
    let record = app.must_find(BACKUPS, "backup", &id).await?;
    let hash = record.get_str("hash").unwrap_or_default();
    let (size, body) = crate::uploads::blob_body(&app, hash)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "the archive of backup {id:?} (blob {hash}) is missing from the store"
            ))
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.tar.gz\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/api/v1/backups/{id}/archive",
    tag = "backups",
    params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "a backup archive (.tar.gz) as downloaded"),
    responses((status = 201, description = "imported", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn upload(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    who.require("backups:write")?;
    validate_name(&id).map_err(|e| ApiError::field("id", format!("{id:?} {e}")))?;
    let spooled =
        crate::uploads::spool(&headers, body, app.uploads.backup_bytes, "a backup archive").await?;
    let archive = read_archive(&app, spooled.path.to_path_buf())
        .await?
        .map_err(|problem| {
            ApiError::bad_request(format!("the uploaded archive is refused: {problem}"))
        })?;
    app.store()
        .put_blob_file(&spooled.path, &spooled.hash)
        .await?;
    let packed = archive::Packed {
        manifest: archive.manifest.clone(),
        hash: spooled.hash.clone(),
        size: spooled.size,
    };
    let saved = record(&app, &id, &packed, &who.user).await?;
    let mut shown = view(&saved);
    shown["madeByThisCluster"] = json!(archive.made_with(&archive::mac_key(app.store()).await?));
    app.audit::<(), _>(&who, "backup.upload", &id, None, Some(&shown))
        .await;
    Ok((StatusCode::CREATED, Json(shown)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/backups/{id}",
    tag = "backups",
    params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn remove(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("backups:write")?;
    let record = app.must_find(BACKUPS, "backup", &id).await?;
    app.store()
        .bounded(
            "removing a backup",
            app.store()
                .documents(BACKUPS)
                .delete_one(doc! { "_id": &id }),
        )
        .await?;
    let hash = record.get_str("hash").unwrap_or_default();
    // Another backup may have the very same bytes (an upload of a download).
    let shared = app
        .store()
        .find_all(
            BACKUPS,
            "finding backups of the same archive",
            doc! { "hash": hash },
        )
        .await?;
    if shared.is_empty() {
        app.store().delete_blob(hash).await?;
    }
    app.audit::<_, ()>(&who, "backup.delete", &id, Some(&view(&record)), None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
