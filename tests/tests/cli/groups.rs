//! Groups and instances: `groups apply` (create from JSON, update from YAML), `list`, `get`;
//! `instances list`, `get`, `start`, `command`, `console`, `stop`, `kill`, `crashes`; and `groups
//! delete` of a group whose instance ended.

use anyhow::ensure;
use mongodb::bson::doc;
use prexor_acceptance::{Cluster, find_docs, reported_state, running, spec_of, wait_doc};
use prexor_testkit::eventually;
use serde_json::{Value, json};

use crate::{CONDITION_WITHIN, Stack, path_str, pid_of};

/// Creates the groups "lobby" (STATIC, one instance) and "event" (MANUAL), operates their
/// instances, deletes "event"; the lobby's spec, which later phases roll forward.
pub async fn groups_and_instances(cluster: &Cluster, stack: &Stack) -> anyhow::Result<Value> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

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
    let console = eventually("the echo in the console", CONDITION_WITHIN, async || {
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
    eventually("group event removed", CONDITION_WITHIN, async || {
        let (status, _) = rest.get("/groups/event").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    Ok(lobby)
}
