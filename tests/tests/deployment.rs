//! Rolling deployments with two schedulers: SIGKILL the group's lease holder when 2 of 4
//! instances are updated; the peer completes the rollout 4/4 and never restarts the two that
//! were already updated. Then pause and roll back a second deployment: the group returns to the
//! previous spec, and instances that never left it are not restarted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, Proc, create_group, deploy_one_by_one, find_docs, holder_of, running, scenario_tests,
    spec_of, system, wait_state, with_version,
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

/// Waits until deployment `id` is DONE; then requires all four instances on spec `target`, each
/// of `kept` still on the plan it had (not restarted `since`).
async fn done_keeping(
    cluster: &Cluster,
    id: &str,
    target: &str,
    kept: &HashMap<String, String>,
    since: &str,
) -> anyhow::Result<()> {
    wait_state(cluster, "deployments", id, "DONE").await?;
    let done = on_spec(cluster, target).await?;
    ensure!(
        done.len() == 4,
        "4 of 4 on the target spec {since}: {done:?}"
    );
    for (instance, plan) in kept {
        ensure!(
            done.get(instance) == Some(plan),
            "{instance} was restarted {since} ({plan} -> {:?})",
            done.get(instance)
        );
    }
    Ok(())
}

async fn rollout(cluster: &Cluster) -> anyhow::Result<()> {
    let mut system = system(cluster, &["node-1", "node-2"], 2).await?;
    let rest = system.rest.clone();
    let base = spec_of("web", 4, &["--stop-delay", "1500"])?;
    create_group(&rest, "web", with_version(&base, "1")).await?;
    running(cluster, &IDS).await?;

    // Roll out version 2, one at a time.
    let (id, deployment) = deploy_one_by_one(&rest, "web", with_version(&base, "2")).await?;
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
    done_keeping(cluster, &id, &target, &updated, "again after the failover").await?;
    let (status, shown) = rest.get(&format!("/deployments/{id}")).await?;
    ensure!(
        status == 200 && shown["live"]["updated"] == 4 && shown["state"] == "DONE",
        "{shown}"
    );

    // Version 3, paused at once, then rolled back to 2: whatever never left 2 is untouched.
    let (second_id, _) = deploy_one_by_one(&rest, "web", with_version(&base, "3")).await?;
    let pause = format!("/deployments/{second_id}/pause");
    let (status, paused) = rest.post(&pause, json!({})).await?;
    ensure!(
        status == 200 && paused["state"] == "PAUSED",
        "{status} {paused}"
    );
    let (status, _) = rest.post(&pause, json!({})).await?;
    ensure!(status == 409, "pausing twice: {status}");
    let before_rollback = on_spec(cluster, &target).await?;
    let (status, rolled) = rest
        .post(&format!("/deployments/{second_id}/rollback"), json!({}))
        .await?;
    ensure!(
        status == 200 && rolled["rolledBack"] == true && rolled["targetSpecHash"] == target,
        "{status} {rolled}"
    );
    let since = "by the rollback to version 2 although it never left it";
    done_keeping(cluster, &second_id, &target, &before_rollback, since).await?;
    let (_, group) = rest.get("/groups/web").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "2", "{group}");

    system.finish(cluster, 0).await
}

scenario_tests! {
    a_rollout_completes_on_the_peer_without_restarting_updated_instances: rollout,
}
