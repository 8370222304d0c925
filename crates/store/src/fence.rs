use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{
    DeleteManyModel, DeleteOneModel, InsertOneModel, ReplaceOneModel, ReturnDocument,
    UpdateManyModel, UpdateOneModel, WriteConcern, WriteModel,
};
use mongodb::results::{DeleteResult, InsertOneResult, UpdateResult};
use mongodb::{ClientSession, Collection, Namespace};

use crate::error::{StoreError, server_code};
use crate::store::Store;

/// The collection holding one fence document per scope: `{_id: scope, counter, mark, writes}`.
pub const FENCES: &str = "fences";
/// With `coordination.fenceLog`: one `{scope, token, atMs, writes}` per applied fenced write.
pub const FENCE_LOG: &str = "fence_log";

/// The right to write a scope: the scope's name (`group:lobby`, ...) and the fencing token its
/// lease was acquired with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub scope: String,
    pub token: u64,
}

impl Fence {
    pub fn new(scope: impl Into<String>, token: u64) -> Self {
        Fence {
            scope: scope.into(),
            token,
        }
    }
}

/// One write inside a fenced write. Written documents are stamped with
/// `_fence: {scope, token}` so every document names the lease holder that last wrote it.
#[derive(Debug, Clone)]
pub struct Write {
    collection: String,
    op: WriteOp,
    require_match: bool,
}

#[derive(Debug, Clone)]
enum WriteOp {
    Insert(Document),
    Update {
        filter: Document,
        update: Document,
        upsert: bool,
        many: bool,
    },
    Replace {
        filter: Document,
        replacement: Document,
        upsert: bool,
    },
    Delete {
        filter: Document,
        many: bool,
    },
}

/// What one [`Write`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteOutcome {
    pub matched: u64,
    pub modified: u64,
    pub deleted: u64,
    pub inserted_id: Option<Bson>,
    pub upserted_id: Option<Bson>,
}

impl From<InsertOneResult> for WriteOutcome {
    fn from(result: InsertOneResult) -> Self {
        WriteOutcome {
            matched: 1,
            inserted_id: Some(result.inserted_id),
            ..WriteOutcome::default()
        }
    }
}

impl From<UpdateResult> for WriteOutcome {
    fn from(result: UpdateResult) -> Self {
        WriteOutcome {
            matched: result.matched_count,
            modified: result.modified_count,
            upserted_id: result.upserted_id,
            ..WriteOutcome::default()
        }
    }
}

impl From<DeleteResult> for WriteOutcome {
    fn from(result: DeleteResult) -> Self {
        WriteOutcome {
            matched: result.deleted_count,
            deleted: result.deleted_count,
            ..WriteOutcome::default()
        }
    }
}

impl Write {
    fn new(collection: &str, op: WriteOp) -> Self {
        Write {
            collection: collection.to_owned(),
            op,
            require_match: false,
        }
    }

    pub fn insert(collection: &str, document: Document) -> Self {
        Write::new(collection, WriteOp::Insert(document))
    }

    /// `update` must be an update-operator document (`{$set: ...}`).
    pub fn update_one(collection: &str, filter: Document, update: Document) -> Self {
        Write::new(
            collection,
            WriteOp::Update {
                filter,
                update,
                upsert: false,
                many: false,
            },
        )
    }

    pub fn update_many(collection: &str, filter: Document, update: Document) -> Self {
        Write::new(
            collection,
            WriteOp::Update {
                filter,
                update,
                upsert: false,
                many: true,
            },
        )
    }

    pub fn replace_one(collection: &str, filter: Document, replacement: Document) -> Self {
        Write::new(
            collection,
            WriteOp::Replace {
                filter,
                replacement,
                upsert: false,
            },
        )
    }

    pub fn delete_one(collection: &str, filter: Document) -> Self {
        Write::new(
            collection,
            WriteOp::Delete {
                filter,
                many: false,
            },
        )
    }

    pub fn delete_many(collection: &str, filter: Document) -> Self {
        Write::new(collection, WriteOp::Delete { filter, many: true })
    }

    /// Inserts the document when the filter matches nothing (update and replace only).
    pub fn upsert(mut self) -> Self {
        match &mut self.op {
            WriteOp::Update { upsert, .. } | WriteOp::Replace { upsert, .. } => *upsert = true,
            WriteOp::Insert(_) | WriteOp::Delete { .. } => {}
        }
        self
    }

    /// Undo the whole fenced write (and report [`StoreError::Precondition`]) unless this write
    /// matches at least one document: a compare-and-set across the documents of one scope.
    pub fn require_match(mut self) -> Self {
        self.require_match = true;
        self
    }

    /// The operation with `_fence: {scope, token}` added to what it writes.
    fn stamped(&self, stamp: &Document) -> WriteOp {
        let mut op = self.op.clone();
        match &mut op {
            WriteOp::Insert(document)
            | WriteOp::Replace {
                replacement: document,
                ..
            } => {
                document.insert("_fence", stamp.clone());
            }
            WriteOp::Update { update, .. } => match update.get_document_mut("$set") {
                Ok(set) => {
                    set.insert("_fence", stamp.clone());
                }
                Err(_) => {
                    update.insert("$set", doc! { "_fence": stamp.clone() });
                }
            },
            WriteOp::Delete { .. } => {}
        }
        op
    }

    fn describe(&self) -> String {
        let verb = match &self.op {
            WriteOp::Insert(_) => "insert",
            WriteOp::Update { many: false, .. } => "update_one",
            WriteOp::Update { many: true, .. } => "update_many",
            WriteOp::Replace { .. } => "replace_one",
            WriteOp::Delete { many: false, .. } => "delete_one",
            WriteOp::Delete { many: true, .. } => "delete_many",
        };
        format!("{verb} on {}", self.collection)
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |reason: &str| {
            Err(StoreError::BadWrite {
                what: self.describe(),
                reason: reason.to_owned(),
            })
        };
        if self.collection == FENCES {
            return bad("the fences collection is only written by the fencing code itself");
        }
        match &self.op {
            WriteOp::Update { update, .. } => {
                if update.is_empty() || !update.keys().all(|k| k.starts_with('$')) {
                    return bad("the update must consist of update operators such as $set");
                }
            }
            WriteOp::Replace { replacement, .. } => {
                if replacement.keys().any(|k| k.starts_with('$')) {
                    return bad("a replacement must not contain update operators");
                }
            }
            WriteOp::Insert(_) | WriteOp::Delete { .. } => {}
        }
        Ok(())
    }
}

/// How often a fenced write is retried after a transient transaction error (write conflicts).
const MAX_ATTEMPTS: u32 = 8;

impl Store {
    fn fences(&self) -> Collection<Document> {
        self.documents(FENCES)
    }

    /// Mints the next fencing token for `scope`. Tokens come from a counter in MongoDB, so they
    /// strictly increase across acquisitions even when Valkey is flushed or restarted.
    pub async fn mint_token(&self, scope: &str) -> Result<u64, StoreError> {
        let op = format!("minting a fencing token for {scope}");
        for _ in 0..2 {
            // No upsert here: concurrent first-ever upserts of one _id race inside the server.
            let minted = self
                .bounded(
                    &op,
                    self.fences()
                        .find_one_and_update(
                            doc! { "_id": scope },
                            doc! { "$inc": { "counter": 1_i64 } },
                        )
                        .return_document(ReturnDocument::After),
                )
                .await?;
            if let Some(fence) = minted {
                return Ok(read_u64(&fence, "counter"));
            }
            // The scope's first mint: create its fence document (a concurrent creator may win).
            let created = self
                .bounded(
                    &op,
                    self.fences().insert_one(
                        doc! { "_id": scope, "counter": 0_i64, "mark": 0_i64, "writes": 0_i64 },
                    ),
                )
                .await;
            match created {
                Ok(_) => {}
                Err(err) if err.is_duplicate_key() => {}
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Precondition {
            what: format!("{op}: its fence document vanished while minting"),
        })
    }

    /// Raises the scope's mark to `token` unless a higher token already got there. A new lease
    /// holder calls this before it reads the scope's state, so every write the previous holder
    /// can still attempt is either already visible or rejected. Returns `false` when a higher
    /// token owns the scope (the acquisition must then be abandoned).
    pub async fn raise_fence(&self, fence: &Fence) -> Result<bool, StoreError> {
        let result = self
            .bounded(
                &format!("raising the fence of {} to {}", fence.scope, fence.token),
                self.fences().update_one(
                    fence_filter(fence),
                    doc! { "$max": { "mark": fence.token as i64 }, "$inc": { "raises": 1_i64 } },
                ),
            )
            .await?;
        Ok(result.matched_count == 1)
    }

    /// The scope's mark: the highest token that has acquired or written it (0 if none ever did).
    pub async fn fence_mark(&self, scope: &str) -> Result<u64, StoreError> {
        let fence = self
            .bounded(
                &format!("reading the fence of {scope}"),
                self.fences().find_one(doc! { "_id": scope }),
            )
            .await?;
        Ok(fence.map(|d| read_u64(&d, "mark")).unwrap_or(0))
    }

    /// Performs `writes` atomically, and only if `fence.token` is still the newest token of the
    /// scope. A deposed holder gets [`StoreError::StaleFence`] and nothing is written. Each is a
    /// span `store.fenced_write` with its scope, token, size and result (docs/observability.md,
    /// "Traces").
    #[tracing::instrument(
        name = "store.fenced_write",
        skip_all,
        fields(
            scope = %fence.scope,
            token = fence.token,
            writes = writes.len(),
            attempts = tracing::field::Empty,
            result = tracing::field::Empty,
        )
    )]
    pub async fn fenced_write(
        &self,
        fence: &Fence,
        writes: Vec<Write>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        for write in &writes {
            write.validate()?;
        }
        let op = format!(
            "fenced write to {} with token {} ({} operation{})",
            fence.scope,
            fence.token,
            writes.len(),
            if writes.len() == 1 { "" } else { "s" }
        );
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = self.timeout().saturating_sub(started.elapsed());
            let outcome =
                match tokio::time::timeout(remaining, self.try_fenced(fence, &writes)).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        tracing::Span::current().record("result", "timeout");
                        return Err(StoreError::Timeout {
                            op,
                            timeout: self.timeout(),
                        });
                    }
                };
            match outcome {
                Ok(results) => {
                    fenced_result("applied", attempt);
                    return Ok(results);
                }
                Err(Attempt::Done(err)) => {
                    let result = match &err {
                        StoreError::StaleFence { .. } => "stale",
                        StoreError::Precondition { .. } => "precondition",
                        _ => "error",
                    };
                    fenced_result(result, attempt);
                    return Err(err);
                }
                Err(Attempt::Retry(source)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(scope = %fence.scope, attempt, error = %source, "fenced write conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
                }
                Err(Attempt::Retry(source)) => {
                    fenced_result("error", attempt);
                    return Err(StoreError::mongo(op, source));
                }
            }
        }
    }

    async fn try_fenced(
        &self,
        fence: &Fence,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>, Attempt> {
        let bulk = self.supports_bulk_write().await.map_err(Attempt::Done)?;
        let mut session = self
            .client()
            .start_session()
            .await
            .map_err(|e| Attempt::classify("starting a session", e))?;
        // No read concern: the transaction reads nothing except through writes, and write-write
        // conflicts are detected whatever the read concern (some servers refuse one on bulkWrite).
        session
            .start_transaction()
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| Attempt::classify("starting a transaction", e))?;

        let stamp = doc! { "scope": &fence.scope, "token": fence.token as i64 };
        // The log entry goes in with the writes: it exists exactly when they were applied.
        let logged: Vec<Write>;
        let writes = if self.fence_log {
            logged = writes
                .iter()
                .cloned()
                .chain([Write::insert(
                    FENCE_LOG,
                    doc! {
                        "scope": &fence.scope, "token": fence.token as i64,
                        "atMs": prexor_domain::now_ms(), "writes": writes.len() as i64,
                    },
                )])
                .collect();
            &logged[..]
        } else {
            writes
        };
        let body = if bulk {
            self.fenced_bulk(&mut session, fence, &stamp, writes).await
        } else {
            self.fenced_each(&mut session, fence, &stamp, writes).await
        };
        let outcome = match body {
            Ok((true, results)) => check_outcomes(writes, results).map(|mut results| {
                results.truncate(writes.len() - usize::from(self.fence_log));
                results
            }),
            Ok((false, _)) => Err(self.stale(&mut session, fence).await),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(results) => {
                commit(&mut session).await?;
                Ok(results)
            }
            Err(err) => {
                // The transaction may already be aborted by the server; either way nothing of it
                // is applied, so an abort failure changes nothing.
                let _ = session.abort_transaction().await;
                Err(err)
            }
        }
    }

    /// The fence check and every write in one `bulkWrite` command (MongoDB 8+): two round trips
    /// with the commit. Returns whether the fence check matched, and each write's outcome.
    async fn fenced_bulk(
        &self,
        session: &mut ClientSession,
        fence: &Fence,
        stamp: &Document,
        writes: &[Write],
    ) -> Result<(bool, Vec<WriteOutcome>), Attempt> {
        let db = self.database().name().to_owned();
        let ns = |coll: &str| Namespace {
            db: db.clone(),
            coll: coll.to_owned(),
        };
        let mut models: Vec<WriteModel> = Vec::with_capacity(writes.len() + 1);
        models.push(
            UpdateOneModel::builder()
                .namespace(ns(FENCES))
                .filter(fence_filter(fence))
                .update(fence_update(fence))
                .build()
                .into(),
        );
        for write in writes {
            let namespace = ns(&write.collection);
            models.push(match write.stamped(stamp) {
                WriteOp::Insert(document) => InsertOneModel::builder()
                    .namespace(namespace)
                    .document(document)
                    .build()
                    .into(),
                WriteOp::Update {
                    filter,
                    update,
                    upsert,
                    many: false,
                } => UpdateOneModel::builder()
                    .namespace(namespace)
                    .filter(filter)
                    .update(update)
                    .upsert(upsert)
                    .build()
                    .into(),
                WriteOp::Update {
                    filter,
                    update,
                    upsert,
                    many: true,
                } => UpdateManyModel::builder()
                    .namespace(namespace)
                    .filter(filter)
                    .update(update)
                    .upsert(upsert)
                    .build()
                    .into(),
                WriteOp::Replace {
                    filter,
                    replacement,
                    upsert,
                } => ReplaceOneModel::builder()
                    .namespace(namespace)
                    .filter(filter)
                    .replacement(replacement)
                    .upsert(upsert)
                    .build()
                    .into(),
                WriteOp::Delete {
                    filter,
                    many: false,
                } => DeleteOneModel::builder()
                    .namespace(namespace)
                    .filter(filter)
                    .build()
                    .into(),
                WriteOp::Delete { filter, many: true } => DeleteManyModel::builder()
                    .namespace(namespace)
                    .filter(filter)
                    .build()
                    .into(),
            });
        }
        let mut result = self
            .client()
            .bulk_write(models)
            .verbose_results()
            .session(&mut *session)
            .await
            .map_err(|e| Attempt::classify("the fenced bulk write", e))?;
        let fence_ok = result
            .update_results
            .get(&0)
            .is_some_and(|r| r.matched_count == 1);
        let outcomes = (1..=writes.len())
            .map(|i| {
                if let Some(r) = result.insert_results.remove(&i) {
                    r.into()
                } else if let Some(r) = result.update_results.remove(&i) {
                    r.into()
                } else if let Some(r) = result.delete_results.remove(&i) {
                    r.into()
                } else {
                    WriteOutcome::default()
                }
            })
            .collect();
        Ok((fence_ok, outcomes))
    }

    /// The fence check and then each write as its own command (MongoDB 7).
    async fn fenced_each(
        &self,
        session: &mut ClientSession,
        fence: &Fence,
        stamp: &Document,
        writes: &[Write],
    ) -> Result<(bool, Vec<WriteOutcome>), Attempt> {
        let check = self
            .fences()
            .update_one(fence_filter(fence), fence_update(fence))
            .session(&mut *session)
            .await
            .map_err(|e| Attempt::classify("checking the fence", e))?;
        if check.matched_count == 0 {
            return Ok((false, Vec::new()));
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let coll = self.documents(&write.collection);
            let outcome: WriteOutcome = match write.stamped(stamp) {
                WriteOp::Insert(document) => coll
                    .insert_one(document)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
                WriteOp::Update {
                    filter,
                    update,
                    upsert,
                    many: true,
                } => coll
                    .update_many(filter, update)
                    .upsert(upsert)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
                WriteOp::Update {
                    filter,
                    update,
                    upsert,
                    many: false,
                } => coll
                    .update_one(filter, update)
                    .upsert(upsert)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
                WriteOp::Replace {
                    filter,
                    replacement,
                    upsert,
                } => coll
                    .replace_one(filter, replacement)
                    .upsert(upsert)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
                WriteOp::Delete { filter, many: true } => coll
                    .delete_many(filter)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
                WriteOp::Delete {
                    filter,
                    many: false,
                } => coll
                    .delete_one(filter)
                    .session(&mut *session)
                    .await
                    .map(Into::into),
            }
            .map_err(|e| Attempt::classify(&write.describe(), e))?;
            results.push(outcome);
        }
        Ok((true, results))
    }

    /// The error for a fence check that matched nothing, with the scope's current mark.
    async fn stale(&self, session: &mut ClientSession, fence: &Fence) -> Attempt {
        let mark = self
            .fences()
            .find_one(doc! { "_id": &fence.scope })
            .session(&mut *session)
            .await;
        match mark {
            Ok(found) => Attempt::Done(StoreError::StaleFence {
                scope: fence.scope.clone(),
                token: fence.token,
                mark: found.map(|d| read_u64(&d, "mark")).unwrap_or(0),
            }),
            Err(err) => Attempt::classify("reading the fence", err),
        }
    }
}

/// Requires a write's `require_match`: a write that matched nothing undoes the whole attempt.
fn check_outcomes(
    writes: &[Write],
    outcomes: Vec<WriteOutcome>,
) -> Result<Vec<WriteOutcome>, Attempt> {
    for (write, outcome) in writes.iter().zip(&outcomes) {
        if write.require_match && outcome.matched == 0 && outcome.upserted_id.is_none() {
            return Err(Attempt::Done(StoreError::Precondition {
                what: write.describe(),
            }));
        }
    }
    Ok(outcomes)
}

/// Matches the scope's fence document only while no higher token has marked it.
fn fence_filter(fence: &Fence) -> Document {
    doc! { "_id": &fence.scope, "mark": { "$lte": fence.token as i64 } }
}

/// Writing (not only reading) the fence document is what makes a concurrent raise by a new
/// holder conflict with the transaction instead of slipping past its snapshot.
fn fence_update(fence: &Fence) -> Document {
    doc! { "$max": { "mark": fence.token as i64 }, "$inc": { "writes": 1_i64 } }
}

/// Why one attempt of a fenced write ended without committing.
enum Attempt {
    /// Final: report this error.
    Done(StoreError),
    /// A transient transaction error (write conflict, failover): run the whole attempt again.
    Retry(mongodb::error::Error),
}

impl Attempt {
    fn classify(op: &str, err: mongodb::error::Error) -> Attempt {
        if is_transient_conflict(&err) {
            Attempt::Retry(err)
        } else {
            Attempt::Done(StoreError::mongo(op, err))
        }
    }
}

/// A transaction that failed this way is to be run again from the start: a write conflict with
/// another transaction, or any error MongoDB labels a transient transaction error.
pub(crate) fn is_transient_conflict(err: &mongodb::error::Error) -> bool {
    err.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_write_conflict(err)
}

/// Commits, committing again while the outcome is unknown (safe, and it tells).
pub(crate) async fn commit_or_retry(
    session: &mut ClientSession,
) -> Result<(), mongodb::error::Error> {
    for _ in 0..3 {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(err) if err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
            Err(err) => return Err(err),
        }
    }
    session.commit_transaction().await
}

async fn commit(session: &mut ClientSession) -> Result<(), Attempt> {
    commit_or_retry(session)
        .await
        .map_err(|e| Attempt::classify("committing", e))
}

fn read_u64(document: &Document, field: &str) -> u64 {
    match document.get(field) {
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) => v.max(0.0) as u64,
        _ => 0,
    }
}

fn is_write_conflict(err: &mongodb::error::Error) -> bool {
    server_code(err) == Some(112)
}

/// Counts a fenced write by `result` and records it on its span.
fn fenced_result(result: &'static str, attempts: u32) {
    metrics::counter!("prexor_fenced_writes_total", "result" => result).increment(1);
    let span = tracing::Span::current();
    span.record("result", result);
    span.record("attempts", attempts);
}
