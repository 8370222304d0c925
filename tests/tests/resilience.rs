//! Faults around running game servers: Valkey restarted without persistence, a daemon's
//! connection blipping for less than the disconnect grace, and a rolling restart of every
//! control-plane replica under operator writes. After each: no server restarted or ran twice
//! (the daemons' process journals), nothing marked crashed, every acknowledged write present.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::fault::{Fault, FaultProxy};
use prexor_acceptance::{
    Cluster, Proc, Rest, control, count_docs, enrolled_daemon, fence_mark, group_doc, holder_of,
    insert_group, nodes, process_journal, running_plans, scenario_tests, schedulers,
};
use prexor_testkit::ValkeyServer;
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// Every instance still runs its first plan, nothing crashed, and the journals show one launch
/// per instance (each scenario ends with `invariants`, which checks for double runs).
async fn untouched(
    cluster: &Cluster,
    before: &BTreeMap<String, String>,
    nodes: &[&str],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = before.keys().map(String::as_str).collect();
    let after = running_plans(cluster, &ids).await?;
    ensure!(
        after == *before,
        "instances were placed again: {before:?} → {after:?}"
    );
    let crashed = count_docs(cluster, "instances", doc! { "state": "CRASHED" }).await?;
    ensure!(crashed == 0, "{crashed} instances marked crashed");
    let journal = process_journal(cluster, nodes)?;
    let launches = journal.iter().filter(|e| e.event == "launch").count();
    ensure!(
        launches == before.len(),
        "one launch per instance: {journal:?}"
    );
    Ok(())
}

async fn valkey_restart(cluster: &Cluster, valkey: &mut ValkeyServer) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    for (name, min) in [("alpha", 2), ("beta", 1)] {
        insert_group(cluster, group_doc(name, min, &[])?).await?;
    }
    let mut schedulers = schedulers(cluster, 2).await?;
    let before = running_plans(cluster, &["alpha-1", "alpha-2", "beta-1"]).await?;
    let marks_before = [
        fence_mark(cluster, "group:alpha").await?,
        fence_mark(cluster, "group:beta").await?,
    ];

    // Every key is gone: leases, node ownership, the store id.
    valkey.restart()?;
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let marks = [
            fence_mark(cluster, "group:alpha").await?,
            fence_mark(cluster, "group:beta").await?,
        ];
        let held = holder_of(&schedulers, "group:alpha").await?.is_some()
            && holder_of(&schedulers, "group:beta").await?.is_some();
        if held && marks[0] > marks_before[0] && marks[1] > marks_before[1] {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the groups were not re-acquired with higher tokens: {marks_before:?} → {marks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for scheduler in &mut schedulers {
        scheduler.wait_ready(READY_WITHIN).await?;
    }
    untouched(cluster, &before, &["node-1", "node-2"]).await?;

    let mut last = schedulers.pop().context("a scheduler")?;
    fleet
        .finish(cluster, &["node-1", "node-2"], &mut schedulers, &mut last)
        .await
}

#[tokio::test]
async fn a_valkey_restart_loses_leases_but_no_server() {
    let mut valkey = ValkeyServer::start().unwrap();
    let mut cluster = Cluster::new("valkey_restart").unwrap();
    cluster.stores.valkey_url = valkey.url();
    valkey_restart(&cluster, &mut valkey).await.unwrap();
}

async fn node_state(cluster: &Cluster, node: &str) -> String {
    let found = match cluster.stores.mongo().await {
        Ok(db) => db
            .collection::<Document>("nodes")
            .find_one(doc! { "_id": node })
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    found
        .and_then(|d| d.get_str("state").ok().map(str::to_owned))
        .unwrap_or_default()
}

async fn blip(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = control(cluster).await?;
    // The daemon reaches both gateways only through fault proxies.
    let mut proxies = Vec::new();
    for port in fleet.daemon_ports() {
        proxies.push(FaultProxy::start(port.parse()?).await?);
    }
    let dial: Vec<String> = proxies.iter().map(FaultProxy::addr).collect();
    let dial: Vec<&str> = dial.iter().map(String::as_str).collect();
    fleet
        .daemons
        .push(enrolled_daemon(cluster, "node-1", &dial).await?);
    insert_group(cluster, group_doc("lobby", 2, &[])?).await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    let before = running_plans(cluster, &["lobby-1", "lobby-2"]).await?;

    // Cut for a few seconds: well inside the 20 s disconnect grace.
    for proxy in &proxies {
        proxy.set(Fault::Reset);
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    while node_state(cluster, "node-1").await == "ONLINE" {
        ensure!(
            Instant::now() < deadline,
            "the gateways never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for proxy in &proxies {
        proxy.set(Fault::None);
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    while node_state(cluster, "node-1").await != "ONLINE" {
        ensure!(Instant::now() < deadline, "the daemon did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    untouched(cluster, &before, &["node-1"]).await?;

    prexor_acceptance::invariants(cluster, &["node-1"]).await?;
    fleet.stop_with(&mut scheduler).await
}

/// What the operator's writes saw while replicas restarted.
#[derive(Default)]
struct Writes {
    acknowledged: Vec<String>,
    unauthorized: Vec<String>,
    attempts: usize,
}

/// Creates a MANUAL group every 100 ms through whichever api replica answers (as a client
/// behind a load balancer would), until `stop` is set.
fn operator(apis: Arc<Mutex<Vec<Rest>>>, writes: Arc<Mutex<Writes>>, stop: Arc<Mutex<bool>>) {
    tokio::spawn(async move {
        let spec = match group_doc("op", 0, &[]) {
            Ok(doc) => {
                let mut spec: Value =
                    serde_json::to_value(doc.get_document("spec").cloned().unwrap_or_default())
                        .unwrap_or_default();
                spec["scaling"] = json!("MANUAL");
                spec
            }
            Err(_) => return,
        };
        let mut n = 0;
        while !*stop.lock().expect("stop lock") {
            n += 1;
            let name = format!("op-{n}");
            let targets = apis.lock().expect("apis lock").clone();
            for rest in targets.iter().cycle().skip(n).take(targets.len()) {
                writes.lock().expect("writes lock").attempts += 1;
                match rest
                    .post("/groups", json!({ "name": &name, "spec": &spec }))
                    .await
                {
                    Ok((201, _)) => {
                        writes
                            .lock()
                            .expect("writes lock")
                            .acknowledged
                            .push(name.clone());
                        break;
                    }
                    Ok((401, body)) => {
                        writes
                            .lock()
                            .expect("writes lock")
                            .unauthorized
                            .push(format!("{name}: {body}"));
                        break;
                    }
                    // 409: an earlier try went through before its answer was lost.
                    Ok((409, _)) => break,
                    // The replica is restarting: the other one takes it.
                    _ => continue,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

async fn rolling_restart(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    let password = cluster.bootstrap_admin("admin")?;
    let mut apis = [
        cluster.service("api", "api-1", "")?,
        cluster.service("api", "api-2", "")?,
    ];
    let mut schedulers = vec![
        cluster.service("scheduler", "scheduler-1", "")?,
        cluster.service("scheduler", "scheduler-2", "")?,
    ];
    for proc in apis.iter_mut().chain(schedulers.iter_mut()) {
        proc.wait_ready(READY_WITHIN).await?;
    }
    let token = apis[0].login("admin", &password).await?;
    insert_group(cluster, group_doc("lobby", 2, &[])?).await?;
    let before = running_plans(cluster, &["lobby-1", "lobby-2"]).await?;

    let targets = Arc::new(Mutex::new(
        apis.iter().map(|a| a.rest(&token)).collect::<Vec<_>>(),
    ));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(Mutex::new(false));
    operator(targets.clone(), writes.clone(), stop.clone());

    // One replica at a time: SIGTERM, start it again with the same identity, wait until ready.
    let restart = |old: &Proc, kind: &str, extra: String| -> anyhow::Result<Proc> {
        cluster.service(kind, &old.name, &extra)
    };
    for (i, api) in apis.iter_mut().enumerate() {
        api.stop(EXIT_WITHIN).await?;
        let mut fresh = restart(api, "api", String::new())?;
        fresh.wait_ready(READY_WITHIN).await?;
        targets.lock().expect("targets lock")[i] = fresh.rest(&token);
        *api = fresh;
    }
    for i in 0..fleet.gateways.len() {
        let port = fleet.gateways[i]
            .daemon_port
            .clone()
            .context("daemon port")?;
        fleet.gateways[i].stop(EXIT_WITHIN).await?;
        // The same daemon port: daemons dial the addresses they were configured with.
        let mut fresh = restart(
            &fleet.gateways[i],
            "gateway",
            format!("[gateway]\ndaemonListen = \"{port}\"\n"),
        )?;
        fresh.daemon_port = Some(port);
        fresh.wait_ready(READY_WITHIN).await?;
        fleet.gateways[i] = fresh;
    }
    for scheduler in &mut schedulers {
        scheduler.stop(EXIT_WITHIN).await?;
        let mut fresh = restart(scheduler, "scheduler", String::new())?;
        fresh.wait_ready(READY_WITHIN).await?;
        *scheduler = fresh;
    }
    fleet.ca.stop(EXIT_WITHIN).await?;
    let mut ca = restart(&fleet.ca, "ca", cluster.ca_extra("ca-1"))?;
    ca.wait_ready(READY_WITHIN).await?;
    fleet.ca = ca;
    *stop.lock().expect("stop lock") = true;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let writes = std::mem::take(&mut *writes.lock().expect("writes lock"));
    ensure!(
        writes.unauthorized.is_empty(),
        "sessions survive every restart: {:?}",
        writes.unauthorized
    );
    ensure!(
        writes.acknowledged.len() >= 10,
        "the operator kept writing ({} acknowledged of {} tries)",
        writes.acknowledged.len(),
        writes.attempts
    );
    // Every group, in pages of 1000 (the most one page holds).
    let listed = apis[1].rest(&token).client().groups().await?;
    let names: Vec<&str> = listed.iter().map(|g| g.name.as_str()).collect();
    for name in &writes.acknowledged {
        ensure!(
            names.contains(&name.as_str()),
            "acknowledged {name} is gone"
        );
    }
    untouched(cluster, &before, &["node-1", "node-2"]).await?;

    let mut last = schedulers.pop().context("a scheduler")?;
    let others = apis.iter_mut().chain(&mut schedulers);
    fleet
        .finish(cluster, &["node-1", "node-2"], others, &mut last)
        .await
}

scenario_tests! {
    a_connection_blip_shorter_than_the_grace_restarts_nothing: blip,
    a_rolling_restart_of_every_replica_restarts_no_server_and_loses_no_write: rolling_restart,
}
