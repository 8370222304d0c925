//! API reads at scale: 1,000 groups and 1,000 instances, then `GET /groups?limit=100`,
//! `GET /instances?limit=100` and `GET /auth/me` under wrk (pinned to its own core), each next
//! to its floor measured in the same run: the raw MongoDB driver doing the same finds and counts
//! at the same concurrency for the lists, `/healthz` for `/auth/me`. The api's RSS is recorded
//! before and after the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use prexor_client::API_PREFIX;

use crate::Servers;
use crate::api::{bootstrap, login};
use crate::procs::{Scratch, print_rss, ready, replica};
use crate::report::Metric;

const GROUPS: usize = 1_000;
const CONCURRENCY: usize = 32;
const FOR: Duration = Duration::from_secs(10);

pub async fn run(servers: &Servers) -> anyhow::Result<()> {
    let servers = &servers.fresh("reads");
    let dir = Scratch::new("reads")?;
    let api = ready(replica(servers, &dir.0, "api", "api-reads", "")?).await?;
    let password = bootstrap(&api, &dir.0)?;
    let client = login(&api, &password).await?;
    let token = client.token().unwrap_or_default().to_owned();
    let store = servers.store().await?;
    crate::scheduler::seed_idle(store.database(), "read", GROUPS).await?;
    print_rss(&api, "api RSS before the read load", "goal <= 64 MiB")?;

    let db = store.database().clone();
    let groups_floor = driver_rate(&db, |db| async move {
        let page = first_page(&db, "groups").await?;
        let names: Vec<&str> = page.iter().filter_map(|g| g.get_str("_id").ok()).collect();
        let _: Vec<Document> = db
            .collection::<Document>("instances")
            .aggregate([
                doc! { "$match": { "group": { "$in": names } } },
                doc! { "$group": { "_id": { "group": "$group", "state": "$state" }, "n": { "$sum": 1 } } },
            ])
            .await?
            .try_collect()
            .await?;
        Ok(())
    })
    .await?;
    let instances_floor = driver_rate(&db, |db| async move {
        first_page(&db, "instances").await.map(drop)
    })
    .await?;
    let healthz = crate::wrk::run(&format!("{}/healthz", api.http), None)?;

    let url = |path: &str| format!("{}{API_PREFIX}{path}", api.http);
    for (path, floor_name, floor) in [
        (
            "/groups?limit=100",
            "driver: 100 groups + their instance counts per second",
            groups_floor,
        ),
        (
            "/instances?limit=100",
            "driver: 100 instances per second",
            instances_floor,
        ),
        ("/auth/me", "GET /healthz per second", healthz.rps),
    ] {
        let load = crate::wrk::run(&url(path), Some(&token))?;
        let goal = if path == "/auth/me" { "60 %" } else { "50 %" };
        Metric {
            name: format!("GET {path} per second ({GROUPS} groups, {GROUPS} instances)"),
            value: load.rps,
            unit: "req/s",
            baseline: Some((floor_name.to_owned(), floor)),
            target: Some(format!(
                "goal >= {goal} of the floor; p99 {:.1} ms under {CONCURRENCY} connections",
                load.p99_ms
            )),
        }
        .print();
    }
    print_rss(&api, "api RSS after the read load", "goal <= 64 MiB")?;
    Ok(())
}

/// The first page (one more than 100, as the api reads it) of `collection` in `_id` order.
async fn first_page(db: &mongodb::Database, collection: &str) -> anyhow::Result<Vec<Document>> {
    Ok(db
        .collection::<Document>(collection)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .limit(101)
        .await?
        .try_collect()
        .await?)
}

/// Operations per second of `op` with [`CONCURRENCY`] concurrent callers for [`FOR`].
async fn driver_rate<F, Fut>(db: &mongodb::Database, op: F) -> anyhow::Result<f64>
where
    F: Fn(mongodb::Database) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (op, done, db) = (op.clone(), done.clone(), db.clone());
            tokio::spawn(async move {
                while started.elapsed() < FOR {
                    op(db.clone()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
