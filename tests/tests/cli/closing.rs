//! The end of the scenario: the audit log of every phase, completions, errors that name the
//! problem, deleting the last group (its running instance is stopped first), and logout.

use anyhow::ensure;
use mongodb::bson::doc;
use prexor_acceptance::{Cluster, fields_of, get_doc, live_instances, reported_state};
use serde_json::json;

use crate::{CONDITION_WITHIN, Stack};

/// `audit` lists what every phase did; `completions`; errors name the problem.
pub fn audit_completions_and_errors(stack: &Stack) -> anyhow::Result<()> {
    let ctl = &stack.ctl;

    // ---- audit: what the commands above did, by whom.
    let entries = ctl.json(&["audit", "--limit", "500"])?;
    let actions = fields_of(&entries, "action")?;
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
    ctl.says(
        &["audit", "--limit", "3"],
        &["ACTOR", "admin", "role.delete"],
    )?;
    let page = ctl.json(&["audit", "--limit", "3"])?;
    ensure!(
        page.as_array().map(Vec::len) == Some(3),
        "--limit is honoured: {page}"
    );

    // ---- completions: the static script; the one asking prexorctl, which completes names
    // from the cluster.
    let script = ctl.ok(&["completions", "bash", "--static"])?;
    ensure!(
        script.contains("_prexorctl()")
            && script.contains("complete -F _prexorctl")
            && script.contains("join-token"),
        "a bash completion script"
    );
    let script = ctl.ok(&["completions", "bash"])?;
    ensure!(
        script.contains("COMPLETE=\"bash\"") && script.contains("complete -o"),
        "a bash script asking prexorctl: {script}"
    );
    let complete = |words: &[&str]| -> anyhow::Result<Vec<String>> {
        let output = ctl
            .command(&[&["--", "prexorctl"], words].concat())
            .env("COMPLETE", "fish")
            .stdin(std::process::Stdio::null())
            .output()?;
        ensure!(output.status.success(), "completing {words:?}: {output:?}");
        Ok(String::from_utf8(output.stdout)?
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            // The flags offered too are not what is checked here.
            .filter(|w| !w.starts_with('-'))
            .collect())
    };
    let groups = complete(&["groups", "get", ""])?;
    ensure!(groups == ["lobby"], "group names: {groups:?}");
    let instances = complete(&["instances", "stop", "lob"])?;
    ensure!(
        instances.contains(&"lobby-1".to_owned()) && instances.iter().all(|i| i.starts_with("lob")),
        "instance ids: {instances:?}"
    );
    let nodes = complete(&["nodes", "cordon", ""])?;
    ensure!(
        nodes.contains(&"node-1".to_owned()) && nodes.contains(&"node-2".to_owned()),
        "node ids: {nodes:?}"
    );
    let nodes = complete(&["instances", "list", "--node", "node-"])?;
    ensure!(nodes.contains(&"node-2".to_owned()), "{nodes:?}");
    let subcommands = complete(&["context", ""])?;
    ensure!(
        subcommands.contains(&"rename".to_owned()),
        "subcommands: {subcommands:?}"
    );

    // ---- errors name the problem.
    ctl.fails_saying(
        &["groups", "get", "does-not-exist"],
        &["404", "no group \"does-not-exist\""],
    )?;
    ctl.fails_saying(
        &["groups", "apply", "x", "-f", "/nonexistent/spec.json"],
        &["cannot read /nonexistent/spec.json"],
    )?;
    ctl.fails_saying(&["instances", "get", "nope-1"], &["404", "nope-1"])?;
    let run = ctl.run(&["groups", "frobnicate"], None)?;
    ensure!(
        run.code == Some(2) && run.stderr.contains("frobnicate"),
        "a clap usage error: {:?} {}",
        run.code,
        run.stderr
    );
    ctl.fails_saying(
        &["--controller", "api-1:8080", "groups", "list"],
        &["must be an http:// or https:// URL"],
    )?;
    Ok(())
}

/// Deletes the lobby group (its instance stops first) and signs out of the "local" context.
pub async fn delete_and_logout(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest) = (&stack.ctl, &stack.rest);

    // ---- groups delete of a group with a running instance: it is stopped, then the group is
    // gone (and no game server outlives the test: daemons leave their instances running).
    ctl.says(
        &["groups", "delete", "lobby"],
        &["group lobby is being deleted"],
    )?;
    rest.wait_gone("/groups/lobby", CONDITION_WITHIN).await?;
    let active = live_instances(cluster, doc! { "group": "lobby" }).await?;
    ensure!(active.is_empty(), "lobby's instances stopped: {active:?}");
    let stopped = get_doc(cluster, "instances", "lobby-1").await?;
    ensure!(reported_state(&stopped) == "STOPPED", "{stopped:?}");
    let listed = ctl.json(&["groups", "list"])?;
    ensure!(listed == json!([]), "no groups left: {listed}");

    // ---- logout: the session ends on the server; the context then asks to sign in.
    ctl.says(&["logout"], &["logged out of context \"local\""])?;
    let (status, _) = rest.get("/auth/me").await?;
    ensure!(status == 401, "the session is revoked: {status}");
    let saved = ctl.saved()?;
    ensure!(
        saved["contexts"]["local"]["token"].is_null() && saved["current"] == "local",
        "{saved}"
    );
    ctl.says(&["context", "list"], &["(signed out)"])?;
    ctl.fails_saying(&["groups", "list"], &["401", "prexorctl login"])?;
    Ok(())
}
