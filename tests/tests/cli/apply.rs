//! `apply -f FILE|DIR`: groups from a directory of JSON and YAML files (named after the files),
//! `--dry-run` showing the difference field by field and changing nothing, an unchanged group
//! left alone, a template referenced by name following its current version, and `--prune`
//! deleting the groups no file declares (only when asked).

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, spec_of, tar_gz};
use serde_json::{Value, json};

use crate::{CONDITION_WITHIN, Stack, path_str};

async fn upload_template(stack: &Stack, motd: &str) -> anyhow::Result<Value> {
    let layer = tar_gz(&[("server.properties", &format!("motd={motd}\n"))])?;
    let (status, body) = stack
        .rest
        .put_bytes("/templates/applied-tpl", layer)
        .await?;
    ensure!(status < 300, "template upload: {status} {body}");
    Ok(body)
}

/// The action `apply -o json` planned for `group`, and its field changes.
fn planned(plan: &Value, group: &str) -> anyhow::Result<(String, Vec<String>)> {
    let entry = plan["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|e| e["group"] == group))
        .with_context(|| format!("{group} in the plan: {plan}"))?;
    let changes = entry["changes"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((entry["action"].as_str().unwrap_or("").to_owned(), changes))
}

pub async fn apply(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest) = (&stack.ctl, &stack.rest);
    let dir = cluster.dir.join("applied");
    std::fs::create_dir_all(&dir)?;
    let dir_arg = path_str(&dir)?;
    upload_template(stack, "one").await?;
    let mut a1 = spec_of("a1", 0, &[])?;
    std::fs::write(dir.join("a1.json"), serde_json::to_string_pretty(&a1)?)?;
    let mut a2 = spec_of("a2", 0, &[])?;
    a2["templates"] = json!([{ "name": "applied-tpl" }]);
    std::fs::write(dir.join("a2.yaml"), serde_norway::to_string(&a2)?)?;
    std::fs::write(dir.join("notes.txt"), "not a spec")?;

    // ---- --dry-run: the plan, nothing changed.
    ctl.says(
        &["apply", "-f", dir_arg, "--dry-run"],
        &[
            "group a1: create",
            "group a2: create",
            "group lobby: not in the files; kept",
            "nothing was changed (dry run)",
        ],
    )?;
    let (status, _) = rest.get("/groups/a1").await?;
    ensure!(status == 404, "a dry run creates nothing: {status}");

    // ---- apply: created; the template named resolves to its current version.
    ctl.says(
        &["apply", "-f", dir_arg],
        &["group a1: created", "group a2: created"],
    )?;
    let (_, group) = rest.get("/groups/a2").await?;
    ensure!(
        group["revision"] == 1
            && group["spec"]["templates"][0]["version"] == 1
            && group["spec"]["templates"][0]["hash"]
                .as_str()
                .is_some_and(|h| !h.is_empty()),
        "{group}"
    );
    // Applying the same files again changes nothing.
    ctl.says(
        &["apply", "-f", dir_arg],
        &["group a1: unchanged", "group a2: unchanged"],
    )?;
    let (_, group) = rest.get("/groups/a1").await?;
    ensure!(group["revision"] == 1, "left alone: {group}");

    // ---- a changed field, shown by --dry-run, applied from the one file.
    a1["memoryMb"] = json!(384);
    std::fs::write(dir.join("a1.json"), serde_json::to_string_pretty(&a1)?)?;
    let plan = ctl.json(&["apply", "-f", dir_arg, "--dry-run"])?;
    let (action, changes) = planned(&plan, "a1")?;
    ensure!(
        action == "update"
            && changes.len() == 1
            && changes[0].starts_with("~ memoryMb: ")
            && changes[0].ends_with("-> 384"),
        "{plan}"
    );
    ensure!(planned(&plan, "a2")?.0 == "unchanged", "{plan}");
    let a1_file = dir.join("a1.json");
    ctl.says(
        &["apply", "-f", path_str(&a1_file)?],
        &["group a1: updated"],
    )?;
    let (_, group) = rest.get("/groups/a1").await?;
    ensure!(
        group["revision"] == 2 && group["spec"]["memoryMb"] == 384,
        "{group}"
    );

    // ---- a new version of the template: the group referencing it by name follows.
    upload_template(stack, "two").await?;
    let out = ctl.says(
        &["apply", "-f", dir_arg, "--dry-run"],
        &["group a2: update"],
    )?;
    ensure!(out.contains("templates"), "{out}");
    ctl.says(&["apply", "-f", dir_arg], &["group a2: updated"])?;
    let (_, group) = rest.get("/groups/a2").await?;
    ensure!(group["spec"]["templates"][0]["version"] == 2, "{group}");

    // ---- --prune: a2's file removed, lobby declared too (as it is): only a2 goes.
    std::fs::remove_file(dir.join("a2.yaml"))?;
    let (_, lobby) = rest.get("/groups/lobby").await?;
    std::fs::write(dir.join("lobby.json"), lobby["spec"].to_string())?;
    let plan = ctl.json(&["apply", "-f", dir_arg, "--dry-run", "--prune"])?;
    ensure!(planned(&plan, "a2")?.0 == "delete", "{plan}");
    ensure!(planned(&plan, "lobby")?.0 == "unchanged", "{plan}");
    ctl.says(
        &["apply", "-f", dir_arg],
        &["group a2: not in the files; kept"],
    )?;
    let (status, _) = rest.get("/groups/a2").await?;
    ensure!(status == 200, "kept without --prune: {status}");
    ctl.says(
        &["apply", "-f", dir_arg, "--prune"],
        &["group a2: deleted", "group lobby: unchanged"],
    )?;
    rest.wait_gone("/groups/a2", CONDITION_WITHIN).await?;
    let (_, group) = rest.get("/groups/lobby").await?;
    ensure!(
        group["revision"] == lobby["revision"],
        "lobby untouched: {group}"
    );

    ctl.fails_saying(
        &["apply", "-f", path_str(&dir.join("notes.txt"))?],
        &["notes.txt", "not valid JSON"],
    )?;
    rest.delete("/groups/a1").await?;
    rest.wait_gone("/groups/a1", CONDITION_WITHIN).await?;
    let (status, body) = rest.delete("/templates/applied-tpl").await?;
    ensure!(status < 300, "{status} {body}");
    Ok(())
}
