//! Reading a stored document as its record type.

use mongodb::bson::{Bson, Document, RawDocument, de::Error as DecodeError};
use serde::de::DeserializeOwned;

/// A stored document that does not read as its record type (written by hand, or by another
/// version of PrexorCloud).
#[derive(Debug, thiserror::Error)]
#[error("the record {id} in {collection} cannot be read ({source}); fix or remove it")]
pub struct UnreadableRecord {
    pub collection: String,
    /// The document's `_id`, as stored (empty without one).
    pub id: String,
    #[source]
    pub source: DecodeError,
}

/// `doc` (from `collection`) as a `T`.
pub fn decode<T: DeserializeOwned>(collection: &str, doc: Document) -> Result<T, UnreadableRecord> {
    let id = doc.get("_id").map(ToString::to_string).unwrap_or_default();
    mongodb::bson::from_document(doc).map_err(|source| UnreadableRecord {
        collection: collection.to_owned(),
        id,
        source,
    })
}

/// `raw` (from `collection`) as a `T`, read straight from its BSON (no [`Document`] in between).
pub fn decode_raw<T: DeserializeOwned>(
    collection: &str,
    raw: &RawDocument,
) -> Result<T, UnreadableRecord> {
    mongodb::bson::from_slice(raw.as_bytes()).map_err(|source| UnreadableRecord {
        collection: collection.to_owned(),
        id: raw_id(raw).map(|id| id.to_string()).unwrap_or_default(),
        source,
    })
}

/// The `_id` of `raw`, as a [`Bson`] value.
pub fn raw_id(raw: &RawDocument) -> Option<Bson> {
    let id = raw.get("_id").ok()??;
    Bson::try_from(id.to_raw_bson()).ok()
}

/// The documents of `docs` (from `collection`) that read as `T`, in order. One that does not
/// is left out with a warning naming it: a record written by hand or by another version must
/// not stop a loop over the others.
pub fn decode_each<T: DeserializeOwned>(
    collection: &str,
    docs: impl IntoIterator<Item = Document>,
) -> Vec<T> {
    docs.into_iter()
        .filter_map(|doc| {
            decode(collection, doc)
                .inspect_err(|err| tracing::warn!("{err}; skipped"))
                .ok()
        })
        .collect()
}

/// [`decode_each`] for raw documents: those of `docs` that read as `T`, in order.
pub fn decode_each_raw<'a, T: DeserializeOwned>(
    collection: &str,
    docs: impl IntoIterator<Item = &'a RawDocument>,
) -> Vec<T> {
    docs.into_iter()
        .filter_map(|raw| {
            decode_raw(collection, raw)
                .inspect_err(|err| tracing::warn!("{err}; skipped"))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;
    use crate::nodes::{NODE_ALLOCATIONS, NodeAllocation};

    #[test]
    fn a_record_that_does_not_read_is_named_and_left_out() {
        let read: Vec<NodeAllocation> = decode_each(
            NODE_ALLOCATIONS,
            [
                doc! { "_id": "a", "reservedMb": 512_i64 },
                doc! { "_id": "b", "reservedMb": "lots" },
            ],
        );
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].id.as_str(), read[0].reserved_mb), ("a", 512));

        let err =
            decode::<NodeAllocation>(NODE_ALLOCATIONS, doc! { "_id": "b", "reservedMb": "lots" })
                .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"record "b" in node_allocations"#),
            "{err}"
        );
    }

    #[test]
    fn a_raw_record_reads_like_its_document() {
        let good = mongodb::bson::RawDocumentBuf::from_document(
            &doc! { "_id": "a", "reservedMb": 512_i64 },
        )
        .unwrap();
        let read: NodeAllocation = decode_raw(NODE_ALLOCATIONS, &good).unwrap();
        assert_eq!((read.id.as_str(), read.reserved_mb), ("a", 512));
        let bad = mongodb::bson::RawDocumentBuf::from_document(
            &doc! { "_id": "b", "reservedMb": "lots" },
        )
        .unwrap();
        let err = decode_raw::<NodeAllocation>(NODE_ALLOCATIONS, &bad).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"record "b" in node_allocations"#),
            "{err}"
        );
    }
}
