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
use prexor_domain::{GroupSpec, Scope, now_ms, validate_name};
use prexor_store::Write;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

mod archive;

use archive::{Archive, pack, unpack};

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
        .route(
            "/backups/{id}/archive",
            get(download)
                .put(upload)
                .layer(DefaultBodyLimit::max(BACKUP_LIMIT)),
        )
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
    let key = archive::mac_key(app.store()).await?;
    let (archive, manifest) = pack(&key, base, &collections, &blobs).map_err(ApiError::internal)?;
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

/// `archive` without users, roles, tokens, join tokens and certificates (restored as they are
/// now).
fn without_identity(mut archive: Archive) -> Archive {
    for name in IDENTITY {
        archive.collections.remove(*name);
    }
    archive
}

/// Every group of the archive must be one the API would accept (422 naming it otherwise).
fn check_groups(archive: &Archive) -> ApiResult<()> {
    for group in archive.collections.get("groups").into_iter().flatten() {
        let name = group.get_str("_id").unwrap_or_default();
        let spec: GroupSpec = group
            .get_document("spec")
            .ok()
            .and_then(|s| mongodb::bson::from_document(s.clone()).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "BACKUP_INVALID",
                    format!(
                        "the backup's group {name:?} has no readable spec; nothing was changed"
                    ),
                )
            })?;
        crate::groups::validate(name, &spec).map_err(|err| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "BACKUP_INVALID",
                format!("the backup's {err}; nothing was changed"),
            )
        })?;
    }
    Ok(())
}

/// What a restore changes, per collection (the collections the archive has).
fn plan(current: &BTreeMap<String, Vec<Document>>, archive: &Archive) -> Value {
    let mut replaced = serde_json::Map::new();
    for name in REPLACED
        .iter()
        .filter(|n| archive.collections.contains_key(**n))
    {
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
    for name in MERGED
        .iter()
        .filter(|n| archive.collections.contains_key(**n))
    {
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
    // Who may do what comes back only from an archive this cluster made; `force` changes
    // nothing about that, nor about any other check.
    let ours = archive.made_with(&archive::mac_key(app.store()).await?);
    let archive = if ours {
        archive
    } else {
        without_identity(archive)
    };
    check_groups(&archive)?;
    let current = snapshot(&app).await?;
    let mut plan = plan(&current, &archive);
    plan["identity"] = if ours {
        json!("restored (the archive was made by this cluster)")
    } else {
        json!(format!(
            "kept as it is: the archive was not made by this cluster (no valid MAC), so {} are not restored from it",
            IDENTITY.join(", ")
        ))
    };
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

/// A restored user keeps the later of its two `sessionsValidAfterMs`: sessions ended since the
/// backup (a password or role change) stay ended.
fn keep_sessions_ended(user: &mut Document, current: Option<&Vec<Document>>) {
    let now = current
        .into_iter()
        .flatten()
        .find(|u| u.get("_id") == user.get("_id"))
        .and_then(|u| u.get_i64("sessionsValidAfterMs").ok());
    let then = user.get_i64("sessionsValidAfterMs").ok();
    if let Some(later) = now.max(then) {
        user.insert("sessionsValidAfterMs", later);
    }
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
        if !archive.collections.contains_key(*name) {
            // Not restored from this archive (identity from an archive of elsewhere): kept.
            continue;
        }
        writes.push(Write::delete_many(name, doc! {}));
        for mut doc in docs {
            doc.remove("_fence");
            if *name == "users" {
                keep_sessions_ended(&mut doc, current.get("users"));
            }
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

    #[test]
    fn a_restored_user_keeps_its_later_session_cut_off() {
        let current = vec![doc! { "_id": "dave", "sessionsValidAfterMs": 2_000_i64 }];
        let mut older = doc! { "_id": "dave", "sessionsValidAfterMs": 1_000_i64 };
        keep_sessions_ended(&mut older, Some(&current));
        assert_eq!(older.get_i64("sessionsValidAfterMs"), Ok(2_000));
        let mut newer = doc! { "_id": "dave", "sessionsValidAfterMs": 3_000_i64 };
        keep_sessions_ended(&mut newer, Some(&current));
        assert_eq!(newer.get_i64("sessionsValidAfterMs"), Ok(3_000));
        let mut unknown = doc! { "_id": "erin" };
        keep_sessions_ended(&mut unknown, Some(&current));
        assert!(unknown.get("sessionsValidAfterMs").is_none());
    }
}
