//! A DYNAMIC group's scale-up to RUNNING with and without a warm pool (docs/scheduling.md,
//! "Warm pool"), with real processes: each round creates a group of fake servers with a
//! template layer of `--megabytes` random bytes, waits for its instance (and its pool) to be
//! ready, then its instance reports a busy MSPT and the time until a second instance of the
//! group runs (as its node reports: ready for players) is taken. Cold: the second instance is placed, its layer unpacked and its server
//! started. Prepared: a warm instance is taken and started from its prepared directory.
//! Started: a running warm instance is taken (relabelled).

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prexor_client::GroupSpec;
use serde_json::{Value, json};

use crate::Servers;
use crate::procs::{NodeFleet, Scratch, binary, ready, replica};
use crate::report::Metric;

const NODE: &str = "warm-node";
const WITHIN: Duration = Duration::from_secs(120);

/// The pools measured, by name.
const VARIANTS: [(&str, Option<bool>); 3] = [
    ("cold (no warm pool)", None),
    ("prepared warm instance", Some(false)),
    ("started warm instance", Some(true)),
];

pub async fn run(servers: &Servers, rounds: usize, megabytes: usize) -> anyhow::Result<()> {
    let servers = &servers.fresh("warm");
    let dir = Scratch::new("warm")?;
    let fleet = NodeFleet::start(servers, &dir.0, NODE, &[]).await?;
    let _scheduler = ready(replica(servers, &dir.0, "scheduler", "warm-a", "")?).await?;
    let api = ready(replica(servers, &dir.0, "api", "warm-api", "")?).await?;
    let password = crate::api::bootstrap(&api, &dir.0)?;
    let client = crate::api::login(&api, &password).await?;
    let _: Value = client
        .put_bytes("/templates/warm-layer", crate::uploads::layer(megabytes)?)
        .await?;
    let store = servers.store().await?;
    let instances = store.documents("instances");
    let fakeserver = binary("prexor-fakeserver")?.display().to_string();
    let mut cold: Option<(String, f64)> = None;
    for (v, (label, started)) in VARIANTS.iter().enumerate() {
        let mut took = Vec::new();
        for round in 0..rounds {
            let name = format!("warm-{v}-{round}");
            let from = 61_000 + (v * rounds + round) * 20;
            let mut spec = json!({
                "platform": "fake", "version": "1",
                "command": [&fakeserver, "--port", "{port}"], "memoryMb": 64,
                "portRange": { "from": from, "to": from + 19 },
                "minInstances": 1, "maxInstances": 2, "scaling": "DYNAMIC",
                "dynamic": {
                    "load": { "metric": "mspt", "scaleUpAt": 40, "scaleDownAt": 15 },
                    "cooldownSeconds": 1, "scaleDownDelaySeconds": 3600,
                },
                "templates": [{ "name": "warm-layer" }],
            });
            if let Some(started) = started {
                spec["warmPool"] = json!({ "prepared": 1, "started": started });
            }
            let spec: GroupSpec = serde_json::from_value(spec)?;
            client.create_group(&name, &spec).await?;
            let member = wait_for(&instances, &name, false, Some("RUNNING"), 1).await?;
            if let Some(started) = started {
                let state = if *started { "RUNNING" } else { "PREPARED" };
                wait_for(&instances, &name, true, Some(state), 1).await?;
            }
            let token = workload_token(&store, &member[0]).await?;
            let server = client.with_token(Some(token));
            let began = Instant::now();
            let _: Value = server
                .post("/workload/metrics", &json!({ "mspt": 55.0 }))
                .await?;
            // Running as its node reports (ready for players), not waiting for the scheduler's
            // next tick to record it.
            wait_for(&instances, &name, false, None, 2).await?;
            took.push(began.elapsed().as_secs_f64() * 1000.0);
            let _: Value = client.delete(&format!("/groups/{name}")).await?;
        }
        took.sort_by(f64::total_cmp);
        let median = took[took.len() / 2];
        let name = format!("scale-up to RUNNING, {label}");
        Metric {
            name: name.clone(),
            value: median,
            unit: "ms",
            baseline: cold.clone(),
            target: Some(format!(
                "median of {rounds} (min {:.0} ms, max {:.0} ms); {megabytes} MiB template layer; from the busy report to the new instance RUNNING as its node reports, through the scheduler's tick",
                took[0],
                took[took.len() - 1]
            )),
        }
        .print();
        cold.get_or_insert((name, median));
    }
    drop(fleet);
    Ok(())
}

/// Waits until `count` instances of `group` (of its warm pool with `warm`) are in `state` as
/// the scheduler records it and their node reports it (`None`: RUNNING as their node reports,
/// whatever the scheduler recorded yet); them.
async fn wait_for(
    instances: &mongodb::Collection<Document>,
    group: &str,
    warm: bool,
    state: Option<&str>,
    count: usize,
) -> anyhow::Result<Vec<Document>> {
    let warm = if warm {
        mongodb::bson::Bson::Boolean(true)
    } else {
        doc! { "$ne": true }.into()
    };
    let filter = match state {
        None => doc! { "group": group, "warm": warm, "reported.state": "RUNNING" },
        Some(state) => {
            doc! { "group": group, "warm": warm, "state": state, "reported.state": state }
        }
    };
    let deadline = Instant::now() + WITHIN;
    loop {
        let found: Vec<Document> =
            futures::TryStreamExt::try_collect(instances.find(filter.clone()).await?).await?;
        if found.len() == count {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "group {group}: {} of {count} instances {} after {WITHIN:?}",
            found.len(),
            state.unwrap_or("running")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The instance's own token for the workload endpoints, from its persisted plan.
async fn workload_token(
    store: &prexor_store::Store,
    instance: &Document,
) -> anyhow::Result<String> {
    let id = instance.get_str("_id")?;
    let planned = store
        .documents(prexor_model::instances::INSTANCE_PLANS)
        .find_one(doc! { "_id": id })
        .await?
        .ok_or_else(|| anyhow::anyhow!("no plan persisted for {id}"))?;
    Ok(planned
        .get_document("plan")?
        .get_document("env")?
        .get_str("PREXOR_INSTANCE_TOKEN")?
        .to_owned())
}
