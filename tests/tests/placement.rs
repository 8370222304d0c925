//! Scheduling with real processes: two schedulers, two gateways, two daemons running the fake
//! server. A STATIC group gets exactly its minimum, spread over ports without collisions; the
//! lease holder's SIGKILL hands the group to the peer, which dispatches nothing twice; a crashed
//! instance is replaced; lowering the minimum stops the surplus.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Fleet, Proc, binary, count_docs, find_doc, find_one, get_doc, group_doc, insert_group,
    nodes, reported_pid, reported_state, running, scenario_tests, schedulers, set_group, stop_all,
    wait_doc, wait_state,
};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{Command, ConsoleInput, NodeCommandRequest};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn holds(scheduler: &Proc, scope: &str) -> anyhow::Result<bool> {
    Ok(scheduler.leases_held().await?.iter().any(|s| s == scope))
}

async fn placement(cluster: &Cluster) -> anyhow::Result<()> {
    let Fleet {
        mut ca,
        mut gateways,
        mut daemons,
    } = nodes(cluster, &["node-1", "node-2"]).await?;
    // A STATIC group of three fake servers in a narrow port range.
    insert_group(cluster, group_doc("lobby", 3, &[])?).await?;
    let schedulers = schedulers(cluster, 2).await?;
    let ids = ["lobby-1", "lobby-2", "lobby-3"];
    let docs = running(cluster, &ids).await?;
    let slots: BTreeSet<(String, i64)> = docs
        .iter()
        .map(|d| {
            (
                d.get_str("nodeId").unwrap_or_default().to_string(),
                d.get_i64("port").unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        slots.len() == 3,
        "three distinct node:port slots: {slots:?}"
    );
    let pids: Vec<i64> = docs.iter().map(reported_pid).collect();
    ensure!(pids.iter().all(|p| *p > 0), "{docs:?}");
    let count = count_docs(cluster, "instances", doc! { "group": "lobby" }).await?;
    ensure!(count == 3, "exactly min instances: {count}");

    // SIGKILL the holder of group:lobby: after the TTL the peer holds it and starts nothing new.
    let holder = if holds(&schedulers[0], "group:lobby").await? {
        0
    } else {
        1
    };
    ensure!(holds(&schedulers[holder], "group:lobby").await?);
    schedulers[holder].signal(libc::SIGKILL);
    let peer = &schedulers[1 - holder];
    let mut taken = false;
    for _ in 0..100 {
        if holds(peer, "group:lobby").await? {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(taken, "the peer took group:lobby");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = running(cluster, &ids).await?;
    let pids_after: Vec<i64> = after.iter().map(reported_pid).collect();
    ensure!(
        pids_after == pids,
        "no instance was restarted: {pids:?} -> {pids_after:?}"
    );
    let count = count_docs(cluster, "instances", doc! { "group": "lobby" }).await?;
    ensure!(count == 3, "nothing started twice: {count}");

    // A crash is healed: lobby-1 is placed again (a new attempt) and runs.
    let fence = get_doc(cluster, "fences", "group:lobby").await?;
    let token = fence.get_i64("mark")? as u64;
    let node = after[0].get_str("nodeId")?.to_string();
    NodeCommandsClient::new(cluster.internal_channel(&gateways[0]).await?)
        .send(NodeCommandRequest {
            node_id: node,
            command: Some(Command {
                command_id: "operator-crash".into(),
                scope: "group:lobby".into(),
                fence_token: token,
                action: Some(Action::Console(ConsoleInput {
                    instance_id: "lobby-1".into(),
                    line: "crash 5".into(),
                })),
            }),
            timeout_ms: 10_000,
            forwarded: false,
        })
        .await?;
    let healed = wait_doc(
        cluster,
        "instances",
        "lobby-1",
        "replaced and running",
        |d| {
            d.get_i64("attempt").unwrap_or(0) >= 2
                && d.get_str("state") == Ok("RUNNING")
                && reported_state(d) == "RUNNING"
        },
    )
    .await?;
    ensure!(
        reported_pid(&healed) != pids[0],
        "a new process: {healed:?}"
    );
    let crash = find_one(cluster, "crashes", doc! { "instanceId": "lobby-1" })
        .await?
        .context("crash record")?;
    ensure!(crash.get_i32("exitCode") == Ok(5), "{crash:?}");

    // Lowering the minimum stops the surplus instance.
    let fewer = doc! { "spec.minInstances": 2_i64, "revision": 2_i64 };
    set_group(cluster, "lobby", fewer).await?;
    wait_state(cluster, "instances", "lobby-3", "STOPPED").await?;

    peer.sigterm();
    stop_all(
        daemons.iter_mut().chain(&mut gateways).chain([&mut ca]),
        EXIT_WITHIN,
    )
    .await
}

async fn crash_loop(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    insert_group(cluster, group_doc("crashy", 1, &["--crash-after", "200"])?).await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    // Three crashes pause the group (30 s for the first loop) under its lease.
    let state = wait_doc(cluster, "group_state", "crashy", "paused", |d| {
        d.get_i64("pauseLevel") == Ok(1)
    })
    .await?;
    ensure!(state.get_i64("pausedUntilMs")? > 0, "{state:?}");
    let attempts = |d: &Document| d.get_i64("attempt").unwrap_or(0);
    let before = get_doc(cluster, "instances", "crashy-1").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = get_doc(cluster, "instances", "crashy-1").await?;
    ensure!(
        attempts(&after) == attempts(&before) && after.get_str("state") == Ok("CRASHED"),
        "no new attempt while paused: {before:?} -> {after:?}"
    );
    ensure!(
        scheduler
            .log_text()
            .contains("crash loop: pausing new instances")
    );
    fleet.stop_with(&mut scheduler).await
}

/// `prexor-scheduler group apply NAME --spec FILE` with scheduler-1's configuration.
fn apply_group(
    cluster: &Cluster,
    name: &str,
    spec: &Document,
) -> anyhow::Result<std::process::Output> {
    let file = cluster.dir.join(format!("{name}.json"));
    std::fs::write(
        &file,
        serde_json::to_vec(&mongodb::bson::Bson::Document(spec.clone()).into_relaxed_extjson())?,
    )?;
    Ok(std::process::Command::new(binary("prexor-scheduler")?)
        .arg("--config")
        .arg(cluster.dir.join("scheduler-1.toml"))
        .args(["group", "apply", name, "--spec"])
        .arg(&file)
        .output()?)
}

async fn lost_node(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    // The operator's apply command: a bad spec is refused naming each field, a good one lands.
    let good = group_doc("survivor", 2, &[])?;
    let mut bad = good.get_document("spec")?.clone();
    bad.insert("memoryMb", 1_i64);
    bad.insert("portRange", doc! { "from": 10, "to": 5 });
    let refused = apply_group(cluster, "survivor", &bad)?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("memoryMb") && stderr.contains("portRange"),
        "{stderr}"
    );
    let applied = apply_group(cluster, "survivor", good.get_document("spec")?)?;
    ensure!(
        applied.status.success() && String::from_utf8_lossy(&applied.stdout).contains("created"),
        "{applied:?}"
    );
    let docs = running(cluster, &["survivor-1", "survivor-2"]).await?;
    let on_node_2 = docs
        .iter()
        .find(|d| d.get_str("nodeId") == Ok("node-2"))
        .context("one instance on each node")?;
    let lost_id = on_node_2.get_str("_id")?.to_string();
    let lost_pid = reported_pid(on_node_2);

    // Cut node-2 off (its daemon paused): past the disconnect grace, its instance is replaced.
    fleet.daemons[1].signal(libc::SIGSTOP);
    let replaced = wait_doc(cluster, "instances", &lost_id, "replaced on node-1", |d| {
        d.get_i64("attempt").unwrap_or(0) >= 2
            && d.get_str("nodeId") == Ok("node-1")
            && d.get_str("state") == Ok("RUNNING")
    })
    .await?;
    ensure!(reported_pid(&replaced) != lost_pid);

    // node-2 comes back: its process of the old plan is a stray and gets stopped.
    fleet.daemons[1].signal(libc::SIGCONT);
    let stray_id = format!("{lost_id}@node-2");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let alive = std::path::Path::new(&format!("/proc/{lost_pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{lost_pid}/stat"))
                .is_ok_and(|s| s.contains(" Z "));
        let recorded = find_doc(cluster, "stray_instances", &stray_id).await?;
        if !alive && recorded.is_none() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the stray (pid {lost_pid}) was not stopped: alive {alive}, record {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The replacement is untouched.
    let current = wait_doc(cluster, "instances", &lost_id, "still running", |d| {
        d.get_str("state") == Ok("RUNNING")
    })
    .await?;
    ensure!(reported_pid(&current) == reported_pid(&replaced));
    fleet.stop_with(&mut scheduler).await
}

scenario_tests! {
    a_static_group_is_placed_once_survives_failover_and_heals: placement,
    a_crash_loop_pauses_the_group: crash_loop,
    a_lost_node_is_replaced_and_its_strays_stopped_when_it_returns: lost_node,
}
