//! Deployments of the lobby group: `create --wait`, `list`, `get`; `pause`, `resume`;
//! `rollback`.

use std::path::Path;

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, get_doc, reported_state, wait_doc, wait_state, with_version};
use serde_json::Value;

use crate::{Stack, path_str};

/// `lobby` at `version`, written to `<dir>/lobby-v<version>.json`; the file's path.
fn spec_file(dir: &Path, lobby: &Value, version: &str) -> anyhow::Result<String> {
    let file = dir.join(format!("lobby-v{version}.json"));
    std::fs::write(&file, serde_json::to_string(&with_version(lobby, version))?)?;
    Ok(path_str(&file)?.to_owned())
}

/// Rolls `lobby` (the group's spec) to versions 2, 3 and 4, and back from 4 to 3.
pub async fn deployments(cluster: &Cluster, stack: &Stack, lobby: &Value) -> anyhow::Result<()> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

    // ---- deployments: create --wait, list, get; pause, resume; rollback.
    let v2 = spec_file(dir, lobby, "2")?;
    let run = ctl.run(
        &["deployments", "create", "lobby", "-f", &v2, "--wait"],
        None,
    )?;
    ensure!(run.success && run.stdout.contains("done"), "{run:?}");
    // Not on a terminal: plain progress lines, no bar redrawn in place.
    ensure!(
        !run.stderr.contains('\r')
            && !run.stderr.contains("[#")
            && run
                .stderr
                .lines()
                .any(|l| l.starts_with("deployment ") && l.ends_with("updated, DONE")),
        "progress lines: {}",
        run.stderr
    );
    let listed = ctl.json(&["deployments", "list", "lobby"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["state"] == "DONE",
        "{listed}"
    );
    let first_deployment = listed[0]["id"].as_str().context("id")?.to_owned();
    let stored = get_doc(cluster, "deployments", &first_deployment).await?;
    ensure!(stored.get_str("state") == Ok("DONE"), "{stored:?}");
    let target = stored.get_str("targetSpecHash")?.to_owned();
    let lobby_1 = get_doc(cluster, "instances", "lobby-1").await?;
    ensure!(
        lobby_1.get_str("specHash") == Ok(target.as_str())
            && lobby_1.get_str("state") == Ok("RUNNING"),
        "lobby-1 runs the new spec: {lobby_1:?}"
    );
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "2", "{group}");
    ctl.says(
        &["deployments", "list", "lobby"],
        &[&first_deployment, "DONE"],
    )?;
    let shown = ctl.yaml(&["deployments", "get", &first_deployment])?;
    ensure!(
        shown["state"] == "DONE" && shown["live"]["updated"] == 1 && shown["group"] == "lobby",
        "{shown}"
    );

    let v3 = spec_file(dir, lobby, "3")?;
    let created = ctl.json(&[
        "deployments",
        "create",
        "lobby",
        "-f",
        &v3,
        "--batch-size",
        "1",
        "--max-unavailable",
        "1",
    ])?;
    let second = created["id"].as_str().context("id")?.to_owned();
    ensure!(created["state"] == "ROLLING", "{created}");
    ctl.says(
        &["deployments", "pause", &second],
        &[&format!("deployment {second}: PAUSED")],
    )?;
    let stored = get_doc(cluster, "deployments", &second).await?;
    ensure!(stored.get_str("state") == Ok("PAUSED"), "{stored:?}");
    ctl.fails_saying(&["deployments", "pause", &second], &["409", "not ROLLING"])?;
    let resumed = ctl.json(&["deployments", "resume", &second])?;
    ensure!(resumed["state"] == "ROLLING", "{resumed}");
    wait_state(cluster, "deployments", &second, "DONE").await?;
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(group["spec"]["env"]["VERSION"] == "3", "{group}");

    let v4 = spec_file(dir, lobby, "4")?;
    let created = ctl.json(&["deployments", "create", "lobby", "-f", &v4])?;
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
    Ok(())
}
