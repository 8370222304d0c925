//! `prexor.v1.NodeContent` on the daemon port: template layers for plans, by hash, to
//! authenticated nodes only, and to each node only the layers its current plans name (a node
//! cannot read other blobs of the store, such as backup archives, by guessing their hash).
//! A layer streams from MongoDB to the node a stored chunk at a time (the gateway holds at most
//! one per fetch), and at most `gateway.maxBlobFetches` fetches run at once: one past that is
//! refused with RESOURCE_EXHAUSTED, which the daemon retries (another gateway, or later).
//!
//! The other way, a node stores the archive of a capture the api asked it for (save to
//! template): only for an open capture of that node (`captures`), spooled to a temporary file
//! and hashed on the way, refused past the capture's size, checked as a layer
//! (`prexor_archive`), then stored content-addressed and recorded on the capture.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mongodb::bson::{Document, doc};
use prexor_model::instances::{INSTANCE_PLANS, INSTANCES, InstanceRecord};
use prexor_model::workflows::CAPTURES;
use prexor_model::workflows::templates::{CaptureRecord, CapturedBlob};
use prexor_proto::v1::node_content_server::NodeContent;
use prexor_proto::v1::{BlobChunk, FetchBlobRequest, StoreBlobChunk, StoredBlob};
use prexor_store::{Store, StoreError};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::enrolment::authorize_node;

const CHUNK: usize = 256 * 1024;

pub struct Content {
    pub store: Store,
    /// One permit per fetch being streamed.
    pub fetches: Arc<Semaphore>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

/// A fetch being streamed: its permit goes back (and the gauge down) when the stream ends or
/// the node goes away.
struct InFlight {
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("prexor_gateway_blob_fetches").decrement(1.0);
    }
}

impl Content {
    /// Whether a plan of an instance placed on `node` (and not ended) names layer `hash`.
    async fn entitled(&self, node: &str, hash: &str) -> Result<bool, StoreError> {
        // An instance record that does not read is left out: a node is refused a layer rather
        // than handed one on a guess.
        let placed: Vec<InstanceRecord> = prexor_model::decode_each(
            INSTANCES,
            self.store
                .find_projected(
                    INSTANCES,
                    "listing the node's instances",
                    doc! { "nodeId": node, "state": { "$nin": prexor_model::instances::ended_states() } },
                    doc! { "planHash": 1, "plan.layers.hash": 1 },
                )
                .await?,
        );
        // Records written before plans moved to instance_plans carry theirs.
        let embedded = placed.iter().any(|i| {
            i.plan
                .as_ref()
                .is_some_and(|p| p.layers.iter().any(|l| l.hash == hash))
        });
        if embedded {
            return Ok(true);
        }
        let current: Vec<Document> = placed
            .iter()
            .filter(|i| !i.plan_hash.is_empty())
            .map(|i| doc! { "_id": &i.id, "planHash": &i.plan_hash })
            .collect();
        if current.is_empty() {
            return Ok(false);
        }
        let plans = self
            .store
            .find_projected(
                INSTANCE_PLANS,
                "reading the node's plans",
                doc! { "$or": current, "plan.layers.hash": hash },
                doc! { "_id": 1 },
            )
            .await?;
        Ok(!plans.is_empty())
    }
}

#[tonic::async_trait]
impl NodeContent for Content {
    type FetchBlobStream = ChunkStream;

    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let node_id = request.get_ref().node_id.clone();
        authorize_node(&self.store, request.peer_certs(), &node_id).await?;
        let hash = request.into_inner().hash;
        if !prexor_domain::is_sha256_hex(&hash) {
            return Err(Status::invalid_argument(format!(
                "{hash:?} is not a SHA-256 hash"
            )));
        }
        if !self
            .entitled(&node_id, &hash)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            metrics::counter!("prexor_gateway_blobs_refused_total").increment(1);
            return Err(Status::permission_denied(format!(
                "no current plan of node {node_id} names layer {hash}"
            )));
        }
        let Ok(permit) = self.fetches.clone().try_acquire_owned() else {
            metrics::counter!("prexor_gateway_blob_fetches_refused_total").increment(1);
            return Err(Status::resource_exhausted(
                "this gateway is streaming as many layers as gateway.maxBlobFetches allows; retry",
            ));
        };
        let (_, stored) = self
            .store
            .blob_chunks(&hash)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "template layer {hash} is not in the cluster store (deleted, or never uploaded)"
                ))
            })?;
        metrics::gauge!("prexor_gateway_blob_fetches").increment(1.0);
        let in_flight = InFlight { _permit: permit };
        let messages = stored.flat_map(move |chunk| {
            let _held = &in_flight;
            let messages: Vec<Result<BlobChunk, Status>> = match chunk {
                Ok(bytes) => {
                    metrics::counter!("prexor_gateway_blob_bytes_served_total")
                        .increment(bytes.len() as u64);
                    bytes
                        .chunks(CHUNK)
                        .map(|c| Ok(BlobChunk { data: c.to_vec() }))
                        .collect()
                }
                Err(e) => vec![Err(Status::unavailable(e.to_string()))],
            };
            futures::stream::iter(messages)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn store_blob(
        &self,
        request: Request<Streaming<StoreBlobChunk>>,
    ) -> Result<Response<StoredBlob>, Status> {
        let certs = request.peer_certs();
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| {
            Status::invalid_argument("no chunk: the first one names the node and the capture")
        })?;
        authorize_node(&self.store, certs, &first.node_id).await?;
        let capture = self.open_capture(&first.node_id, &first.capture_id).await?;
        let stored = self.spool_and_store(&capture, first.data, chunks).await?;
        let blob = CapturedBlob {
            hash: stored.hash.clone(),
            size: stored.size as i64,
            entries: stored.entries as i64,
        };
        let record = mongodb::bson::to_bson(&blob).map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .bounded(
                "recording the captured archive",
                self.store.documents(CAPTURES).update_one(
                    doc! { "_id": &capture.id, "nodeId": &capture.node_id },
                    doc! { "$set": { "stored": record } },
                ),
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        metrics::counter!("prexor_gateway_captures_stored_total").increment(1);
        tracing::info!(node = %capture.node_id, instance = %capture.instance, capture = %capture.id, hash = %stored.hash, size = stored.size, "stored a captured archive");
        Ok(Response::new(stored))
    }
}

impl Content {
    /// The capture `id` of `node`, if it is open (asked for, not expired, nothing stored yet).
    async fn open_capture(&self, node: &str, id: &str) -> Result<CaptureRecord, Status> {
        let found = self
            .store
            .find_all(
                CAPTURES,
                "reading a capture",
                doc! { "_id": id, "nodeId": node },
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        found
            .into_iter()
            .next()
            .and_then(|d| prexor_model::decode::<CaptureRecord>(CAPTURES, d).ok())
            .filter(|c| c.stored.is_none() && c.expires_at_ms > prexor_domain::now_ms())
            .ok_or_else(|| {
                metrics::counter!("prexor_gateway_blobs_refused_total").increment(1);
                Status::permission_denied(format!(
                    "node {node} has no open capture {id:?} (none was asked for, it expired, or it is stored already)"
                ))
            })
    }

    /// Spools the archive (`first` chunk, then the rest of `chunks`) within the capture's size,
    /// checks it as a layer and stores it content-addressed.
    async fn spool_and_store(
        &self,
        capture: &CaptureRecord,
        first: Vec<u8>,
        mut chunks: Streaming<StoreBlobChunk>,
    ) -> Result<StoredBlob, Status> {
        let unavailable =
            |e: std::io::Error| Status::unavailable(format!("cannot spool the archive: {e}"));
        let (file, path) = tempfile::NamedTempFile::with_prefix("prexor-capture-")
            .map_err(unavailable)?
            .into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hash = prexor_domain::StreamHash::default();
        let limit = capture.max_bytes.max(0) as u64;
        let mut data = first;
        loop {
            hash.update(&data);
            if hash.len() > limit {
                return Err(Status::resource_exhausted(format!(
                    "the archive of capture {} is larger than its limit of {} MiB (uploads.layerMb)",
                    capture.id,
                    limit / 1024 / 1024
                )));
            }
            file.write_all(&data).await.map_err(unavailable)?;
            match chunks.message().await? {
                Some(next) => data = next.data,
                None => break,
            }
        }
        file.flush().await.map_err(unavailable)?;
        if hash.is_empty() {
            return Err(Status::invalid_argument("the archive is empty"));
        }
        let size = hash.len();
        let hash = hash.finish();
        let limits = prexor_archive::Limits {
            max_entries: capture.max_entries.max(0) as u64,
            max_unpacked_bytes: capture.max_unpacked_bytes.max(0) as u64,
        };
        let spooled = path.to_path_buf();
        let summary = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&spooled).map_err(|e| e.to_string())?;
            prexor_archive::check(std::io::BufReader::new(file), &limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|problem| Status::invalid_argument(format!("not a layer: {problem}")))?;
        self.store
            .put_blob_file(&path, &hash)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(StoredBlob {
            hash,
            size,
            entries: summary.entries,
        })
    }
}
