//! Servers outlive their daemon and stay apart from it (docs/daemon-protocol.md, "Shims and
//! adoption", "Isolation"): a daemon killed, stopped for longer than the node-lost window, or
//! replaced by another binary finds its servers again through their shims, with the same pids
//! and a working console; a server that ended meanwhile is reported with its real exit code;
//! servers cannot read the node's key, its fencing marks, each other's directories or the
//! daemon's environment; and a server past its memory limit is killed by the kernel and
//! reported so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Fleet, Operators, Proc, ProcessEntry, Rest, binary, control, enrolled_daemon,
    group_doc, insert_group, operators, process_journal, running, scenario_tests, wait_doc,
};
use prexor_testkit::eventually;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(60);

/// A CA, two gateways, the daemons of `nodes`, an api and a scheduler.
struct Setup {
    fleet: Fleet,
    api: Proc,
    scheduler: Proc,
    rest: Rest,
}

impl Setup {
    async fn start(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<Setup> {
        let mut fleet = control(cluster).await?;
        let ports = fleet.daemon_ports();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        for node in nodes {
            fleet
                .daemons
                .push(enrolled_daemon(cluster, node, &ports).await?);
        }
        let Operators {
            api,
            mut schedulers,
            rest,
        } = operators(cluster, 1).await?;
        Ok(Setup {
            fleet,
            api,
            scheduler: schedulers.remove(0),
            rest,
        })
    }

    /// Starts node `node`'s daemon again (its certificate is on disk), as `name`.
    async fn daemon(&self, cluster: &Cluster, name: &str, node: &str) -> anyhow::Result<Proc> {
        let ports = self.fleet.daemon_ports();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        let mut daemon = cluster.daemon(name, node, node, &ports, None, &[])?;
        daemon.wait_ready(WITHIN).await?;
        Ok(daemon)
    }

    /// Checks the journals of `nodes` and stops everything.
    async fn finish(mut self, cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<()> {
        self.fleet
            .finish(cluster, nodes, [&mut self.api], &mut self.scheduler)
            .await
    }
}

fn reported_pid(doc: &Document) -> i32 {
    doc.get_document("reported")
        .and_then(|r| r.get_i32("pid"))
        .unwrap_or(0)
}

fn pids(docs: &[Document]) -> Vec<i32> {
    docs.iter().map(reported_pid).collect()
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
}

/// Types `command` into `instance`'s console through the API and returns the output lines up
/// to the first that contains `last`.
async fn console(
    rest: &Rest,
    instance: &str,
    command: &str,
    last: &str,
) -> anyhow::Result<Vec<String>> {
    let mut stream = rest
        .sse(&format!("/instances/{instance}/console?lines=0"), None)
        .await?;
    let (status, body) = rest
        .post(
            &format!("/instances/{instance}/command"),
            json!({ "command": command }),
        )
        .await?;
    ensure!(status == 204, "{command:?} to {instance}: {status} {body}");
    let deadline = Instant::now() + WITHIN;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = stream
            .next(left)
            .await
            .with_context(|| format!("{instance}'s answer to {command:?}: {lines:?}"))?;
        let line = serde_json::from_str::<serde_json::Value>(&event.data)
            .ok()
            .and_then(|v| v["line"].as_str().map(str::to_owned))
            .unwrap_or(event.data);
        let done = line.contains(last);
        lines.push(line);
        if done {
            return Ok(lines);
        }
    }
}

/// The crash record of `instance` under `plan`, once the gateway stored it.
async fn crash_of(cluster: &Cluster, instance: &str, plan: &str) -> anyhow::Result<Document> {
    wait_doc(
        cluster,
        "crashes",
        &format!("{instance}@{plan}"),
        "recorded",
        |_| true,
    )
    .await
}

/// Launches in the journals per instance.
fn launches(entries: &[ProcessEntry]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.event == "launch") {
        *counts.entry(entry.instance.clone()).or_default() += 1;
    }
    counts
}

/// Watches `ids` until the returned flag is set: every sample must find them RUNNING (the
/// record and the node's report); the first that does not is the error.
fn keep_watching(
    cluster: &Cluster,
    ids: &[&str],
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<anyhow::Result<usize>>,
) {
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let stores = cluster.stores.clone();
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let task = tokio::spawn(async move {
        let db = stores.mongo().await?;
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            for id in &ids {
                let doc = db
                    .collection::<Document>("instances")
                    .find_one(doc! { "_id": id })
                    .await?
                    .with_context(|| format!("{id} is gone"))?;
                let reported = doc
                    .get_document("reported")
                    .and_then(|r| r.get_str("state"))
                    .unwrap_or("");
                ensure!(
                    doc.get_str("state") == Ok("RUNNING") && reported == "RUNNING",
                    "{id} left RUNNING while its daemon was away: {doc:?}"
                );
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(samples)
    });
    (done, task)
}

async fn killed_daemon_adopts(cluster: &Cluster) -> anyhow::Result<()> {
    let mut setup = Setup::start(cluster, &["node-1"]).await?;
    insert_group(cluster, group_doc("g", 2, &[])?).await?;
    let before = pids(&running(cluster, &["g-1", "g-2"]).await?);
    ensure!(before.iter().all(|p| *p > 0), "{before:?}");
    let _ = console(
        &setup.rest,
        "g-1",
        "echo before-the-restart",
        "before-the-restart",
    )
    .await?;

    let (done, watcher) = keep_watching(cluster, &["g-1", "g-2"]);
    let mut old = setup.fleet.daemons.remove(0);
    old.kill();
    ensure!(
        before.iter().all(|p| alive(*p)),
        "the servers outlived the daemon"
    );
    let daemon = setup.daemon(cluster, "daemon-node-1-b", "node-1").await?;
    let after = pids(&running(cluster, &["g-1", "g-2"]).await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::SeqCst);
    let samples = watcher.await??;
    ensure!(samples > 5, "the records were watched ({samples} samples)");
    ensure!(
        before == after,
        "the same processes run: {before:?} then {after:?}"
    );
    ensure!(
        daemon
            .log_text()
            .matches("adopted a running server")
            .count()
            == 2,
        "the new daemon adopted both servers:\n{}",
        daemon.log_text()
    );
    let journal = process_journal(cluster, &["node-1"])?;
    ensure!(
        launches(&journal).values().all(|n| *n == 1),
        "no second launch: {journal:?}"
    );

    // The console works through the API: input reaches the adopted server, its output comes
    // back.
    let lines = console(
        &setup.rest,
        "g-1",
        "echo after-the-restart",
        "after-the-restart",
    )
    .await?;
    ensure!(!lines.is_empty());
    setup.fleet.daemons.push(daemon);
    setup.finish(cluster, &["node-1"]).await
}

async fn exit_while_away_is_reported(cluster: &Cluster) -> anyhow::Result<()> {
    let mut setup = Setup::start(cluster, &["node-1"]).await?;
    insert_group(cluster, group_doc("g", 1, &[])?).await?;
    let first = running(cluster, &["g-1"]).await?.remove(0);
    let (plan, pid) = (first.get_str("planHash")?.to_owned(), reported_pid(&first));

    let mut old = setup.fleet.daemons.remove(0);
    old.kill();
    prexor_testkit::signal(pid as u32, libc::SIGKILL);
    eventually("the server's end", WITHIN, async || {
        Ok((!alive(pid)).then_some(()))
    })
    .await?;
    let daemon = setup.daemon(cluster, "daemon-node-1-b", "node-1").await?;
    let crash = crash_of(cluster, "g-1", &plan).await?;
    ensure!(
        crash.get_i32("exitCode") == Ok(137)
            && crash
                .get_str("detail")
                .is_ok_and(|d| d.contains("signal 9")),
        "the crash carries the real exit code: {crash:?}"
    );
    ensure!(
        crash.get_array("logTail").is_ok_and(|tail| tail
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("Done (")))),
        "and the server's last output: {crash:?}"
    );
    let healed = running(cluster, &["g-1"]).await?.remove(0);
    ensure!(
        healed.get_str("planHash")? != plan && reported_pid(&healed) != pid,
        "the scheduler healed g-1: {healed:?}"
    );
    setup.fleet.daemons.push(daemon);
    setup.finish(cluster, &["node-1"]).await
}

async fn long_absence_stops_the_adopted_strays(cluster: &Cluster) -> anyhow::Result<()> {
    let mut setup = Setup::start(cluster, &["node-1"]).await?;
    insert_group(cluster, group_doc("g", 2, &[])?).await?;
    let originals = pids(&running(cluster, &["g-1", "g-2"]).await?);
    let ports = setup.fleet.daemon_ports();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    setup
        .fleet
        .daemons
        .push(enrolled_daemon(cluster, "node-2", &ports).await?);

    // node-1 is away past the node-lost window: its instances are replaced on node-2.
    let mut old = setup.fleet.daemons.remove(0);
    old.kill();
    let replaced = eventually(
        "replacements on node-2",
        Duration::from_secs(120),
        async || {
            let docs = running(cluster, &["g-1", "g-2"]).await?;
            let moved = docs.iter().all(|d| {
                d.get_document("reported")
                    .and_then(|r| r.get_str("nodeId"))
                    .is_ok_and(|n| n == "node-2")
            });
            Ok(moved.then_some(docs))
        },
    )
    .await?;
    ensure!(
        originals.iter().all(|p| alive(*p)),
        "the originals still run on the absent node"
    );

    // node-1 returns: its adopted originals are strays, stopped; the replacements stay.
    let daemon = setup.daemon(cluster, "daemon-node-1-b", "node-1").await?;
    eventually("the strays stopped", WITHIN, async || {
        Ok(originals.iter().all(|p| !alive(*p)).then_some(()))
    })
    .await?;
    let now = pids(&running(cluster, &["g-1", "g-2"]).await?);
    ensure!(
        now == pids(&replaced),
        "the replacements kept running: {now:?}"
    );
    let db = cluster.stores.mongo().await?;
    eventually("no stray left", WITHIN, async || {
        let left = db
            .collection::<Document>("stray_instances")
            .count_documents(doc! {})
            .await?;
        Ok((left == 0).then_some(()))
    })
    .await?;
    // Both daemons run on this one host: no two live processes ever shared a port.
    let journal = process_journal(cluster, &["node-1", "node-2"])?;
    let mut live: BTreeMap<u32, &ProcessEntry> = BTreeMap::new();
    for entry in &journal {
        if entry.event == "launch" {
            if let Some(other) = live.get(&entry.port) {
                bail!("{entry:?} launched on the port of {other:?}");
            }
            live.insert(entry.port, entry);
        } else {
            live.retain(|_, e| !(e.node == entry.node && e.pid == entry.pid));
        }
    }
    setup.fleet.daemons.push(daemon);
    let Setup {
        mut fleet,
        mut api,
        mut scheduler,
        ..
    } = setup;
    prexor_acceptance::stop_all([&mut api], Duration::from_secs(20)).await?;
    fleet.stop_with(&mut scheduler).await
}

async fn a_replaced_binary_adopts(cluster: &Cluster) -> anyhow::Result<()> {
    let mut setup = Setup::start(cluster, &["node-1"]).await?;
    // The daemon runs from a copy of its binary, as an installed daemon runs from
    // /usr/local/bin; its certificate is on disk from the enrolment.
    setup
        .fleet
        .daemons
        .remove(0)
        .stop(Duration::from_secs(20))
        .await?;
    let installed = cluster.dir.join("bin").join("prexor-daemon");
    std::fs::create_dir_all(installed.parent().context("bin dir")?)?;
    std::fs::copy(binary("prexor-daemon")?, &installed)?;
    let ports = setup.fleet.daemon_ports();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let launch = || -> anyhow::Result<prexor_testkit::Launch> {
        Ok(cluster
            .daemon_launch("daemon-node-1-installed", "node-1", "node-1", &ports, None)?
            .binary_path(&installed))
    };
    let mut first = cluster.start(launch()?)?;
    first.wait_ready(WITHIN).await?;
    insert_group(cluster, group_doc("g", 2, &[])?).await?;
    let before = pids(&running(cluster, &["g-1", "g-2"]).await?);

    // The upgrade: a rebuilt binary (different bytes) replaces the file while its shims run
    // from the old one, then the daemon restarts.
    let staged = installed.with_extension("new");
    let mut rebuilt = std::fs::read(binary("prexor-daemon")?)?;
    rebuilt.extend_from_slice(b"\0rebuilt for the upgrade test\0");
    std::fs::write(&staged, &rebuilt)?;
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&staged, &installed)?;
    first.stop(Duration::from_secs(20)).await?;
    let mut second = cluster.start(launch()?)?;
    second.wait_ready(WITHIN).await?;
    let after = pids(&running(cluster, &["g-1", "g-2"]).await?);
    ensure!(
        before == after,
        "adopted across the upgrade: {before:?} then {after:?}"
    );
    ensure!(
        second
            .log_text()
            .matches("adopted a running server")
            .count()
            == 2,
        "{}",
        second.log_text()
    );
    let _ = console(&setup.rest, "g-2", "echo upgraded", "upgraded").await?;
    setup.fleet.daemons.push(second);
    setup.finish(cluster, &["node-1"]).await
}

async fn servers_are_isolated(cluster: &Cluster) -> anyhow::Result<()> {
    let setup = Setup::start(cluster, &["node-1"]).await?;
    insert_group(cluster, group_doc("g", 2, &[])?).await?;
    running(cluster, &["g-1", "g-2"]).await?;
    let data = cluster.dir.join("node-1");
    let servers = cluster.dir.join("node-1-servers");
    let rest = &setup.rest;

    let read = async |instance: &str, path: &std::path::Path| -> anyhow::Result<String> {
        let lines = console(
            rest,
            instance,
            &format!("read {}", path.display()),
            &format!("READ {}:", path.display()),
        )
        .await?;
        Ok(lines.last().cloned().unwrap_or_default())
    };
    // The check itself works: a server reads its own directory.
    let own = read("g-1", &servers.join("g-1")).await?;
    ensure!(own.contains(": ok"), "g-1 reads its own directory: {own}");
    for (what, path) in [
        ("the node key", data.join("certs").join("node.key")),
        ("the fencing marks", data.join("fences.json")),
        ("the daemon's data directory", data.clone()),
        ("another instance's directory", servers.join("g-2")),
    ] {
        ensure!(path.exists(), "{} exists", path.display());
        let answer = read("g-1", &path).await?;
        ensure!(
            answer.contains("denied"),
            "a server cannot read {what}: {answer}"
        );
    }

    let env = console(rest, "g-1", "env", "ENV END").await?;
    let keys: Vec<&str> = env
        .iter()
        .filter_map(|l| l.split_once("ENV ").map(|(_, kv)| kv))
        .filter(|kv| *kv != "END")
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "SERVER_PORT",
        "PREXOR_INSTANCE_ID",
        "PREXOR_GROUP",
        "PREXOR_NODE_ID",
        // The plan's own: the instance's workload API token.
        "PREXOR_INSTANCE_TOKEN",
    ];
    ensure!(
        !keys.is_empty() && keys.iter().all(|k| allowed.contains(k)),
        "the environment is the plan's only: {keys:?}"
    );

    let uid = async |instance: &str| -> anyhow::Result<String> {
        let lines = console(rest, instance, "whoami", "UID ").await?;
        Ok(lines.last().cloned().unwrap_or_default())
    };
    let (first, second) = (uid("g-1").await?, uid("g-2").await?);
    ensure!(
        first != "UID 0" && second != "UID 0" && first != second,
        "each server runs as its own unprivileged user: {first} / {second}"
    );
    let (status, node) = rest.get("/nodes/node-1").await?;
    ensure!(
        status == 200
            && node["isolation"]["runAs"]
                .as_str()
                .is_some_and(|r| r.contains("uid")),
        "the node shows how its servers run: {node}"
    );
    setup.finish(cluster, &["node-1"]).await
}

async fn memory_limit_kills(cluster: &Cluster) -> anyhow::Result<()> {
    let setup = Setup::start(cluster, &["node-1"]).await?;
    let node = wait_doc(cluster, "nodes", "node-1", "with its isolation", |d| {
        d.get_document("isolation").is_ok()
    })
    .await?;
    let isolation = node.get_document("isolation")?;
    if !isolation.get_bool("resourceLimits").unwrap_or(false) {
        eprintln!(
            "SKIPPED: this host offers the daemon no cgroup memory limits ({})",
            isolation.get_str("limits").unwrap_or("?")
        );
        return setup.finish(cluster, &["node-1"]).await;
    }
    let mut group = group_doc("g", 1, &[])?;
    group.get_document_mut("spec")?.insert("memoryMb", 64_i64);
    insert_group(cluster, group).await?;
    let first = running(cluster, &["g-1"]).await?.remove(0);
    let plan = first.get_str("planHash")?.to_owned();
    let (status, body) = setup
        .rest
        .post("/instances/g-1/command", json!({ "command": "alloc 400" }))
        .await?;
    ensure!(status == 204, "{status} {body}");
    let crash = crash_of(cluster, "g-1", &plan).await?;
    ensure!(
        crash
            .get_str("detail")
            .is_ok_and(|d| d.contains("out of memory")),
        "reported as killed for its memory: {crash:?}"
    );
    setup.finish(cluster, &["node-1"]).await
}

scenario_tests! {
    a_killed_daemon_adopts_its_servers_with_the_same_pids: killed_daemon_adopts,
    a_server_that_ends_while_its_daemon_is_down_is_reported_with_its_exit_code: exit_while_away_is_reported,
    servers_replaced_during_a_long_absence_are_stopped_as_strays_on_return: long_absence_stops_the_adopted_strays,
    a_replaced_daemon_binary_adopts_the_servers: a_replaced_binary_adopts,
    servers_see_neither_the_node_key_nor_each_other_nor_the_daemon_environment: servers_are_isolated,
    a_server_past_its_memory_limit_is_killed_and_reported: memory_limit_kills,
}
