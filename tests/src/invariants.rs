//! What every scenario ends with: every durable intent finished, fences held, and no instance
//! ran twice (the daemons' process journals).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Document, doc};

use crate::Cluster;

/// One line of a daemon's process journal (`<daemon.dataDir>/processes.log`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessEntry {
    /// `launch` or `exit`.
    pub event: String,
    pub at_ms: i64,
    pub instance: String,
    pub plan_hash: String,
    pub pid: i64,
    #[serde(default)]
    pub port: u32,
    /// The node whose journal this came from.
    #[serde(skip)]
    pub node: String,
}

/// Every process launch and exit the daemons of `nodes` journaled (their data dirs are
/// `<test dir>/<node>`, as [`nodes`](crate::nodes) makes them), oldest first.
pub fn process_journal(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<Vec<ProcessEntry>> {
    let mut entries = Vec::new();
    for node in nodes {
        let path = cluster.dir.join(node).join("processes.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut entry: ProcessEntry = serde_json::from_str(line)
                .with_context(|| format!("{}: {line}", path.display()))?;
            entry.node = node.to_string();
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| e.at_ms);
    Ok(entries)
}

/// The invariants of the journals: an instance never has two live processes (on any nodes),
/// and no two live processes share a node and port.
pub fn no_double_runs(entries: &[ProcessEntry]) -> anyhow::Result<()> {
    let mut live: BTreeMap<(String, i64), &ProcessEntry> = BTreeMap::new();
    for entry in entries {
        match entry.event.as_str() {
            "launch" => {
                if let Some(other) = live.values().find(|l| l.instance == entry.instance) {
                    bail!(
                        "{} launched on {} (pid {}) while it still ran on {} (pid {})",
                        entry.instance,
                        entry.node,
                        entry.pid,
                        other.node,
                        other.pid
                    );
                }
                if let Some(other) = live
                    .values()
                    .find(|l| l.node == entry.node && l.port == entry.port && entry.port != 0)
                {
                    bail!(
                        "{} and {} both ran on {}:{}",
                        entry.instance,
                        other.instance,
                        entry.node,
                        entry.port
                    );
                }
                live.insert((entry.node.clone(), entry.pid), entry);
            }
            _ => {
                live.remove(&(entry.node.clone(), entry.pid));
            }
        }
    }
    Ok(())
}

/// What every scenario ends with: every durable intent finished and nothing is stuck on its way
/// up ([`settled`]), no document carries a fencing token its scope never reached
/// ([`fences_hold`]), and no instance ever ran twice ([`no_double_runs`] over `nodes`' journals).
pub async fn invariants(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<()> {
    settled(cluster).await?;
    fences_hold(cluster).await?;
    no_double_runs(&process_journal(cluster, nodes)?)
}

/// Waits (at most a minute) until no instance is SCHEDULED, PREPARING or STARTING (or PREPARED
/// outside a warm pool: taken, and not started yet) and no operator request, platform-module
/// mutation or rolling deployment is left.
pub async fn settled(cluster: &Cluster) -> anyhow::Result<()> {
    let db = cluster.stores.mongo().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut pending = Vec::new();
        let on_the_way = doc! { "$or": [
            { "state": { "$in": ["SCHEDULED", "PREPARING", "STARTING"] } },
            { "state": "PREPARED", "warm": { "$ne": true } },
        ] };
        let starting = all(&db, "instances", on_the_way).await?;
        for instance in &starting {
            pending.push(format!(
                "instance {} is {}",
                instance.get_str("_id").unwrap_or("?"),
                instance.get_str("state").unwrap_or("?")
            ));
        }
        for (collection, filter, what) in [
            ("instance_requests", doc! {}, "operator request"),
            ("module_mutation", doc! {}, "module mutation"),
            (
                "deployments",
                doc! { "state": "ROLLING" },
                "rolling deployment",
            ),
        ] {
            let left = db
                .collection::<Document>(collection)
                .count_documents(filter)
                .await?;
            if left > 0 {
                pending.push(format!("{left} {what}(s) not finished"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "not settled after a minute: {}",
            pending.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every document of `collection` in `db` matching `filter`.
async fn all(db: &Database, collection: &str, filter: Document) -> anyhow::Result<Vec<Document>> {
    Ok(db
        .collection::<Document>(collection)
        .find(filter)
        .await?
        .try_collect()
        .await?)
}

/// The fence invariants: per scope, the tokens of applied writes (`fence_log`, recorded in each
/// write's transaction) never go down and never exceed the scope's mark; and every document
/// stamped by a fenced write carries a token its scope's mark covers.
pub async fn fences_hold(cluster: &Cluster) -> anyhow::Result<()> {
    let db = cluster.stores.mongo().await?;
    let fences = all(&db, "fences", doc! {}).await?;
    let marks: BTreeMap<String, i64> = fences
        .iter()
        .filter_map(|f| Some((f.get_str("_id").ok()?.to_owned(), f.get_i64("mark").ok()?)))
        .collect();
    let applied: i64 = fences.iter().filter_map(|f| f.get_i64("writes").ok()).sum();
    let log = all(&db, "fence_log", doc! {}).await?;
    ensure!(
        log.len() as i64 == applied,
        "fence_log holds {} writes, the fences counted {applied} (is coordination.fenceLog on everywhere?)",
        log.len()
    );
    let mut by_scope: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for entry in &log {
        by_scope
            .entry(entry.get_str("scope")?.to_owned())
            .or_default()
            .push((entry.get_i64("atMs")?, entry.get_i64("token")?));
    }
    for (scope, mut writes) in by_scope {
        writes.sort();
        let mark = marks.get(&scope).copied().unwrap_or(0);
        if let Some((_, top)) = writes.iter().max_by_key(|(_, token)| *token) {
            ensure!(
                *top <= mark,
                "{scope}: a write with token {top} is above the mark {mark}"
            );
        }
        for pair in writes.windows(2) {
            let ((at_a, token_a), (at_b, token_b)) = (pair[0], pair[1]);
            ensure!(
                token_b >= token_a || at_a == at_b,
                "{scope}: a write with token {token_b} was applied at {at_b} after one with token {token_a} at {at_a}"
            );
        }
    }
    for name in db.list_collection_names().await? {
        let stamped = all(&db, &name, doc! { "_fence": { "$exists": true } }).await?;
        for doc in stamped {
            let fence = doc.get_document("_fence")?;
            let (scope, token) = (fence.get_str("scope")?, fence.get_i64("token")?);
            let mark = marks.get(scope).copied().unwrap_or(0);
            ensure!(
                token <= mark,
                "{name}/{:?} was written with token {token} of {scope}, above its mark {mark}",
                doc.get("_id")
            );
        }
    }
    Ok(())
}
