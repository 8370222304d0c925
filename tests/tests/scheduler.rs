//! The scheduler's lease reconciler with real replicas: work scopes are split fairly, a new
//! replica gets its share, SIGTERM hands leases over at once, a SIGKILLed replica's leases are
//! taken after the TTL, and new or deleted groups are picked up or let go.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{Cluster, Proc};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// 100 groups plus the platform-module scope.
const SCOPES: usize = 101;

async fn held(scheduler: &Proc) -> anyhow::Result<BTreeSet<String>> {
    Ok(scheduler.leases_held().await?.into_iter().collect())
}

/// Waits until the schedulers hold every scope in `expected` between them, disjointly, each
/// within `share` (and at least `min_each`).
async fn wait_split(
    schedulers: &[&Proc],
    expected: &BTreeSet<String>,
    share: usize,
    min_each: usize,
) -> anyhow::Result<Vec<usize>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let mut sets = Vec::new();
        for scheduler in schedulers {
            sets.push(held(scheduler).await?);
        }
        let counts: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
        let union: BTreeSet<String> = sets.iter().flatten().cloned().collect();
        let disjoint = counts.iter().sum::<usize>() == union.len();
        if disjoint && union == *expected && counts.iter().all(|c| *c <= share && *c >= min_each) {
            return Ok(counts);
        }
        last = counts;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "scopes never split as expected (share {share}, at least {min_each}); last counts {last:?}"
    )
}

async fn reconciler() -> anyhow::Result<()> {
    let cluster = Cluster::new("reconciler")?;
    let db = cluster.stores.mongo().await?;
    let groups = db.collection::<Document>("groups");
    let names: Vec<String> = (0..100).map(|i| format!("g{i:03}")).collect();
    groups
        .insert_many(names.iter().map(|n| doc! { "_id": n }))
        .await?;
    let mut expected: BTreeSet<String> = names.iter().map(|n| format!("group:{n}")).collect();
    expected.insert("platform-module".into());
    assert_eq!(expected.len(), SCOPES);

    let mut s1 = cluster.service("scheduler", "scheduler-1", "")?;
    let mut s2 = cluster.service("scheduler", "scheduler-2", "")?;
    s1.wait_ready(READY_WITHIN).await?;
    s2.wait_ready(READY_WITHIN).await?;
    let counts = wait_split(&[&s1, &s2], &expected, 51, 50).await?;
    eprintln!("two replicas: {counts:?}");

    // A third replica gets its share; the others hand surplus back.
    let mut s3 = cluster.service("scheduler", "scheduler-3", "")?;
    s3.wait_ready(READY_WITHIN).await?;
    let counts = wait_split(&[&s1, &s2, &s3], &expected, 34, 33).await?;
    eprintln!("three replicas: {counts:?}");

    // A new group is picked up; a deleted one is let go.
    groups.insert_one(doc! { "_id": "g100" }).await?;
    groups.delete_one(doc! { "_id": "g000" }).await?;
    expected.insert("group:g100".into());
    expected.remove("group:g000");
    wait_split(&[&s1, &s2, &s3], &expected, 34, 33).await?;

    // SIGTERM: scheduler-1 releases everything; the others take it on their next ticks.
    s1.stop(EXIT_WITHIN).await?;
    ensure!(
        s1.log_text().contains("released every held lease"),
        "{}",
        s1.log_text()
    );
    wait_split(&[&s2, &s3], &expected, 51, 50).await?;

    // SIGKILL: scheduler-2's leases expire after the TTL (2 s) and scheduler-3 takes them.
    let before = Instant::now();
    s2.signal(libc::SIGKILL);
    wait_split(&[&s3], &expected, SCOPES, SCOPES).await?;
    eprintln!(
        "took over a killed replica's leases after {:?}",
        before.elapsed()
    );

    // Its ticks read the change-stream mirror (kept in sync by the marker each tick writes),
    // not every collection from MongoDB again; the group inserted and the one deleted above
    // reached it through the stream.
    let mirrored = s3
        .metric("prexor_scheduler_snapshots_total{source=\"mirror\"}")
        .await?;
    ensure!(mirrored > 0.0, "no tick used the mirror");

    s3.stop(EXIT_WITHIN).await?;
    Ok(())
}

#[tokio::test]
async fn scheduler_replicas_split_scopes_fairly_and_take_over_on_failure() {
    reconciler().await.unwrap();
}
