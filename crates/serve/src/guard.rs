//! The cluster's identity and its one coordination store.
//!
//! MongoDB keeps `cluster/identity`: the cluster id, and the id of the coordination store the
//! cluster uses (`storeId`), which is also written into that Valkey (`<ns>store-id`). Every
//! replica compares the two at start and with every heartbeat:
//!
//! - equal: `available`, and the replica records that it saw the store (`storeSeenAtMs`);
//! - its Valkey holds another id: **mismatched** — this replica talks to a different Valkey than
//!   the rest of the cluster (split brain). It refuses every mutation and says why;
//! - its Valkey holds no id: either that Valkey lost its data (restart without persistence) or it
//!   is a different, empty one. While another replica still reports seeing the cluster's store,
//!   it is a different one (mismatched). Once nobody has seen the store for a while (every
//!   replica lost it: a restart), the first replica to notice re-stamps it: a new store id,
//!   compare-and-set on the MongoDB record, then `SET NX` in Valkey. Mutations wait meanwhile.
//!
//! A replica configured with a `cluster.id` that differs from the database's refuses to start;
//! so does one with a configured id and an empty database, unless `cluster.bootstrap` is set.
//!
//! Exported (docs/observability.md, "Metrics"): `prexor_store_identity_mismatch` (1 while the
//! store is mismatched) and `prexor_store_up{store}` ([`store_up`], set by the readiness checks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_config::CommonConfig;
use prexor_coord::{LeaseBackend, ValkeyBackend};
use prexor_domain::now_ms;
use prexor_store::Store;
use prexor_store::bson::doc;
use serde::Serialize;

use prexor_model::cluster::{CLUSTER, ClusterIdentity, IDENTITY};

/// What the replica knows about its coordination store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreState {
    /// `available`, `unavailable`, `mismatched` or `restamping`.
    pub store: String,
    /// The cluster's store id (from MongoDB).
    pub expected: Option<String>,
    /// The id in this replica's Valkey.
    pub found: Option<String>,
    /// This replica's Valkey, credentials removed.
    pub valkey: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Checks the coordination store against the cluster's record; shared by the replica's parts.
#[derive(Clone)]
pub struct StoreGuard {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    valkey: Option<ValkeyBackend>,
    key: String,
    replica_id: String,
    /// How long nobody may have seen the store before an empty Valkey is re-stamped.
    stale_after: Duration,
    state: Mutex<StoreState>,
    empty_since: Mutex<Option<i64>>,
    last_seen_write: Mutex<i64>,
}

/// Exports whether this replica reaches `store` (`mongo` or `valkey`): `prexor_store_up{store}`.
pub fn store_up(store: &'static str, up: bool) {
    metrics::gauge!("prexor_store_up", "store" => store).set(if up { 1.0 } else { 0.0 });
}

/// Exports whether the Valkey answering is another than the cluster's coordination store.
fn mismatch(mismatched: bool) {
    metrics::gauge!("prexor_store_identity_mismatch").set(if mismatched { 1.0 } else { 0.0 });
}

/// The Valkey key holding the id of the coordination store (`<ns>store-id`).
pub fn store_id_key(namespace: &str) -> String {
    format!("{namespace}store-id")
}

/// What a database says about the cluster living in it, if any (read-only; `prexorctl setup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCluster {
    pub id: String,
    /// The coordination store the cluster uses, once a replica has stamped one.
    pub store_id: Option<String>,
}

/// Why a replica cannot use a database as its cluster's.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] prexor_store::StoreError),
    #[error(
        "database {database:?} has no cluster yet, but this replica is configured for cluster {id:?} (cluster.id): that usually means mongo.uri or mongo.database points at the wrong database. Fix them, or set cluster.bootstrap = true to create cluster {id:?} here"
    )]
    NoClusterYet { database: String, id: String },
    #[error(
        "this replica is configured for cluster {id:?} (cluster.id) but database {database:?} belongs to cluster {stored:?}; fix cluster.id, or point mongo.uri / mongo.database at cluster {id:?}'s database"
    )]
    OtherCluster {
        id: String,
        database: String,
        stored: String,
    },
    #[error("the cluster identity vanished right after it was created; retry")]
    Vanished,
}

/// Why this replica refuses to mutate anything right now (the store state and its detail).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MutationsRefused(pub String);

/// The cluster identity record; one that does not read as [`ClusterIdentity`] is an error
/// naming it (MongoDB's deserialization error), never a guessed identity.
async fn read_identity(store: &Store) -> Result<Option<ClusterIdentity>, prexor_store::StoreError> {
    store
        .bounded(
            "reading the cluster identity",
            store
                .collection::<ClusterIdentity>(CLUSTER)
                .find_one(doc! { "_id": IDENTITY }),
        )
        .await
}

/// The cluster in this database, or `None` for an empty one.
pub async fn existing_cluster(
    store: &Store,
) -> Result<Option<ExistingCluster>, prexor_store::StoreError> {
    Ok(read_identity(store).await?.map(|identity| ExistingCluster {
        id: identity.cluster_id,
        store_id: identity.store_id,
    }))
}

/// Reads (or creates) the cluster identity and checks the configured cluster id; the id.
pub async fn cluster_identity(
    store: &Store,
    config: &CommonConfig,
) -> Result<String, IdentityError> {
    let cluster = store.documents(CLUSTER);
    let read = || read_identity(store);
    let database = &config.mongo.database;
    let identity = match read().await? {
        Some(identity) => identity,
        None => {
            if let Some(id) = &config.cluster_id
                && !config.cluster_bootstrap
            {
                return Err(IdentityError::NoClusterYet {
                    database: database.clone(),
                    id: id.clone(),
                });
            }
            let id = config
                .cluster_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            let created = store
                .bounded(
                    "creating the cluster identity",
                    cluster.insert_one(
                        doc! { "_id": IDENTITY, "clusterId": &id, "createdAtMs": now_ms() },
                    ),
                )
                .await;
            if let Err(err) = created
                && !err.is_duplicate_key()
            {
                return Err(err.into());
            }
            read().await?.ok_or(IdentityError::Vanished)?
        }
    };
    let stored = identity.cluster_id;
    if let Some(id) = &config.cluster_id
        && *id != stored
    {
        return Err(IdentityError::OtherCluster {
            id: id.clone(),
            database: database.clone(),
            stored,
        });
    }
    Ok(stored)
}

impl StoreGuard {
    pub fn new(
        store: Store,
        valkey: Option<ValkeyBackend>,
        namespace: &str,
        replica_id: &str,
        stale_after: Duration,
    ) -> StoreGuard {
        let described = valkey
            .as_ref()
            .map_or_else(|| "in-process (development)".to_owned(), |v| v.describe());
        mismatch(false);
        StoreGuard {
            inner: Arc::new(Inner {
                store,
                valkey,
                key: store_id_key(namespace),
                replica_id: replica_id.to_owned(),
                stale_after,
                state: Mutex::new(StoreState {
                    store: "available".into(),
                    expected: None,
                    found: None,
                    valkey: described,
                    detail: None,
                }),
                empty_since: Mutex::new(None),
                last_seen_write: Mutex::new(0),
            }),
        }
    }

    pub fn state(&self) -> StoreState {
        self.inner.state.lock().expect("guard lock").clone()
    }

    /// `Err(reason)` while this replica must not mutate anything.
    pub fn allow_mutations(&self) -> Result<(), MutationsRefused> {
        let state = self.state();
        match state.store.as_str() {
            "available" => Ok(()),
            _ => Err(MutationsRefused(state.detail.unwrap_or(state.store))),
        }
    }

    fn set(
        &self,
        store: &str,
        expected: Option<String>,
        found: Option<String>,
        detail: Option<String>,
    ) {
        mismatch(store == "mismatched");
        let mut state = self.inner.state.lock().expect("guard lock");
        let changed = state.store != store;
        state.store = store.to_owned();
        state.expected = expected;
        state.found = found;
        state.detail = detail.clone();
        if changed {
            match store {
                "available" => tracing::info!("coordination store confirmed"),
                "mismatched" => tracing::error!("{}", detail.unwrap_or_default()),
                _ => tracing::warn!("{}", detail.unwrap_or_default()),
            }
        }
    }

    /// One comparison of the store ids (at start, then with every heartbeat).
    pub async fn check(&self) {
        let Some(valkey) = &self.inner.valkey else {
            // Development without Valkey: one in-process store, nothing to confuse.
            return;
        };
        let store = &self.inner.store;
        let cluster = store.documents(CLUSTER);
        let identity = match read_identity(store).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return,
            Err(err) => {
                self.set(
                    "unavailable",
                    None,
                    None,
                    Some(format!("cannot read the cluster identity: {err}")),
                );
                return;
            }
        };
        let expected = identity.store_id.clone();
        let found = match valkey.get(&self.inner.key).await {
            Ok(found) => found,
            Err(err) => {
                self.set("unavailable", expected, None, Some(err.to_string()));
                return;
            }
        };
        let now = now_ms();
        match (&expected, &found) {
            (Some(e), Some(f)) if e == f => {
                *self.inner.empty_since.lock().expect("guard lock") = None;
                self.set("available", expected.clone(), found.clone(), None);
                let due = {
                    let mut last = self.inner.last_seen_write.lock().expect("guard lock");
                    let due = now - *last >= 1000;
                    if due {
                        *last = now;
                    }
                    due
                };
                if due {
                    let _ = store
                        .bounded(
                            "recording the coordination store as seen",
                            cluster.update_one(
                                doc! { "_id": IDENTITY, "storeId": e },
                                doc! { "$set": { "storeSeenAtMs": now, "storeSeenBy": &self.inner.replica_id } },
                            ),
                        )
                        .await;
                }
            }
            (_, Some(f)) if expected.is_some() => {
                let detail = format!(
                    "coordination store mismatched: Valkey {} holds store id {f}, but this cluster's store is {}. This replica talks to a different Valkey than the rest of the cluster (split brain) and refuses every mutation; point valkey.uri at the cluster's Valkey",
                    valkey.describe(),
                    expected.as_deref().unwrap_or("?")
                );
                self.set("mismatched", expected.clone(), found.clone(), Some(detail));
            }
            _ => {
                // No id in this Valkey (or none in the cluster yet).
                let empty_since = *self
                    .inner
                    .empty_since
                    .lock()
                    .expect("guard lock")
                    .get_or_insert(now);
                let seen_at = identity.store_seen_at_ms;
                let seen_by = identity.store_seen_by.as_str();
                let others_still_see_it = expected.is_some()
                    && seen_by != self.inner.replica_id
                    && seen_at > empty_since + 1000;
                let nobody_sees_it =
                    expected.is_none() || now - seen_at > self.inner.stale_after.as_millis() as i64;
                if others_still_see_it {
                    let detail = format!(
                        "coordination store mismatched: Valkey {} holds no store id while replica {seen_by} still uses the cluster's store {}: this replica talks to a different Valkey (split brain) and refuses every mutation; point valkey.uri at the cluster's Valkey",
                        valkey.describe(),
                        expected.as_deref().unwrap_or("?")
                    );
                    self.set("mismatched", expected, None, Some(detail));
                } else if nobody_sees_it {
                    self.restamp(valkey, expected).await;
                } else {
                    let detail = format!(
                        "Valkey {} holds no store id (it lost its data, or it is not the cluster's Valkey); waiting up to {:?} to tell, mutations paused",
                        valkey.describe(),
                        self.inner.stale_after
                    );
                    self.set("restamping", expected, None, Some(detail));
                }
            }
        }
    }

    /// A new store id: compare-and-set in MongoDB, then `SET NX` in Valkey.
    async fn restamp(&self, valkey: &ValkeyBackend, previous: Option<String>) {
        let store = &self.inner.store;
        let cluster = store.documents(CLUSTER);
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let filter = match &previous {
            Some(id) => doc! { "_id": IDENTITY, "storeId": id },
            None => doc! { "_id": IDENTITY, "storeId": { "$exists": false } },
        };
        let swapped = store
            .bounded(
                "re-stamping the coordination store",
                cluster.update_one(
                    filter,
                    doc! { "$set": { "storeId": &fresh, "storeSeenAtMs": now_ms(), "storeSeenBy": &self.inner.replica_id } },
                ),
            )
            .await;
        match swapped {
            Ok(result) if result.modified_count == 1 => {
                if let Err(err) = valkey.set_nx(&self.inner.key, &fresh).await {
                    tracing::warn!(error = %err, "could not stamp the coordination store");
                    return;
                }
                tracing::info!(store_id = %fresh, previous = ?previous, "coordination store stamped");
            }
            Ok(_) => {} // another replica re-stamped first; the next check reads its id
            Err(err) => tracing::warn!(error = %err, "could not re-stamp the coordination store"),
        }
        Box::pin(self.check_after_stamp()).await;
    }

    async fn check_after_stamp(&self) {
        *self.inner.empty_since.lock().expect("guard lock") = None;
        let Ok(Some(identity)) = read_identity(&self.inner.store).await else {
            return;
        };
        let expected = identity.store_id;
        let found = match &self.inner.valkey {
            Some(v) => v.get(&self.inner.key).await.ok().flatten(),
            None => None,
        };
        if expected.is_some() && expected == found {
            self.set("available", expected, found, None);
        }
    }
}
