//! Rolling deployments with two schedulers: SIGKILL the group's lease holder when 2 of 4
//! instances are updated; the peer completes the rollout 4/4 and never restarts the two that
//! were already updated. Then pause and roll back a second deployment: the group returns to the
//! previous spec, and instances that never left it are not restarted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, Proc, create_group, deploy, find_docs, holder_of, running, spec_of, system, wait_doc,
    with_version,
};
use serde_json::json;

const EXIT_WITHIN: Duration = Duration::from_secs(20);
const IDS: [&str; 4] = ["web-1", "web-2", "web-3", "web-4"];

/// planHash of every instance RUNNING (also by report) the spec `hash`.
async fn on_spec(cluster: &Cluster, hash: &str) -> anyhow::Result<HashMap<String, String>> {
    let docs = find_docs(
        cluster,
        "instances",
        doc! { "group": "web", "specHash": hash, "state": "RUNNING", "reported.state": "RUNNING" },
    )
    .await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("_id").ok()?.to_owned(),
                d.get_str("planHash").ok()?.to_owned(),
            ))
        })
        .collect())
}

async fn rollout(cluster: &Cluster) -> anyhow::Result<()> {
    let mut system = system(cluster, &["node-1", "node-2"], 2).await?;
    let rest = system.rest.clone();
    let base = spec_of("web", 4, &["--stop-delay", "1500"])?;
    create_group(&rest, "web", with_version(&base, "1")).await?;
    running(cluster, &IDS).await?;

    // Roll out version 2, one at a time.
    let v2 = with_version(&base, "2");
    let deployment = deploy(
        &rest,
        "web",
        json!({ "spec": v2, "batchSize": 1, "maxUnavailable": 1 }),
    )
    .await?;
    let id = deployment["id"].as_str().context("id")?.to_owned();
    let target = deployment["targetSpecHash"]
        .as_str()
        .context("target")?
        .to_owned();
    let (status, _) = rest
        .put("/groups/web", json!({ "spec": with_version(&base, "9") }))
        .await?;
    ensure!(status == 409, "a spec change during a rollout: {status}");

    // At 2 of 4: kill the group's holder.
    let deadline = Instant::now() + Duration::from_secs(90);
    let updated = loop {
        let updated = on_spec(cluster, &target).await?;
        if updated.len() >= 2 {
            break updated;
        }
        ensure!(
            Instant::now() < deadline,
            "the rollout did not reach 2 of 4"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let holder = holder_of(&system.schedulers, "group:web")
        .await?
        .context("no scheduler holds group:web")?;
    system.schedulers[holder].signal(libc::SIGKILL);
    let mut dead: Proc = system.schedulers.remove(holder);
    dead.wait_exit(EXIT_WITHIN).await?;
    ensure!(
        updated.len() < 4,
        "the rollout finished before the kill: {updated:?}"
    );

    // The peer completes it; the instances updated before the kill keep their plans.
    wait_doc(cluster, "deployments", &id, "DONE", |d| {
        d.get_str("state") == Ok("DONE")
    })
    .await?;
    let done = on_spec(cluster, &target).await?;
    ensure!(done.len() == 4, "4 of 4 updated: {done:?}");
    for (instance, plan) in &updated {
        ensure!(
            done.get(instance) == Some(plan),
            "{instance} was restarted again after the failover ({plan} -> {:?})",
            done.get(instance)
        );
    }
    let (status, shown) = rest.get(&format!("/deployments/{id}")).await?;
    ensure!(
        status == 200 && shown["live"]["updated"] == 4 && shown["state"] == "DONE",
        "{shown}"
    );

    // Version 3, paused at once, then rolled back to 2: whatever never left 2 is untouched.
    let second = deploy(
        &rest,
        "web",
        json!({ "spec": with_version(&base, "3"), "batchSize": 1, "maxUnavailable": 1 }),
    )
    .await?;
    let second_id = second["id"].as_str().context("id")?.to_owned();
    let (status, paused) = rest
        .post(&format!("/deployments/{second_id}/pause"), json!({}))
        .await?;
    ensure!(
        status == 200 && paused["state"] == "PAUSED",
        "{status} {paused}"
    );
    let (status, _) = rest
        .post(&format!("/deployments/{second_id}/pause"), json!({}))
        .await?;
    ensure!(status == 409, "pausing twice: {status}");
    let before_rollback = on_spec(cluster, &target).await?;
    let (status, rolled) = rest
        .post(&format!("/deployments/{second_id}/rollback"), json!({}))
        .await?;
    ensure!(
        status == 200 && rolled["rolledBack"] == true && rolled["targetSpecHash"] == target,
        "{status} {rolled}"
    );
    wait_doc(cluster, "deployments", &second_id, "DONE", |d| {
        d.get_str("state") == Ok("DONE")
    })
    .await?;
    let after = on_spec(cluster, &target).await?;
    ensure!(after.len() == 4, "all back on version 2: {after:?}");
    for (instance, plan) in &before_rollback {
        ensure!(
            after.get(instance) == Some(plan),
            "{instance} never left version 2 but was restarted"
        );
    }
    let (_, group) = rest.get("/groups/web").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "2", "{group}");

    system.finish(cluster, 0).await
}

#[tokio::test]
async fn a_rollout_completes_on_the_peer_without_restarting_updated_instances() {
    let cluster = Cluster::new("deployment").unwrap();
    rollout(&cluster).await.unwrap();
}
