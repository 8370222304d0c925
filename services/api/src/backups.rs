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
use std::io::Read;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReadConcern;
use prexor_coord::LeaseKeeper;
use prexor_domain::{Scope, now_ms, sha256_hex, validate_name};
use prexor_store::Write;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

pub const BACKUPS: &str = "backups";
/// Largest archive accepted on upload.
const BACKUP_LIMIT: usize = 1024 * 1024 * 1024;
const FORMAT: i64 = 1;
/// The flag (in the coordination store) that makes every api replica refuse changes while a
/// restore runs.
pub const RESTORE_FLAG: &str = "restore-in-progress";
/// Default and longest time a restore may take to get every lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_LEASE_TIMEOUT: Duration = Duration::from_secs(300);

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

pub fn routes() -> Router<App> {
    Router::new()
        .route("/backups", get(list).post(create))
        .route("/backups/{id}", get(show).delete(remove))
        .route(
            "/backups/{id}/archive",
            get(download)
                .put(upload)
                .layer(DefaultBodyLimit::max(BACKUP_LIMIT)),
        )
        .route("/backups/{id}/verify", post(verify))
        .route("/backups/{id}/restore", post(restore))
}

/// An archive read back and checked against its manifest.
struct Archive {
    manifest: Value,
    collections: BTreeMap<String, Vec<Document>>,
    blobs: BTreeMap<String, Vec<u8>>,
}

fn jsonl(docs: &[Document]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str(
            &Bson::Document(doc.clone())
                .into_canonical_extjson()
                .to_string(),
        );
        out.push('\n');
    }
    out
}

/// Packs the snapshot into a tar.gz with its manifest.
fn pack(
    manifest_base: Value,
    collections: &BTreeMap<String, Vec<Document>>,
    blobs: &BTreeMap<String, Vec<u8>>,
) -> Result<(Vec<u8>, Value), String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut listed = serde_json::Map::new();
    for (name, docs) in collections {
        let text = jsonl(docs).into_bytes();
        listed.insert(
            name.clone(),
            json!({ "count": docs.len(), "sha256": sha256_hex(&text) }),
        );
        files.push((format!("collections/{name}.jsonl"), text));
    }
    let mut blob_sizes = serde_json::Map::new();
    for (hash, bytes) in blobs {
        blob_sizes.insert(hash.clone(), json!(bytes.len()));
        files.push((format!("blobs/{hash}"), bytes.clone()));
    }
    let mut manifest = manifest_base;
    manifest["collections"] = Value::Object(listed);
    manifest["blobs"] = Value::Object(blob_sizes);
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut append = |path: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime((now_ms() / 1000) as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes)
    };
    append("manifest.json", &manifest_bytes).map_err(|e| e.to_string())?;
    for (path, bytes) in &files {
        append(path, bytes).map_err(|e| e.to_string())?;
    }
    let gz = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| e.to_string())?;
    Ok((gz, manifest))
}

/// Reads an archive and checks every count and hash against its manifest; what is wrong
/// otherwise, naming the file.
fn unpack(bytes: &[u8]) -> Result<Archive, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err("the archive is not gzip-compressed (expected a .tar.gz backup)".into());
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = tar
        .entries()
        .map_err(|e| format!("the archive is unreadable: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is truncated or corrupt: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("the archive has an unreadable path: {e}"))?
            .to_string_lossy()
            .into_owned();
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| format!("the archive is truncated or corrupt in {path}: {e}"))?;
        files.insert(path, content);
    }
    let manifest: Value = serde_json::from_slice(
        &files
            .remove("manifest.json")
            .ok_or("the archive has no manifest.json (is it a PrexorCloud backup?)")?,
    )
    .map_err(|e| format!("manifest.json is not JSON: {e}"))?;
    if manifest["format"].as_i64() != Some(FORMAT) {
        return Err(format!(
            "manifest.json has format {}, this version reads format {FORMAT}",
            manifest["format"]
        ));
    }
    let mut collections = BTreeMap::new();
    for (name, expected) in manifest["collections"].as_object().into_iter().flatten() {
        let path = format!("collections/{name}.jsonl");
        let text = files
            .remove(&path)
            .ok_or_else(|| format!("{path} is missing from the archive"))?;
        let hash = sha256_hex(&text);
        if Some(hash.as_str()) != expected["sha256"].as_str() {
            return Err(format!(
                "{path} was altered: its SHA-256 is {hash}, the manifest says {}",
                expected["sha256"]
            ));
        }
        let text = String::from_utf8(text).map_err(|_| format!("{path} is not UTF-8"))?;
        let mut docs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| format!("{path} line {}: not JSON ({e})", n + 1))?;
            match Bson::try_from(value) {
                Ok(Bson::Document(doc)) => docs.push(doc),
                _ => return Err(format!("{path} line {}: not a document", n + 1)),
            }
        }
        if Some(docs.len() as u64) != expected["count"].as_u64() {
            return Err(format!(
                "{path} holds {} documents, the manifest says {}",
                docs.len(),
                expected["count"]
            ));
        }
        collections.insert(name.clone(), docs);
    }
    let mut blobs = BTreeMap::new();
    for (hash, size) in manifest["blobs"].as_object().into_iter().flatten() {
        let path = format!("blobs/{hash}");
        let bytes = files
            .remove(&path)
            .ok_or_else(|| format!("{path} is missing from the archive"))?;
        if sha256_hex(&bytes) != *hash || Some(bytes.len() as u64) != size.as_u64() {
            return Err(format!(
                "{path} was altered (its content no longer has that SHA-256 or size)"
            ));
        }
        blobs.insert(hash.clone(), bytes);
    }
    if let Some(extra) = files.keys().next() {
        return Err(format!("{extra} is in the archive but not in its manifest"));
    }
    Ok(Archive {
        manifest,
        collections,
        blobs,
    })
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

async fn record(
    app: &App,
    id: &str,
    manifest: &Value,
    archive: &[u8],
    by: &str,
) -> ApiResult<Document> {
    let hash = app.store().put_blob(archive).await?;
    let manifest_doc = match Bson::try_from(manifest.clone()) {
        Ok(Bson::Document(doc)) => doc,
        _ => return Err(ApiError::internal("the manifest is not a document")),
    };
    let record = doc! {
        "_id": id, "hash": &hash, "size": archive.len() as i64, "createdAtMs": now_ms(),
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
    let mut blobs = BTreeMap::new();
    for hash in referenced_blobs(&collections) {
        let bytes = app.store().get_blob(&hash).await?.ok_or_else(|| {
            ApiError::conflict(format!(
                "blob {hash} (a template or module version) is missing from the store; the backup would be incomplete"
            ))
        })?;
        blobs.insert(hash, bytes);
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
    let (archive, manifest) = pack(base, &collections, &blobs).map_err(ApiError::internal)?;
    let saved = record(&app, &id, &manifest, &archive, &who.user).await?;
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

/// The stored archive of backup `id`, unverified.
async fn archive_of(app: &App, id: &str) -> ApiResult<(Document, Vec<u8>)> {
    let record = app.must_find(BACKUPS, "backup", id).await?;
    let hash = record.get_str("hash").unwrap_or_default();
    let bytes = app.store().get_blob(hash).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "the archive of backup {id:?} (blob {hash}) is missing from the store"
        ))
    })?;
    Ok((record, bytes))
}

/// The archive of backup `id`, read back and checked.
async fn verified(app: &App, id: &str) -> ApiResult<Archive> {
    let (_, bytes) = archive_of(app, id).await?;
    unpack(&bytes).map_err(|problem| {
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
    let (_, bytes) = archive_of(&app, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.tar.gz\""),
            ),
        ],
        bytes,
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
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    who.require("backups:write")?;
    validate_name(&id).map_err(|e| ApiError::field("id", format!("{id:?} {e}")))?;
    let bytes = body.map_err(|e| ApiError::bad_request(format!("reading the archive: {e}")))?;
    let archive = unpack(&bytes).map_err(|problem| {
        ApiError::bad_request(format!("the uploaded archive is refused: {problem}"))
    })?;
    let saved = record(&app, &id, &archive.manifest, &bytes, &who.user).await?;
    app.audit::<(), _>(&who, "backup.upload", &id, None, Some(&view(&saved)))
        .await;
    Ok((StatusCode::CREATED, Json(view(&saved))))
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

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RestoreRequest {
    /// Print the plan, change nothing.
    #[serde(default)]
    dry_run: bool,
    /// Restore a backup of another cluster (its id differs from this one's).
    #[serde(default)]
    force: bool,
    /// How long to try to take every lease before giving up with nothing changed (default 30s).
    #[serde(default)]
    timeout: Option<String>,
}

/// The `_id`s of `docs` (a string id as itself, any other as its text).
fn ids(docs: Option<&Vec<Document>>) -> BTreeSet<String> {
    docs.into_iter()
        .flatten()
        .filter_map(|d| {
            d.get("_id")
                .map(|id| id.to_string().trim_matches('"').to_owned())
        })
        .collect()
}

/// What a restore changes, per collection.
fn plan(current: &BTreeMap<String, Vec<Document>>, archive: &Archive) -> Value {
    let mut replaced = serde_json::Map::new();
    for name in REPLACED {
        let (now, then) = (ids(current.get(*name)), ids(archive.collections.get(*name)));
        replaced.insert(
            name.to_string(),
            json!({
                "keep": now.intersection(&then).count(),
                "add": then.difference(&now).collect::<Vec<_>>(),
                "remove": now.difference(&then).collect::<Vec<_>>(),
            }),
        );
    }
    let mut merged = serde_json::Map::new();
    for name in MERGED {
        let (now, then) = (ids(current.get(*name)), ids(archive.collections.get(*name)));
        merged.insert(name.to_string(), json!(then.difference(&now).count()));
    }
    json!({ "replace": replaced, "addMissing": merged })
}

#[utoipa::path(
    post,
    path = "/api/v1/backups/{id}/restore",
    tag = "backups",
    params(("id" = String, Path)),
    request_body = RestoreRequest,
    responses((status = 200, description = "restored (or, with dryRun, the plan)", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn restore(
    State(app): State<App>,
    who: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    who.require("backups:write")?;
    let request: RestoreRequest = crate::error::optional_body(&body)?;
    let timeout = match &request.timeout {
        None => LEASE_TIMEOUT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_LEASE_TIMEOUT)
            .ok_or_else(|| {
                ApiError::field(
                    "timeout",
                    format!("{text:?} is not a duration between 1s and 5m"),
                )
            })?,
    };
    let archive = verified(&app, &id).await?;
    let theirs = archive.manifest["clusterId"].as_str().unwrap_or_default();
    if theirs != app.service.cluster_id && !request.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "OTHER_CLUSTER",
            format!(
                "backup {id:?} is of cluster {theirs:?}, this is cluster {:?}; restore it with force to replace this cluster's configuration anyway",
                app.service.cluster_id
            ),
        ));
    }
    let current = snapshot(&app).await?;
    let plan = plan(&current, &archive);
    if request.dry_run {
        return Ok(Json(json!({ "id": id, "dryRun": true, "plan": plan })));
    }

    let flag_ttl = timeout + Duration::from_secs(120);
    app.service
        .ephemeral
        .set_for(RESTORE_FLAG, flag_ttl)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot announce the restore: {e}")))?;
    let stop = CancellationToken::new();
    let (keeper, keeper_task) =
        LeaseKeeper::start(app.service.leases.clone(), "mixed", stop.clone());
    let outcome = restore_under_leases(&app, &keeper, &current, &archive, timeout).await;
    keeper.release_all().await;
    stop.cancel();
    let _ = keeper_task.await;
    if let Err(err) = app.service.ephemeral.delete(RESTORE_FLAG).await {
        tracing::warn!("could not clear the restore flag (it expires by itself): {err}");
    }
    let leases = outcome?;
    // Users and tokens of an archive made before credentials were bound to user ids.
    crate::access::bind_credentials(app.store()).await?;
    let result = json!({ "id": id, "dryRun": false, "plan": plan, "leasesTaken": leases });
    app.audit::<(), _>(&who, "backup.restore", &id, None, Some(&result))
        .await;
    app.service
        .events
        .publish("BACKUP_RESTORED", &id, json!({ "by": &who.user }))
        .await;
    Ok(Json(result))
}

/// Takes every mutation lease (or gives up, nothing changed), then writes the restore in one
/// fenced transaction; the number of leases taken.
async fn restore_under_leases(
    app: &App,
    keeper: &LeaseKeeper,
    current: &BTreeMap<String, Vec<Document>>,
    archive: &Archive,
    timeout: Duration,
) -> ApiResult<usize> {
    let leases = &app.service.leases;
    let own = Scope::Workflow("restore".into());
    let guard = leases
        .acquire(&own)
        .await
        .map_err(|e| ApiError::unavailable(format!("taking {own}: {e}")))?
        .ok_or_else(|| ApiError::conflict("another restore is running; wait for it to finish"))?;
    let fence = guard.fence();
    keeper.insert(guard);

    let mut scopes: Vec<Scope> = ids(current.get("groups"))
        .union(&ids(archive.collections.get("groups")))
        .map(|g| Scope::Group(g.clone()))
        .collect();
    scopes.push(Scope::PlatformModule);
    for drain in current.get("node_drains").into_iter().flatten() {
        if matches!(drain.get_str("state"), Ok("PENDING" | "DRAINING"))
            && let Ok(node) = drain.get_str("_id")
        {
            scopes.push(Scope::Workflow(format!("drain-{node}")));
        }
    }
    let deadline = Instant::now() + timeout;
    for scope in &scopes {
        loop {
            match leases.take_over(scope).await {
                Ok(lease) => {
                    keeper.insert(lease);
                    break;
                }
                Err(err) if Instant::now() < deadline => {
                    tracing::info!(%scope, "restore: taking the lease failed, retrying: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    return Err(ApiError::unavailable(format!(
                        "could not take lease {scope} within {}: {err}; nothing was changed",
                        humantime::format_duration(timeout)
                    )));
                }
            }
        }
    }

    // Blobs first: content-addressed, adding one changes nothing that reads the store.
    for (hash, bytes) in &archive.blobs {
        app.store().put_blob(bytes).await?;
        tracing::debug!(hash, "restore: blob present");
    }
    let writes = restore_writes(current, archive);
    let taken = keeper.len();
    if keeper.held().iter().any(|l| !l.is_valid()) {
        return Err(ApiError::unavailable(
            "a lease was lost while the restore prepared; nothing was changed",
        ));
    }
    app.store()
        .fenced_write(&fence, writes)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "writing the restore failed, nothing was changed: {e}"
            ))
        })?;
    tracing::info!(leases = taken, "restore written; releasing every lease");
    Ok(taken)
}

/// The writes that turn `current` into the backup's configuration.
fn restore_writes(current: &BTreeMap<String, Vec<Document>>, archive: &Archive) -> Vec<Write> {
    let now = now_ms();
    let mut writes = Vec::new();
    let current_groups: BTreeMap<String, i64> = current
        .get("groups")
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((
                g.get_str("_id").ok()?.to_owned(),
                g.get_i64("revision").unwrap_or(1),
            ))
        })
        .collect();
    let restored_groups = ids(archive.collections.get("groups"));
    for name in REPLACED {
        let docs = archive.collections.get(*name).cloned().unwrap_or_default();
        if *name == "groups" {
            // A restored group gets a revision above both, so a client's stale compare-and-set
            // fails, and a fresh update time, so every scheduler reads it again.
            for mut group in docs {
                let Ok(id) = group.get_str("_id").map(str::to_owned) else {
                    continue;
                };
                let revision = group
                    .get_i64("revision")
                    .unwrap_or(1)
                    .max(current_groups.get(&id).copied().unwrap_or(0))
                    + 1;
                group.insert("revision", revision);
                group.insert("updatedAtMs", now);
                group.remove("deleting");
                group.remove("_fence");
                writes.push(Write::replace_one("groups", doc! { "_id": &id }, group).upsert());
            }
            // Groups the backup does not have go the normal way: their holders stop their
            // instances, then remove them.
            for (id, _) in current_groups
                .iter()
                .filter(|(g, _)| !restored_groups.contains(*g))
            {
                writes.push(Write::update_one(
                    "groups",
                    doc! { "_id": id },
                    doc! { "$set": { "deleting": true, "updatedAtMs": now }, "$inc": { "revision": 1_i64 } },
                ));
            }
            continue;
        }
        writes.push(Write::delete_many(name, doc! {}));
        for mut doc in docs {
            doc.remove("_fence");
            writes.push(Write::insert(name, doc));
        }
    }
    for name in MERGED {
        for mut doc in archive.collections.get(*name).cloned().unwrap_or_default() {
            let Some(id) = doc.remove("_id") else {
                continue;
            };
            doc.remove("_fence");
            writes.push(
                Write::update_one(name, doc! { "_id": id }, doc! { "$setOnInsert": doc }).upsert(),
            );
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Value) {
        let mut collections = BTreeMap::new();
        collections.insert(
            "groups".to_owned(),
            vec![doc! { "_id": "lobby", "revision": 3_i64, "spec": { "memoryMb": 512_i64 } }],
        );
        collections.insert("users".to_owned(), vec![]);
        let mut blobs = BTreeMap::new();
        blobs.insert(sha256_hex(b"layer"), b"layer".to_vec());
        pack(
            json!({ "format": FORMAT, "clusterId": "c1" }),
            &collections,
            &blobs,
        )
        .unwrap()
    }

    #[test]
    fn an_archive_round_trips_with_exact_types() {
        let (bytes, manifest) = sample();
        let archive = unpack(&bytes).unwrap();
        assert_eq!(archive.manifest, manifest);
        let lobby = &archive.collections["groups"][0];
        assert_eq!(lobby.get_i64("revision"), Ok(3), "an i64 stays an i64");
        assert_eq!(archive.blobs.values().next().unwrap(), b"layer");
    }

    #[test]
    fn damage_is_named() {
        let (bytes, _) = sample();
        let truncated = &bytes[..bytes.len() / 2];
        let err = unpack(truncated).err().unwrap();
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(unpack(b"plain text").err().unwrap().contains("gzip"));

        // Altered content with the manifest left as it was.
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            if path == "collections/groups.jsonl" {
                content = String::from_utf8(content)
                    .unwrap()
                    .replace("512", "999")
                    .into_bytes();
            }
            files.push((path, content));
        }
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (path, content) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder
                .append_data(&mut header, path, &content[..])
                .unwrap();
        }
        let altered = builder.into_inner().unwrap().finish().unwrap();
        let err = unpack(&altered).err().unwrap();
        assert!(
            err.contains("collections/groups.jsonl was altered"),
            "{err}"
        );
    }
}
