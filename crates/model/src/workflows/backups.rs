//! Backups as stored (`backups`): where the archive is (a blob) and its manifest. The archive
//! itself holds the same manifest; what is in a backup and how a restore treats each collection
//! is [`crate::backup`].

use std::collections::BTreeMap;

use mongodb::bson::{self, Bson};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// A backup (`_id` = backup id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    #[serde(rename = "_id")]
    pub id: String,
    /// The archive's blob (SHA-256 of the tar.gz).
    pub hash: String,
    /// Bytes of the archive.
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub created_at_ms: i64,
    /// Who made or uploaded it.
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub manifest: BackupManifest,
}

/// What an archive says it holds (`manifest.json`). An uploaded archive's comes from outside
/// (another version, another cluster): a field that is not what this version writes reads as
/// absent rather than making the backup unreadable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupManifest {
    #[serde(default, deserialize_with = "lenient")]
    pub format: Option<i64>,
    /// The PrexorCloud version that made it.
    #[serde(default, deserialize_with = "lenient")]
    pub version: Option<String>,
    /// The id it was made under (an uploaded copy may be kept under another).
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub cluster_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub created_at_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub created_by: Option<String>,
    /// The cluster CA's fingerprint when it was made (`null` before the cluster had a CA).
    #[serde(default, deserialize_with = "lenient")]
    pub ca_fingerprint: Option<String>,
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub restored_by_replacing: Vec<String>,
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub restored_by_merging: Vec<String>,
    /// Per collection: its document count and the SHA-256 of its file in the archive.
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub collections: BTreeMap<String, ManifestCollection>,
    /// Per blob (by hash): its size in bytes.
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub blobs: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCollection {
    pub count: i64,
    pub sha256: String,
}

/// The value if it has the expected shape, else `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(bson::from_bson(Bson::deserialize(d)?).ok())
}

fn lenient_or_default<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(lenient(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn a_backup_decodes_with_its_manifest() {
        let backup: BackupRecord = bson::from_document(doc! {
            "_id": "backup-1", "hash": "h", "size": 100_i64, "createdAtMs": 5_i64, "createdBy": "ann",
            "manifest": {
                "format": 1_i64, "version": "0.1.0", "id": "backup-1", "clusterId": "c",
                "createdAtMs": 5_i64, "createdBy": "ann", "caFingerprint": Bson::Null,
                "restoredByReplacing": ["groups"], "restoredByMerging": ["certificates"],
                "collections": { "groups": { "count": 2_i64, "sha256": "s" } },
                "blobs": { "b": 7_i32 },
            },
        })
        .unwrap();
        let manifest = &backup.manifest;
        assert_eq!(manifest.cluster_id.as_deref(), Some("c"));
        assert_eq!(manifest.ca_fingerprint, None);
        assert_eq!(manifest.collections["groups"].count, 2);
        assert_eq!(manifest.blobs["b"], 7);
    }

    #[test]
    fn an_uploaded_manifest_of_another_shape_still_reads() {
        let backup: BackupRecord = bson::from_document(doc! {
            "_id": "elsewhere", "hash": "h",
            "manifest": { "format": 1_i64, "clusterId": 5_i64, "collections": "many", "extra": true },
        })
        .unwrap();
        assert_eq!(backup.manifest.format, Some(1));
        assert_eq!(backup.manifest.cluster_id, None);
        assert!(backup.manifest.collections.is_empty());
    }
}
