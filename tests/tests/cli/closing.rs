//! The end of the scenario: the audit log of every phase, completions, errors that name the
//! problem, deleting the last group (its running instance is stopped first), and logout.

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{Cluster, find_doc, find_docs, reported_state};
use prexor_testkit::eventually;
use serde_json::json;

use crate::{CONDITION_WITHIN, Stack};

/// `audit` lists what every phase did; `completions`; errors name the problem.
pub fn audit_completions_and_errors(stack: &Stack) -> anyhow::Result<()> {
    let ctl = &stack.ctl;

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
    Ok(())
}

/// Deletes the lobby group (its instance stops first) and signs out of the "local" context.
pub async fn delete_and_logout(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest) = (&stack.ctl, &stack.rest);

    // ---- groups delete of a group with a running instance: it is stopped, then the group is
    // gone (and no game server outlives the test: daemons leave their instances running).
    let out = ctl.ok(&["groups", "delete", "lobby"])?;
    ensure!(out.contains("group lobby is being deleted"), "{out}");
    eventually("group lobby removed", CONDITION_WITHIN, async || {
        let (status, _) = rest.get("/groups/lobby").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    let active = find_docs(
        cluster,
        "instances",
        doc! { "group": "lobby", "state": { "$nin": ["STOPPED", "CRASHED"] } },
    )
    .await?;
    ensure!(active.is_empty(), "lobby's instances stopped: {active:?}");
    let stopped = find_doc(cluster, "instances", "lobby-1")
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
    Ok(())
}
