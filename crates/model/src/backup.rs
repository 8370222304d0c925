//! What a backup holds and how a restore treats each collection. Collections in none of these
//! lists (instances, nodes, drains, ...) are in a backup as a snapshot for operators and are not
//! restored: the running cluster's own state wins.

use crate::access::{API_TOKENS, ROLES, USERS};
use crate::cluster::{
    BLOB_CHUNKS, BLOBS, CLUSTER_SECRETS, DEV_CLAIMS, FENCE_LOG, FENCES, REPLICAS, SCHEDULER_SYNC,
};
use crate::groups::GROUPS;
use crate::pki::{CERTIFICATES, JOIN_TOKENS};
use crate::workflows::{BACKUPS, CAPTURES, DEPLOYMENTS, MODULES, TEMPLATES};

/// Never in a backup: the cluster's own keys, the blob store as such (template and module blobs
/// are added as files), fencing marks (they only ever go up), ephemeral registries and captures
/// in progress, and the backups themselves.
pub const NEVER: &[&str] = &[
    CLUSTER_SECRETS,
    BLOBS,
    BLOB_CHUNKS,
    FENCES,
    FENCE_LOG,
    REPLICAS,
    DEV_CLAIMS,
    SCHEDULER_SYNC,
    CAPTURES,
    BACKUPS,
];
/// Restored by replacing what is there: the desired configuration.
pub const REPLACED: &[&str] = &[
    GROUPS,
    DEPLOYMENTS,
    TEMPLATES,
    MODULES,
    USERS,
    ROLES,
    API_TOKENS,
];
/// Restored by adding what the store lacks, never removing: a certificate revoked or a join
/// token used since the backup stays so.
pub const MERGED: &[&str] = &[CERTIFICATES, JOIN_TOKENS];
/// Who may do what: restored only from an archive this cluster made (its MAC checks out).
pub const IDENTITY: &[&str] = &[USERS, ROLES, API_TOKENS, CERTIFICATES, JOIN_TOKENS];
/// The collections whose records name blobs (template and module versions).
pub const WITH_BLOBS: &[&str] = &[TEMPLATES, MODULES];
