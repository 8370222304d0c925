//! Waiting on and reading the records the cluster wrote to MongoDB.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mongodb::bson::{Document, doc};

use crate::Cluster;

/// Polls until `check` holds for the document `_id` in `collection` (90 s at most: a bound for
/// a broken test, not a timing assertion).
pub async fn wait_doc(
    cluster: &Cluster,
    collection: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Document) -> bool,
) -> anyhow::Result<Document> {
    let db = cluster.stores.mongo().await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        last = db
            .collection::<Document>(collection)
            .find_one(doc! { "_id": id })
            .await?;
        if let Some(doc) = &last
            && check(doc)
        {
            return Ok(doc.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{collection}/{id} never became {what}; last: {last:?}")
}

/// The document `_id` of `collection`, if there is one.
pub async fn find_doc(
    cluster: &Cluster,
    collection: &str,
    id: &str,
) -> anyhow::Result<Option<Document>> {
    Ok(cluster
        .stores
        .mongo()
        .await?
        .collection::<Document>(collection)
        .find_one(doc! { "_id": id })
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

/// How many documents of `collection` match `filter`.
pub async fn count_docs(
    cluster: &Cluster,
    collection: &str,
    filter: Document,
) -> anyhow::Result<u64> {
    Ok(cluster
        .stores
        .mongo()
        .await?
        .collection::<Document>(collection)
        .count_documents(filter)
        .await?)
}

/// The composition plan of `instance`'s current placement (`instance_plans`, same plan hash).
pub async fn plan_of(cluster: &Cluster, instance: &Document) -> anyhow::Result<Document> {
    let id = instance.get_str("_id")?;
    let db = cluster.stores.mongo().await?;
    let planned = db
        .collection::<Document>("instance_plans")
        .find_one(doc! { "_id": id, "planHash": instance.get_str("planHash")? })
        .await?
        .with_context(|| format!("no plan persisted for {id}'s current placement"))?;
    Ok(planned.get_document("plan")?.clone())
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

/// The fence mark of `scope` (the highest token that acquired or wrote it; 0 if none did).
pub async fn fence_mark(cluster: &Cluster, scope: &str) -> anyhow::Result<i64> {
    Ok(cluster
        .stores
        .mongo()
        .await?
        .collection::<Document>("fences")
        .find_one(doc! { "_id": scope })
        .await?
        .and_then(|d| d.get_i64("mark").ok())
        .unwrap_or(0))
}
