//! Group records (`groups`: `{_id: name, spec, revision, createdAtMs, updatedAtMs, deleting?}`),
//! written by operators (API, `prexor-scheduler group apply`) with compare-and-set on the
//! revision, so a concurrent change is never overwritten silently. Deleting marks the group; its
//! lease holder stops the instances and removes the record. Each write carries the writer's
//! trace context (`traceparent`), which the holder's next step links to
//! (docs/observability.md, "Traces").

use mongodb::bson::{self, Document, doc};
use prexor_domain::{GroupSpec, now_ms};
use serde::{Deserialize, Serialize};

use prexor_store::{Store, StoreError};

pub const GROUPS: &str = "groups";
/// What a group's lease holder keeps about the group besides its instances (`_id` = group
/// name): crash-loop pauses, the scaling decision, placement halts.
pub const GROUP_STATE: &str = "group_state";

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    #[serde(rename = "_id")]
    pub name: String,
    pub spec: GroupSpec,
    #[serde(default = "first_revision")]
    pub revision: i64,
    /// Marked for deletion: its holder stops the instances, then removes the record.
    #[serde(default)]
    pub deleting: bool,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default)]
    pub updated_at_ms: i64,
}

fn first_revision() -> i64 {
    1
}

impl GroupRecord {
    /// `None` when the stored spec no longer parses (written by a newer version, say).
    pub fn from_doc(doc: &Document) -> Option<GroupRecord> {
        bson::from_document(doc.clone()).ok()
    }
}

/// What a group's lease holder keeps about it ([`GROUP_STATE`], `_id` = group name). Every
/// field is absent until the holder first needs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStateRecord {
    #[serde(rename = "_id")]
    pub group: String,
    /// A crash loop pauses new placements until then...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until_ms: Option<i64>,
    /// ...for a time that doubles with each level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_level: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// DYNAMIC: the instance count the holder scales to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_at_ms: Option<i64>,
    /// DYNAMIC: low load counted since then (scaled down once it lasted long enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since_ms: Option<i64>,
    /// DYNAMIC: what the group's signal read when last judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<ScalingSignal>,
    /// DYNAMIC: what the holder decided from it, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The last placement that left instances missing (and, once they were placed, that they
    /// were), with every node's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementExplanation>,
}

/// Why a group's holder placed (or did not place) its missing instances, node by node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementExplanation {
    pub at_ms: i64,
    pub missing: i64,
    pub placed: i64,
    pub outcome: String,
    /// The first nodes judged (the eligible ones first, in placement's order).
    #[serde(default)]
    pub nodes: Vec<NodeVerdictRecord>,
    /// Nodes judged in all, and the refused ones counted by reason.
    #[serde(default)]
    pub nodes_judged: i64,
    #[serde(default)]
    pub refused_by_reason: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdictRecord {
    pub node: String,
    pub eligible: bool,
    pub reason: String,
}

/// A DYNAMIC group's scaling signal as last read: `players`, `tps`, `mspt` or `memory` (%).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSignal {
    pub metric: String,
    pub value: f64,
    /// The reading in words (`mspt 45.5 on average over 2 running instances (busy at 40, …)`).
    pub reading: String,
}

impl GroupStateRecord {
    /// The pause in force at `now` (until, reason).
    pub fn paused_at(&self, now: i64) -> Option<(i64, Option<&str>)> {
        self.paused_until_ms
            .filter(|until| *until > now)
            .map(|until| (until, self.pause_reason.as_deref()))
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
    let mut record = doc! {
        "_id": name,
        "spec": encode(spec)?,
        "revision": 1_i64,
        "createdAtMs": now,
        "updatedAtMs": now,
    };
    prexor_telemetry::trace::inject_document(&mut record);
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
    let mut changes = doc! { "spec": &spec_doc, "revision": revision + 1, "updatedAtMs": now_ms() };
    prexor_telemetry::trace::inject_document(&mut changes);
    let updated = store
        .bounded(
            "updating a group",
            store
                .documents(GROUPS)
                .find_one_and_update(
                    doc! { "_id": name, "revision": revision, "deleting": { "$ne": true } },
                    doc! { "$set": changes },
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
    let mut changes = doc! { "deleting": true, "updatedAtMs": now_ms() };
    prexor_telemetry::trace::inject_document(&mut changes);
    let updated = store
        .bounded(
            "marking a group for deletion",
            store
                .documents(GROUPS)
                .find_one_and_update(
                    doc! { "_id": name },
                    doc! { "$set": changes, "$inc": { "revision": 1_i64 } },
                )
                .return_document(mongodb::options::ReturnDocument::After),
        )
        .await?;
    updated
        .as_ref()
        .and_then(GroupRecord::from_doc)
        .ok_or_else(|| GroupWriteError::Missing(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Document {
        doc! {
            "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256_i64,
            "portRange": { "from": 30000, "to": 30099 },
            "minInstances": 0_i64, "maxInstances": 1_i64, "scaling": "MANUAL",
        }
    }

    #[test]
    fn a_group_reads_with_the_defaults_of_a_record_written_before_them() {
        let record = GroupRecord::from_doc(&doc! { "_id": "lobby", "spec": spec() }).unwrap();
        assert_eq!(
            (record.name.as_str(), record.revision, record.deleting),
            ("lobby", 1, false)
        );
        let record = GroupRecord::from_doc(
            &doc! { "_id": "lobby", "spec": spec(), "revision": 4_i64, "deleting": true, "_fence": {} },
        )
        .unwrap();
        assert_eq!((record.revision, record.deleting), (4, true));
    }

    #[test]
    fn a_group_without_a_readable_spec_is_none() {
        assert!(GroupRecord::from_doc(&doc! { "_id": "lobby" }).is_none());
        assert!(GroupRecord::from_doc(&doc! { "_id": "lobby", "spec": { "x": 1 } }).is_none());
    }

    #[test]
    fn a_pause_counts_only_until_it_ends() {
        let state: GroupStateRecord = bson::from_document(
            doc! { "_id": "lobby", "pausedUntilMs": 100_i64, "pauseLevel": 1_i64, "pauseReason": "3 crashes" },
        )
        .unwrap();
        assert_eq!(state.paused_at(99), Some((100, Some("3 crashes"))));
        assert_eq!(state.paused_at(100), None);
    }
}
