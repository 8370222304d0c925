//! Waiting on and reading the records the cluster wrote to MongoDB.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mongodb::Collection;
use mongodb::bson::{Document, doc};

use crate::Cluster;

/// The collection `name` of this test's database.
pub async fn collection(cluster: &Cluster, name: &str) -> anyhow::Result<Collection<Document>> {
    Ok(cluster.stores.mongo().await?.collection::<Document>(name))
}

/// Polls until `check` holds for the document `_id` in `collection` (90 s at most: a bound for
/// a broken test, not a timing assertion).
pub async fn wait_doc(
    cluster: &Cluster,
    collection: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Document) -> bool,
) -> anyhow::Result<Document> {
    let records = self::collection(cluster, collection).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        last = records.find_one(doc! { "_id": id }).await?;
        if let Some(doc) = &last
            && check(doc)
        {
            return Ok(doc.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{collection}/{id} never became {what}; last: {last:?}")
}

/// Waits until the document `_id` of `collection` is in `state` (its `state` field); the
/// document.
pub async fn wait_state(
    cluster: &Cluster,
    collection: &str,
    id: &str,
    state: &str,
) -> anyhow::Result<Document> {
    wait_doc(cluster, collection, id, state, |d| {
        d.get_str("state") == Ok(state)
    })
    .await
}

/// Waits until platform module `module` is ACTIVE at `version`; its document.
pub async fn module_active(
    cluster: &Cluster,
    module: &str,
    version: &str,
) -> anyhow::Result<Document> {
    wait_doc(
        cluster,
        "modules",
        module,
        &format!("ACTIVE {version}"),
        |d| {
            d.get_str("state") == Ok("ACTIVE")
                && d.get_document("active").and_then(|a| a.get_str("version")) == Ok(version)
        },
    )
    .await
}

/// The document `_id` of `collection`, if there is one.
pub async fn find_doc(
    cluster: &Cluster,
    collection: &str,
    id: &str,
) -> anyhow::Result<Option<Document>> {
    find_one(cluster, collection, doc! { "_id": id }).await
}

/// The document `_id` of `collection`; an error if there is none.
pub async fn get_doc(cluster: &Cluster, collection: &str, id: &str) -> anyhow::Result<Document> {
    find_doc(cluster, collection, id)
        .await?
        .with_context(|| format!("no {collection}/{id}"))
}

/// A document of `collection` matching `filter`, if there is one.
pub async fn find_one(
    cluster: &Cluster,
    collection: &str,
    filter: Document,
) -> anyhow::Result<Option<Document>> {
    Ok(self::collection(cluster, collection)
        .await?
        .find_one(filter)
        .await?)
}

/// Every document of `collection` matching `filter`.
pub async fn find_docs(
    cluster: &Cluster,
    collection: &str,
    filter: Document,
) -> anyhow::Result<Vec<Document>> {
    Ok(cluster
        .store()
        .await?
        .find_all(collection, "test", filter)
        .await?)
}

/// The instance records matching `filter` that have not ended (neither STOPPED nor CRASHED).
pub async fn live_instances(
    cluster: &Cluster,
    mut filter: Document,
) -> anyhow::Result<Vec<Document>> {
    filter.insert("state", doc! { "$nin": ["STOPPED", "CRASHED"] });
    find_docs(cluster, "instances", filter).await
}

/// How many documents of `collection` match `filter`.
pub async fn count_docs(
    cluster: &Cluster,
    collection: &str,
    filter: Document,
) -> anyhow::Result<u64> {
    Ok(self::collection(cluster, collection)
        .await?
        .count_documents(filter)
        .await?)
}

/// The composition plan of `instance`'s current placement (`instance_plans`, same plan hash).
pub async fn plan_of(cluster: &Cluster, instance: &Document) -> anyhow::Result<Document> {
    let id = instance.get_str("_id")?;
    let current = doc! { "_id": id, "planHash": instance.get_str("planHash")? };
    let planned = find_one(cluster, "instance_plans", current)
        .await?
        .with_context(|| format!("no plan persisted for {id}'s current placement"))?;
    Ok(planned.get_document("plan")?.clone())
}

/// The instance's own token for the workload endpoints (from its persisted plan).
pub async fn instance_token(cluster: &Cluster, instance: &Document) -> anyhow::Result<String> {
    Ok(plan_of(cluster, instance)
        .await?
        .get_document("env")?
        .get_str("PREXOR_INSTANCE_TOKEN")?
        .to_owned())
}

/// `instance`'s server reporting `metrics` (`POST /workload/metrics` with its own token) to
/// `api`.
pub async fn report_metrics(
    cluster: &Cluster,
    api: &crate::Proc,
    instance: &Document,
    metrics: serde_json::Value,
) -> anyhow::Result<()> {
    let token = instance_token(cluster, instance).await?;
    let (status, body) = api.rest(&token).post("/workload/metrics", metrics).await?;
    anyhow::ensure!(status == 204, "reporting metrics: {status} {body}");
    Ok(())
}

/// Waits until instance `id` and the plan of its current placement satisfy `check`.
pub async fn wait_plan(
    cluster: &Cluster,
    id: &str,
    what: &str,
    check: impl Fn(&Document, &Document) -> bool,
) -> anyhow::Result<(Document, Document)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        let instance = wait_doc(cluster, "instances", id, "present", |_| true).await?;
        if let Ok(plan) = plan_of(cluster, &instance).await {
            if check(&instance, &plan) {
                return Ok((instance, plan));
            }
            last = Some((instance, plan));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("instance {id} and its plan never became {what}; last: {last:?}")
}

/// The state a daemon reported for an instance record.
pub fn reported_state(doc: &Document) -> &str {
    doc.get_document("reported")
        .and_then(|r| r.get_str("state"))
        .unwrap_or("")
}

/// The pid a daemon reported for an instance record (0 if none).
pub fn reported_pid(doc: &Document) -> i64 {
    doc.get_document("reported")
        .ok()
        .and_then(|r| {
            r.get_i32("pid")
                .map(i64::from)
                .or_else(|_| r.get_i64("pid"))
                .ok()
        })
        .unwrap_or_default()
}

/// The fence mark of `scope` (the highest token that acquired or wrote it; 0 if none did).
pub async fn fence_mark(cluster: &Cluster, scope: &str) -> anyhow::Result<i64> {
    Ok(find_doc(cluster, "fences", scope)
        .await?
        .and_then(|d| d.get_i64("mark").ok())
        .unwrap_or(0))
}
