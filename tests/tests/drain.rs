//! Node drain through the API with two schedulers: the drain is a durable intent carried out
//! under `workflow:drain-<node>`. SIGKILL the replica holding that lease while the node's
//! servers are still stopping: the peer finishes the drain, the node ends cordoned and empty, and
//! the group's instances run on the other node.

use std::time::Duration;

use anyhow::ensure;
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, create_group, get_doc, live_instances, reported_state, running, scenario_tests,
    spec_of, system, wait_doc, wait_holder, wait_state,
};
use serde_json::json;

const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn drain_mid_failover(cluster: &Cluster) -> anyhow::Result<()> {
    let mut system = system(cluster, &["node-1", "node-2"], 2).await?;
    let rest = system.rest.clone();

    // Servers that take 4 s to stop, so the drain is still under way when its holder dies.
    create_group(
        &rest,
        "lobby",
        spec_of("lobby", 2, &["--stop-delay", "4000"])?,
    )
    .await?;
    let docs = running(cluster, &["lobby-1", "lobby-2"]).await?;
    let node = docs[0].get_str("nodeId")?.to_owned();
    let other = if node == "node-1" { "node-2" } else { "node-1" };

    let drain = format!("/nodes/{node}/drain");
    let (status, body) = rest.post(&drain, json!({ "timeout": "2m" })).await?;
    ensure!(
        status == 202 && body["state"] == "PENDING",
        "{status} {body}"
    );
    let (status, again) = rest.post(&drain, json!({})).await?;
    ensure!(status == 409, "a second drain: {status} {again}");

    // Mid-way: the node is cordoned and its servers are stopping. Kill the drain's holder.
    wait_state(cluster, "node_drains", &node, "DRAINING").await?;
    let scope = format!("workflow:drain-{node}");
    let killed = wait_holder(&system.schedulers, &scope, Duration::from_secs(5)).await?;
    let still_draining = get_doc(cluster, "node_drains", &node).await?;
    ensure!(
        still_draining.get_str("state") == Ok("DRAINING"),
        "the drain finished before its holder could be killed: {still_draining:?}"
    );
    system.schedulers[killed].signal(libc::SIGKILL);
    let mut dead = system.schedulers.remove(killed);
    dead.wait_exit(EXIT_WITHIN).await?;

    // The peer takes the workflow lease after the TTL and finishes the drain.
    let done = wait_state(cluster, "node_drains", &node, "DONE").await?;
    ensure!(done.get_i64("finishedAtMs").is_ok(), "{done:?}");
    let survivor = &system.schedulers[0];
    let fence_owner = get_doc(cluster, "fences", &scope).await?;
    ensure!(
        fence_owner.get_i64("mark").unwrap_or_default() >= 2,
        "the peer acquired the drain with a higher token: {fence_owner:?}"
    );
    let (status, node_view) = rest.get(&format!("/nodes/{node}")).await?;
    ensure!(
        status == 200 && node_view["cordoned"] == true && node_view["drain"]["state"] == "DONE",
        "{node_view}"
    );
    let left = live_instances(cluster, doc! { "nodeId": &node }).await?;
    ensure!(left.is_empty(), "instances still on {node}: {left:?}");
    for id in ["lobby-1", "lobby-2"] {
        let doc = wait_doc(cluster, "instances", id, "RUNNING on the other node", |d| {
            d.get_str("state") == Ok("RUNNING")
                && reported_state(d) == "RUNNING"
                && d.get_str("nodeId") == Ok(other)
        })
        .await?;
        ensure!(doc.get_str("nodeId")? == other, "{doc:?}");
    }
    let mut let_go = false;
    for _ in 0..100 {
        if survivor.leases_held().await?.iter().all(|s| s != &scope) {
            let_go = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(let_go, "the finished drain's lease is let go");

    // Undrain: the node takes placements again.
    let (status, _) = rest
        .post(&format!("/nodes/{node}/undrain"), json!({}))
        .await?;
    ensure!(status == 204, "{status}");
    let (_, node_view) = rest.get(&format!("/nodes/{node}")).await?;
    ensure!(node_view["cordoned"] == false, "{node_view}");

    system.finish(cluster, 0).await
}

scenario_tests! {
    a_drain_completes_on_the_peer_when_its_holder_is_killed: drain_mid_failover,
}
