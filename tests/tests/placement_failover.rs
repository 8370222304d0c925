//! Placement-time failover: the scheduler holding a group dies right after it persisted an
//! instance's plan and before it dispatched it (a failpoint aborts it exactly there). The peer
//! takes the group with a higher token and dispatches the same plan hash to the same node: one
//! process, never a second plan.

use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, count_docs, group_doc, insert_group, nodes, process_journal, running, scenario_tests,
    wait_plan,
};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(30);

async fn placement_failover(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    let mut doomed = cluster.service_with_env(
        "scheduler",
        "scheduler-1",
        &[("PREXORCLOUD_FAILPOINTS", "scheduler.after-plan-persisted")],
    )?;
    doomed.wait_ready(READY_WITHIN).await?;
    insert_group(cluster, group_doc("lobby", 1, &[])?).await?;

    // The only scheduler takes the group, persists lobby-1's plan, and dies before dispatching.
    doomed
        .wait_failure(EXIT_WITHIN, &["failpoint reached"])
        .await?;
    let (planned, _) = wait_plan(cluster, "lobby-1", "a persisted plan", |d, _| {
        d.get_str("state") == Ok("SCHEDULED")
    })
    .await?;
    let plan_hash = planned.get_str("planHash")?.to_owned();
    let node = planned.get_str("nodeId")?.to_owned();
    let first_token = planned
        .get_document("_fence")?
        .get_i64("token")
        .context("fence token")?;
    ensure!(
        process_journal(cluster, &["node-1", "node-2"])?.is_empty(),
        "nothing was started before the crash"
    );

    // The peer takes the group after the TTL and dispatches exactly that plan.
    let mut peer = cluster.service("scheduler", "scheduler-2", "")?;
    peer.wait_ready(READY_WITHIN).await?;
    let started = running(cluster, &["lobby-1"]).await?.remove(0);
    ensure!(
        started.get_str("planHash")? == plan_hash && started.get_str("nodeId")? == node,
        "the same plan on the same node: {started:?} (planned {plan_hash} on {node})"
    );
    let second_token = started
        .get_document("_fence")?
        .get_i64("token")
        .context("fence token")?;
    ensure!(
        second_token > first_token,
        "the peer wrote with a higher token ({second_token} > {first_token})"
    );
    let journal = process_journal(cluster, &["node-1", "node-2"])?;
    let launches: Vec<_> = journal.iter().filter(|e| e.event == "launch").collect();
    ensure!(
        launches.len() == 1
            && launches[0].instance == "lobby-1"
            && launches[0].plan_hash == plan_hash
            && launches[0].node == node,
        "exactly one process, of the persisted plan: {journal:?}"
    );
    let attempts = count_docs(cluster, "instances", doc! { "group": "lobby" }).await?;
    ensure!(attempts == 1, "{attempts} instance records");

    prexor_acceptance::invariants(cluster, &["node-1", "node-2"]).await?;
    fleet.stop_with(&mut peer).await
}

scenario_tests! {
    a_plan_persisted_before_the_holder_died_is_dispatched_unchanged_by_the_peer: placement_failover,
}
