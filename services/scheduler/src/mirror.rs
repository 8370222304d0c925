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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{Bson, Document, doc};
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

/// Documents by `_id` (its string form), by collection; shared with the snapshots that read them.
pub type Collections = HashMap<&'static str, HashMap<String, Arc<Document>>>;

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

/// Collections whose documents belong to one group: the group's name is their `_id` (groups,
/// group states) or their `group` field (the rest). Node allocations and port reservations are
/// placement's, not a group step's input.
fn group_of(collection: &str, doc: &Document) -> Option<String> {
    if collection == prexor_model::groups::GROUPS || collection == crate::groups::GROUP_STATE {
        return doc.get_str("_id").ok().map(str::to_owned);
    }
    if [
        crate::groups::NODES,
        crate::groups::NODE_ALLOCATIONS,
        crate::groups::PORT_RESERVATIONS,
        crate::drains::NODE_DRAINS,
        crate::modules::MODULE_MUTATION,
    ]
    .contains(&collection)
    {
        return None;
    }
    doc.get_str("group").ok().map(str::to_owned)
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
            .map_err(|e| format!("cannot open a change stream: {e}"))?;
        let mut docs: Collections = HashMap::new();
        for &collection in MIRRORED {
            let all = self
                .store
                .find_all(collection, "loading the scheduler's mirror", doc! {})
                .await
                .map_err(|e| e.to_string())?;
            let by_id = all
                .into_iter()
                .filter_map(|d| Some((key(d.get("_id"))?, Arc::new(d))))
                .collect();
            docs.insert(collection, by_id);
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

    fn apply(&self, event: ChangeStreamEvent<Document>) -> Result<(), String> {
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
        let docs = state.docs.entry(name).or_default();
        // The document as it is now; none when it is gone (deleted, also after an update).
        let (before, after) = match event.full_document {
            Some(doc) => {
                let doc = Arc::new(doc);
                (docs.insert(id, doc.clone()), Some(doc))
            }
            None => (docs.remove(&id), None),
        };
        let changes = &mut state.changes;
        if name == crate::groups::NODES {
            // Heartbeats rewrite nodes every few seconds; only a node coming or going (its
            // state) changes what a group step decides.
            let state_of = |d: &Option<Arc<Document>>| {
                d.as_ref()
                    .and_then(|d| d.get_str("state").ok().map(str::to_owned))
            };
            changes.all |= state_of(&before) != state_of(&after);
        }
        for doc in before.iter().chain(after.iter()) {
            if let Some(group) = group_of(name, doc) {
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
