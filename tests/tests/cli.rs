//! `prexorctl` against a running stack (CA, gateways, one api, one scheduler, daemons running the
//! fake server): every operational command is run through the real binary, and its effect is
//! checked through the REST API or MongoDB, not only its exit status. Sign-in and contexts
//! (`login --password-stdin --name`, `context list|use`, `logout`), `status`, `system info`,
//! groups, instances (start, stop, kill, console input and output, crashes), nodes (cordon,
//! join token redeemed by a second daemon, drain, undrain), templates, deployments (wait, pause,
//! resume, rollback), modules, API tokens, users, roles, the audit log, completions, `-o json`
//! and `-o yaml`, and errors that name the problem.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Rest, group_doc, nodes, reported_state, running, stop_all, tar_gz, wait_doc,
};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// A bound for a broken test, not a timing assertion.
const CONDITION_WITHIN: Duration = Duration::from_secs(60);

/// One finished `prexorctl` run.
struct Run {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the real `prexorctl` with its config file in the test's directory.
struct Ctl {
    binary: PathBuf,
    config: PathBuf,
}

impl Ctl {
    fn new(cluster: &Cluster) -> anyhow::Result<Ctl> {
        Ok(Ctl {
            binary: prexor_acceptance::binary("prexorctl")?,
            config: cluster.dir.join("prexorctl.json"),
        })
    }

    /// Starts prexorctl with `args` (its environment is only this test's config file), output
    /// captured.
    fn start(&self, args: &[&str], stdin: Stdio) -> anyhow::Result<Child> {
        Command::new(&self.binary)
            .args(args)
            .env("PREXORCTL_CONFIG", &self.config)
            .env_remove("PREXOR_CONTROLLER")
            .env_remove("PREXOR_TOKEN")
            .env_remove("PREXOR_CONTEXT")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting prexorctl")
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        let piped = if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = self.start(args, piped)?;
        if let Some(input) = stdin {
            // Dropped at the end of the statement: stdin is closed after the input.
            child
                .stdin
                .take()
                .context("prexorctl stdin")?
                .write_all(input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        Ok(Run {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout)?,
            stderr: String::from_utf8(output.stderr)?,
        })
    }

    /// Runs with `stdin` as input; requires exit 0; the standard output.
    fn ok_with(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let run = self.run(args, Some(stdin))?;
        ensure!(
            run.success,
            "prexorctl {args:?} exited with {:?}:\n{}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run.stdout)
    }

    /// Requires exit 0; the standard output.
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = self.run(args, None)?;
        ensure!(
            run.success,
            "prexorctl {args:?} exited with {:?}:\n{}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run.stdout)
    }

    /// Requires a non-zero exit and an explanation on stderr; that explanation.
    fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = self.run(args, None)?;
        ensure!(
            !run.success && !run.stderr.trim().is_empty(),
            "prexorctl {args:?} should have failed with a message; exit {:?}:\n{}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run.stderr)
    }

    /// `args -o json`, parsed.
    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(&[args, &["-o", "json"]].concat())?;
        serde_json::from_str(&out).with_context(|| format!("prexorctl {args:?} -o json: {out}"))
    }

    /// `args -o yaml`, parsed.
    fn yaml(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(&[args, &["-o", "yaml"]].concat())?;
        serde_norway::from_str(&out).with_context(|| format!("prexorctl {args:?} -o yaml: {out}"))
    }

    /// The saved contexts file.
    fn saved(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            &self.config,
        )?)?)
    }
}

/// Polls `probe` until it yields a value.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + CONDITION_WITHIN;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {CONDITION_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a UTF-8 path")
}

fn spec_of(name: &str, min: i64, extra: &[&str]) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(
        group_doc(name, min, extra)?.get_document("spec")?,
    )?)
}

fn with_version(spec: &Value, version: &str) -> Value {
    let mut spec = spec.clone();
    spec["env"] = json!({ "VERSION": version });
    spec
}

async fn find(
    cluster: &Cluster,
    collection: &str,
    filter: Document,
) -> anyhow::Result<Vec<Document>> {
    cluster
        .store()
        .await?
        .find_all(collection, "test", filter)
        .await
        .map_err(Into::into)
}

async fn one(cluster: &Cluster, collection: &str, id: &str) -> anyhow::Result<Option<Document>> {
    Ok(cluster
        .stores
        .mongo()
        .await?
        .collection::<Document>(collection)
        .find_one(doc! { "_id": id })
        .await?)
}

fn has_group(listed: &Value, name: &str) -> bool {
    listed
        .as_array()
        .is_some_and(|groups| groups.iter().any(|g| g["name"] == name))
}

fn pid_of(instance: &Document) -> i64 {
    instance
        .get_document("reported")
        .ok()
        .and_then(|r| {
            r.get_i32("pid")
                .map(i64::from)
                .or_else(|_| r.get_i64("pid"))
                .ok()
        })
        .unwrap_or_default()
}

async fn scenario(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let password = cluster.bootstrap_admin("admin")?;
    let mut api = cluster.service("api", "api-1", "")?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    scheduler.wait_ready(READY_WITHIN).await?;
    let ctl = Ctl::new(cluster)?;
    let ctl = &ctl;
    let dir = &cluster.dir;

    // ---- login --password-stdin --name: the session is saved as the current context.
    let out = ctl.ok_with(
        &[
            "--controller",
            &api.http,
            "login",
            "--password-stdin",
            "--name",
            "local",
        ],
        &format!("{password}\n"),
    )?;
    ensure!(
        out.contains("signed in to") && out.contains("as admin") && out.contains("\"local\""),
        "{out}"
    );
    let saved = ctl.saved()?;
    ensure!(
        saved["current"] == "local"
            && saved["contexts"]["local"]["controller"] == api.http.as_str()
            && saved["contexts"]["local"]["user"] == "admin",
        "{saved}"
    );
    let session = saved["contexts"]["local"]["token"]
        .as_str()
        .context("the context has a session")?
        .to_owned();
    let rest: Rest = api.rest(&session);
    let rest = &rest;
    let (status, me) = rest.get("/auth/me").await?;
    ensure!(status == 200 && me["user"] == "admin", "{status} {me}");
    let bad = ctl.run(
        &[
            "--controller",
            &api.http,
            "login",
            "--password-stdin",
            "--name",
            "x",
        ],
        Some("wrong-password\n"),
    )?;
    ensure!(
        !bad.success && bad.stderr.contains("401"),
        "a wrong password: {:?} {}",
        bad.code,
        bad.stderr
    );
    ensure!(
        ctl.saved()?["contexts"].get("x").is_none(),
        "no context saved for a failed sign-in"
    );

    // ---- status: exit 0 once every replica is ready and measured; lists every replica.
    let table = eventually("prexorctl status exits 0", || async move {
        let run = ctl.run(&["status"], None)?;
        Ok(run.success.then_some(run.stdout))
    })
    .await?;
    for replica in ["api-1", "scheduler-1", "gateway-1", "gateway-2", "ca-1"] {
        ensure!(table.contains(replica), "status lists {replica}:\n{table}");
    }
    ensure!(table.contains("coordination.store = available"), "{table}");
    let status = ctl.json(&["status"])?;
    let kinds: Vec<&str> = status["replicas"]
        .as_array()
        .context("replicas")?
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    for kind in ["api", "scheduler", "gateway", "ca"] {
        ensure!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let status = ctl.yaml(&["status"])?;
    ensure!(status["coordination"]["store"] == "available", "{status}");

    // ---- system info.
    let info = ctl.json(&["system", "info"])?;
    ensure!(
        info["version"] == env!("CARGO_PKG_VERSION")
            && info["replicaId"] == "api-1"
            && info["profile"] == "production"
            && info["clusterId"].as_str().is_some_and(|c| !c.is_empty()),
        "{info}"
    );
    let table = ctl.ok(&["system", "info"])?;
    ensure!(
        table.contains("replicaId") && table.contains("api-1"),
        "{table}"
    );

    // ---- groups apply (create from JSON, update from YAML), list, get.
    let lobby = spec_of("lobby", 1, &["--stop-delay", "500"])?;
    let lobby_file = dir.join("lobby.json");
    std::fs::write(&lobby_file, serde_json::to_string_pretty(&lobby)?)?;
    let out = ctl.ok(&["groups", "apply", "lobby", "-f", path_str(&lobby_file)?])?;
    ensure!(out.contains("group lobby at revision 1"), "{out}");
    let (status, group) = rest.get("/groups/lobby").await?;
    ensure!(
        status == 200 && group["revision"] == 1 && group["spec"]["minInstances"] == 1,
        "{status} {group}"
    );
    let first = running(cluster, &["lobby-1"]).await?.remove(0);

    let mut event = spec_of("event", 0, &[])?;
    event["scaling"] = json!("MANUAL");
    event["maxInstances"] = json!(2);
    let event_file = dir.join("event.json");
    std::fs::write(&event_file, serde_json::to_string(&event)?)?;
    ctl.ok(&["groups", "apply", "event", "-f", path_str(&event_file)?])?;
    event["maxInstances"] = json!(3);
    let event_yaml = dir.join("event.yaml");
    std::fs::write(&event_yaml, serde_norway::to_string(&event)?)?;
    let out = ctl.ok(&["groups", "apply", "event", "-f", path_str(&event_yaml)?])?;
    ensure!(out.contains("group event at revision 2"), "{out}");
    let (_, group) = rest.get("/groups/event").await?;
    ensure!(
        group["revision"] == 2
            && group["spec"]["maxInstances"] == 3
            && group["spec"]["scaling"] == "MANUAL",
        "the YAML update is applied: {group}"
    );

    let table = ctl.ok(&["groups", "list"])?;
    ensure!(
        table.contains("lobby")
            && table.contains("event")
            && table.contains("MANUAL")
            && table.contains("RUNNING=1"),
        "{table}"
    );
    let listed = ctl.json(&["groups", "list"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(2),
        "two groups: {listed}"
    );
    let shown = ctl.json(&["groups", "get", "lobby"])?;
    ensure!(
        shown["name"] == "lobby"
            && shown["revision"] == 1
            && shown["status"]["instances"]["RUNNING"] == 1,
        "{shown}"
    );

    // ---- instances list, get, start, command, console, stop, kill, crashes.
    let listed = ctl.json(&["instances", "list", "--group", "lobby"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1)
            && listed[0]["id"] == "lobby-1"
            && listed[0]["state"] == "RUNNING"
            && listed[0]["nodeId"] == "node-1",
        "{listed}"
    );
    let table = ctl.ok(&["instances", "list", "--state", "running"])?;
    ensure!(
        table.contains("lobby-1") && table.contains("RUNNING"),
        "{table}"
    );
    let shown = ctl.yaml(&["instances", "get", "lobby-1"])?;
    ensure!(
        shown["id"] == "lobby-1"
            && shown["group"] == "lobby"
            && shown["plan"]["env"]["PREXOR_INSTANCE_TOKEN"] == "(hidden)"
            && shown["reported"]["pid"] == pid_of(&first),
        "{shown}"
    );

    let out = ctl.ok(&["instances", "start", "event"])?;
    ensure!(out.contains("places a new instance"), "{out}");
    running(cluster, &["event-1"]).await?;
    let (_, listed) = rest.get("/instances?group=event").await?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["id"] == "event-1",
        "{listed}"
    );

    let out = ctl.ok(&["instances", "command", "lobby-1", "echo", "hello-from-ctl"])?;
    ensure!(out.contains("sent to lobby-1"), "{out}");
    let console = eventually("the echo in the console", || async move {
        let out = ctl.ok(&["instances", "console", "lobby-1", "--lines", "50"])?;
        Ok(out.contains("hello-from-ctl").then_some(out))
    })
    .await?;
    ensure!(console.contains("Done ("), "the history: {console}");
    let err = ctl.fails(&["instances", "command", "lobby-1"])?;
    ensure!(err.contains("give the console line"), "{err}");

    // Stop: a STATIC group starts it again, as a new process.
    let out = ctl.ok(&["instances", "stop", "lobby-1"])?;
    ensure!(out.contains("stop lobby-1"), "{out}");
    let old_pid = pid_of(&first);
    let restarted = wait_doc(cluster, "instances", "lobby-1", "restarted", |d| {
        d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
            && pid_of(d) != old_pid
    })
    .await?;

    // Kill: a MANUAL group leaves it ended.
    let out = ctl.ok(&["instances", "kill", "event-1"])?;
    ensure!(out.contains("kill event-1"), "{out}");
    wait_doc(cluster, "instances", "event-1", "ended", |d| {
        matches!(d.get_str("state"), Ok("STOPPED" | "CRASHED"))
    })
    .await?;
    let (_, active) = rest.get("/instances?group=event&state=running").await?;
    ensure!(active.as_array().is_some_and(Vec::is_empty), "{active}");

    // A crash (the fake server exits 7 on `crash 7`) is recorded, and the group restarts it.
    ctl.ok(&["instances", "command", "lobby-1", "crash", "7"])?;
    let crashes = eventually("a crash record", || async move {
        let found = find(cluster, "crashes", doc! { "instanceId": "lobby-1" }).await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    ensure!(crashes[0].get_i32("exitCode") == Ok(7), "{crashes:?}");
    let listed = ctl.json(&["instances", "crashes", "lobby-1"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["exitCode"] == 7,
        "{listed}"
    );
    let table = ctl.ok(&["instances", "crashes", "lobby-1"])?;
    ensure!(
        table.contains("EXIT CODE") && table.contains("node-1"),
        "{table}"
    );
    let restarted_pid = pid_of(&restarted);
    wait_doc(
        cluster,
        "instances",
        "lobby-1",
        "running after the crash",
        |d| {
            d.get_str("state") == Ok("RUNNING")
                && reported_state(d) == "RUNNING"
                && pid_of(d) != restarted_pid
        },
    )
    .await?;

    // ---- groups delete: the instances stop, then the group is gone.
    let out = ctl.ok(&["groups", "delete", "event"])?;
    ensure!(out.contains("is being deleted"), "{out}");
    eventually("group event removed", || async move {
        let (status, _) = rest.get("/groups/event").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;

    // ---- deployments: create --wait, list, get; pause, resume; rollback.
    let v2 = dir.join("lobby-v2.json");
    std::fs::write(&v2, serde_json::to_string(&with_version(&lobby, "2"))?)?;
    let out = ctl.ok(&[
        "deployments",
        "create",
        "lobby",
        "-f",
        path_str(&v2)?,
        "--wait",
    ])?;
    ensure!(out.contains("done"), "{out}");
    let listed = ctl.json(&["deployments", "list", "lobby"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["state"] == "DONE",
        "{listed}"
    );
    let first_deployment = listed[0]["id"].as_str().context("id")?.to_owned();
    let stored = one(cluster, "deployments", &first_deployment)
        .await?
        .context("the deployment record")?;
    ensure!(stored.get_str("state") == Ok("DONE"), "{stored:?}");
    let target = stored.get_str("targetSpecHash")?.to_owned();
    let lobby_1 = one(cluster, "instances", "lobby-1")
        .await?
        .context("lobby-1")?;
    ensure!(
        lobby_1.get_str("specHash") == Ok(target.as_str())
            && lobby_1.get_str("state") == Ok("RUNNING"),
        "lobby-1 runs the new spec: {lobby_1:?}"
    );
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "2", "{group}");
    let table = ctl.ok(&["deployments", "list", "lobby"])?;
    ensure!(
        table.contains(&first_deployment) && table.contains("DONE"),
        "{table}"
    );
    let shown = ctl.yaml(&["deployments", "get", &first_deployment])?;
    ensure!(
        shown["state"] == "DONE" && shown["live"]["updated"] == 1 && shown["group"] == "lobby",
        "{shown}"
    );

    let v3 = dir.join("lobby-v3.json");
    std::fs::write(&v3, serde_json::to_string(&with_version(&lobby, "3"))?)?;
    let created = ctl.json(&[
        "deployments",
        "create",
        "lobby",
        "-f",
        path_str(&v3)?,
        "--batch-size",
        "1",
        "--max-unavailable",
        "1",
    ])?;
    let second = created["id"].as_str().context("id")?.to_owned();
    ensure!(created["state"] == "ROLLING", "{created}");
    let out = ctl.ok(&["deployments", "pause", &second])?;
    ensure!(
        out.contains(&format!("deployment {second}: PAUSED")),
        "{out}"
    );
    let stored = one(cluster, "deployments", &second)
        .await?
        .context("record")?;
    ensure!(stored.get_str("state") == Ok("PAUSED"), "{stored:?}");
    let err = ctl.fails(&["deployments", "pause", &second])?;
    ensure!(err.contains("409") && err.contains("not ROLLING"), "{err}");
    let resumed = ctl.json(&["deployments", "resume", &second])?;
    ensure!(resumed["state"] == "ROLLING", "{resumed}");
    wait_doc(cluster, "deployments", &second, "DONE", |d| {
        d.get_str("state") == Ok("DONE")
    })
    .await?;
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "3", "{group}");

    let v4 = dir.join("lobby-v4.json");
    std::fs::write(&v4, serde_json::to_string(&with_version(&lobby, "4"))?)?;
    let created = ctl.json(&["deployments", "create", "lobby", "-f", path_str(&v4)?])?;
    let third = created["id"].as_str().context("id")?.to_owned();
    ctl.ok(&["deployments", "pause", &third])?;
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "4", "{group}");
    let rolled = ctl.json(&["deployments", "rollback", &third])?;
    ensure!(
        rolled["rolledBack"] == true && rolled["state"] == "ROLLING",
        "{rolled}"
    );
    let done = wait_doc(cluster, "deployments", &third, "rolled back", |d| {
        d.get_str("state") == Ok("DONE")
    })
    .await?;
    ensure!(done.get_bool("rolledBack") == Ok(true), "{done:?}");
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(
        group["spec"]["env"]["VERSION"] == "3",
        "back on the spec the deployment started from: {group}"
    );
    let back = done.get_str("targetSpecHash")?.to_owned();
    wait_doc(cluster, "instances", "lobby-1", "on version 3", |d| {
        d.get_str("specHash") == Ok(back.as_str())
            && d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
    })
    .await?;

    // ---- nodes list, get, cordon, uncordon.
    let listed = ctl.json(&["nodes", "list"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1)
            && listed[0]["id"] == "node-1"
            && listed[0]["state"] == "ONLINE",
        "{listed}"
    );
    let table = ctl.ok(&["nodes", "list"])?;
    ensure!(
        table.contains("node-1") && table.contains("ONLINE"),
        "{table}"
    );
    let shown = ctl.yaml(&["nodes", "get", "node-1"])?;
    ensure!(
        shown["id"] == "node-1" && shown["labels"]["zone"] == "test" && shown["cordoned"] == false,
        "{shown}"
    );
    let out = ctl.ok(&["nodes", "cordon", "node-1"])?;
    ensure!(out.contains("node node-1 cordoned"), "{out}");
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == true, "{node}");
    ctl.ok(&["nodes", "uncordon", "node-1"])?;
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");

    // ---- nodes join-token: a second daemon enrols with it.
    let token = ctl.ok(&["nodes", "join-token", "node-2", "--ttl", "10m"])?;
    let token = token.trim().to_owned();
    let parsed = prexor_pki::records::JoinToken::parse(&token)
        .with_context(|| format!("a join token: {token:?}"))?;
    ensure!(parsed.node_id == "node-2", "{parsed:?}");
    let stored = find(cluster, "join_tokens", doc! { "node_id": "node-2" }).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(
        stored.len() == 1
            && stored[0]
                .get_i64("expires_at_ms")
                .is_ok_and(|at| { at > now + 9 * 60_000 && at <= now + 10 * 60_000 }),
        "{stored:?}"
    );
    let json_token = ctl.json(&["nodes", "join-token", "node-3", "--ttl", "5m"])?;
    ensure!(
        json_token["nodeId"] == "node-3"
            && json_token["token"]
                .as_str()
                .is_some_and(|t| t.starts_with("pxj1.node-3.")),
        "{json_token}"
    );
    let ports: Vec<String> = fleet
        .gateways
        .iter()
        .filter_map(|g| g.daemon_port.clone())
        .collect();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let mut second_daemon = cluster.daemon(
        "daemon-node-2",
        "node-2",
        "node-2",
        &ports,
        Some(&token),
        &[],
    )?;
    second_daemon.wait_ready(READY_WITHIN).await?;
    fleet.daemons.push(second_daemon);
    wait_doc(cluster, "nodes", "node-2", "ONLINE", |d| {
        d.get_str("state") == Ok("ONLINE")
    })
    .await?;
    let used = find(cluster, "join_tokens", doc! { "node_id": "node-2" }).await?;
    ensure!(
        used.len() == 1 && used[0].get_i64("used_at_ms").is_ok(),
        "the token was redeemed: {used:?}"
    );

    // ---- nodes drain --wait: node-1 ends empty and cordoned, lobby-1 runs on node-2.
    let out = ctl.ok(&["nodes", "drain", "node-1", "--timeout", "30s", "--wait"])?;
    ensure!(out.contains("drain of node-1: DONE"), "{out}");
    let drain = one(cluster, "node_drains", "node-1")
        .await?
        .context("drain")?;
    ensure!(
        drain.get_str("state") == Ok("DONE") && drain.get_i64("timeoutMs") == Ok(30_000),
        "{drain:?}"
    );
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(
        node["cordoned"] == true && node["drain"]["state"] == "DONE",
        "{node}"
    );
    let left = find(
        cluster,
        "instances",
        doc! { "nodeId": "node-1", "state": { "$nin": ["STOPPED", "CRASHED"] } },
    )
    .await?;
    ensure!(left.is_empty(), "still on node-1: {left:?}");
    wait_doc(cluster, "instances", "lobby-1", "RUNNING on node-2", |d| {
        d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
            && d.get_str("nodeId") == Ok("node-2")
    })
    .await?;
    let out = ctl.ok(&["nodes", "undrain", "node-1"])?;
    ensure!(out.contains("uncordoned"), "{out}");
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");
    // An open drain is cancelled by undrain, and `drain --wait` then fails. The scheduler is
    // held still (SIGSTOP, well under the lease TTL) so the drain cannot finish first.
    scheduler.signal(libc::SIGSTOP);
    let waiting = ctl.start(
        &["nodes", "drain", "node-1", "--timeout", "30s", "--wait"],
        Stdio::null(),
    );
    let cancelled = async {
        let waiting = waiting?;
        wait_doc(cluster, "node_drains", "node-1", "PENDING again", |d| {
            d.get_str("state") == Ok("PENDING")
        })
        .await?;
        let out = ctl.ok(&["nodes", "undrain", "node-1"])?;
        anyhow::Ok((waiting, out))
    }
    .await;
    scheduler.signal(libc::SIGCONT);
    let (waiting, out) = cancelled?;
    ensure!(out.contains("drain cancelled"), "{out}");
    let waited = waiting.wait_with_output()?;
    let waited_out = String::from_utf8_lossy(&waited.stdout);
    ensure!(
        !waited.status.success() && waited_out.contains("drain of node-1: CANCELLED"),
        "drain --wait of a cancelled drain: {} {waited_out}{}",
        waited.status,
        String::from_utf8_lossy(&waited.stderr)
    );
    let drain = one(cluster, "node_drains", "node-1")
        .await?
        .context("drain")?;
    ensure!(
        drain.get_str("state") == Ok("CANCELLED") && drain.get_str("cancelledBy") == Ok("admin"),
        "{drain:?}"
    );
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");

    // ---- templates upload, list, get, rollback, delete.
    let layers = [
        tar_gz(&[("server.properties", "motd=one\n")])?,
        tar_gz(&[("server.properties", "motd=two\n")])?,
    ];
    let mut files = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let file = dir.join(format!("base-{}.tar.gz", i + 1));
        std::fs::write(&file, layer)?;
        files.push(file);
    }
    let out = ctl.ok(&["templates", "upload", "base", path_str(&files[0])?])?;
    ensure!(out.contains("version 1 is current"), "{out}");
    let out = ctl.ok(&["templates", "upload", "base", path_str(&files[1])?])?;
    ensure!(out.contains("version 2 is current"), "{out}");
    let stored = one(cluster, "templates", "base")
        .await?
        .context("template")?;
    ensure!(
        stored.get_i64("current") == Ok(2) && stored.get_array("versions")?.len() == 2,
        "{stored:?}"
    );
    let table = ctl.ok(&["templates", "list"])?;
    ensure!(
        table.contains("base") && table.contains("CURRENT"),
        "{table}"
    );
    let listed = ctl.json(&["templates", "list"])?;
    ensure!(
        listed[0]["name"] == "base" && listed[0]["versions"] == 2 && listed[0]["current"] == 2,
        "{listed}"
    );
    let shown = ctl.json(&["templates", "get", "base"])?;
    ensure!(
        shown["current"] == 2 && shown["versions"].as_array().map(Vec::len) == Some(2),
        "{shown}"
    );
    let out = ctl.ok(&["templates", "rollback", "base", "1"])?;
    ensure!(out.contains("version 1 is current"), "{out}");
    let stored = one(cluster, "templates", "base")
        .await?
        .context("template")?;
    ensure!(stored.get_i64("current") == Ok(1), "{stored:?}");
    let (status, bytes) = rest.get_bytes("/templates/base/versions/1/content").await?;
    ensure!(
        status == 200 && bytes == layers[0],
        "version 1's bytes: {status}"
    );
    let err = ctl.fails(&["templates", "rollback", "base", "9"])?;
    ensure!(err.contains("400") && err.contains("no version 9"), "{err}");
    let out = ctl.ok(&["templates", "delete", "base"])?;
    ensure!(out.contains("template base deleted"), "{out}");
    let (status, _) = rest.get("/templates/base").await?;
    ensure!(status == 404, "deleted: {status}");

    // ---- modules upload, install, upgrade, list, get, uninstall, delete.
    for version in ["1.0", "2.0"] {
        let file = dir.join(format!("essentials-{version}.tar.gz"));
        std::fs::write(
            &file,
            tar_gz(&[("plugins/essentials.txt", &format!("essentials {version}\n"))])?,
        )?;
        let out = ctl.ok(&["modules", "upload", "essentials", version, path_str(&file)?])?;
        ensure!(out.contains(&format!("version {version} stored")), "{out}");
    }
    let shown = ctl.json(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "NEW" && shown["versions"].as_array().map(Vec::len) == Some(2),
        "{shown}"
    );
    let out = ctl.ok(&["modules", "install", "essentials", "1.0"])?;
    ensure!(
        out.contains("install of module essentials requested"),
        "{out}"
    );
    wait_doc(cluster, "modules", "essentials", "ACTIVE 1.0", |d| {
        d.get_str("state") == Ok("ACTIVE")
            && d.get_document("active").and_then(|a| a.get_str("version")) == Ok("1.0")
    })
    .await?;
    let out = ctl.ok(&["modules", "upgrade", "essentials", "2.0"])?;
    ensure!(
        out.contains("upgrade of module essentials requested"),
        "{out}"
    );
    wait_doc(cluster, "modules", "essentials", "ACTIVE 2.0", |d| {
        d.get_str("state") == Ok("ACTIVE")
            && d.get_document("active").and_then(|a| a.get_str("version")) == Ok("2.0")
    })
    .await?;
    let table = ctl.ok(&["modules", "list"])?;
    ensure!(
        table.contains("essentials") && table.contains("ACTIVE") && table.contains("2.0"),
        "{table}"
    );
    let shown = ctl.yaml(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "ACTIVE" && shown["active"]["version"] == "2.0",
        "{shown}"
    );
    let err = ctl.fails(&["modules", "delete", "essentials"])?;
    ensure!(
        err.contains("409") && err.contains("uninstall it first"),
        "{err}"
    );
    ctl.ok(&["modules", "uninstall", "essentials"])?;
    wait_doc(cluster, "modules", "essentials", "UNINSTALLED", |d| {
        d.get_str("state") == Ok("UNINSTALLED")
    })
    .await?;
    let out = ctl.ok(&["modules", "delete", "essentials"])?;
    ensure!(out.contains("deletion requested"), "{out}");
    eventually("module essentials deleted", || async move {
        Ok(one(cluster, "modules", "essentials")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let (status, _) = rest.get("/modules/essentials").await?;
    ensure!(status == 404, "{status}");

    // ---- tokens create, list, use with --token, delete.
    let created = ctl.run(
        &[
            "tokens",
            "create",
            "ci",
            "-p",
            "groups:read",
            "--expires-in",
            "1h",
        ],
        None,
    )?;
    ensure!(created.success, "{}{}", created.stdout, created.stderr);
    let api_token = created.stdout.trim().to_owned();
    let token_id = api_token
        .strip_prefix("pxt_")
        .and_then(|t| t.split('_').next())
        .with_context(|| format!("an API token: {api_token:?}"))?
        .to_owned();
    ensure!(
        created.stderr.contains(&format!("id {token_id}")),
        "{}",
        created.stderr
    );
    let stored = one(cluster, "api_tokens", &token_id)
        .await?
        .context("token")?;
    ensure!(
        stored.get_str("owner") == Ok("admin")
            && stored.get_str("name") == Ok("ci")
            && stored.get_i64("expiresAtMs").is_ok()
            && format!("{:?}", stored.get_array("permissions")?) == "[String(\"groups:read\")]",
        "{stored:?}"
    );
    let listed = ctl.json(&["tokens", "list"])?;
    ensure!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|t| t["id"] == token_id.as_str() && t["name"] == "ci")),
        "{listed}"
    );
    let table = ctl.ok(&["tokens", "list", "--owner", "all"])?;
    ensure!(
        table.contains(&token_id) && table.contains("groups:read"),
        "{table}"
    );
    let with_token = ctl.json(&["--token", &api_token, "groups", "list"])?;
    ensure!(has_group(&with_token, "lobby"), "{with_token}");
    let err = ctl.fails(&["--token", &api_token, "nodes", "cordon", "node-1"])?;
    ensure!(err.contains("403") && err.contains("nodes:write"), "{err}");
    // A token that may write groups but not read them: `groups apply` cannot see the current
    // revision, and says so (it must not take the refusal for "no such group" and create it).
    let writer = ctl.json(&["tokens", "create", "writer", "-p", "groups:write"])?;
    let writer_token = writer["token"].as_str().context("token")?.to_owned();
    let writer_id = writer["id"].as_str().context("id")?.to_owned();
    let mut g404 = spec_of("g404", 0, &[])?;
    let g404_file = dir.join("g404.json");
    std::fs::write(&g404_file, serde_json::to_string(&g404)?)?;
    let err = ctl.fails(&[
        "--token",
        &writer_token,
        "groups",
        "apply",
        "g404",
        "-f",
        path_str(&g404_file)?,
    ])?;
    ensure!(err.contains("403") && err.contains("groups:read"), "{err}");
    let (status, _) = rest.get("/groups/g404").await?;
    ensure!(
        status == 404,
        "no group created without groups:read: {status}"
    );
    ctl.ok(&["groups", "apply", "g404", "-f", path_str(&g404_file)?])?;
    g404["memoryMb"] = json!(512);
    std::fs::write(&g404_file, serde_json::to_string(&g404)?)?;
    let err = ctl.fails(&[
        "--token",
        &writer_token,
        "groups",
        "apply",
        "g404",
        "-f",
        path_str(&g404_file)?,
    ])?;
    ensure!(err.contains("403") && err.contains("groups:read"), "{err}");
    let (_, group) = rest.get("/groups/g404").await?;
    ensure!(group["revision"] == 1, "{group}");
    ctl.ok(&["groups", "delete", "g404"])?;
    eventually("group g404 removed", || async move {
        let (status, _) = rest.get("/groups/g404").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    ctl.ok(&["tokens", "delete", &writer_id])?;

    let out = ctl.ok(&["tokens", "delete", &token_id])?;
    ensure!(out.contains(&format!("token {token_id} deleted")), "{out}");
    ensure!(
        one(cluster, "api_tokens", &token_id).await?.is_none(),
        "the token record is gone"
    );
    let err = ctl.fails(&["--token", &api_token, "groups", "list"])?;
    ensure!(err.contains("401"), "a deleted token: {err}");

    // ---- users create (password on stdin), a second context, disable, enable, delete.
    let alice_password = "alice-password-1234";
    let out = ctl.ok_with(
        &["users", "create", "alice", "-r", "viewer"],
        &format!("{alice_password}\n"),
    )?;
    ensure!(out.contains("user alice created"), "{out}");
    let (status, alice) = rest.get("/users/alice").await?;
    ensure!(
        status == 200 && alice["roles"] == json!(["viewer"]) && alice["disabled"] == false,
        "{status} {alice}"
    );
    ctl.ok_with(
        &[
            "login",
            "--user",
            "alice",
            "--password-stdin",
            "--name",
            "spare",
        ],
        alice_password,
    )?;
    let saved = ctl.saved()?;
    ensure!(
        saved["current"] == "spare"
            && saved["contexts"]["spare"]["user"] == "alice"
            && saved["contexts"]["spare"]["controller"] == api.http.as_str(),
        "the second context: {saved}"
    );
    let contexts = ctl.ok(&["context", "list"])?;
    ensure!(
        contexts.contains("* spare") && contexts.contains("  local") && contexts.contains("alice"),
        "{contexts}"
    );
    let listed = ctl.json(&["groups", "list"])?;
    ensure!(has_group(&listed, "lobby"), "alice reads groups: {listed}");
    let err = ctl.fails(&["nodes", "cordon", "node-1"])?;
    ensure!(err.contains("403"), "a viewer cannot cordon: {err}");
    let out = ctl.ok(&["context", "use", "local"])?;
    ensure!(out.contains("now using context \"local\""), "{out}");
    ensure!(ctl.saved()?["current"] == "local", "current context");
    let contexts = ctl.ok(&["context", "list"])?;
    ensure!(
        contexts.contains("* local") && contexts.contains("  spare"),
        "{contexts}"
    );
    let err = ctl.fails(&["context", "use", "nowhere"])?;
    ensure!(err.contains("no context \"nowhere\""), "{err}");
    ctl.ok(&["--context", "spare", "groups", "list"])?;

    let table = ctl.ok(&["users", "list"])?;
    ensure!(
        table.contains("alice") && table.contains("viewer"),
        "{table}"
    );
    let out = ctl.ok(&["users", "disable", "alice"])?;
    ensure!(out.contains("user alice disabled"), "{out}");
    let stored = one(cluster, "users", "alice").await?.context("alice")?;
    ensure!(stored.get_bool("disabled") == Ok(true), "{stored:?}");
    let err = ctl.fails(&["--context", "spare", "groups", "list"])?;
    ensure!(
        err.contains("401"),
        "a disabled user's session ended: {err}"
    );
    ensure!(
        api.login("alice", alice_password).await.is_err(),
        "a disabled user cannot sign in"
    );
    // Signing out of a context whose session already ended on the server forgets it locally.
    let out = ctl.ok(&["--context", "spare", "logout"])?;
    ensure!(out.contains("logged out of context \"spare\""), "{out}");
    let saved = ctl.saved()?;
    ensure!(
        saved["contexts"]["spare"]["token"].is_null() && saved["current"] == "local",
        "{saved}"
    );
    ctl.ok(&["users", "enable", "alice"])?;
    let stored = one(cluster, "users", "alice").await?.context("alice")?;
    ensure!(stored.get_bool("disabled") == Ok(false), "{stored:?}");
    api.login("alice", alice_password).await?;
    let listed = ctl.json(&["users", "list"])?;
    ensure!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|u| u["username"] == "alice" && u["disabled"] == false)),
        "{listed}"
    );
    let out = ctl.ok(&["users", "delete", "alice"])?;
    ensure!(out.contains("user alice deleted"), "{out}");
    let (status, _) = rest.get("/users/alice").await?;
    ensure!(status == 404, "deleted: {status}");

    // ---- roles create, list, delete.
    let out = ctl.ok(&[
        "roles",
        "create",
        "reader",
        "-p",
        "groups:read",
        "-p",
        "nodes:read",
    ])?;
    ensure!(out.contains("role reader created"), "{out}");
    let stored = one(cluster, "roles", "reader").await?.context("role")?;
    ensure!(stored.get_array("permissions")?.len() == 2, "{stored:?}");
    let table = ctl.ok(&["roles", "list"])?;
    ensure!(
        table.contains("reader") && table.contains("nodes:read") && table.contains("operator"),
        "{table}"
    );
    let listed = ctl.json(&["roles", "list"])?;
    ensure!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|r| r["name"] == "reader" && r["builtin"] == false)),
        "{listed}"
    );
    let out = ctl.ok(&["roles", "delete", "reader"])?;
    ensure!(out.contains("role reader deleted"), "{out}");
    ensure!(
        one(cluster, "roles", "reader").await?.is_none(),
        "the role is gone"
    );

    // ---- audit: what the commands above did, by whom.
    let entries = ctl.json(&["audit", "--limit", "500"])?;
    let actions: Vec<&str> = entries
        .as_array()
        .context("audit entries")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "group.create",
        "group.update",
        "group.delete",
        "instance.start",
        "instance.stop",
        "instance.kill",
        "instance.command",
        "deployment.create",
        "deployment.paused",
        "deployment.rolling",
        "deployment.rollback",
        "node.cordon",
        "node.uncordon",
        "node.join-token",
        "node.drain",
        "node.undrain",
        "template.upload",
        "template.rollback",
        "template.delete",
        "module.upload",
        "module.install",
        "module.upgrade",
        "module.uninstall",
        "token.create",
        "token.delete",
        "user.create",
        "user.update",
        "user.delete",
        "role.create",
        "role.delete",
    ] {
        ensure!(actions.contains(&action), "{action} audited: {actions:?}");
    }
    let table = ctl.ok(&["audit", "--limit", "3"])?;
    ensure!(
        table.contains("ACTOR") && table.contains("admin") && table.contains("role.delete"),
        "{table}"
    );
    let page = ctl.json(&["audit", "--limit", "3"])?;
    ensure!(
        page.as_array().map(Vec::len) == Some(3),
        "--limit is honoured: {page}"
    );

    // ---- completions.
    let script = ctl.ok(&["completions", "bash"])?;
    ensure!(
        script.contains("_prexorctl()")
            && script.contains("complete -F _prexorctl")
            && script.contains("join-token"),
        "a bash completion script"
    );

    // ---- errors name the problem.
    let err = ctl.fails(&["groups", "get", "does-not-exist"])?;
    ensure!(
        err.contains("404") && err.contains("no group \"does-not-exist\""),
        "{err}"
    );
    let err = ctl.fails(&["groups", "apply", "x", "-f", "/nonexistent/spec.json"])?;
    ensure!(err.contains("cannot read /nonexistent/spec.json"), "{err}");
    let err = ctl.fails(&["instances", "get", "nope-1"])?;
    ensure!(err.contains("404") && err.contains("nope-1"), "{err}");
    let run = ctl.run(&["groups", "frobnicate"], None)?;
    ensure!(
        run.code == Some(2) && run.stderr.contains("frobnicate"),
        "a clap usage error: {:?} {}",
        run.code,
        run.stderr
    );
    let err = ctl.fails(&["--controller", "api-1:8080", "groups", "list"])?;
    ensure!(err.contains("must be an http:// or https:// URL"), "{err}");

    // ---- groups delete of a group with a running instance: it is stopped, then the group is
    // gone (and no game server outlives the test: daemons leave their instances running).
    let out = ctl.ok(&["groups", "delete", "lobby"])?;
    ensure!(out.contains("group lobby is being deleted"), "{out}");
    eventually("group lobby removed", || async move {
        let (status, _) = rest.get("/groups/lobby").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    let active = find(
        cluster,
        "instances",
        doc! { "group": "lobby", "state": { "$nin": ["STOPPED", "CRASHED"] } },
    )
    .await?;
    ensure!(active.is_empty(), "lobby's instances stopped: {active:?}");
    let stopped = one(cluster, "instances", "lobby-1")
        .await?
        .context("lobby-1")?;
    ensure!(reported_state(&stopped) == "STOPPED", "{stopped:?}");
    let listed = ctl.json(&["groups", "list"])?;
    ensure!(listed == json!([]), "no groups left: {listed}");

    // ---- logout: the session ends on the server; the context then asks to sign in.
    let out = ctl.ok(&["logout"])?;
    ensure!(out.contains("logged out of context \"local\""), "{out}");
    let (status, _) = rest.get("/auth/me").await?;
    ensure!(status == 401, "the session is revoked: {status}");
    let saved = ctl.saved()?;
    ensure!(
        saved["contexts"]["local"]["token"].is_null() && saved["current"] == "local",
        "{saved}"
    );
    let contexts = ctl.ok(&["context", "list"])?;
    ensure!(contexts.contains("(signed out)"), "{contexts}");
    let err = ctl.fails(&["groups", "list"])?;
    ensure!(
        err.contains("401") && err.contains("prexorctl login"),
        "{err}"
    );

    stop_all([&mut api], EXIT_WITHIN).await?;
    fleet.stop_with(&mut scheduler).await
}

#[tokio::test]
async fn prexorctl_operates_a_running_cluster() {
    let cluster = Cluster::new("cli").unwrap();
    scenario(&cluster).await.unwrap();
}
