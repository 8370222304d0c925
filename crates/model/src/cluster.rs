//! The cluster itself: its identity, its secrets, its replicas and the documents that make
//! concurrent cluster-wide writes conflict.

pub use prexor_store::{BLOB_CHUNKS, BLOBS, FENCE_LOG, FENCES};
use serde::{Deserialize, Serialize};

/// Cluster-wide singleton documents, by `_id` ([`IDENTITY`], [`USERS_GUARD`]).
pub const CLUSTER: &str = "cluster";
/// The cluster's identity (`clusterId`, `storeId`): which Valkey belongs to this MongoDB.
pub const IDENTITY: &str = "identity";
/// The document every user write touches, so that concurrent ones conflict.
pub const USERS_GUARD: &str = "users-guard";
/// Keys only the cluster holds (never in a backup): the service enrolment secret, the backup
/// MAC key.
pub const CLUSTER_SECRETS: &str = "cluster_secrets";
/// Where each scheduler replica writes its marker (one small document per replica), so the
/// change-stream mirror knows it has seen everything committed before a tick.
pub const SCHEDULER_SYNC: &str = "scheduler_sync";
/// The replica registry (`_id` = replica id): kind, addresses, readiness, heartbeats.
pub const REPLICAS: &str = "replicas";
/// Claims of the dev profile's fixed ports and ids, so two dev replicas never share one.
pub const DEV_CLAIMS: &str = "dev_claims";

/// The cluster's identity (`cluster`, `_id` = [`IDENTITY`]). The first replica creates it with
/// `clusterId` and `createdAtMs`; the coordination-store fields appear once a replica stamps a
/// Valkey, and every replica that sees that store refreshes `storeSeenAtMs` / `storeSeenBy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentity {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub created_at_ms: i64,
    /// The id of the coordination store (Valkey) the cluster uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// When a replica last saw that store (0: never).
    #[serde(default)]
    pub store_seen_at_ms: i64,
    /// The replica that last saw it.
    #[serde(default)]
    pub store_seen_by: String,
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn the_identity_decodes_before_and_after_a_store_is_stamped() {
        let created: ClusterIdentity =
            bson::from_document(doc! { "_id": IDENTITY, "clusterId": "c1", "createdAtMs": 1_i64 })
                .unwrap();
        assert_eq!(created.cluster_id, "c1");
        assert_eq!(created.store_id, None);
        assert_eq!(
            (created.store_seen_at_ms, created.store_seen_by.as_str()),
            (0, "")
        );

        let stamped: ClusterIdentity = bson::from_document(doc! {
            "_id": IDENTITY, "clusterId": "c1", "createdAtMs": 1_i64,
            "storeId": "s1", "storeSeenAtMs": 5_i64, "storeSeenBy": "api-1",
        })
        .unwrap();
        assert_eq!(stamped.store_id.as_deref(), Some("s1"));
        assert_eq!(
            (stamped.store_seen_at_ms, stamped.store_seen_by.as_str()),
            (5, "api-1")
        );
    }
}
