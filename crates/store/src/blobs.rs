//! Content-addressed blobs (template layers, module archives, backup archives) in MongoDB:
//! `blobs` holds one record per SHA-256, `blob_chunks` the content in 1 MiB pieces (documents
//! are capped at 16 MiB). Writing the same content twice stores it once. Content moves a chunk
//! at a time both ways ([`Store::put_blob_file`], [`Store::blob_chunks`]), so no process holds a
//! whole blob to store or serve it.

use std::path::Path;
use std::pin::Pin;

use futures::Stream;
use mongodb::bson::{Binary, doc, spec::BinarySubtype};
use prexor_domain::StreamHash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Store, StoreError};

pub const BLOBS: &str = "blobs";
pub const BLOB_CHUNKS: &str = "blob_chunks";
/// The size of a stored piece, and of the pieces [`Store::blob_chunks`] yields.
pub const BLOB_CHUNK: usize = 1024 * 1024;

/// A blob's id: the SHA-256 of its bytes, lower-case hex.
pub use prexor_domain::sha256_hex as blob_hash;

/// A blob's content, chunk by chunk; the last item is an error if the content does not match
/// its hash.
pub type BlobChunks = Pin<Box<dyn Stream<Item = Result<Vec<u8>, StoreError>> + Send>>;

impl Store {
    /// Stores `bytes` under their SHA-256 (returned). The record is written after every chunk,
    /// so a blob that is listed is complete.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = blob_hash(bytes);
        if self.blob_size(&hash).await?.is_some() {
            return Ok(hash);
        }
        let mut chunks = 0;
        for (i, chunk) in bytes.chunks(BLOB_CHUNK).enumerate() {
            self.put_chunk(&hash, i, chunk).await?;
            chunks += 1;
        }
        self.record_blob(&hash, bytes.len() as u64, chunks).await?;
        Ok(hash)
    }

    /// Stores the file at `path`, whose SHA-256 the caller computed as `hash` while writing it,
    /// reading one chunk at a time. Fails (storing nothing) if the file no longer has that hash.
    pub async fn put_blob_file(&self, path: &Path, hash: &str) -> Result<(), StoreError> {
        if self.blob_size(hash).await?.is_some() {
            return Ok(());
        }
        let unreadable = |e: std::io::Error| StoreError::Precondition {
            what: format!("cannot read {} to store it: {e}", path.display()),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
        let mut seen = StreamHash::default();
        let mut chunks = 0;
        loop {
            let mut chunk = Vec::with_capacity(BLOB_CHUNK);
            (&mut file)
                .take(BLOB_CHUNK as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(unreadable)?;
            if chunk.is_empty() {
                break;
            }
            seen.update(&chunk);
            self.put_chunk(hash, chunks, &chunk).await?;
            chunks += 1;
            if chunk.len() < BLOB_CHUNK {
                break;
            }
        }
        let size = seen.len();
        if seen.finish() != hash {
            self.delete_chunks(hash).await?;
            return Err(StoreError::Precondition {
                what: format!("{} changed while it was stored", path.display()),
            });
        }
        self.record_blob(hash, size, chunks).await
    }

    async fn put_chunk(&self, hash: &str, i: usize, data: &[u8]) -> Result<(), StoreError> {
        let id = format!("{hash}:{i}");
        self.bounded(
            &format!("storing blob {hash} chunk {i}"),
            self.documents(BLOB_CHUNKS)
                .replace_one(
                    doc! { "_id": &id },
                    doc! { "_id": &id, "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() } },
                )
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn record_blob(&self, hash: &str, size: u64, chunks: usize) -> Result<(), StoreError> {
        let recorded = self
            .bounded(
                &format!("recording blob {hash}"),
                self.documents(BLOBS).insert_one(doc! {
                    "_id": hash,
                    "size": size as i64,
                    "chunks": chunks as i64,
                }),
            )
            .await;
        match recorded {
            Ok(_) => Ok(()),
            Err(err) if err.is_duplicate_key() => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn delete_chunks(&self, hash: &str) -> Result<(), StoreError> {
        self.bounded(
            &format!("removing blob {hash}'s chunks"),
            self.documents(BLOB_CHUNKS)
                .delete_many(doc! { "_id": { "$regex": format!("^{hash}:") } }),
        )
        .await
        .map(drop)
    }

    /// Removes the blob (record first, so it is never listed while incomplete); `false` if it
    /// was not stored.
    pub async fn delete_blob(&self, hash: &str) -> Result<bool, StoreError> {
        let removed = self
            .bounded(
                &format!("removing blob {hash}"),
                self.documents(BLOBS).delete_one(doc! { "_id": hash }),
            )
            .await?;
        self.delete_chunks(hash).await?;
        Ok(removed.deleted_count > 0)
    }

    /// The blob's size, if it is stored.
    pub async fn blob_size(&self, hash: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.blob_record(hash).await?.map(|(size, _)| size))
    }

    async fn blob_record(&self, hash: &str) -> Result<Option<(u64, i64)>, StoreError> {
        let record = self
            .bounded(
                &format!("looking up blob {hash}"),
                self.documents(BLOBS).find_one(doc! { "_id": hash }),
            )
            .await?;
        Ok(record.map(|r| {
            (
                r.get_i64("size").unwrap_or(0) as u64,
                r.get_i64("chunks").unwrap_or(0),
            )
        }))
    }

    /// The blob's size and content, read one chunk at a time as the stream is polled; `None`
    /// if it is not stored.
    pub async fn blob_chunks(&self, hash: &str) -> Result<Option<(u64, BlobChunks)>, StoreError> {
        let Some((size, chunks)) = self.blob_record(hash).await? else {
            return Ok(None);
        };
        let store = self.clone();
        let hash = hash.to_owned();
        let stream =
            futures::stream::try_unfold((0i64, StreamHash::default()), move |(i, mut seen)| {
                let store = store.clone();
                let hash = hash.clone();
                async move {
                    if i == chunks {
                        return if seen.finish() == hash {
                            Ok(None)
                        } else {
                            Err(StoreError::Precondition {
                                what: format!("blob {hash} does not match its hash"),
                            })
                        };
                    }
                    let id = format!("{hash}:{i}");
                    let piece = store
                        .bounded(
                            &format!("reading blob {hash} chunk {i}"),
                            store.documents(BLOB_CHUNKS).find_one(doc! { "_id": &id }),
                        )
                        .await?
                        .and_then(|d| d.get_binary_generic("data").ok().cloned())
                        .ok_or_else(|| StoreError::Precondition {
                            what: format!(
                                "blob {hash} is incomplete (chunk {i} of {chunks} is missing)"
                            ),
                        })?;
                    seen.update(&piece);
                    Ok(Some((piece, (i + 1, seen))))
                }
            });
        Ok(Some((size, Box::pin(stream))))
    }

    /// The blob's content, checked against its hash; `None` if it is not stored. For blobs a
    /// caller holds anyway (small ones); stream the others ([`Store::blob_chunks`]).
    pub async fn get_blob(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((size, mut chunks)) = self.blob_chunks(hash).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(Some(bytes))
    }

    /// Writes the blob's content to `path` (checked against its hash), a chunk at a time;
    /// `false` if it is not stored.
    pub async fn blob_to_file(&self, hash: &str, path: &Path) -> Result<bool, StoreError> {
        let Some((_, mut chunks)) = self.blob_chunks(hash).await? else {
            return Ok(false);
        };
        let unwritable = |e: std::io::Error| StoreError::Precondition {
            what: format!("cannot write blob {hash} to {}: {e}", path.display()),
        };
        let mut file = tokio::fs::File::create(path).await.map_err(unwritable)?;
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            file.write_all(&chunk?).await.map_err(unwritable)?;
        }
        file.flush().await.map_err(unwritable)?;
        Ok(true)
    }
}
