//! Deployments of the lobby group: `create --wait`, `list`, `get`; `pause`, `resume`;
//! `rollback`.

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, find_doc, reported_state, wait_doc, with_version};
use serde_json::Value;

use crate::{Stack, path_str};

/// Rolls `lobby` (the group's spec) to versions 2, 3 and 4, and back from 4 to 3.
pub async fn deployments(cluster: &Cluster, stack: &Stack, lobby: &Value) -> anyhow::Result<()> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

    // ---- deployments: create --wait, list, get; pause, resume; rollback.
    let v2 = dir.join("lobby-v2.json");
    std::fs::write(&v2, serde_json::to_string(&with_version(lobby, "2"))?)?;
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
    let stored = find_doc(cluster, "deployments", &first_deployment)
        .await?
        .context("the deployment record")?;
    ensure!(stored.get_str("state") == Ok("DONE"), "{stored:?}");
    let target = stored.get_str("targetSpecHash")?.to_owned();
    let lobby_1 = find_doc(cluster, "instances", "lobby-1")
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
    std::fs::write(&v3, serde_json::to_string(&with_version(lobby, "3"))?)?;
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
    let stored = find_doc(cluster, "deployments", &second)
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
    std::fs::write(&v4, serde_json::to_string(&with_version(lobby, "4"))?)?;
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
    Ok(())
}
