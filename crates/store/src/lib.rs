//! MongoDB access for PrexorCloud: one connection per process with bounded operations, the
//! fencing-token counters, and the fenced write that every lease holder mutates state through.
//!
//! Fencing (docs/architecture.md, "Leases and fencing"): each scope has one document in the `fences`
//! collection holding a `counter` (tokens are minted from it, so they only grow, whatever happens
//! to Valkey) and a `mark` (the highest token that has written or acquired). A fenced write runs in
//! a transaction that first requires `mark <= token` and bumps the document, then performs the
//! writes: a deposed holder's write is rejected with [`StoreError::StaleFence`] and changes nothing.

mod blobs;
mod error;
mod fence;
mod store;
mod transaction;

pub use blobs::{BLOB_CHUNK, BLOB_CHUNKS, BLOBS, BlobChunks, blob_hash};
pub use error::StoreError;
pub use fence::{FENCE_LOG, FENCES, Fence, Write, WriteOutcome};
pub use mongodb::bson;
pub use store::{FENCED_WRITE_RESULTS, Store};
