//! The "GC pause": SIGSTOP the scheduler holding a group past the lease TTL; the peer takes the
//! group with a higher token and changes it; SIGCONT the old holder. It fences itself off before
//! doing anything, nothing it could still send is accepted, and no server runs twice. And the
//! worst moment for it: paused between deciding a placement and writing it, the woken holder's
//! write is refused by the fence (counted), never applied.

use std::time::Duration;

use anyhow::ensure;
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, fence_mark, find_docs, group_doc, insert_group, nodes, process_journal,
    reported_state, running, scenario_tests, schedulers, set_group, stop_all, wait_doc,
    wait_holder,
};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn gc_pause(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    insert_group(cluster, group_doc("lobby", 2, &[])?).await?;
    let mut schedulers = schedulers(cluster, 2).await?;
    let before: Vec<Document> = running(cluster, &["lobby-1", "lobby-2"]).await?;
    let scope = "group:lobby";
    let holder = wait_holder(&schedulers, scope, Duration::from_secs(5)).await?;
    let peer = 1 - holder;
    let old_token = fence_mark(cluster, scope).await?;

    // The pause: well past the 2 s TTL.
    schedulers[holder].signal(libc::SIGSTOP);
    let mut taken = false;
    for _ in 0..200 {
        if schedulers[peer]
            .leases_held()
            .await?
            .iter()
            .any(|l| l == scope)
        {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(taken, "the peer took the group while its holder was paused");
    let new_token = fence_mark(cluster, scope).await?;
    ensure!(
        new_token > old_token,
        "a higher token: {old_token} -> {new_token}"
    );
    // The peer changes the group meanwhile: one more instance.
    let more = doc! { "spec.minInstances": 3_i64, "revision": 2_i64 };
    set_group(cluster, "lobby", more).await?;
    running(cluster, &["lobby-3"]).await?;

    // Wake the old holder: it must not act on its stale view.
    schedulers[holder].signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let instances = find_docs(cluster, "instances", doc! { "group": "lobby" }).await?;
    ensure!(
        instances.len() == 3,
        "three instances, no more: {instances:?}"
    );
    for original in &before {
        let id = original.get_str("_id")?;
        let now = wait_doc(cluster, "instances", id, "still running", |d| {
            d.get_str("state") == Ok("RUNNING") && reported_state(d) == "RUNNING"
        })
        .await?;
        ensure!(
            now.get_str("planHash")? == original.get_str("planHash")?
                && now.get_i64("attempt")? == original.get_i64("attempt")?,
            "{id} was not restarted: {now:?}"
        );
    }
    let pids: std::collections::BTreeSet<i32> = instances
        .iter()
        .filter_map(|d| d.get_document("reported").ok()?.get_i32("pid").ok())
        .collect();
    ensure!(pids.len() == 3, "three distinct server processes: {pids:?}");
    let journal = process_journal(cluster, &["node-1", "node-2"])?;
    let launches = journal.iter().filter(|e| e.event == "launch").count();
    ensure!(launches == 3, "three launches in all: {journal:?}");
    let log = schedulers[holder].log_text();
    ensure!(
        !log.contains("stale fencing token") || log.contains("this write was not applied"),
        "a stale write is refused, never applied: {log}"
    );

    let mut rest = schedulers.remove(peer);
    fleet
        .finish(cluster, &["node-1", "node-2"], &mut schedulers, &mut rest)
        .await
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// The worst moment for a pause: the holder has decided a placement and is about to write it.
/// It stops there (a failpoint SIGSTOPs it) past the TTL; the peer takes the group and places
/// the instance itself; woken, the old holder's write arrives with a deposed token and MongoDB
/// refuses it — counted, never applied, one server.
async fn paused_mid_write(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut paused = cluster.service_with_env(
        "scheduler",
        "scheduler-1",
        &[(
            "PREXORCLOUD_FAILPOINTS",
            "scheduler.before-placement-write=stop",
        )],
    )?;
    paused.wait_ready(READY_WITHIN).await?;
    insert_group(cluster, group_doc("lobby", 1, &[])?).await?;
    let deadline = std::time::Instant::now() + READY_WITHIN;
    while !is_stopped(paused.pid()) {
        ensure!(
            std::time::Instant::now() < deadline,
            "scheduler-1 never reached the failpoint:\n{}",
            paused.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deposed = fence_mark(cluster, "group:lobby").await?;

    let mut peer = cluster.service("scheduler", "scheduler-2", "")?;
    peer.wait_ready(READY_WITHIN).await?;
    let placed = running(cluster, &["lobby-1"]).await?.remove(0);
    let token = placed.get_document("_fence")?.get_i64("token")?;
    ensure!(
        token > deposed,
        "the peer placed lobby-1 under a newer token"
    );

    paused.signal(libc::SIGCONT);
    let deadline = std::time::Instant::now() + READY_WITHIN;
    loop {
        let stale = paused
            .metric("prexor_fenced_writes_total{result=\"stale\"}")
            .await
            .unwrap_or(0.0);
        if stale >= 1.0 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the woken holder's write was never refused:\n{}",
            paused.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = running(cluster, &["lobby-1"]).await?.remove(0);
    ensure!(
        now.get_str("planHash")? == placed.get_str("planHash")?,
        "the stale placement was not applied: {now:?}"
    );
    let journal = process_journal(cluster, &["node-1"])?;
    let launches = journal.iter().filter(|e| e.event == "launch").count();
    ensure!(launches == 1, "one server: {journal:?}");
    prexor_acceptance::invariants(cluster, &["node-1"]).await?;

    stop_all([&mut paused], EXIT_WITHIN).await?;
    fleet.stop_with(&mut peer).await
}

scenario_tests! {
    a_paused_holder_wakes_up_fenced_off: gc_pause,
    a_write_delayed_past_the_ttl_is_refused_by_the_fence: paused_mid_write,
}
