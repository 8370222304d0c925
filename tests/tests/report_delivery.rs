//! Reports are acknowledged end to end (docs/daemon-protocol.md, "Reports"): a report the
//! gateways cannot store for a minute (every write fails with a transient error, as when a
//! frozen scheduler's open transaction holds the document) lands afterwards and the rolling
//! deployment waiting for it completes; reports still unacknowledged when the daemon restarts
//! arrive after the restart, and the server that outlived the daemon is adopted again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::ensure;
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Fleet, Operators, Proc, control_with_env, deploy_one_by_one, group_doc, insert_group,
    invariants, operators, process_journal, reported_pid, reported_state, running, scenario_tests,
    set_group, stop_all, wait_doc, wait_state, with_version,
};
use prexor_testkit::eventually;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Gateways whose report writes fail while the returned file exists, and a daemon for node-1.
async fn failing_fleet(cluster: &Cluster) -> anyhow::Result<(Fleet, PathBuf)> {
    let switch = cluster.dir.join("report-write.fail");
    let armed = format!("gateway.report-write=fail-while:{}", switch.display());
    let mut fleet = control_with_env(cluster, &[("PREXORCLOUD_FAILPOINTS", &armed)]).await?;
    fleet.enrol(cluster, "node-1").await?;
    Ok((fleet, switch))
}

/// A group spec of fake servers whose stop grace (90 s) outlasts the store failure, so that
/// nothing but the delayed report can move a stopping instance on.
fn patient_spec(name: &str, instances: i64) -> anyhow::Result<Document> {
    let mut group = group_doc(name, instances, &[])?;
    group
        .get_document_mut("spec")?
        .insert("stopGraceSeconds", 90_i64);
    Ok(group)
}

/// The sum of one series over several processes.
async fn total(procs: &[Proc], series: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for proc in procs {
        sum += proc.metric(series).await?;
    }
    Ok(sum)
}

async fn a_minute_of_failed_writes(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, switch) = failing_fleet(cluster).await?;
    let Operators {
        mut api,
        mut schedulers,
        rest,
    } = operators(cluster, 1).await?;
    let mut scheduler = schedulers.remove(0);
    let spec = serde_json::to_value(patient_spec("web", 2)?.get_document("spec")?)?;
    let (status, body) = rest
        .post("/groups", json!({ "name": "web", "spec": spec }))
        .await?;
    ensure!(status == 201, "{status} {body}");
    running(cluster, &["web-1", "web-2"]).await?;

    // From now on no report can be stored, for a minute.
    std::fs::write(&switch, b"")?;
    let failing_since = Instant::now();
    let (id, _) = deploy_one_by_one(&rest, "web", with_version(&spec, "2")).await?;

    // The first outdated instance stops (its daemon sees the exit), but nobody can store that.
    let stopped = eventually("an outdated server's exit", READY_WITHIN, async || {
        Ok(process_journal(cluster, &["node-1"])?
            .into_iter()
            .find(|e| e.event == "exit")
            .map(|e| e.instance))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(failing_since.elapsed())).await;
    let daemon = &fleet.daemons[0];
    ensure!(
        daemon.metric("prexor_daemon_reports_pending").await? >= 1.0,
        "the daemon keeps the unacknowledged report"
    );
    ensure!(
        total(
            &fleet.gateways,
            "prexor_gateway_store_retries_total{kind=\"transient\"}"
        )
        .await?
            >= 1.0,
        "the owning gateway kept retrying the write"
    );
    let record = wait_doc(cluster, "instances", &stopped, "present", |_| true).await?;
    ensure!(
        record.get_str("state") == Ok("STOPPING") && reported_state(&record) != "STOPPED",
        "nothing moved {stopped} on while its report could not be stored: {record:?}"
    );
    let (_, shown) = rest.get(&format!("/deployments/{id}")).await?;
    ensure!(shown["state"] == "ROLLING", "{shown}");

    // The store recovers: the report lands and the rollout completes.
    std::fs::remove_file(&switch)?;
    wait_state(cluster, "deployments", &id, "DONE").await?;
    eventually("every report acknowledged", READY_WITHIN, async || {
        Ok((daemon.metric("prexor_daemon_reports_pending").await? == 0.0).then_some(()))
    })
    .await?;
    ensure!(
        fleet
            .gateways
            .iter()
            .any(|g| g.log_text().contains("is stored after all")),
        "a gateway stored a delayed report"
    );
    invariants(cluster, &["node-1"]).await?;

    // A console command to a node that does not answer gets its answer within the deadline.
    let daemon = &fleet.daemons[0];
    daemon.signal(libc::SIGSTOP);
    let asked = Instant::now();
    let (status, body) = rest
        .post("/instances/web-1/command", json!({ "command": "list" }))
        .await?;
    daemon.signal(libc::SIGCONT);
    ensure!(
        status == 504 || status == 503,
        "a command to a frozen node: {status} {body} after {:?}",
        asked.elapsed()
    );
    fleet.daemons[0].wait_ready(READY_WITHIN).await?;
    stop_all([&mut api], EXIT_WITHIN).await?;
    fleet.stop_with(&mut scheduler).await
}

async fn restart_with_unacknowledged_reports(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, switch) = failing_fleet(cluster).await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    insert_group(cluster, patient_spec("g", 2)?).await?;
    let before = running(cluster, &["g-1", "g-2"]).await?;
    let (crashing_plan, crashing_pid) = (
        before[0].get_str("planHash")?.to_owned(),
        reported_pid(&before[0]),
    );
    let (surviving_plan, surviving_pid) = (
        before[1].get_str("planHash")?.to_owned(),
        reported_pid(&before[1]),
    );
    ensure!(crashing_pid > 0 && surviving_pid > 0, "{before:?}");

    // No report can be stored; g-1's server dies; the daemon keeps the crash report.
    std::fs::write(&switch, b"")?;
    prexor_testkit::signal(crashing_pid as u32, libc::SIGKILL);
    eventually("the crash report queued", READY_WITHIN, async || {
        let pending = fleet.daemons[0]
            .metric("prexor_daemon_reports_pending")
            .await?;
        Ok((pending >= 1.0).then_some(()))
    })
    .await?;

    // The daemon restarts with the report still unacknowledged; g-2's server outlives it.
    let mut old = fleet.daemons.remove(0);
    old.stop(EXIT_WITHIN).await?;
    let mut restarted = fleet.start_daemon(cluster, "daemon-node-1-b", "node-1", None)?;
    restarted.wait_ready(READY_WITHIN).await?;
    ensure!(
        restarted.metric("prexor_daemon_reports_pending").await? >= 1.0,
        "the unacknowledged report survived the restart"
    );
    ensure!(
        restarted.log_text().contains("adopted a running server"),
        "the restarted daemon took g-2's server in:\n{}",
        restarted.log_text()
    );

    // Once the store takes writes again the report arrives: g-1 is recorded CRASHED (its crash
    // record exists) and replaced; g-2 keeps running as the same process.
    std::fs::remove_file(&switch)?;
    wait_doc(
        cluster,
        "crashes",
        &format!("g-1@{crashing_plan}"),
        "recorded",
        |_| true,
    )
    .await?;
    let replaced = running(cluster, &["g-1", "g-2"]).await?;
    ensure!(
        replaced[0].get_str("planHash")? != crashing_plan,
        "g-1 was placed again: {:?}",
        replaced[0]
    );
    ensure!(
        replaced[1].get_str("planHash")? == surviving_plan
            && reported_pid(&replaced[1]) == surviving_pid,
        "g-2 is the same process after the daemon restart: {:?}",
        replaced[1]
    );
    eventually("every report acknowledged", READY_WITHIN, async || {
        Ok((restarted.metric("prexor_daemon_reports_pending").await? == 0.0).then_some(()))
    })
    .await?;

    // The adopted server is stopped like any other (through its shim's console) when its group
    // goes.
    let deleting = doc! { "deleting": true, "updatedAtMs": prexor_domain::now_ms() };
    set_group(cluster, "g", deleting).await?;
    wait_state(cluster, "instances", "g-2", "STOPPED").await?;
    ensure!(
        !std::path::Path::new(&format!("/proc/{surviving_pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{surviving_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "g-2's server process is gone"
    );
    invariants(cluster, &["node-1"]).await?;
    fleet.daemons.push(restarted);
    fleet.stop_with(&mut scheduler).await?;
    drop(old);
    Ok(())
}

scenario_tests! {
    a_report_that_cannot_be_stored_for_a_minute_lands_afterwards_and_the_rollout_completes: a_minute_of_failed_writes,
    reports_unacknowledged_when_the_daemon_restarts_arrive_after_the_restart: restart_with_unacknowledged_reports,
}
