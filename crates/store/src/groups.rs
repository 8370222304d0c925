//! Group records (`groups`: `{_id: name, spec, revision, createdAtMs, updatedAtMs, deleting?}`),
//! written by operators (API, `prexor-scheduler group apply`) with compare-and-set on the
//! revision, so a concurrent change is never overwritten silently. Deleting marks the group; its
//! lease holder stops the instances and removes the record.

use mongodb::bson::{self, Document, doc};
use prexor_domain::{GroupSpec, now_ms};

use crate::{Store, StoreError};

pub const GROUPS: &str = "groups";
/// One record per instance: where it runs, its state, what its node reports.
pub const INSTANCES: &str = "instances";
/// The composition plan of each instance (`_id` = instance id, with its `planHash`): written in
/// the same transaction as the instance record, kept apart because plans are large and only
/// dispatching one reads it, while every scheduler tick reads every instance record.
pub const INSTANCE_PLANS: &str = "instance_plans";

/// A group as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub name: String,
    pub spec: GroupSpec,
    pub revision: i64,
    pub deleting: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl GroupRecord {
    /// `None` when the stored spec no longer parses (written by a newer version, say).
    pub fn from_doc(doc: &Document) -> Option<GroupRecord> {
        Some(GroupRecord {
            name: doc.get_str("_id").ok()?.to_owned(),
            spec: bson::from_document(doc.get_document("spec").ok()?.clone()).ok()?,
            revision: doc.get_i64("revision").unwrap_or(1),
            deleting: doc.get_bool("deleting").unwrap_or(false),
            created_at_ms: doc.get_i64("createdAtMs").unwrap_or(0),
            updated_at_ms: doc.get_i64("updatedAtMs").unwrap_or(0),
        })
    }
}

/// Why a group write was not made.
#[derive(Debug, thiserror::Error)]
pub enum GroupWriteError {
    #[error("group {0} already exists")]
    Exists(String),
    #[error("no group {0}")]
    Missing(String),
    #[error("group {name} is at revision {current}, not {expected}; read it again and reapply")]
    Changed {
        name: String,
        expected: i64,
        current: i64,
    },
    #[error("group {0} is being deleted")]
    Deleting(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn encode(spec: &GroupSpec) -> Result<Document, StoreError> {
    bson::to_document(spec).map_err(|e| StoreError::BadWrite {
        what: "a group spec".into(),
        reason: e.to_string(),
    })
}

pub async fn get_group(store: &Store, name: &str) -> Result<Option<Document>, StoreError> {
    store
        .bounded(
            "reading a group",
            store.documents(GROUPS).find_one(doc! { "_id": name }),
        )
        .await
}

pub async fn create_group(
    store: &Store,
    name: &str,
    spec: &GroupSpec,
) -> Result<GroupRecord, GroupWriteError> {
    let now = now_ms();
    let record = doc! {
        "_id": name,
        "spec": encode(spec)?,
        "revision": 1_i64,
        "createdAtMs": now,
        "updatedAtMs": now,
    };
    match store
        .bounded(
            "creating a group",
            store.documents(GROUPS).insert_one(&record),
        )
        .await
    {
        Ok(_) => Ok(GroupRecord::from_doc(&record).expect("a spec just encoded decodes")),
        Err(err) if err.is_duplicate_key() => Err(GroupWriteError::Exists(name.to_owned())),
        Err(err) => Err(err.into()),
    }
}

/// Replaces the spec if the group is at `expected` revision (or any revision when `None`);
/// `Ok(None)` when the spec is unchanged.
pub async fn update_group(
    store: &Store,
    name: &str,
    spec: &GroupSpec,
    expected: Option<i64>,
) -> Result<Option<GroupRecord>, GroupWriteError> {
    let current = get_group(store, name)
        .await?
        .ok_or_else(|| GroupWriteError::Missing(name.to_owned()))?;
    let revision = current.get_i64("revision").unwrap_or(1);
    if current.get_bool("deleting").unwrap_or(false) {
        return Err(GroupWriteError::Deleting(name.to_owned()));
    }
    if let Some(expected) = expected
        && expected != revision
    {
        return Err(GroupWriteError::Changed {
            name: name.to_owned(),
            expected,
            current: revision,
        });
    }
    let spec_doc = encode(spec)?;
    if current.get_document("spec").ok() == Some(&spec_doc) {
        return Ok(None);
    }
    let updated = store
        .bounded(
            "updating a group",
            store.documents(GROUPS).find_one_and_update(
                doc! { "_id": name, "revision": revision, "deleting": { "$ne": true } },
                doc! { "$set": { "spec": &spec_doc, "revision": revision + 1, "updatedAtMs": now_ms() } },
            )
            .return_document(mongodb::options::ReturnDocument::After),
        )
        .await?;
    match updated {
        Some(doc) => Ok(GroupRecord::from_doc(&doc)),
        None => {
            let current = get_group(store, name)
                .await?
                .and_then(|d| d.get_i64("revision").ok())
                .unwrap_or(revision);
            Err(GroupWriteError::Changed {
                name: name.to_owned(),
                expected: revision,
                current,
            })
        }
    }
}

/// Marks the group for deletion (its holder stops the instances, then removes it).
pub async fn mark_group_deleting(
    store: &Store,
    name: &str,
) -> Result<GroupRecord, GroupWriteError> {
    let updated = store
        .bounded(
            "marking a group for deletion",
            store
                .documents(GROUPS)
                .find_one_and_update(
                    doc! { "_id": name },
                    doc! { "$set": { "deleting": true, "updatedAtMs": now_ms() }, "$inc": { "revision": 1_i64 } },
                )
                .return_document(mongodb::options::ReturnDocument::After),
        )
        .await?;
    updated
        .as_ref()
        .and_then(GroupRecord::from_doc)
        .ok_or_else(|| GroupWriteError::Missing(name.to_owned()))
}
