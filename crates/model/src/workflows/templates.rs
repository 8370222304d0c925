//! Templates as stored (`templates`): named layers with numbered versions, each a tar.gz blob.

use serde::{Deserialize, Serialize};

/// A template (`_id` = its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRecord {
    #[serde(rename = "_id")]
    pub name: String,
    /// In upload order, numbered from 1.
    #[serde(default)]
    pub versions: Vec<TemplateVersion>,
    /// The version a group gets when it names the template without one.
    #[serde(default)]
    pub current: Option<i64>,
}

impl TemplateRecord {
    pub fn version(&self, version: i64) -> Option<&TemplateVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The version groups get by default.
    pub fn current_version(&self) -> Option<&TemplateVersion> {
        self.version(self.current?)
    }
}

/// A template version: numbered.
pub type TemplateVersion = LayerVersion<i64>;

/// One uploaded version of a layer (a template's or a platform module's): the blob that holds
/// it and who put it there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerVersion<V> {
    pub version: V,
    /// The blob's SHA-256 (hex).
    pub hash: String,
    /// Bytes of the tar.gz.
    #[serde(default)]
    pub size: i64,
    /// Entries in the tar.gz.
    #[serde(default)]
    pub files: i64,
    #[serde(default)]
    pub uploaded_by: String,
    #[serde(default)]
    pub uploaded_at_ms: i64,
}

/// A capture of an instance's files for `POST /instances/{id}/save-to-template` (in
/// `captures`): written by the api before it asks the node, completed by the gateway that
/// stores the node's archive (which only takes an archive for an open capture of that node, up
/// to its limits), removed by the api once the template version is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub node_id: String,
    pub instance: String,
    /// Limits of the archive (the api's `uploads.*` for layers).
    pub max_bytes: i64,
    pub max_entries: i64,
    pub max_unpacked_bytes: i64,
    /// After this the gateway takes no archive for it.
    pub expires_at_ms: i64,
    /// Set by the gateway once the archive is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<CapturedBlob>,
}

/// The archive a capture stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapturedBlob {
    pub hash: String,
    pub size: i64,
    pub entries: i64,
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn a_template_decodes_with_its_versions_and_current_one() {
        let template: TemplateRecord = bson::from_document(doc! {
            "_id": "base", "current": 2_i64,
            "versions": [
                { "version": 1_i64, "hash": "a", "size": 10_i64, "files": 1_i64, "uploadedBy": "ann", "uploadedAtMs": 1_i64 },
                { "version": 2_i64, "hash": "b", "size": 20_i64, "files": 2_i64, "uploadedBy": "ann", "uploadedAtMs": 2_i64 },
            ],
        })
        .unwrap();
        assert_eq!(
            template.current_version().map(|v| v.hash.as_str()),
            Some("b")
        );
        assert_eq!(template.version(1).map(|v| v.size), Some(10));
        assert!(template.version(3).is_none());
    }
}
