//! Sign-in: `login --password-stdin --name` saves the session as the current context, a wrong
//! password saves nothing; then `status` and `system info`.

use anyhow::{Context, ensure};
use prexor_acceptance::{Proc, Rest, fields_of};
use prexor_testkit::eventually;

use crate::ctl::Ctl;
use crate::{CONDITION_WITHIN, Stack};

/// Signs in as the admin with `password`; REST with the session prexorctl saved.
pub async fn login(ctl: &Ctl, api: &Proc, password: &str) -> anyhow::Result<Rest> {
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
    let rest = api.rest(&session);
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
    Ok(rest)
}

/// `status` and `system info`, as a table, JSON and YAML.
pub async fn status_and_info(stack: &Stack) -> anyhow::Result<()> {
    let ctl = &stack.ctl;

    // ---- status: exit 0 once every replica is ready and measured; lists every replica.
    let table = eventually("prexorctl status exits 0", CONDITION_WITHIN, async || {
        let run = ctl.run(&["status"], None)?;
        Ok(run.success.then_some(run.stdout))
    })
    .await?;
    for replica in ["api-1", "scheduler-1", "gateway-1", "gateway-2", "ca-1"] {
        ensure!(table.contains(replica), "status lists {replica}:\n{table}");
    }
    ensure!(table.contains("coordination.store = available"), "{table}");
    let status = ctl.json(&["status"])?;
    let kinds = fields_of(&status["replicas"], "kind")?;
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
    ctl.says(&["system", "info"], &["replicaId", "api-1"])?;
    Ok(())
}
