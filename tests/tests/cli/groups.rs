//! Groups and instances: `groups apply` (create from JSON, update from YAML), `list`, `get`;
//! `instances list`, `get`, `start`, `command`, `console`, `stop`, `kill`, `crashes`; and `groups
//! delete` of a group whose instance ended.

use std::path::Path;

use anyhow::ensure;
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, find_docs, reported_pid, running, running_again, spec_of, wait_doc,
};
use prexor_testkit::eventually;
use serde_json::{Value, json};

use crate::ctl::Ctl;
use crate::{CONDITION_WITHIN, Stack, path_str};

/// Writes `spec` to `file` and applies it to `group` (`groups apply`); what prexorctl said.
fn apply(ctl: &Ctl, file: &Path, group: &str, spec: &str) -> anyhow::Result<String> {
    std::fs::write(file, spec)?;
    ctl.ok(&["groups", "apply", group, "-f", path_str(file)?])
}

/// Creates the groups "lobby" (STATIC, one instance) and "event" (MANUAL), operates their
/// instances, deletes "event"; the lobby's spec, which later phases roll forward.
pub async fn groups_and_instances(cluster: &Cluster, stack: &Stack) -> anyhow::Result<Value> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

    // ---- groups apply (create from JSON, update from YAML), list, get.
    let lobby = spec_of("lobby", 1, &["--stop-delay", "500"])?;
    let json = serde_json::to_string_pretty(&lobby)?;
    let out = apply(ctl, &dir.join("lobby.json"), "lobby", &json)?;
    ensure!(out.contains("group lobby at revision 1"), "{out}");
    let (status, group) = rest.get("/groups/lobby").await?;
    ensure!(
        status == 200 && group["revision"] == 1 && group["spec"]["minInstances"] == 1,
        "{status} {group}"
    );
    let first = running(cluster, &["lobby-1"]).await?.remove(0);
    // Why it has what it has, in words (docs/scheduling.md, "Explanations").
    let out = ctl.ok(&["groups", "explain", "lobby"])?;
    ensure!(
        out.contains("scaling:  STATIC: keeps exactly minInstances (1); 1 active")
            && out.contains("placement: every placement so far found room"),
        "{out}"
    );
    let out = ctl.ok(&["-o", "json", "groups", "explain", "lobby"])?;
    ensure!(serde_json::from_str::<Value>(&out)?["wanted"] == 1, "{out}");
    // A canary gate that cannot pass is refused, naming the field; nothing changes.
    ctl.fails_saying(
        &[
            "deployments",
            "create",
            "lobby",
            "--canary",
            "--canary-healthy-seconds",
            "60",
            "--canary-timeout-seconds",
            "30",
        ],
        &["canary.timeoutSeconds"],
    )?;

    let mut event = spec_of("event", 0, &[])?;
    event["scaling"] = json!("MANUAL");
    event["maxInstances"] = json!(2);
    apply(
        ctl,
        &dir.join("event.json"),
        "event",
        &serde_json::to_string(&event)?,
    )?;
    event["maxInstances"] = json!(3);
    let yaml = serde_norway::to_string(&event)?;
    let out = apply(ctl, &dir.join("event.yaml"), "event", &yaml)?;
    ensure!(out.contains("group event at revision 2"), "{out}");
    let (_, group) = rest.get("/groups/event").await?;
    ensure!(
        group["revision"] == 2
            && group["spec"]["maxInstances"] == 3
            && group["spec"]["scaling"] == "MANUAL",
        "the YAML update is applied: {group}"
    );

    ctl.says(
        &["groups", "list"],
        &["lobby", "event", "MANUAL", "RUNNING=1"],
    )?;
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
    ctl.says(
        &["instances", "list", "--state", "running"],
        &["lobby-1", "RUNNING"],
    )?;
    let shown = ctl.yaml(&["instances", "get", "lobby-1"])?;
    ensure!(
        shown["id"] == "lobby-1"
            && shown["group"] == "lobby"
            && shown["plan"]["env"]["PREXOR_INSTANCE_TOKEN"] == "(hidden)"
            && shown["reported"]["pid"] == reported_pid(&first),
        "{shown}"
    );

    ctl.says(&["instances", "start", "event"], &["places a new instance"])?;
    running(cluster, &["event-1"]).await?;
    let (_, listed) = rest.get("/instances?group=event").await?;
    let listed = &listed["items"];
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["id"] == "event-1",
        "{listed}"
    );

    ctl.says(
        &["instances", "command", "lobby-1", "echo", "hello-from-ctl"],
        &["sent to lobby-1"],
    )?;
    let console = eventually("the echo in the console", CONDITION_WITHIN, async || {
        let out = ctl.ok(&["instances", "console", "lobby-1", "--lines", "50"])?;
        Ok(out.contains("hello-from-ctl").then_some(out))
    })
    .await?;
    ensure!(console.contains("Done ("), "the history: {console}");
    ctl.fails_saying(
        &["instances", "command", "lobby-1"],
        &["give the console line"],
    )?;

    // Stop: a STATIC group starts it again, as a new process.
    ctl.says(&["instances", "stop", "lobby-1"], &["stop lobby-1"])?;
    let restarted = running_again(cluster, "lobby-1", &first, "restarted").await?;

    // Kill: a MANUAL group leaves it ended.
    ctl.says(&["instances", "kill", "event-1"], &["kill event-1"])?;
    wait_doc(cluster, "instances", "event-1", "ended", |d| {
        matches!(d.get_str("state"), Ok("STOPPED" | "CRASHED"))
    })
    .await?;
    let (_, active) = rest.get("/instances?group=event&state=running").await?;
    ensure!(
        active["items"].as_array().is_some_and(Vec::is_empty),
        "{active}"
    );

    // A crash (the fake server exits 7 on `crash 7`) is recorded, and the group restarts it.
    ctl.ok(&["instances", "command", "lobby-1", "crash", "7"])?;
    let crashes = eventually("a crash record", CONDITION_WITHIN, async || {
        let found = find_docs(cluster, "crashes", doc! { "instanceId": "lobby-1" }).await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    ensure!(crashes[0].get_i32("exitCode") == Ok(7), "{crashes:?}");
    let listed = ctl.json(&["instances", "crashes", "lobby-1"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["exitCode"] == 7,
        "{listed}"
    );
    ctl.says(
        &["instances", "crashes", "lobby-1"],
        &["EXIT CODE", "node-1"],
    )?;
    running_again(cluster, "lobby-1", &restarted, "running after the crash").await?;

    // ---- groups delete: the instances stop, then the group is gone.
    ctl.says(&["groups", "delete", "event"], &["is being deleted"])?;
    rest.wait_gone("/groups/event", CONDITION_WITHIN).await?;
    Ok(lobby)
}
