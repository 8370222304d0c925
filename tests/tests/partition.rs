//! Partitions: one scheduler reaches Valkey and MongoDB only through fault proxies. Cut from
//! Valkey, it fences itself off (its leases lapse) and the peer takes every group; cut from
//! MongoDB, it cannot work, gives its leases up and the peer takes them. After each heal it
//! rejoins as a normal replica. Game servers never restart and never run twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::fault::{Fault, FaultProxy};
use prexor_acceptance::{
    Cluster, Proc, group_doc, insert_group, live_instances, nodes, process_journal, running,
    running_plans, scenario_tests,
};

const READY_WITHIN: Duration = Duration::from_secs(60);
/// Lease TTL 2 s (1 s interval), MongoDB timeout 2 s: a few ticks beyond.
const MOVE_WITHIN: Duration = Duration::from_secs(30);
const GROUPS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// The groups `scheduler` holds.
async fn groups_of(scheduler: &Proc) -> Vec<String> {
    scheduler
        .leases_held()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.starts_with("group:"))
        .collect()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        ensure!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Every group's instance, RUNNING, with the plan it was first started with.
async fn unchanged(cluster: &Cluster, plans: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let ids: Vec<String> = GROUPS.iter().map(|g| format!("{g}-1")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for doc in running(cluster, &ids).await? {
        let id = doc.get_str("_id")?;
        ensure!(
            plans.get(id).map(String::as_str) == Some(doc.get_str("planHash")?),
            "{id} was restarted or placed again: {doc:?}"
        );
    }
    let active = live_instances(cluster, doc! {}).await?;
    ensure!(
        active.len() == GROUPS.len(),
        "{} active instances: {active:?}",
        active.len()
    );
    Ok(())
}

async fn partition(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    for group in GROUPS {
        insert_group(cluster, group_doc(group, 1, &[])?).await?;
    }
    let valkey_port: u16 = cluster
        .stores
        .valkey_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("valkey port")?;
    let mongo_port: u16 = cluster
        .stores
        .mongo_uri
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .and_then(|host| host.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context("mongo port")?;
    let valkey_proxy = FaultProxy::start(([127, 0, 0, 1], valkey_port).into()).await?;
    let mongo_proxy = FaultProxy::start(([127, 0, 0, 1], mongo_port).into()).await?;
    // scheduler-1 reaches both stores only through the proxies (a direct connection, so the
    // driver does not discover the server's own address and go around the proxy).
    let proxied = cluster
        .common_toml("scheduler-1")
        .replace(
            &cluster.stores.valkey_url,
            &format!("redis://{}", valkey_proxy.addr()),
        )
        .replace(
            &cluster.stores.mongo_uri,
            &format!("mongodb://{}/?directConnection=true", mongo_proxy.addr()),
        )
        .replace("[mongo]\n", "[mongo]\ntimeout = \"2s\"\n");
    let mut cut = cluster.service_from("scheduler", "scheduler-1", &proxied, "")?;
    let mut peer = cluster.service("scheduler", "scheduler-2", "")?;
    cut.wait_ready(READY_WITHIN).await?;
    peer.wait_ready(READY_WITHIN).await?;

    let ids: Vec<String> = GROUPS.iter().map(|g| format!("{g}-1")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let plans = running_plans(cluster, &ids).await?;
    wait_until("both schedulers hold groups", MOVE_WITHIN, || async {
        !groups_of(&cut).await.is_empty() && !groups_of(&peer).await.is_empty()
    })
    .await?;

    for (store, proxy) in [("Valkey", &valkey_proxy), ("MongoDB", &mongo_proxy)] {
        proxy.set(Fault::BlackHole);
        wait_until(
            &format!("cut from {store}, scheduler-1 lets go of every lease"),
            MOVE_WITHIN,
            || async { groups_of(&cut).await.is_empty() },
        )
        .await?;
        wait_until(
            &format!("cut from {store}: the peer holds every group"),
            MOVE_WITHIN,
            || async { groups_of(&peer).await.len() == GROUPS.len() },
        )
        .await?;
        unchanged(cluster, &plans).await?;
        ensure!(
            groups_of(&cut).await.is_empty(),
            "while cut from {store}, scheduler-1 takes nothing back"
        );

        proxy.set(Fault::None);
        wait_until(
            &format!("after the {store} partition heals, scheduler-1 works again"),
            MOVE_WITHIN,
            || async { !groups_of(&cut).await.is_empty() },
        )
        .await?;
        unchanged(cluster, &plans).await?;
    }
    let journal = process_journal(cluster, &["node-1"])?;
    let launches = journal.iter().filter(|e| e.event == "launch").count();
    ensure!(
        launches == GROUPS.len(),
        "one launch per group: {journal:?}"
    );
    let log = cut.log_text();
    ensure!(
        log.contains("releasing every lease for a healthy peer"),
        "cut from MongoDB, scheduler-1 said why it let go:\n{log}"
    );

    prexor_acceptance::invariants(cluster, &["node-1"]).await?;
    fleet.stop_with(&mut cut).await?;
    peer.stop(Duration::from_secs(20)).await
}

scenario_tests! {
    a_scheduler_cut_from_valkey_or_mongodb_hands_its_groups_over_and_rejoins: partition,
}
