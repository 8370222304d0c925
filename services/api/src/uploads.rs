//! Uploaded archives (template and module layers, backups): the request body is streamed to a
//! spool file in the temporary directory and hashed on the way, never held in memory whole;
//! checked there with `prexor_archive` within the configured `uploads.*` limits; stored a chunk
//! at a time. A refused upload leaves nothing behind (the spool file is removed when dropped).
//! Stored archives go back out the same way, streamed a chunk at a time.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use prexor_domain::StreamHash;
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// A request body on disk.
pub struct Spooled {
    pub path: TempPath,
    pub hash: String,
    pub size: u64,
}

fn too_large(what: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "{what} may be at most {} MiB (uploads limit; see docs/configuration.md)",
            limit / 1024 / 1024
        ),
    )
}

/// How much of a refused upload is read and discarded before the 413 goes out, and for how
/// long: a client still sending its body then reads the answer instead of a broken pipe, and a
/// client sending without end costs at most this much.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The 413 for an upload past `limit`, once what is left of its body was read and discarded
/// (within [`DRAIN_BYTES`] and [`DRAIN_FOR`]).
async fn refuse<S, E>(mut rest: S, what: &str, limit: u64) -> ApiError
where
    S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
{
    let drain = async {
        let mut drained = 0u64;
        while let Some(Ok(frame)) = rest.next().await {
            drained += frame.len() as u64;
            if drained > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    too_large(what, limit)
}

/// Streams `body` to a spool file, refusing it (413) once it passes `limit` bytes, or before
/// storing anything if its declared length does.
pub async fn spool(headers: &HeaderMap, body: Body, limit: u64, what: &str) -> ApiResult<Spooled> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refuse(body.into_data_stream(), what, limit).await);
    }
    let spool_error =
        |e: std::io::Error| ApiError::unavailable(format!("cannot spool the upload: {e}"));
    let file = tempfile::NamedTempFile::with_prefix("prexor-upload-").map_err(spool_error)?;
    let (file, path) = file.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hash = StreamHash::default();
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let data =
            frame.map_err(|e| ApiError::bad_request(format!("reading the upload failed: {e}")))?;
        hash.update(&data);
        if hash.len() > limit {
            return Err(refuse(frames, what, limit).await);
        }
        file.write_all(&data).await.map_err(spool_error)?;
    }
    file.flush().await.map_err(spool_error)?;
    if hash.is_empty() {
        return Err(ApiError::field("body", format!("{what} is empty")));
    }
    let size = hash.len();
    Ok(Spooled {
        path,
        hash: hash.finish(),
        size,
    })
}

/// Checks the spooled archive within `limits` (off the async threads); the reason otherwise,
/// as a 400 naming the body.
pub async fn check(
    spooled: &Spooled,
    limits: prexor_archive::Limits,
) -> ApiResult<prexor_archive::Summary> {
    let path = spooled.path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read the spooled upload: {e}"))?;
        prexor_archive::check(std::io::BufReader::new(file), &limits).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(format!("checking the archive failed: {e}")))?
    .map_err(|problem| ApiError::field("body", problem))
}

/// The limits a template or module layer is checked with.
pub fn layer_limits(app: &App) -> prexor_archive::Limits {
    prexor_archive::Limits {
        max_entries: app.uploads.max_entries,
        max_unpacked_bytes: app.uploads.layer_unpacked_bytes,
    }
}

/// The limits a backup archive is read with.
pub fn backup_limits(app: &App) -> prexor_archive::Limits {
    prexor_archive::Limits {
        max_entries: app.uploads.max_entries,
        max_unpacked_bytes: app.uploads.backup_unpacked_bytes,
    }
}

/// The stored `.tar.gz` blob `hash` as a download named `filename`; `None` if it is missing.
pub async fn gzip_download(app: &App, hash: &str, filename: &str) -> ApiResult<Option<Response>> {
    let Some((size, body)) = blob_body(app, hash).await? else {
        return Ok(None);
    };
    let headers = [
        (header::CONTENT_TYPE, "application/gzip".to_owned()),
        (header::CONTENT_LENGTH, size.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ),
    ];
    Ok(Some((headers, body).into_response()))
}

/// A stored blob as a response body, streamed a chunk at a time (with its length).
async fn blob_body(app: &App, hash: &str) -> ApiResult<Option<(u64, Body)>> {
    let Some((size, chunks)) = app.store().blob_chunks(hash).await? else {
        return Ok(None);
    };
    let hash = hash.to_owned();
    let body = Body::from_stream(chunks.map(move |chunk| {
        chunk.map_err(|e| {
            tracing::warn!(%hash, "serving a blob failed midway: {e}");
            std::io::Error::other(e.to_string())
        })
    }));
    Ok(Some((size, body)))
}
