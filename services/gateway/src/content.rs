//! `prexor.v1.NodeContent` on the daemon port: template layers for plans, by hash, to
//! authenticated nodes only.

use std::pin::Pin;

use futures::Stream;
use prexor_proto::v1::node_content_server::NodeContent;
use prexor_proto::v1::{BlobChunk, FetchBlobRequest};
use prexor_store::Store;
use tonic::{Request, Response, Status};

use crate::enrolment::authorize_node;

const CHUNK: usize = 256 * 1024;

pub struct Content {
    pub store: Store,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

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
        let bytes = self
            .store
            .get_blob(&hash)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "template layer {hash} is not in the cluster store (deleted, or never uploaded)"
                ))
            })?;
        metrics::counter!("prexor_gateway_blob_bytes_served_total").increment(bytes.len() as u64);
        let chunks: Vec<Result<BlobChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|c| Ok(BlobChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
