use std::sync::LazyLock;
use std::time::Duration;

use mongodb::bson::{self, DateTime, doc};
use prexor_domain::ServiceKind;
use prexor_store::{Store, StoreError};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::error::CoordError;
use crate::valkey::ValkeyBackend;

/// One running replica, as it registers itself and as status views list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    pub kind: ServiceKind,
    pub id: String,
    pub version: String,
    pub profile: String,
    /// Where its HTTP endpoint (REST on the api; `/healthz`, `/readyz`, `/metrics` everywhere) is.
    pub http_address: String,
    /// Where its internal gRPC endpoint is, for services that have one.
    pub grpc_address: Option<String>,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub ready: bool,
    /// Number of lease scopes it holds.
    pub leases_held: u64,
    /// Milliseconds since its last heartbeat, by the registry store's clock. Filled in when listed.
    #[serde(default)]
    pub heartbeat_age_ms: u64,
    /// What an operator should know about this replica beyond ready/not ready (e.g. a CA
    /// replica's "no signing key: ...").
    #[serde(default)]
    pub notes: Vec<String>,
    /// This replica's clock minus the coordination store's clock, measured at its previous
    /// heartbeat (`None` until measured, or when the registry store cannot tell its time).
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// Whether its Valkey is the cluster's coordination store: `available`, `mismatched`,
    /// `restamping` or `unavailable` (see `prexor_serve::guard`).
    #[serde(default)]
    pub coordination: Option<String>,
}

// Heartbeat and listing read the registry store's own clock (`TIME`), so replicas with skewed
// clocks still agree on who is alive.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        redis.call('ZADD', KEYS[2], now, ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 10 * tonumber(ARGV[3]))
        return now
        ",
    )
});

static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
        table.insert(live, 1, tostring(now))
        return live
        ",
    )
});

/// Where replicas register. A replica whose heartbeat is older than the TTL is not listed.
#[derive(Clone, Debug)]
pub enum Registry {
    /// Production: `<ns>replica:<kind>:<id>` records (expiring) and a `<ns>replicas:<kind>` index
    /// sorted by heartbeat time.
    Valkey {
        backend: ValkeyBackend,
        namespace: String,
        ttl: Duration,
    },
    /// Development without Valkey: the `replicas` collection.
    Mongo { store: Store, ttl: Duration },
}

use prexor_model::cluster::REPLICAS;

impl Registry {
    /// Records (or refreshes) `record` as alive now; the registry store's clock (Unix ms) when
    /// it has one to tell.
    pub async fn heartbeat(&self, record: &ReplicaRecord) -> Result<Option<i64>, CoordError> {
        match self {
            Registry::Valkey {
                backend,
                namespace,
                ttl,
            } => {
                let json = serde_json::to_string(record).map_err(|e| CoordError::Protocol {
                    op: "encoding a replica record".into(),
                    detail: e.to_string(),
                })?;
                let mut conn = backend.conn();
                let now: i64 = backend
                    .bounded(
                        "recording this replica's heartbeat",
                        HEARTBEAT
                            .key(record_key(namespace, record.kind, &record.id))
                            .key(index_key(namespace, record.kind))
                            .arg(&record.id)
                            .arg(json)
                            .arg(ttl.as_millis() as u64)
                            .invoke_async(&mut conn),
                    )
                    .await?;
                Ok(Some(now))
            }
            Registry::Mongo { store, .. } => {
                let mut document = bson::to_document(record).map_err(|e| CoordError::Protocol {
                    op: "encoding a replica record".into(),
                    detail: e.to_string(),
                })?;
                document.insert("heartbeatAt", DateTime::now());
                store
                    .bounded(
                        "recording this replica's heartbeat",
                        store
                            .documents(REPLICAS)
                            .update_one(
                                doc! { "_id": mongo_id(record.kind, &record.id) },
                                doc! { "$set": document },
                            )
                            .upsert(true),
                    )
                    .await?;
                Ok(None)
            }
        }
    }

    /// Every live replica, of one kind or of all kinds, ordered by kind then id.
    pub async fn list(&self, kind: Option<ServiceKind>) -> Result<Vec<ReplicaRecord>, CoordError> {
        let kinds: Vec<ServiceKind> = match kind {
            Some(kind) => vec![kind],
            None => ServiceKind::ALL.to_vec(),
        };
        let mut records = Vec::new();
        for kind in kinds {
            records.extend(self.list_kind(kind).await?);
        }
        records.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(records)
    }

    async fn list_kind(&self, kind: ServiceKind) -> Result<Vec<ReplicaRecord>, CoordError> {
        match self {
            Registry::Valkey {
                backend,
                namespace,
                ttl,
            } => {
                let mut conn = backend.conn();
                let live: Vec<String> = backend
                    .bounded(
                        &format!("listing {kind} replicas"),
                        LIVE.key(index_key(namespace, kind))
                            .arg(ttl.as_millis() as u64)
                            .invoke_async(&mut conn),
                    )
                    .await?;
                let Some((now, pairs)) = live.split_first() else {
                    return Ok(Vec::new());
                };
                let now: i64 = now.parse().unwrap_or_default();
                let members: Vec<(&String, i64)> = pairs
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?, c.get(1)?.parse::<f64>().ok()? as i64)))
                    .collect();
                if members.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<String> = members
                    .iter()
                    .map(|(id, _)| record_key(namespace, kind, id))
                    .collect();
                let values: Vec<Option<String>> = backend
                    .bounded(
                        &format!("reading {kind} replica records"),
                        redis::cmd("MGET").arg(&keys).query_async(&mut conn),
                    )
                    .await?;
                Ok(members
                    .iter()
                    .zip(values)
                    .filter_map(|((_, at), value)| {
                        let mut record: ReplicaRecord = serde_json::from_str(&value?).ok()?;
                        record.heartbeat_age_ms = (now - at).max(0) as u64;
                        Some(record)
                    })
                    .collect())
            }
            Registry::Mongo { store, ttl } => {
                let now = DateTime::now();
                let cutoff = DateTime::from_millis(now.timestamp_millis() - ttl.as_millis() as i64);
                let mut cursor = store
                    .bounded(
                        &format!("listing {kind} replicas"),
                        store
                            .documents(REPLICAS)
                            .find(doc! { "kind": kind.as_str(), "heartbeatAt": { "$gt": cutoff } }),
                    )
                    .await?;
                let mut records = Vec::new();
                while cursor.advance().await.map_err(|e| StoreError::Mongo {
                    op: format!("listing {kind} replicas"),
                    source: e,
                })? {
                    let document = cursor
                        .deserialize_current()
                        .map_err(|e| StoreError::Mongo {
                            op: format!("reading a {kind} replica record"),
                            source: e,
                        })?;
                    let at = document
                        .get_datetime("heartbeatAt")
                        .map(|d| d.timestamp_millis())
                        .unwrap_or_default();
                    if let Ok(mut record) = bson::from_document::<ReplicaRecord>(document) {
                        record.heartbeat_age_ms = (now.timestamp_millis() - at).max(0) as u64;
                        records.push(record);
                    }
                }
                Ok(records)
            }
        }
    }

    /// Removes the replica at once (graceful stop), instead of letting its heartbeat age out.
    pub async fn deregister(&self, kind: ServiceKind, id: &str) -> Result<(), CoordError> {
        match self {
            Registry::Valkey {
                backend, namespace, ..
            } => {
                let mut conn = backend.conn();
                let _: () = backend
                    .bounded(
                        "deregistering this replica",
                        redis::pipe()
                            .del(record_key(namespace, kind, id))
                            .ignore()
                            .zrem(index_key(namespace, kind), id)
                            .ignore()
                            .query_async(&mut conn),
                    )
                    .await?;
                Ok(())
            }
            Registry::Mongo { store, .. } => {
                store
                    .bounded(
                        "deregistering this replica",
                        store
                            .documents(REPLICAS)
                            .delete_one(doc! { "_id": mongo_id(kind, id) }),
                    )
                    .await?;
                Ok(())
            }
        }
    }
}

fn record_key(namespace: &str, kind: ServiceKind, id: &str) -> String {
    format!("{namespace}replica:{kind}:{id}")
}

fn index_key(namespace: &str, kind: ServiceKind) -> String {
    format!("{namespace}replicas:{kind}")
}

fn mongo_id(kind: ServiceKind, id: &str) -> String {
    format!("{kind}:{id}")
}

use prexor_model::cluster::DEV_CLAIMS;

/// The development profile's single-writer rule: one replica per service kind may run against a
/// database. The claim is a document per kind, refreshed like a heartbeat; a claim not refreshed
/// within the TTL may be taken by a new replica (the old one crashed).
#[derive(Debug, Clone)]
pub struct DevClaim {
    store: Store,
    kind: ServiceKind,
    replica_id: String,
    ttl: Duration,
}

impl DevClaim {
    /// Claims `kind` for `replica_id`, or explains who holds it.
    pub async fn claim(
        store: &Store,
        kind: ServiceKind,
        replica_id: &str,
        ttl: Duration,
    ) -> Result<DevClaim, CoordError> {
        let claim = DevClaim {
            store: store.clone(),
            kind,
            replica_id: replica_id.to_owned(),
            ttl,
        };
        claim.refresh().await?;
        Ok(claim)
    }

    /// Renews the claim; fails if another replica holds it.
    pub async fn refresh(&self) -> Result<(), CoordError> {
        let now = DateTime::now();
        let stale_before =
            DateTime::from_millis(now.timestamp_millis() - self.ttl.as_millis() as i64);
        let result = self
            .store
            .bounded(
                "claiming the development single-writer slot",
                self.store
                    .documents(DEV_CLAIMS)
                    .update_one(
                        doc! {
                            "_id": self.kind.as_str(),
                            "$or": [
                                { "replicaId": &self.replica_id },
                                { "heartbeatAt": { "$lt": stale_before } },
                            ],
                        },
                        doc! { "$set": { "replicaId": &self.replica_id, "heartbeatAt": now } },
                    )
                    .upsert(true),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.is_duplicate_key() => {
                let holder = self
                    .store
                    .bounded(
                        "reading the development single-writer slot",
                        self.store
                            .documents(DEV_CLAIMS)
                            .find_one(doc! { "_id": self.kind.as_str() }),
                    )
                    .await?
                    .and_then(|d| d.get_str("replicaId").ok().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into());
                Err(CoordError::Refused(format!(
                    "another {kind} replica ({holder}) is already running against database {db}, and runtime.profile = \"development\" allows a single writer per service. Stop that replica, or run every replica with runtime.profile = \"production\" and a shared valkey.uri",
                    kind = self.kind,
                    db = self.store.database().name(),
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Gives the slot up (graceful stop).
    pub async fn release(&self) -> Result<(), CoordError> {
        self.store
            .bounded(
                "releasing the development single-writer slot",
                self.store
                    .documents(DEV_CLAIMS)
                    .delete_one(doc! { "_id": self.kind.as_str(), "replicaId": &self.replica_id }),
            )
            .await?;
        Ok(())
    }
}
