//! A mirror of the collections a scheduler tick reads, kept current by one MongoDB change stream,
//! so a tick at 1,000 groups does not read 1,000 group, instance and state records again.
//!
//! Consistency: each tick first writes a marker (`scheduler_sync`, this replica's document, with
//! a new sequence number) and waits until the change stream has delivered it. Change events
//! arrive in commit order, so the mirror then holds every change committed before the marker —
//! this replica's own writes of the previous tick included — exactly what reading the collections
//! at that moment would give. Whenever that cannot be established (the stream is not open yet,
//! broke, or the marker does not arrive within [`SYNC_TIMEOUT`]) the tick reads the collections
//! from MongoDB as before, and the mirror is reloaded.
//!
//! Loading: the stream is opened first, then every mirrored collection is read in full; the
//! events buffered meanwhile are applied after (each carries the document as it is when the
//! event is delivered, never older than the full read).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, RawDocument, RawDocumentBuf, doc};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::options::FullDocumentType;
use prexor_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The collections mirrored: what [`crate::reconciler`] and [`crate::groups`] read every tick,
/// and what a placement decides over.
pub const MIRRORED: &[&str] = &[
    prexor_model::groups::GROUPS,
    crate::drains::NODE_DRAINS,
    prexor_model::instances::INSTANCES,
    crate::groups::GROUP_STATE,
    crate::groups::STRAYS,
    crate::groups::NODES,
    crate::groups::NODE_ALLOCATIONS,
    crate::groups::PORT_RESERVATIONS,
    crate::groups::CRASHES,
    crate::groups::INSTANCE_REQUESTS,
    crate::groups::INSTANCE_LOAD,
    crate::groups::deployments::DEPLOYMENTS,
    crate::modules::MODULE_MUTATION,
];
/// Where each scheduler replica writes its marker (one small document per replica).
pub use prexor_model::cluster::SCHEDULER_SYNC as SYNC;
/// How long a tick waits for its marker before reading MongoDB directly.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before reopening a stream that failed...
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// ...growing up to this while it cannot be opened at all.
const MAX_REOPEN_AFTER: Duration = Duration::from_secs(30);

/// A mirrored document, kept as the BSON MongoDB sent: a few hundred bytes where a decoded
/// [`Document`] takes several kilobytes, which at 10,000 groups is most of a scheduler's memory.
/// Readers decode only what they use (docs/scheduling.md, "The tick").
pub type Raw = Arc<RawDocumentBuf>;

/// The mirrored documents by collection and `_id` (its string form), with each group's documents
/// indexed, so a tick reads the groups it judges without passing over every other group's.
#[derive(Default)]
pub struct Collections {
    docs: HashMap<&'static str, HashMap<String, Raw>>,
    /// Per collection whose documents name their group in `group`: the `_id`s by group.
    by_group: HashMap<&'static str, HashMap<String, HashSet<String>>>,
}

impl Collections {
    /// Every document of `collection`.
    pub fn all<'a>(&'a self, collection: &str) -> impl Iterator<Item = &'a RawDocument> + 'a {
        self.docs
            .get(collection)
            .into_iter()
            .flat_map(HashMap::values)
            .map(|raw| raw.as_ref() as &RawDocument)
    }

    /// Whether `collection` holds no document.
    pub fn is_empty(&self, collection: &str) -> bool {
        self.docs.get(collection).is_none_or(HashMap::is_empty)
    }

    /// The documents of `groups` in `collection`: those whose `_id` is the group's name (groups,
    /// group states) or whose `group` field names it (the rest).
    pub fn of_groups<'a>(
        &'a self,
        collection: &str,
        groups: &'a [String],
    ) -> impl Iterator<Item = &'a RawDocument> + 'a {
        let docs = self.docs.get(collection);
        let index = self.by_group.get(collection);
        let keyed_by_name = keyed_by_group_name(collection);
        groups.iter().flat_map(move |group| {
            let ids: Vec<&String> = if keyed_by_name {
                vec![group]
            } else {
                index
                    .and_then(|i| i.get(group))
                    .into_iter()
                    .flatten()
                    .collect()
            };
            ids.into_iter()
                .filter_map(move |id| docs?.get(id))
                .map(|raw| raw.as_ref() as &RawDocument)
        })
    }

    /// Puts `raw` in as `collection`'s document `id`; the one it replaces, if any.
    fn insert(&mut self, collection: &'static str, id: String, raw: Raw) -> Option<Raw> {
        let group = group_field(collection, &raw);
        let before = self
            .docs
            .entry(collection)
            .or_default()
            .insert(id.clone(), raw);
        self.unindex(
            collection,
            &id,
            before.as_deref().map(|b| b as &RawDocument),
        );
        if let Some(group) = group {
            self.by_group
                .entry(collection)
                .or_default()
                .entry(group)
                .or_default()
                .insert(id);
        }
        before
    }

    /// Takes `collection`'s document `id` out; the one removed, if any.
    fn remove(&mut self, collection: &'static str, id: &str) -> Option<Raw> {
        let before = self.docs.get_mut(collection)?.remove(id);
        self.unindex(collection, id, before.as_deref().map(|b| b as &RawDocument));
        before
    }

    fn unindex(&mut self, collection: &str, id: &str, before: Option<&RawDocument>) {
        let Some(group) = before.and_then(|b| group_field(collection, b)) else {
            return;
        };
        if let Some(index) = self.by_group.get_mut(collection)
            && let Some(ids) = index.get_mut(&group)
        {
            ids.remove(id);
            if ids.is_empty() {
                index.remove(&group);
            }
        }
    }
}

/// `raw` decoded, for the readers that work on a [`Document`]; `None` (with a warning naming
/// it) when it cannot be.
pub fn document(collection: &str, raw: &RawDocument) -> Option<Document> {
    Document::try_from(raw)
        .inspect_err(|err| {
            let id = prexor_model::raw_id(raw).map(|id| id.to_string());
            tracing::warn!(
                collection,
                id = id.as_deref().unwrap_or_default(),
                "a mirrored document cannot be read ({err}); skipped"
            );
        })
        .ok()
}

#[derive(Default)]
struct State {
    /// The collections are loaded and the stream is delivering changes.
    live: bool,
    /// Bumped at every (re)load: a tick checks that the mirror it synchronised with is the one it
    /// reads.
    generation: u64,
    /// The highest marker sequence of this replica the stream delivered.
    marker_seen: i64,
    /// A tick gave up waiting for its marker: the watcher reloads.
    reload: bool,
    docs: Collections,
    /// What changed since a tick last took it ([`Mirror::take_changes`]).
    changes: Changes,
    /// Changes applied per collection since the load (what a tick may cache on).
    versions: HashMap<&'static str, u64>,
}

/// The groups whose inputs changed: a document of theirs (the group, its state, instances,
/// strays, crashes, requests, load, deployment) was written or removed. A node that changed
/// state, or a reload, changes every group's inputs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub all: bool,
    pub groups: std::collections::HashSet<String>,
}

impl Changes {
    pub fn touches(&self, group: &str) -> bool {
        self.all || self.groups.contains(group)
    }
}

/// Collections whose `_id` is the group's name.
fn keyed_by_group_name(collection: &str) -> bool {
    collection == prexor_model::groups::GROUPS || collection == crate::groups::GROUP_STATE
}

/// Collections whose documents belong to no group. Node allocations and port reservations are
/// placement's, not a group step's input.
const NOT_PER_GROUP: &[&str] = &[
    crate::groups::NODES,
    crate::groups::NODE_ALLOCATIONS,
    crate::groups::PORT_RESERVATIONS,
    crate::drains::NODE_DRAINS,
    crate::modules::MODULE_MUTATION,
];

/// The group named by the `group` field of a document of `collection`, where documents carry one.
fn group_field(collection: &str, raw: &RawDocument) -> Option<String> {
    if keyed_by_group_name(collection) || NOT_PER_GROUP.contains(&collection) {
        return None;
    }
    raw.get_str("group").ok().map(str::to_owned)
}

/// The group a document of `collection` belongs to: the group's name is its `_id` (groups,
/// group states) or its `group` field (the rest).
fn group_of(collection: &str, raw: &RawDocument) -> Option<String> {
    if keyed_by_group_name(collection) {
        return raw.get_str("_id").ok().map(str::to_owned);
    }
    group_field(collection, raw)
}

/// The mirror: a watcher task fills it, ticks read it.
#[derive(Clone)]
pub struct Mirror {
    store: Store,
    replica_id: String,
    state: Arc<Mutex<State>>,
    delivered: Arc<Notify>,
    next_marker: Arc<Mutex<i64>>,
}

fn key(id: Option<&Bson>) -> Option<String> {
    match id? {
        Bson::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// [`key`] of a raw document's `_id`.
fn raw_key(raw: &RawDocument) -> Option<String> {
    match raw.get_str("_id") {
        Ok(id) => Some(id.to_owned()),
        Err(_) => key(prexor_model::raw_id(raw).as_ref()),
    }
}

impl Mirror {
    /// Starts watching; until the first load completes, ticks read MongoDB directly.
    pub fn start(store: Store, replica_id: String, shutdown: CancellationToken) -> Mirror {
        let mirror = Mirror {
            store,
            replica_id,
            state: Arc::default(),
            delivered: Arc::new(Notify::new()),
            next_marker: Arc::new(Mutex::new(prexor_domain::now_ms())),
        };
        tokio::spawn(mirror.clone().watch(shutdown));
        mirror
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mirror lock")
    }

    async fn watch(self, shutdown: CancellationToken) {
        let mut reported = false;
        // Doubles while the stream cannot be opened or loaded at all (a MongoDB without change
        // streams: a standalone server in development), back to the minimum once it works.
        let mut pause = REOPEN_AFTER;
        loop {
            let loaded_before = self.lock().generation;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.follow() => outcome,
            };
            let loaded = self.lock().generation != loaded_before;
            self.lock().live = false;
            // Reported once per episode: when a working mirror stops, or the first time it
            // cannot be opened at all.
            if let Err(err) = outcome
                && (loaded || !reported)
            {
                tracing::info!(
                    "the scheduler's change-stream mirror stopped ({err}); ticks read MongoDB directly until it is reloaded"
                );
                reported = true;
            }
            pause = if loaded {
                REOPEN_AFTER
            } else {
                (pause * 2).min(MAX_REOPEN_AFTER)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Opens the stream, loads every collection, then applies changes until the stream ends, a
    /// reload is asked for, or an error. `Ok` only for a requested reload.
    async fn follow(&self) -> Result<(), String> {
        let colls: Vec<&str> = MIRRORED.iter().copied().chain([SYNC]).collect();
        let mut stream = self
            .store
            .database()
            .watch()
            .pipeline([doc! { "$match": { "ns.coll": { "$in": colls } } }])
            .full_document(FullDocumentType::UpdateLookup)
            .await
            .map_err(|e| format!("cannot open a change stream: {e}"))?
            .with_type::<ChangeStreamEvent<RawDocumentBuf>>();
        let mut docs = Collections::default();
        for &collection in MIRRORED {
            let all: Vec<RawDocumentBuf> = self
                .store
                .bounded("loading the scheduler's mirror", async {
                    self.store
                        .collection::<RawDocumentBuf>(collection)
                        .find(doc! {})
                        .await?
                        .try_collect()
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            for raw in all {
                if let Some(id) = raw_key(&raw) {
                    docs.insert(collection, id, Arc::new(raw));
                }
            }
        }
        {
            let mut state = self.lock();
            state.docs = docs;
            state.generation += 1;
            state.live = true;
            state.reload = false;
            state.changes.all = true;
        }
        tracing::debug!("scheduler mirror loaded");
        loop {
            let event = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
            if self.lock().reload {
                return Ok(());
            }
            let event = match event {
                Err(_) => continue,
                Ok(None) => return Err("the change stream ended".into()),
                Ok(Some(Err(err))) => return Err(format!("the change stream failed: {err}")),
                Ok(Some(Ok(event))) => event,
            };
            self.apply(event)?;
        }
    }

    fn apply(&self, event: ChangeStreamEvent<RawDocumentBuf>) -> Result<(), String> {
        let Some(collection) = event.ns.as_ref().and_then(|ns| ns.coll.as_deref()) else {
            return Ok(());
        };
        match event.operation_type {
            OperationType::Insert
            | OperationType::Update
            | OperationType::Replace
            | OperationType::Delete => {}
            OperationType::Drop | OperationType::Rename | OperationType::DropDatabase => {
                return Err(format!("{collection} was dropped or renamed"));
            }
            OperationType::Invalidate => return Err("the change stream was invalidated".into()),
            _ => return Ok(()),
        }
        let Some(id) = key(event.document_key.as_ref().and_then(|k| k.get("_id"))) else {
            return Ok(());
        };
        if collection == SYNC {
            if id == self.replica_id
                && let Some(seq) = event
                    .full_document
                    .as_ref()
                    .and_then(|d| d.get_i64("seq").ok())
            {
                let mut state = self.lock();
                state.marker_seen = state.marker_seen.max(seq);
                drop(state);
                self.delivered.notify_waiters();
            }
            return Ok(());
        }
        let Some(&name) = MIRRORED.iter().find(|c| **c == collection) else {
            return Ok(());
        };
        let mut state = self.lock();
        *state.versions.entry(name).or_default() += 1;
        // The document as it is now; none when it is gone (deleted, also after an update).
        let (before, after) = match event.full_document {
            Some(raw) => {
                let raw = Arc::new(raw);
                (state.docs.insert(name, id, raw.clone()), Some(raw))
            }
            None => (state.docs.remove(name, &id), None),
        };
        let changes = &mut state.changes;
        if name == crate::groups::NODES {
            // Heartbeats rewrite nodes every few seconds; only a node coming or going (its
            // state) changes what a group step decides.
            let state_of = |d: &Option<Raw>| {
                d.as_ref()
                    .and_then(|d| d.get_str("state").ok().map(str::to_owned))
            };
            changes.all |= state_of(&before) != state_of(&after);
        }
        for raw in before.iter().chain(after.iter()) {
            if let Some(group) = group_of(name, raw) {
                changes.groups.insert(group);
            }
        }
        Ok(())
    }

    /// Makes the mirror hold every change committed before now: writes this replica's marker and
    /// waits for the stream to deliver it. `Ok(Some(generation))` to read with
    /// [`Mirror::read`]; `Ok(None)` when the mirror cannot be used this tick (read MongoDB); an
    /// error when MongoDB refused the marker (the tick fails, as its reads would).
    pub async fn sync(&self) -> Result<Option<u64>, StoreError> {
        let generation = {
            let state = self.lock();
            if !state.live {
                return Ok(None);
            }
            state.generation
        };
        let seq = {
            let mut next = self.next_marker.lock().expect("marker lock");
            *next += 1;
            *next
        };
        let delivered = self.delivered.notified();
        tokio::pin!(delivered);
        delivered.as_mut().enable();
        self.store
            .bounded(
                "writing the scheduler's sync marker",
                self.store
                    .documents(SYNC)
                    .update_one(
                        doc! { "_id": &self.replica_id },
                        doc! { "$set": { "seq": seq } },
                    )
                    .upsert(true),
            )
            .await?;
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            {
                let mut state = self.lock();
                if !state.live || state.generation != generation {
                    return Ok(None);
                }
                if state.marker_seen >= seq {
                    return Ok(Some(generation));
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        "the scheduler's mirror did not receive its marker within {SYNC_TIMEOUT:?}; reading MongoDB directly and reloading it"
                    );
                    state.reload = true;
                    return Ok(None);
                }
            }
            let _ = tokio::time::timeout_at(deadline, delivered.as_mut()).await;
            delivered.set(self.delivered.notified());
            delivered.as_mut().enable();
        }
    }

    /// What changed since the last call, for a tick synchronised as `generation`; `None` when
    /// the mirror has been reloaded or stopped since (every group is judged).
    pub fn take_changes(&self, generation: u64) -> Option<Changes> {
        let mut state = self.lock();
        (state.live && state.generation == generation).then(|| std::mem::take(&mut state.changes))
    }

    /// How many changes of `collections` the mirror synchronised as `generation` has applied
    /// since it was loaded (equal numbers: the collections are as they were); `None` when it has
    /// been reloaded or stopped since.
    pub fn versions(&self, generation: u64, collections: &[&str]) -> Option<Vec<u64>> {
        let state = self.lock();
        (state.live && state.generation == generation).then(|| {
            collections
                .iter()
                .map(|c| state.versions.get(c).copied().unwrap_or(0))
                .collect()
        })
    }

    /// Reads the mirror synchronised as `generation`; `None` when it has been reloaded or stopped
    /// since (read MongoDB).
    pub fn read<R>(&self, generation: u64, read: impl FnOnce(&Collections) -> R) -> Option<R> {
        let state = self.lock();
        (state.live && state.generation == generation).then(|| read(&state.docs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prexor_model::instances::INSTANCES;

    fn raw(doc: Document) -> Raw {
        Arc::new(RawDocumentBuf::from_document(&doc).unwrap())
    }

    fn ids<'a>(docs: impl Iterator<Item = &'a RawDocument>) -> Vec<String> {
        let mut ids: Vec<String> = docs.filter_map(raw_key).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_group_reads_its_documents_through_the_index_as_they_change() {
        let mut c = Collections::default();
        let groups = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        c.insert(
            INSTANCES,
            "a-1".into(),
            raw(doc! { "_id": "a-1", "group": "a" }),
        );
        c.insert(
            INSTANCES,
            "a-2".into(),
            raw(doc! { "_id": "a-2", "group": "a" }),
        );
        c.insert(
            INSTANCES,
            "b-1".into(),
            raw(doc! { "_id": "b-1", "group": "b" }),
        );
        let a = groups(&["a"]);
        assert_eq!(ids(c.of_groups(INSTANCES, &a)), ["a-1", "a-2"]);

        // A document that moves to another group (written by hand) leaves the first one's index.
        c.insert(
            INSTANCES,
            "a-2".into(),
            raw(doc! { "_id": "a-2", "group": "b" }),
        );
        assert_eq!(ids(c.of_groups(INSTANCES, &a)), ["a-1"]);
        let b = groups(&["b"]);
        assert_eq!(ids(c.of_groups(INSTANCES, &b)), ["a-2", "b-1"]);

        // Removed: gone from both.
        assert!(c.remove(INSTANCES, "a-1").is_some());
        assert!(c.remove(INSTANCES, "a-1").is_none());
        assert_eq!(ids(c.of_groups(INSTANCES, &a)), Vec::<String>::new());
        assert!(!c.by_group[INSTANCES].contains_key("a"));
        assert_eq!(ids(c.all(INSTANCES)), ["a-2", "b-1"]);

        // Groups and their states are found by name; documents of no group are in no index.
        let groups_coll = prexor_model::groups::GROUPS;
        c.insert(
            groups_coll,
            "a".into(),
            raw(doc! { "_id": "a", "revision": 1_i64 }),
        );
        assert_eq!(ids(c.of_groups(groups_coll, &groups(&["a", "z"]))), ["a"]);
        c.insert(
            crate::groups::NODES,
            "n".into(),
            raw(doc! { "_id": "n", "group": "a" }),
        );
        assert!(!c.by_group.contains_key(crate::groups::NODES));
        assert!(c.is_empty(crate::modules::MODULE_MUTATION));
        assert!(!c.is_empty(crate::groups::NODES));
    }

    #[test]
    fn what_changed_names_the_groups_of_the_documents_before_and_after() {
        let instance = RawDocumentBuf::from_document(&doc! { "_id": "a-1", "group": "a" }).unwrap();
        assert_eq!(group_of(INSTANCES, &instance).as_deref(), Some("a"));
        let group = RawDocumentBuf::from_document(&doc! { "_id": "a" }).unwrap();
        assert_eq!(
            group_of(prexor_model::groups::GROUPS, &group).as_deref(),
            Some("a")
        );
        let node = RawDocumentBuf::from_document(&doc! { "_id": "n", "group": "a" }).unwrap();
        assert_eq!(group_of(crate::groups::NODES, &node), None);
        let numbered = RawDocumentBuf::from_document(&doc! { "_id": 7_i64 }).unwrap();
        assert_eq!(raw_key(&numbered).as_deref(), Some("7"));
    }
}
