//! Access: API tokens (`create`, `list`, use with `--token`, `delete`, and a token that may
//! write groups but not read them); users (`create` with the password on stdin, a second
//! context, `disable`, `enable`, `delete`) and contexts (`list`, `current`, `use`, `rename`,
//! `delete`, `--context`, `logout`); roles (`create`, `list`, `delete`).

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, find_doc, get_doc, spec_of};
use serde_json::json;

use crate::ctl::Ctl;
use crate::{CONDITION_WITHIN, Stack, has_group, lists, path_str};

/// `context list` as a table: the name on the row marked `*`, and every name.
fn contexts_listed(ctl: &Ctl) -> anyhow::Result<(String, Vec<String>)> {
    let out = ctl.ok(&["context", "list", "--no-headers"])?;
    let mut current = None;
    let mut names = Vec::new();
    for line in out.lines() {
        let marked = line.starts_with('*');
        let name = line
            .trim_start_matches('*')
            .split_whitespace()
            .next()
            .with_context(|| format!("a context name: {out}"))?
            .to_owned();
        if marked {
            ensure!(current.is_none(), "one current context: {out}");
            current = Some(name.clone());
        }
        names.push(name);
    }
    Ok((
        current.with_context(|| format!("a current context: {out}"))?,
        names,
    ))
}

/// An API token used and deleted; a write-only token refused by `groups apply`.
pub async fn tokens(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

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
    let stored = get_doc(cluster, "api_tokens", &token_id).await?;
    ensure!(
        stored.get_str("owner") == Ok("admin")
            && stored.get_str("name") == Ok("ci")
            && stored.get_i64("expiresAtMs").is_ok()
            && format!("{:?}", stored.get_array("permissions")?) == "[String(\"groups:read\")]",
        "{stored:?}"
    );
    let listed = ctl.json(&["tokens", "list"])?;
    ensure!(
        lists(&listed, |t| t["id"] == token_id.as_str()
            && t["name"] == "ci"),
        "{listed}"
    );
    ctl.says(
        &["tokens", "list", "--owner", "all"],
        &[&token_id, "groups:read"],
    )?;
    let with_token = ctl.json(&["--token", &api_token, "groups", "list"])?;
    ensure!(has_group(&with_token, "lobby"), "{with_token}");
    ctl.fails_saying(
        &["--token", &api_token, "nodes", "cordon", "node-1"],
        &["403", "nodes:write"],
    )?;
    // A token that may write groups but not read them: `groups apply` cannot see the current
    // revision, and says so (it must not take the refusal for "no such group" and create it).
    let writer = ctl.json(&["tokens", "create", "writer", "-p", "groups:write"])?;
    let writer_token = writer["token"].as_str().context("token")?.to_owned();
    let writer_id = writer["id"].as_str().context("id")?.to_owned();
    let mut g404 = spec_of("g404", 0, &[])?;
    let g404_file = dir.join("g404.json");
    std::fs::write(&g404_file, serde_json::to_string(&g404)?)?;
    let refused_to_writer = || -> anyhow::Result<()> {
        ctl.fails_saying(
            &[
                "--token",
                &writer_token,
                "groups",
                "apply",
                "g404",
                "-f",
                path_str(&g404_file)?,
            ],
            &["403", "groups:read"],
        )?;
        Ok(())
    };
    refused_to_writer()?;
    let (status, _) = rest.get("/groups/g404").await?;
    ensure!(
        status == 404,
        "no group created without groups:read: {status}"
    );
    ctl.ok(&["groups", "apply", "g404", "-f", path_str(&g404_file)?])?;
    g404["memoryMb"] = json!(512);
    std::fs::write(&g404_file, serde_json::to_string(&g404)?)?;
    refused_to_writer()?;
    let (_, group) = rest.get("/groups/g404").await?;
    ensure!(group["revision"] == 1, "{group}");
    ctl.ok(&["groups", "delete", "g404"])?;
    rest.wait_gone("/groups/g404", CONDITION_WITHIN).await?;
    ctl.ok(&["tokens", "delete", &writer_id])?;

    ctl.deletes("tokens", &token_id)?;
    ensure!(
        find_doc(cluster, "api_tokens", &token_id).await?.is_none(),
        "the token record is gone"
    );
    let err = ctl.fails(&["--token", &api_token, "groups", "list"])?;
    ensure!(err.contains("401"), "a deleted token: {err}");
    Ok(())
}

/// User "alice" (a viewer) signed in as a second context, disabled, enabled and deleted.
pub async fn users_and_contexts(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest, api) = (&stack.ctl, &stack.rest, &stack.api);

    // ---- users create (password on stdin), a second context, disable, enable, delete.
    let alice_password = "alice-password-1234";
    let out = ctl.ok_with(
        &[
            "users",
            "create",
            "alice",
            "-r",
            "viewer",
            "--password-stdin",
        ],
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
    ctl.says(
        &["context", "list"],
        &["CURRENT", "spare", "local", "alice"],
    )?;
    ensure!(
        contexts_listed(ctl)? == ("spare".to_owned(), vec!["local".into(), "spare".into()]),
        "spare is current"
    );
    ensure!(
        ctl.ok(&["context", "current"])? == "spare\n",
        "context current"
    );
    let listed = ctl.json(&["context", "list"])?;
    ensure!(
        lists(&listed, |c| c["name"] == "spare"
            && c["current"] == true
            && c["user"] == "alice"
            && c["signedIn"] == true),
        "{listed}"
    );
    let listed = ctl.json(&["groups", "list"])?;
    ensure!(has_group(&listed, "lobby"), "alice reads groups: {listed}");
    let err = ctl.fails(&["nodes", "cordon", "node-1"])?;
    ensure!(err.contains("403"), "a viewer cannot cordon: {err}");
    ctl.says(
        &["context", "use", "local"],
        &["now using context \"local\""],
    )?;
    ensure!(ctl.saved()?["current"] == "local", "current context");
    ensure!(contexts_listed(ctl)?.0 == "local", "local is current");
    ctl.fails_saying(&["context", "use", "nowhere"], &["no context \"nowhere\""])?;
    ctl.ok(&["--context", "spare", "groups", "list"])?;

    ctl.says(&["users", "list"], &["alice", "viewer"])?;
    ctl.says(&["users", "disable", "alice"], &["user alice disabled"])?;
    let stored = get_doc(cluster, "users", "alice").await?;
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
    ctl.says(
        &["--context", "spare", "logout"],
        &["logged out of context \"spare\""],
    )?;
    let saved = ctl.saved()?;
    ensure!(
        saved["contexts"]["spare"]["token"].is_null() && saved["current"] == "local",
        "{saved}"
    );
    ctl.ok(&["users", "enable", "alice"])?;
    let stored = get_doc(cluster, "users", "alice").await?;
    ensure!(stored.get_bool("disabled") == Ok(false), "{stored:?}");
    api.login("alice", alice_password).await?;
    let listed = ctl.json(&["users", "list"])?;
    ensure!(
        lists(&listed, |u| u["username"] == "alice"
            && u["disabled"] == false),
        "{listed}"
    );
    ctl.deletes("users", "alice")?;
    let (status, _) = rest.get("/users/alice").await?;
    ensure!(status == 404, "deleted: {status}");

    // ---- context rename (the current one stays current) and delete.
    ctl.says(
        &["context", "rename", "spare", "alice-ctx"],
        &["renamed to \"alice-ctx\""],
    )?;
    let saved = ctl.saved()?;
    ensure!(
        saved["contexts"]["spare"].is_null()
            && saved["contexts"]["alice-ctx"]["user"] == "alice"
            && saved["current"] == "local",
        "{saved}"
    );
    ctl.fails_saying(
        &["context", "rename", "alice-ctx", "local"],
        &["\"local\" exists already"],
    )?;
    ctl.fails_saying(
        &["context", "rename", "nowhere", "x"],
        &["no context \"nowhere\""],
    )?;
    ctl.says(&["context", "rename", "local", "main"], &["renamed"])?;
    ensure!(
        ctl.ok(&["context", "current"])? == "main\n",
        "the current one renamed"
    );
    ctl.ok(&["groups", "list"])?;
    ctl.ok(&["context", "rename", "main", "local"])?;
    ctl.says(
        &["context", "delete", "alice-ctx"],
        &["context \"alice-ctx\" deleted"],
    )?;
    ensure!(
        contexts_listed(ctl)? == ("local".to_owned(), vec!["local".into()]),
        "alice-ctx is gone"
    );
    ctl.fails_saying(
        &["--context", "alice-ctx", "groups", "list"],
        &["no context"],
    )?;
    Ok(())
}

/// A custom role created, listed and deleted.
pub async fn roles(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let ctl = &stack.ctl;

    // ---- roles create, list, delete.
    ctl.says(
        &[
            "roles",
            "create",
            "reader",
            "-p",
            "groups:read",
            "-p",
            "nodes:read",
        ],
        &["role reader created"],
    )?;
    let stored = get_doc(cluster, "roles", "reader").await?;
    ensure!(stored.get_array("permissions")?.len() == 2, "{stored:?}");
    ctl.says(&["roles", "list"], &["reader", "nodes:read", "operator"])?;
    let listed = ctl.json(&["roles", "list"])?;
    ensure!(
        lists(&listed, |r| r["name"] == "reader" && r["builtin"] == false),
        "{listed}"
    );
    ctl.deletes("roles", "reader")?;
    ensure!(
        find_doc(cluster, "roles", "reader").await?.is_none(),
        "the role is gone"
    );
    Ok(())
}
