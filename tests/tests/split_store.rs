//! The split-store guard: replicas sharing MongoDB but not Valkey (split brain) are detected and
//! refuse every mutation; a Valkey that lost its data is re-stamped without a mismatch; a replica
//! configured for another cluster refuses to start.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, find_docs, group_doc, insert_group, live_instances, nodes, running, scenario_tests,
    stop_all, wait_unready_because,
};
use prexor_testkit::ValkeyServer;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn two_valkeys(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler_1 = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler_1.wait_ready(READY_WITHIN).await?;
    insert_group(cluster, group_doc("lobby", 2, &[])?).await?;
    running(cluster, &["lobby-1", "lobby-2"]).await?;

    // A second scheduler and an api replica on the same MongoDB but another Valkey.
    let other = ValkeyServer::start()?;
    let split = |id: &str| {
        cluster
            .common_toml(id)
            .replace(&cluster.stores.valkey_url, &other.url())
    };
    let mut scheduler_2 =
        cluster.service_from("scheduler", "scheduler-2", &split("scheduler-2"), "")?;
    wait_unready_because(&scheduler_2, "coordination store mismatched").await?;
    let (_, readyz) = scheduler_2.get("/readyz").await?;
    ensure!(
        readyz.contains("split brain") && readyz.contains(&other.port().to_string()),
        "names the problem and its Valkey: {readyz}"
    );
    let password = cluster.bootstrap_admin("admin")?;
    let mut api_2 = cluster.service_from("api", "api-2", &split("api-2"), "")?;
    wait_unready_because(&api_2, "coordination store mismatched").await?;
    let rest = api_2.rest(&api_2.login("admin", &password).await?);
    let (status, status_body) = rest.get("/system/status").await?;
    ensure!(
        status == 200
            && status_body["coordination"]["store"] == "mismatched"
            && status_body["coordination"]["expectedStoreId"].is_string(),
        "{status} {status_body}"
    );
    let (status, groups) = rest.get("/groups").await?;
    ensure!(status == 200, "reads keep working: {status} {groups}");
    let (status, refused) = rest
        .post("/groups", json!({ "name": "x", "spec": {} }))
        .await?;
    ensure!(
        status == 503
            && refused["message"]
                .as_str()
                .unwrap_or("")
                .contains("mismatched"),
        "{status} {refused}"
    );

    // Nothing is started twice: the split scheduler holds nothing and places nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        scheduler_2.leases_held().await?.is_empty(),
        "the split scheduler holds no lease"
    );
    let live = live_instances(cluster, doc! { "group": "lobby" }).await?;
    ensure!(live.len() == 2, "exactly the desired instances: {live:?}");
    let attempts = find_docs(cluster, "instances", doc! { "group": "lobby" }).await?;
    ensure!(
        attempts.iter().all(|d| d.get_i64("attempt") == Ok(1)),
        "nothing was placed again: {attempts:?}"
    );

    stop_all([&mut api_2, &mut scheduler_2], EXIT_WITHIN).await?;
    fleet.stop_with(&mut scheduler_1).await
}

async fn restarted_valkey(cluster: &Cluster) -> anyhow::Result<()> {
    let mut valkey = ValkeyServer::start()?;
    let private = |id: &str| {
        cluster
            .common_toml(id)
            .replace(&cluster.stores.valkey_url, &valkey.url())
    };
    let mut api = cluster.service_from("api", "api-1", &private("api-1"), "")?;
    let mut scheduler =
        cluster.service_from("scheduler", "scheduler-1", &private("scheduler-1"), "")?;
    api.wait_ready(READY_WITHIN).await?;
    scheduler.wait_ready(READY_WITHIN).await?;
    let password = cluster.bootstrap_admin("admin")?;
    let rest = api.rest(&api.login("admin", &password).await?);
    let (_, before) = rest.get("/system/status").await?;
    ensure!(before["coordination"]["store"] == "available", "{before}");
    let first_id = before["coordination"]["expectedStoreId"]
        .as_str()
        .context("store id")?
        .to_owned();

    // Restart without persistence: every key is gone, including the store id.
    valkey.restart()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restamped = None;
    while Instant::now() < deadline {
        for proc in [&api, &scheduler] {
            let (_, readyz) = proc.get("/readyz").await.unwrap_or_default();
            ensure!(
                !readyz.contains("mismatched"),
                "{} reported a mismatch after a plain restart: {readyz}",
                proc.name
            );
        }
        if let Ok((200, status)) = rest.get("/system/status").await
            && status["coordination"]["store"] == "available"
            && status["coordination"]["expectedStoreId"]
                .as_str()
                .is_some_and(|id| id != first_id)
        {
            restamped = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restamped = restamped.context("the restarted Valkey was not re-stamped")?;
    ensure!(
        restamped["coordination"]["foundStoreId"] == restamped["coordination"]["expectedStoreId"],
        "{restamped}"
    );
    scheduler.wait_ready(READY_WITHIN).await?;
    stop_all([&mut api, &mut scheduler], EXIT_WITHIN).await
}

async fn wrong_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    // A configured id and an empty database: refused (usually the wrong database).
    let mut early = cluster.service("api", "api-0", "[cluster]\nid = \"lobby-net\"\n")?;
    early
        .wait_failure(EXIT_WITHIN, &["has no cluster yet", "cluster.bootstrap"])
        .await?;
    // With bootstrap it creates the cluster under that id.
    let mut first = cluster.service(
        "api",
        "api-1",
        "[cluster]\nid = \"lobby-net\"\nbootstrap = true\n",
    )?;
    first.wait_ready(READY_WITHIN).await?;
    let (_, info) = first.get("/api/v1/system/info").await?;
    ensure!(info.contains("\"clusterId\":\"lobby-net\""), "{info}");
    // Another id against this database: refused, naming both.
    let mut wrong = cluster.service(
        "scheduler",
        "scheduler-1",
        "[cluster]\nid = \"survival-net\"\n",
    )?;
    let named = ["survival-net", "lobby-net", "fix cluster.id"];
    wrong.wait_failure(EXIT_WITHIN, &named).await?;
    stop_all([&mut first], EXIT_WITHIN).await
}

scenario_tests! {
    replicas_on_another_valkey_refuse_mutations: two_valkeys,
    a_valkey_that_lost_its_data_is_restamped_without_a_mismatch: restarted_valkey,
    a_replica_of_another_cluster_refuses_to_start: wrong_cluster,
}
