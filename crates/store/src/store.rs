use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use prexor_domain::redact_uri;
use tokio::sync::OnceCell;

use crate::error::StoreError;

/// The `result` label values of `prexor_fenced_writes_total` (counted by the fenced write).
pub const FENCED_WRITE_RESULTS: [&str; 4] = ["applied", "stale", "precondition", "error"];

/// The process's handle on the shared MongoDB database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    db: Database,
    timeout: Duration,
    /// Whether the server has the cross-collection `bulkWrite` command (MongoDB 8+), learnt from
    /// `hello` on first use.
    bulk_write: Arc<OnceCell<bool>>,
    /// Whether every fenced write also records its scope and token in `fence_log`.
    pub(crate) fence_log: bool,
}

impl Store {
    /// Creates the client. Nothing is sent yet; use [`Store::ping`] to find out whether MongoDB
    /// answers. `timeout` bounds server selection and every operation made through this store.
    pub async fn connect(
        uri: &str,
        database: &str,
        app_name: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        Store::connect_pooled(uri, database, app_name, timeout, None).await
    }

    /// [`Store::connect`] keeping at most `max_pool_size` connections to each server (`None`:
    /// the URI's `maxPoolSize`, else the driver's default).
    pub async fn connect_pooled(
        uri: &str,
        database: &str,
        app_name: &str,
        timeout: Duration,
        max_pool_size: Option<u32>,
    ) -> Result<Store, StoreError> {
        let bad_uri = |reason: String| StoreError::BadUri {
            uri: redact_uri(uri),
            reason,
        };
        let mut options = tokio::time::timeout(timeout, ClientOptions::parse(uri))
            .await
            .map_err(|_| bad_uri(format!("resolving it took longer than {timeout:?}")))?
            .map_err(|e| bad_uri(e.to_string()))?;
        options.app_name = Some(app_name.to_owned());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        if max_pool_size.is_some() {
            options.max_pool_size = max_pool_size;
        }
        let client = Client::with_options(options).map_err(|e| bad_uri(e.to_string()))?;
        // Exported at 0 from the start, so that `rate()` sees the first refused write
        // (docs/observability.md, "Metrics").
        for result in FENCED_WRITE_RESULTS {
            metrics::counter!("prexor_fenced_writes_total", "result" => result).increment(0);
        }
        Ok(Store {
            db: client.database(database),
            client,
            timeout,
            bulk_write: Arc::new(OnceCell::new()),
            fence_log: false,
        })
    }

    /// Round trip to the server; the readiness check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("pinging MongoDB", self.db.run_command(doc! { "ping": 1 }))
            .await
            .map(|_| ())
    }

    /// This store, recording every fenced write's scope, token and time in `fence_log`, in the
    /// write's own transaction (`coordination.fenceLog`).
    pub fn with_fence_log(self) -> Store {
        Store {
            fence_log: true,
            ..self
        }
    }

    /// This store, writing fenced writes one operation at a time as on MongoDB 7, even when the
    /// server has `bulkWrite` (to test the MongoDB 7 path on any server).
    pub fn without_bulk_write(self) -> Store {
        Store {
            bulk_write: Arc::new(OnceCell::new_with(Some(false))),
            ..self
        }
    }

    /// True when the server speaks wire version 25+ (MongoDB 8.0), which has `bulkWrite`.
    pub(crate) async fn supports_bulk_write(&self) -> Result<bool, StoreError> {
        self.bulk_write
            .get_or_try_init(|| async {
                let hello = self
                    .bounded(
                        "asking MongoDB for its version",
                        self.db.run_command(doc! { "hello": 1 }),
                    )
                    .await?;
                let wire = hello
                    .get_i32("maxWireVersion")
                    .map(i64::from)
                    .or_else(|_| hello.get_i64("maxWireVersion"))
                    .unwrap_or(0);
                Ok(wire >= 25)
            })
            .await
            .copied()
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    pub fn documents(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Runs one MongoDB operation with the store's time bound, naming it in any error.
    pub async fn bounded<T>(
        &self,
        op: &str,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut.into_future()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::mongo(op, err)),
            Err(_) => Err(StoreError::Timeout {
                op: op.to_owned(),
                timeout: self.timeout,
            }),
        }
    }

    /// Every document of `collection` matching `filter` (`what` names the read in errors).
    pub async fn find_all(
        &self,
        collection: &str,
        what: &str,
        filter: Document,
    ) -> Result<Vec<Document>, StoreError> {
        self.find_sorted(collection, what, filter, Document::new(), None)
            .await
    }

    /// Only the `projection` fields of the documents of `collection` matching `filter`.
    pub async fn find_projected(
        &self,
        collection: &str,
        what: &str,
        filter: Document,
        projection: Document,
    ) -> Result<Vec<Document>, StoreError> {
        let documents = self.documents(collection);
        self.bounded(what, async {
            documents
                .find(filter)
                .projection(projection)
                .await?
                .try_collect()
                .await
        })
        .await
    }

    /// Documents of `collection` matching `filter` in `sort` order, at most `limit`.
    pub async fn find_sorted(
        &self,
        collection: &str,
        what: &str,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> Result<Vec<Document>, StoreError> {
        let documents = self.documents(collection);
        self.bounded(what, async {
            let mut find = documents.find(filter);
            if !sort.is_empty() {
                find = find.sort(sort);
            }
            if let Some(limit) = limit {
                find = find.limit(limit);
            }
            find.await?.try_collect().await
        })
        .await
    }
}
