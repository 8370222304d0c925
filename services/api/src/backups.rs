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

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::ReadConcern;
use prexor_domain::{now_ms, validate_name};
use prexor_model::workflows::backups::{BackupManifest, BackupRecord, ManifestCollection};
use serde::Serialize;
use serde_json::json;

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, ErrorCode, Json};
use crate::paging::{Page, PageRequest};

mod archive;
mod restore;

use archive::{Archive, pack};
pub use restore::{__path_restore, restore};
pub(crate) use restore::{RestorePlan, RestoreRequest, RestoreResult, restore_backup};

pub use prexor_model::workflows::BACKUPS;
const FORMAT: i64 = 1;
/// The flag (in the coordination store) that makes every api replica refuse changes while a
/// restore runs.
pub use prexor_model::workflows::RESTORE_FLAG;

use prexor_model::backup::{IDENTITY, MERGED, NEVER, REPLACED, WITH_BLOBS};

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
    WITH_BLOBS
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

/// A backup as listed.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackupView {
    pub id: String,
    pub created_at_ms: i64,
    /// Who made or uploaded it.
    pub created_by: String,
    /// Bytes of the archive.
    pub size: i64,
    /// The archive's SHA-256: where it is stored.
    pub hash: String,
    /// The cluster that made it and its PrexorCloud version, as its manifest says.
    pub cluster_id: Option<String>,
    pub version: Option<String>,
    /// Documents per collection.
    pub collections: BTreeMap<String, i64>,
    /// How many blobs (template and module versions) it carries.
    pub blobs: usize,
}

impl From<&BackupRecord> for BackupView {
    fn from(record: &BackupRecord) -> BackupView {
        let manifest = &record.manifest;
        BackupView {
            id: record.id.clone(),
            created_at_ms: record.created_at_ms,
            created_by: record.created_by.clone(),
            size: record.size,
            hash: record.hash.clone(),
            cluster_id: manifest.cluster_id.clone(),
            version: manifest.version.clone(),
            collections: manifest
                .collections
                .iter()
                .map(|(name, c)| (name.clone(), c.count))
                .collect(),
            blobs: manifest.blobs.len(),
        }
    }
}

/// One backup with its manifest.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackupDetail {
    #[serde(flatten)]
    pub view: BackupView,
    pub manifest: ManifestView,
}

/// What the archive says it holds (`manifest.json`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestView {
    pub format: Option<i64>,
    pub version: Option<String>,
    /// The id it was made under.
    pub id: Option<String>,
    pub cluster_id: Option<String>,
    pub created_at_ms: Option<i64>,
    pub created_by: Option<String>,
    pub ca_fingerprint: Option<String>,
    pub restored_by_replacing: Vec<String>,
    pub restored_by_merging: Vec<String>,
    /// Per collection: its document count and the SHA-256 of its file.
    pub collections: BTreeMap<String, ManifestCollectionView>,
    /// Per blob (by hash): its size in bytes.
    pub blobs: BTreeMap<String, i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ManifestCollectionView {
    pub count: i64,
    pub sha256: String,
}

impl From<&BackupManifest> for ManifestView {
    fn from(manifest: &BackupManifest) -> ManifestView {
        let collection = |c: &ManifestCollection| ManifestCollectionView {
            count: c.count,
            sha256: c.sha256.clone(),
        };
        ManifestView {
            format: manifest.format,
            version: manifest.version.clone(),
            id: manifest.id.clone(),
            cluster_id: manifest.cluster_id.clone(),
            created_at_ms: manifest.created_at_ms,
            created_by: manifest.created_by.clone(),
            ca_fingerprint: manifest.ca_fingerprint.clone(),
            restored_by_replacing: manifest.restored_by_replacing.clone(),
            restored_by_merging: manifest.restored_by_merging.clone(),
            collections: manifest
                .collections
                .iter()
                .map(|(name, c)| (name.clone(), collection(c)))
                .collect(),
            blobs: manifest.blobs.clone(),
        }
    }
}

/// An archive just uploaded.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UploadedBackup {
    #[serde(flatten)]
    view: BackupView,
    /// Whether this cluster made it (its MAC checks out): only then does a restore bring back
    /// users, roles, tokens, certificates and join tokens.
    made_by_this_cluster: bool,
}

/// A backup read back and checked.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifiedBackup {
    pub id: String,
    /// Always `true` (a damaged backup is a 422).
    pub ok: bool,
    /// Documents per collection, as counted in the archive.
    pub collections: BTreeMap<String, usize>,
    pub blobs: usize,
    pub cluster_id: Option<String>,
}

fn spool_dir() -> ApiResult<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("prexor-backup-")
        .tempdir()
        .map_err(|e| ApiError::unavailable(format!("cannot create a spool directory: {e}")))
}

/// Records a stored archive as backup `id`.
async fn record(
    app: &App,
    id: &str,
    packed: &archive::Packed,
    by: &str,
) -> ApiResult<BackupRecord> {
    let manifest_doc = match Bson::try_from(packed.manifest.clone()) {
        Ok(Bson::Document(doc)) => doc,
        _ => return Err(ApiError::internal("the manifest is not a document")),
    };
    let record = doc! {
        "_id": id, "hash": &packed.hash, "size": packed.size as i64, "createdAtMs": now_ms(),
        "createdBy": by, "manifest": manifest_doc,
    };
    app.insert_new(BACKUPS, "recording a backup", &record, || {
        format!("backup {id:?} already exists")
    })
    .await?;
    bson::from_document(record)
        .map_err(|e| ApiError::internal(format!("backup {id:?} does not read back: {e}")))
}

#[utoipa::path(
    post, path = "/api/v1/backups", tag = "backups",
    responses((status = 201, description = "created", body = BackupView))
)]
async fn create(Caller(app, who): Caller) -> ApiResult<(StatusCode, Json<BackupView>)> {
    Ok((StatusCode::CREATED, Json(create_backup(&app, &who).await?)))
}

/// A backup taken now by `who` (`backups:write`), kept in the cluster.
pub(crate) async fn create_backup(app: &App, who: &Principal) -> ApiResult<BackupView> {
    who.require("backups:write")?;
    let collections = snapshot(app).await?;
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
    let ca = prexor_model::pki::published_ca(app.store()).await?;
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
    let saved = BackupView::from(&record(app, &id, &packed, &who.user).await?);
    app.audit::<(), _>(who, "backup.create", &id, None, Some(&saved))
        .await;
    Ok(saved)
}

/// Newest first.
#[utoipa::path(
    get, path = "/api/v1/backups", tag = "backups", params(crate::paging::PageRequest),
    responses((status = 200, body = Page<BackupView>))
)]
async fn list(Caller(app, who): Caller, page: PageRequest) -> ApiResult<Json<Page<BackupView>>> {
    Ok(Json(list_backups(&app, &who, &page).await?))
}

/// A page of the backups, newest first, for `who` (`backups:read`).
pub(crate) async fn list_backups(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<BackupView>> {
    who.require("backups:read")?;
    let backups: Page<BackupRecord> = app.page("listing backups", doc! {}, page).await?;
    Ok(backups.map(|record| BackupView::from(&record)))
}

#[utoipa::path(
    get, path = "/api/v1/backups/{id}", tag = "backups",
    responses((status = 200, body = BackupDetail))
)]
async fn show(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<Json<BackupDetail>> {
    Ok(Json(show_backup(&app, &who, &id).await?))
}

/// Backup `id` with its manifest, for `who` (`backups:read`).
pub(crate) async fn show_backup(app: &App, who: &Principal, id: &str) -> ApiResult<BackupDetail> {
    who.require("backups:read")?;
    let record = app.find(id).await?;
    Ok(BackupDetail {
        view: BackupView::from(&record),
        manifest: ManifestView::from(&record.manifest),
    })
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

/// The stored record of backup `id` names an archive the store does not have.
fn missing_archive(id: &str, hash: &str) -> ApiError {
    ApiError::conflict(format!(
        "the archive of backup {id:?} (blob {hash}) is missing from the store"
    ))
}

/// The archive of backup `id`, read back from the store and checked.
async fn verified(app: &App, id: &str) -> ApiResult<Archive> {
    let record: BackupRecord = app.find(id).await?;
    let hash = &record.hash;
    let spool = spool_dir()?;
    let file = spool.path().join("backup.tar.gz");
    if !app.store().blob_to_file(hash, &file).await? {
        return Err(missing_archive(id, hash));
    }
    read_archive(app, file).await?.map_err(|problem| {
        ApiError::new(
            ErrorCode::BackupCorrupt,
            format!("backup {id:?} is damaged: {problem}"),
        )
    })
}

#[utoipa::path(
    post, path = "/api/v1/backups/{id}/verify", tag = "backups",
    responses(
        (status = 200, description = "every count and hash matches", body = VerifiedBackup),
        (status = 422, description = "damaged", body = crate::error::ErrorBody),
    )
)]
async fn verify(
    Caller(app, who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<VerifiedBackup>> {
    Ok(Json(verify_backup(&app, &who, id).await?))
}

/// Backup `id` read back and checked against its manifest, for `who` (`backups:read`); 422
/// naming what is wrong with a damaged one.
pub(crate) async fn verify_backup(
    app: &App,
    who: &Principal,
    id: String,
) -> ApiResult<VerifiedBackup> {
    who.require("backups:read")?;
    let archive = verified(app, &id).await?;
    Ok(VerifiedBackup {
        ok: true,
        collections: archive
            .collections
            .iter()
            .map(|(name, docs)| (name.clone(), docs.len()))
            .collect(),
        blobs: archive.blobs.len(),
        cluster_id: archive.manifest["clusterId"].as_str().map(str::to_owned),
        id,
    })
}

#[utoipa::path(
    get, path = "/api/v1/backups/{id}/archive", tag = "backups",
    responses((status = 200, description = "the tar.gz", content_type = "application/gzip"))
)]
async fn download(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    download_backup(&app, &who, &id).await
}

/// The archive of backup `id` streamed as a `.tar.gz` attachment, for `who` (`backups:read`).
pub(crate) async fn download_backup(app: &App, who: &Principal, id: &str) -> ApiResult<Response> {
    who.require("backups:read")?;
    let record: BackupRecord = app.find(id).await?;
    crate::uploads::gzip_download(app, &record.hash, &format!("{id}.tar.gz"))
        .await?
        .ok_or_else(|| missing_archive(id, &record.hash))
}

#[utoipa::path(
    put, path = "/api/v1/backups/{id}/archive", tag = "backups",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "a backup archive (.tar.gz) as downloaded"),
    responses((status = 201, description = "imported", body = UploadedBackup))
)]
async fn upload(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<UploadedBackup>)> {
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
    let shown = UploadedBackup {
        view: BackupView::from(&saved),
        made_by_this_cluster: archive.made_with(&archive::mac_key(app.store()).await?),
    };
    app.audit::<(), _>(&who, "backup.upload", &id, None, Some(&shown))
        .await;
    Ok((StatusCode::CREATED, Json(shown)))
}

#[utoipa::path(
    delete, path = "/api/v1/backups/{id}", tag = "backups",
    responses((status = 204, description = "deleted"))
)]
async fn remove(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    delete_backup(&app, &who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes backup `id` (and its archive, unless another backup has the same bytes), for `who`
/// (`backups:write`).
pub(crate) async fn delete_backup(app: &App, who: &Principal, id: &str) -> ApiResult<()> {
    who.require("backups:write")?;
    let record: BackupRecord = app.find(id).await?;
    app.delete_by_id(BACKUPS, "removing a backup", id).await?;
    let hash = record.hash.as_str();
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
    app.audit::<_, ()>(
        who,
        "backup.delete",
        id,
        Some(&BackupView::from(&record)),
        None,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_shown_with_its_manifest_as_stored() {
        let manifest = doc! {
            "format": 1_i64, "version": "0.1.0", "id": "backup-1", "clusterId": "c",
            "createdAtMs": 5_i64, "createdBy": "ann", "caFingerprint": Bson::Null,
            "restoredByReplacing": ["groups"], "restoredByMerging": ["certificates"],
            "collections": { "groups": { "count": 2_i64, "sha256": "s" }, "users": { "count": 1_i64, "sha256": "t" } },
            "blobs": { "b": 7_i64 },
        };
        let stored = doc! {
            "_id": "backup-1", "hash": "h", "size": 100_i64, "createdAtMs": 5_i64,
            "createdBy": "ann", "manifest": manifest.clone(),
        };
        let record: BackupRecord = bson::from_document(stored).unwrap();
        let listed = serde_json::to_value(BackupView::from(&record)).unwrap();
        let mut expected = json!({
            "id": "backup-1", "createdAtMs": 5, "createdBy": "ann", "size": 100, "hash": "h",
            "clusterId": "c", "version": "0.1.0", "collections": { "groups": 2, "users": 1 },
            "blobs": 1,
        });
        assert_eq!(listed, expected);
        let shown = serde_json::to_value(BackupDetail {
            view: BackupView::from(&record),
            manifest: ManifestView::from(&record.manifest),
        })
        .unwrap();
        expected["manifest"] = crate::json::record(manifest);
        assert_eq!(shown, expected);
    }
}
