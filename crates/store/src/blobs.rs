//! Content-addressed blobs (template layers, module archives) in MongoDB: `blobs` holds one
//! record per SHA-256, `blob_chunks` the content in 1 MiB pieces (documents are capped at 16 MiB).
//! Writing the same content twice stores it once.

use futures::TryStreamExt;
use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};

use crate::{Store, StoreError};

pub const BLOBS: &str = "blobs";
pub const BLOB_CHUNKS: &str = "blob_chunks";
const CHUNK: usize = 1024 * 1024;

/// A blob's id: the SHA-256 of its bytes, lower-case hex.
pub use prexor_domain::sha256_hex as blob_hash;

impl Store {
    /// Stores `bytes` under their SHA-256 (returned). The record is written after every chunk,
    /// so a blob that is listed is complete.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = blob_hash(bytes);
        if self.blob_size(&hash).await?.is_some() {
            return Ok(hash);
        }
        let chunks = bytes.chunks(CHUNK).count();
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let id = format!("{hash}:{i}");
            self.bounded(
                &format!("storing blob {hash} chunk {i}"),
                self.documents(BLOB_CHUNKS)
                    .replace_one(
                        doc! { "_id": &id },
                        doc! { "_id": &id, "data": Binary { subtype: BinarySubtype::Generic, bytes: chunk.to_vec() } },
                    )
                    .upsert(true),
            )
            .await?;
        }
        let recorded = self
            .bounded(
                &format!("recording blob {hash}"),
                self.documents(BLOBS).insert_one(doc! {
                    "_id": &hash,
                    "size": bytes.len() as i64,
                    "chunks": chunks as i64,
                }),
            )
            .await;
        match recorded {
            Ok(_) => Ok(hash),
            Err(err) if err.is_duplicate_key() => Ok(hash),
            Err(err) => Err(err),
        }
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
        self.bounded(
            &format!("removing blob {hash}'s chunks"),
            self.documents(BLOB_CHUNKS)
                .delete_many(doc! { "_id": { "$regex": format!("^{hash}:") } }),
        )
        .await?;
        Ok(removed.deleted_count > 0)
    }

    /// The blob's size, if it is stored.
    pub async fn blob_size(&self, hash: &str) -> Result<Option<u64>, StoreError> {
        let record = self
            .bounded(
                &format!("looking up blob {hash}"),
                self.documents(BLOBS).find_one(doc! { "_id": hash }),
            )
            .await?;
        Ok(record
            .and_then(|r| r.get_i64("size").ok())
            .map(|s| s as u64))
    }

    /// The blob's content, checked against its hash; `None` if it is not stored.
    pub async fn get_blob(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(record) = self
            .bounded(
                &format!("looking up blob {hash}"),
                self.documents(BLOBS).find_one(doc! { "_id": hash }),
            )
            .await?
        else {
            return Ok(None);
        };
        let chunks = record.get_i64("chunks").unwrap_or(0);
        let mut bytes = Vec::with_capacity(record.get_i64("size").unwrap_or(0) as usize);
        let pieces: Vec<Document> = self
            .bounded(&format!("reading blob {hash}"), async {
                let ids: Vec<String> = (0..chunks).map(|i| format!("{hash}:{i}")).collect();
                self.documents(BLOB_CHUNKS)
                    .find(doc! { "_id": { "$in": ids } })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let mut ordered: Vec<(i64, Vec<u8>)> = pieces
            .into_iter()
            .filter_map(|d| {
                let index = d.get_str("_id").ok()?.rsplit_once(':')?.1.parse().ok()?;
                let data = d.get_binary_generic("data").ok()?.clone();
                Some((index, data))
            })
            .collect();
        ordered.sort_by_key(|(i, _)| *i);
        if ordered.len() as i64 != chunks {
            return Err(StoreError::Precondition {
                what: format!(
                    "blob {hash} is incomplete ({} of {chunks} chunks)",
                    ordered.len()
                ),
            });
        }
        for (_, data) in ordered {
            bytes.extend_from_slice(&data);
        }
        if blob_hash(&bytes) != hash {
            return Err(StoreError::Precondition {
                what: format!("blob {hash} does not match its hash"),
            });
        }
        Ok(Some(bytes))
    }
}
