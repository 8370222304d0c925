//! A DYNAMIC group's warm pool (docs/scheduling.md, "Warm pool") with the real binaries: the
//! pool is placed and prepared (nothing runs), its holder dies right after it persisted the
//! pool's placements and before it dispatched them (a failpoint aborts it there), and the peer
//! dispatches exactly those plans: the pool is filled once, never twice. A warm instance that
//! says it is ready is not announced while warm; a scale-up takes a prepared one first (same
//! placement, one process start, announced then) and the pool refills; a pool of started
//! instances replaces the prepared ones when the spec changes, and a scale-up then takes a
//! running one without starting anything.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Rest, count_docs, create_group, find_docs, get_doc, instance_token, invariants, nodes,
    process_journal, refused_group, report_metrics, reported_pid, running, scenario_tests, spec_of,
    stop_all,
};
use prexor_testkit::eventually;
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(30);
/// Past the lease TTL and a few ticks.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(30);

/// The group's warm instances (of spec `hash`, if given) in `state` as their node reports too.
async fn warm_in(
    cluster: &Cluster,
    state: &str,
    hash: Option<&str>,
) -> anyhow::Result<Vec<Document>> {
    let mut filter =
        doc! { "group": "warm", "warm": true, "state": state, "reported.state": state };
    if let Some(hash) = hash {
        filter.insert("specHash", hash);
    }
    find_docs(cluster, "instances", filter).await
}

/// Waits until the pool holds `count` warm instances in `state` (of spec `hash`, if given).
async fn pool_of(
    cluster: &Cluster,
    count: usize,
    state: &str,
    hash: Option<&str>,
    within: Duration,
) -> anyhow::Result<Vec<Document>> {
    eventually(
        &format!("{count} warm instances {state}"),
        within,
        async || {
            let warm = warm_in(cluster, state, hash).await?;
            Ok((warm.len() == count).then_some(warm))
        },
    )
    .await
}

fn ids(docs: &[Document]) -> Vec<String> {
    let mut ids: Vec<String> = docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Reports `mspt` for each of `instances` with its own token.
async fn report(
    cluster: &Cluster,
    api: &prexor_acceptance::Proc,
    instances: &[Document],
    mspt: f64,
) -> anyhow::Result<()> {
    for instance in instances {
        report_metrics(cluster, api, instance, json!({ "mspt": mspt, "tps": 19.5 })).await?;
    }
    Ok(())
}

async fn group_status(rest: &Rest) -> anyhow::Result<Value> {
    let (status, group) = rest.get("/groups/warm").await?;
    ensure!(status == 200, "{status} {group}");
    Ok(group["status"].clone())
}

async fn warm_pool(cluster: &Cluster) -> anyhow::Result<()> {
    let password = cluster.bootstrap_admin("admin")?;
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut doomed = cluster.service_with_env(
        "scheduler",
        "scheduler-1",
        &[("PREXORCLOUD_FAILPOINTS", "scheduler.warm-pool-placed")],
    )?;
    doomed.wait_ready(READY_WITHIN).await?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);

    let mut spec = spec_of("warm", 1, &[])?;
    spec["warmPool"] = json!({ "prepared": 2 });
    // A STATIC group keeps fixed names, which a warm instance cannot take: refused by field.
    refused_group(&rest, "warm", spec.clone(), "warmPool").await?;
    spec["scaling"] = json!("DYNAMIC");
    spec["maxInstances"] = json!(5);
    spec["dynamic"] = json!({
        "load": { "metric": "mspt", "scaleUpAt": 40, "scaleDownAt": 15 },
        "cooldownSeconds": 15, "scaleDownDelaySeconds": 600,
    });
    create_group(&rest, "warm", spec.clone()).await?;

    // The only scheduler places warm-1, then the pool (warm-2, warm-3), and dies before it
    // dispatched the pool.
    doomed
        .wait_failure(EXIT_WITHIN, &["failpoint reached"])
        .await?;
    let persisted = find_docs(cluster, "instances", doc! { "group": "warm", "warm": true }).await?;
    ensure!(
        ids(&persisted) == ["warm-2", "warm-3"]
            && persisted.iter().all(|d| {
                d.get_str("state") == Ok("SCHEDULED") && d.get_bool("prepareOnly") == Ok(true)
            }),
        "the pool persisted, not dispatched: {persisted:?}"
    );
    let plans: BTreeMap<String, String> = persisted
        .iter()
        .map(|d| {
            Ok((
                d.get_str("_id")?.to_owned(),
                d.get_str("planHash")?.to_owned(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    // The peers take the group and dispatch exactly those plans: prepared, nothing started.
    let mut peer = cluster.service("scheduler", "scheduler-2", "")?;
    let mut other = cluster.service("scheduler", "scheduler-3", "")?;
    peer.wait_ready(READY_WITHIN).await?;
    other.wait_ready(READY_WITHIN).await?;
    let prepared = pool_of(cluster, 2, "PREPARED", None, TAKEOVER_WITHIN).await?;
    for instance in &prepared {
        let id = instance.get_str("_id")?;
        ensure!(
            plans.get(id).map(String::as_str) == Some(instance.get_str("planHash")?),
            "{id} runs the plan its first holder persisted: {instance:?}"
        );
    }
    let first = running(cluster, &["warm-1"]).await?.remove(0);
    ensure!(count_docs(cluster, "instances", doc! { "group": "warm" }).await? == 3);
    let launched = |journal: &[prexor_acceptance::ProcessEntry]| -> Vec<String> {
        journal
            .iter()
            .filter(|e| e.event == "launch")
            .map(|e| e.instance.clone())
            .collect()
    };
    ensure!(launched(&process_journal(cluster, &["node-1"])?) == ["warm-1"]);

    // What operators and proxies see: the pool apart from the group's instances.
    let status = group_status(&rest).await?;
    ensure!(
        status["warm"] == json!({ "PREPARED": 2 })
            && status["instances"] == json!({ "RUNNING": 1 }),
        "{status}"
    );
    let (_, members) = rest.get("/instances?group=warm&warm=false").await?;
    let (_, pool) = rest.get("/instances?group=warm&warm=true").await?;
    ensure!(
        members["items"].as_array().map(Vec::len) == Some(1)
            && members["items"][0]["id"] == "warm-1"
            && pool["items"].as_array().map(Vec::len) == Some(2)
            && pool["items"][0]["warm"] == true
            && pool["items"][0]["prepareOnly"] == true,
        "{members} / {pool}"
    );

    // A warm instance that says it is ready is recorded, not announced.
    let mut events = rest.sse("/events", None).await?;
    let warm_2 = get_doc(cluster, "instances", "warm-2").await?;
    let (status, body) = api
        .rest(&instance_token(cluster, &warm_2).await?)
        .post("/workload/ready", json!({}))
        .await?;
    ensure!(status == 204, "{status} {body}");

    // Busy: the group scales to 2 and takes warm-2 (prepared, the lowest), same placement, and
    // starts it; only then is it announced. The pool refills once (warm-4).
    report(cluster, &api, std::slice::from_ref(&first), 55.0).await?;
    let taken = running(cluster, &["warm-2"]).await?.remove(0);
    ensure!(
        !taken.get_bool("warm").unwrap_or(false)
            && taken.get_str("planHash")? == plans["warm-2"]
            && taken.get_i64("attempt")? == 1,
        "taken, not placed again: {taken:?}"
    );
    let mut seen_take = false;
    loop {
        let event = events.next(WITHIN).await?;
        let data: Value = serde_json::from_str(&event.data)?;
        if data["subject"] != "warm-2" {
            continue;
        }
        if event.event == "INSTANCE_STATE_CHANGED"
            && data["data"]["detail"] == "taken from the warm pool"
        {
            seen_take = true;
        }
        if event.event == "INSTANCE_READY" {
            ensure!(seen_take, "warm-2 announced before it was taken: {data}");
            break;
        }
    }
    // Steady load from here (between the thresholds): no more scaling until asked.
    report(cluster, &api, &[first.clone(), taken.clone()], 30.0).await?;
    let refilled = pool_of(cluster, 2, "PREPARED", None, WITHIN).await?;
    ensure!(ids(&refilled) == ["warm-3", "warm-4"], "{refilled:?}");
    ensure!(count_docs(cluster, "instances", doc! { "group": "warm" }).await? == 4);
    ensure!(launched(&process_journal(cluster, &["node-1"])?) == ["warm-1", "warm-2"]);

    // A pool of started instances: the prepared ones (of the older spec) are replaced by
    // running, idle ones, still not the group's.
    spec["warmPool"] = json!({ "prepared": 2, "started": true });
    let (status, updated) = rest
        .put("/groups/warm", json!({ "spec": spec, "revision": 1 }))
        .await?;
    ensure!(status == 200, "{status} {updated}");
    let older = refilled[0].get_str("specHash")?.to_owned();
    let started = eventually("the started pool", WITHIN, async || {
        let running = warm_in(cluster, "RUNNING", None).await?;
        let fresh: Vec<Document> = running
            .into_iter()
            .filter(|d| d.get_str("specHash") != Ok(older.as_str()))
            .collect();
        Ok((fresh.len() == 2).then_some(fresh))
    })
    .await?;
    for old in ["warm-3", "warm-4"] {
        prexor_acceptance::wait_state(cluster, "instances", old, "STOPPED").await?;
    }
    let status = group_status(&rest).await?;
    ensure!(status["instances"] == json!({ "RUNNING": 2 }), "{status}");

    // Busy again on both: the next instance is a running warm one, relabelled: no new process.
    let members = running(cluster, &["warm-1", "warm-2"]).await?;
    let launches_before = launched(&process_journal(cluster, &["node-1"])?).len();
    report(cluster, &api, &members, 55.0).await?;
    let taken = eventually("a started warm instance taken", WITHIN, async || {
        for candidate in &started {
            let now = get_doc(cluster, "instances", candidate.get_str("_id")?).await?;
            if !now.get_bool("warm").unwrap_or(true) {
                return Ok(Some((candidate.clone(), now)));
            }
        }
        Ok(None)
    })
    .await?;
    let (before, after) = taken;
    ensure!(
        after.get_str("state")? == "RUNNING"
            && reported_pid(&after) == reported_pid(&before)
            && after.get_str("planHash")? == before.get_str("planHash")?,
        "the same process, relabelled: {before:?} -> {after:?}"
    );
    // Refilled with one more started instance; each start in the journal is a distinct one.
    pool_of(
        cluster,
        2,
        "RUNNING",
        after.get_str("specHash").ok(),
        WITHIN,
    )
    .await?;
    let journal = process_journal(cluster, &["node-1"])?;
    let launches = launched(&journal);
    ensure!(
        launches.len() == launches_before + 1,
        "one start, for the refill: {journal:?}"
    );

    invariants(cluster, &["node-1"]).await?;
    stop_all([&mut api, &mut other], Duration::from_secs(20)).await?;
    fleet.stop_with(&mut peer).await
}

scenario_tests! {
    a_warm_pool_fills_once_across_a_failover_and_a_scale_up_takes_it_first: warm_pool,
}
