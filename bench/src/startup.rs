//! Creation to RUNNING with real processes: STATIC groups of fake servers are created through
//! the API at once and two scheduler replicas place them on one daemon (its shims start the
//! servers), timed from the first request to the last instance the node reports RUNNING. Two shapes: one group
//! of many instances (one holder places them all), and many groups of a few (the holders split
//! them). The placement rate alone (plans persisted per second) is `scheduler`'s benchmark.

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use prexor_client::GroupSpec;
use serde_json::json;

use crate::Servers;
use crate::procs::{NodeFleet, Scratch, binary, ready, replica};
use crate::report::Metric;

const NODE: &str = "startup-node";

/// `groups` STATIC groups of `per_group` fake servers (64 MiB each, the least a group asks), created at once.
pub async fn startup(servers: &Servers, groups: usize, per_group: usize) -> anyhow::Result<()> {
    let what = format!("startup_{groups}x{per_group}");
    let servers = &servers.fresh(&what);
    let dir = Scratch::new(&what)?;
    let fleet = NodeFleet::start(servers, &dir.0, NODE, &[]).await?;
    let _schedulers = [
        ready(replica(servers, &dir.0, "scheduler", "startup-a", "")?).await?,
        ready(replica(servers, &dir.0, "scheduler", "startup-b", "")?).await?,
    ];
    let api = ready(replica(servers, &dir.0, "api", "startup-api", "")?).await?;
    let password = crate::api::bootstrap(&api, &dir.0)?;
    let client = crate::api::login(&api, &password).await?;
    let store = servers.store().await?;
    let fakeserver = binary("prexor-fakeserver")?.display().to_string();
    // Ranges above the ports the test kit hands out (20000-31999) and the kernel's ephemeral
    // ones, twice as wide as needed, so a port held by some other process costs a retry on the
    // next one instead of an instance that can never start.
    let specs: Vec<(String, GroupSpec)> = (0..groups)
        .map(|g| {
            let from = 62_000 + g * per_group * 2;
            let spec = serde_json::from_value(json!({
                "platform": "fake", "version": "1",
                "command": [&fakeserver, "--port", "{port}"], "memoryMb": 64,
                "portRange": { "from": from, "to": from + per_group * 2 - 1 },
                "minInstances": per_group, "maxInstances": per_group, "scaling": "STATIC",
            }))?;
            Ok((format!("start-{g:03}"), spec))
        })
        .collect::<anyhow::Result<_>>()?;
    let total = (groups * per_group) as u64;
    let started = Instant::now();
    futures::future::try_join_all(
        specs
            .iter()
            .map(|(name, spec)| client.create_group(name, spec)),
    )
    .await?;
    let instances = store.documents("instances");
    let deadline = started + Duration::from_secs(900);
    loop {
        let running = instances
            .count_documents(doc! { "state": "RUNNING", "reported.state": "RUNNING" })
            .await?;
        if running == total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{running} of {total} instances RUNNING after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let launches = std::fs::read_to_string(dir.0.join(NODE).join("processes.log"))?
        .lines()
        .filter(|l| l.contains("\"event\":\"launch\""))
        .count() as u64;
    anyhow::ensure!(
        launches == total,
        "every instance started once ({launches} launches for {total})"
    );
    let scenario = if groups == 1 {
        format!("{per_group} instances of one group")
    } else {
        format!("{groups} groups x {per_group} instances")
    };
    Metric {
        name: format!("{scenario}: create -> all RUNNING"),
        value: took,
        unit: "s",
        baseline: None,
        target: Some(format!(
            "{:.0} instances/s; real fake-server processes under shims on one daemon, 2 scheduler replicas",
            total as f64 / took
        )),
    }
    .print();
    drop(fleet);
    Ok(())
}
