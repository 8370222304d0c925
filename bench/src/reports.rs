//! Report delivery under the conflict that once lost a report: a rolling deployment of a
//! 4-instance STATIC group whose lease holder freezes (SIGSTOP) right after the deployment
//! starts. A frozen holder's open transaction keeps the instance documents it wrote locked, so
//! every report write of the gateways meets a write conflict; that happens only when the freeze
//! lands inside a transaction, so here the gateways' report writes are made to fail the same way
//! for the whole freeze (the `gateway.report-write` failpoint, a file the benchmark creates and
//! removes). Reported: the reports the daemon sent again, the store retries, the time from the
//! deployment's start to DONE, and the reports lost (the goal: 0): instances whose record
//! disagrees with the node's own journal once everything settled, plus any report the daemon
//! still holds unacknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prexor_client::{GroupSpec, NewDeployment};
use prexor_testkit::eventually;
use serde_json::{Value, json};

use crate::Servers;
use crate::procs::{NodeFleet, Proc, Scratch, binary, ready, replica};
use crate::report::Metric;

const NODE: &str = "conflict-node";
const INSTANCES: i64 = 4;

pub async fn conflict(servers: &Servers, rounds: usize, freeze: Duration) -> anyhow::Result<()> {
    let servers = &servers.fresh("reports");
    let dir = Scratch::new("reports")?;
    let store = servers.store().await?;
    let conflict = dir.0.join("report-write.conflict");
    let armed = format!("gateway.report-write=fail-while:{}", conflict.display());
    let fleet = NodeFleet::start(
        servers,
        &dir.0,
        NODE,
        &[("PREXORCLOUD_FAILPOINTS", armed.as_str())],
    )
    .await?;
    let (gateways, daemon) = (&fleet.gateways, &fleet.daemon);
    let api = ready(replica(servers, &dir.0, "api", "api-conflict", "")?).await?;
    let schedulers = [
        ready(replica(servers, &dir.0, "scheduler", "conflict-a", "")?).await?,
        ready(replica(servers, &dir.0, "scheduler", "conflict-b", "")?).await?,
    ];
    let password = crate::api::bootstrap(&api, &dir.0)?;
    let client = crate::api::login(&api, &password).await?;
    let from = prexor_testkit::free_port();
    let spec: GroupSpec = serde_json::from_value(json!({
        "platform": "fake", "version": "1",
        "command": [binary("prexor-fakeserver")?.display().to_string(), "--port", "{port}"],
        "memoryMb": 64, "portRange": { "from": from, "to": from + 19 },
        "minInstances": INSTANCES, "maxInstances": INSTANCES, "scaling": "STATIC",
    }))?;
    client.create_group("conflict", &spec).await?;
    let instances = store.documents("instances");
    eventually("the group RUNNING", Duration::from_secs(120), async || {
        let running = instances
            .count_documents(
                doc! { "group": "conflict", "state": "RUNNING", "reported.state": "RUNNING" },
            )
            .await?;
        Ok((running == INSTANCES as u64).then_some(()))
    })
    .await?;

    let mut rollouts = Vec::new();
    for round in 1..=rounds {
        let mut next = spec.clone();
        next.env = BTreeMap::from([("VERSION".to_owned(), round.to_string())]);
        let started = Instant::now();
        let new = NewDeployment {
            spec: Some(next),
            ..NewDeployment::default()
        };
        let id = client.create_deployment("conflict", &new).await?.id;
        let holder = holder(&schedulers).await?;
        schedulers[holder].signal(libc::SIGSTOP);
        std::fs::write(&conflict, b"")?;
        let frozen = schedulers[holder].pid();
        let file = conflict.clone();
        let thaw = tokio::spawn(async move {
            tokio::time::sleep(freeze).await;
            let _ = std::fs::remove_file(&file);
            prexor_testkit::signal(frozen, libc::SIGCONT);
        });
        eventually("the rollout DONE", Duration::from_secs(300), async || {
            let shown = client.deployment(&id).await?;
            Ok((shown.state == "DONE").then_some(()))
        })
        .await?;
        thaw.await?;
        rollouts.push(started.elapsed().as_secs_f64());
    }

    // Settled: every report acknowledged, and the records agree with the node's journal.
    let drained = eventually(
        "every report acknowledged",
        Duration::from_secs(60),
        async || Ok((daemon.metric("prexor_daemon_reports_pending").await? == 0.0).then_some(())),
    )
    .await;
    let unacknowledged = daemon.metric("prexor_daemon_reports_pending").await?;
    let disagreeing = disagreements(&store, &dir.0.join(NODE).join("processes.log")).await?;
    let mut retries = 0.0;
    for gateway in gateways.iter() {
        for kind in ["transient", "error"] {
            retries += gateway
                .metric(&format!(
                    "prexor_gateway_store_retries_total{{kind=\"{kind}\"}}"
                ))
                .await?;
        }
    }
    let resent = daemon.metric("prexor_daemon_reports_resent_total").await?;
    let lost = disagreeing as f64 + unacknowledged;
    let scenario = format!(
        "{rounds} rollout(s) of {INSTANCES} instances, holder frozen {freeze:?} at each start"
    );
    for (name, value, unit, target) in [
        (
            "reports lost in the conflict scenario",
            lost,
            "reports",
            "0",
        ),
        (
            "reports re-sent by the daemon in the conflict scenario",
            resent,
            "reports",
            "any: re-sent until acknowledged",
        ),
        (
            "report writes retried by the gateways in the conflict scenario",
            retries,
            "writes",
            "any: retried while the gateway owns the node",
        ),
        (
            "rollout with its holder frozen at the start, start to DONE (median)",
            median(&mut rollouts),
            "s",
            "the freeze (reports wait for the store) + one rollout",
        ),
    ] {
        Metric {
            name: name.into(),
            value,
            unit,
            baseline: None,
            target: Some(format!("{target}; {scenario}")),
        }
        .print();
    }
    drained?;
    anyhow::ensure!(
        lost == 0.0,
        "{lost} report(s) lost: {disagreeing} record(s) disagree with the node's journal, {unacknowledged} unacknowledged"
    );
    Ok(())
}

/// The scheduler holding the group's lease.
async fn holder(schedulers: &[Proc]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, scheduler) in schedulers.iter().enumerate() {
            if scheduler
                .leases_held()
                .await
                .is_ok_and(|held| held.iter().any(|l| l == "group:conflict"))
            {
                return Ok(i);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "nobody holds group:conflict");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// Instances whose record (current plan) disagrees with the journal's last word on that plan:
/// a launch without an exit must be reported RUNNING, an exit STOPPED or CRASHED.
async fn disagreements(
    store: &prexor_store::Store,
    journal: &std::path::Path,
) -> anyhow::Result<usize> {
    let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in std::fs::read_to_string(journal)?.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(instance), Some(event)) = (entry["instance"].as_str(), entry["event"].as_str())
        else {
            continue;
        };
        let plan = entry["planHash"].as_str().unwrap_or_default();
        last.insert((instance.to_owned(), plan.to_owned()), event.to_owned());
    }
    let records: Vec<Document> = store
        .find_all(
            "instances",
            "reading the conflict group",
            doc! { "group": "conflict" },
        )
        .await?;
    let mut wrong = 0;
    for record in &records {
        let id = record.get_str("_id").unwrap_or_default().to_owned();
        let plan = record.get_str("planHash").unwrap_or_default().to_owned();
        let reported = record
            .get_document("reported")
            .ok()
            .filter(|r| r.get_str("planHash") == Ok(plan.as_str()))
            .and_then(|r| r.get_str("state").ok())
            .unwrap_or_default();
        let agrees = match last.get(&(id.clone(), plan.clone())).map(String::as_str) {
            Some("launch") => reported == "RUNNING",
            Some(_) => matches!(reported, "STOPPED" | "CRASHED"),
            None => true,
        };
        let settled = matches!(
            record.get_str("state"),
            Ok("RUNNING" | "STOPPED" | "CRASHED")
        );
        if !agrees || !settled {
            eprintln!(
                "{id} (plan {plan}) disagrees with the node's journal: reported {reported:?}, state {:?}",
                record.get_str("state")
            );
            wrong += 1;
        }
    }
    Ok(wrong)
}
