//! Backup and restore while 2 schedulers and 2 gateways keep running: backup → mutate → restore
//! gives back the backup's configuration; servers the restored state still wants are never
//! restarted, the rest are stopped the normal way; every scope's fence mark went up, so nothing
//! the deposed holders still send is applied; a dry run changes nothing; a damaged archive and a
//! backup of another cluster are refused.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::Document;
use prexor_acceptance::{
    Cluster, binary, create_group, fence_mark, group_spec, process_journal, running,
    scenario_tests, system, tar_gz, tar_gz_entries, tar_gz_mode, wait_doc, wait_state,
};
use serde_json::{Value, json};

/// `archive` with its manifest's cluster id replaced (every hash still matches).
fn foreign(archive: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut files = tar_gz_entries(archive)?;
    for (path, content) in &mut files {
        if path == "manifest.json" {
            let mut manifest: Value = serde_json::from_slice(content)?;
            manifest["clusterId"] = json!("some-other-cluster");
            *content = manifest.to_string().into_bytes();
        }
    }
    tar_gz_mode(files, 0o600)
}

async fn backup_restore(cluster: &Cluster) -> anyhow::Result<()> {
    let system = system(cluster, &["node-1"], 2).await?;
    let rest = system.rest.clone();
    let token = rest.token().to_owned();
    let ctl = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let output = Command::new(binary("prexorctl")?)
            .args(["--controller", &system.api.http, "--token", &token])
            .args(args)
            .env("PREXORCTL_CONFIG", cluster.dir.join("prexorctl.json"))
            .output()?;
        Ok((
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    };

    // The state to keep: a group of two, a template at version 1, a user.
    create_group(&rest, "lobby", group_spec(2)?).await?;
    let v1 = tar_gz(&[("server.properties", "motd=v1\n")])?;
    let (status, body) = rest.put_bytes("/templates/base", v1).await?;
    ensure!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = rest
        .post(
            "/users",
            json!({ "username": "alice", "password": "correct-horse-battery", "roles": ["viewer"] }),
        )
        .await?;
    ensure!(status == 201, "{status} {body}");
    let before: Vec<Document> = running(cluster, &["lobby-1", "lobby-2"]).await?;

    let (ok, said) = ctl(&["backup", "create", "-o", "json"])?;
    ensure!(ok, "{said}");
    let made: Value = serde_json::from_str(&said)?;
    let id = made["id"].as_str().context("backup id")?.to_owned();
    let (ok, said) = ctl(&["backup", "verify", &id])?;
    ensure!(ok && said.contains("is intact"), "{said}");
    let (ok, listed) = ctl(&["backup", "list"])?;
    ensure!(ok && listed.contains(&id), "{listed}");

    // Changes after the backup.
    let (_, lobby) = rest.get("/groups/lobby").await?;
    let (status, body) = rest
        .put(
            "/groups/lobby",
            json!({ "spec": group_spec(3)?, "revision": lobby["revision"] }),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    create_group(&rest, "extra", group_spec(1)?).await?;
    let v2 = tar_gz(&[("server.properties", "motd=v2\n")])?;
    let (status, body) = rest.put_bytes("/templates/base", v2).await?;
    ensure!(status == 201 || status == 200, "{status} {body}");
    let (status, _) = rest.delete("/users/alice").await?;
    ensure!(status == 204, "{status}");
    running(cluster, &["lobby-3", "extra-1"]).await?;
    let lobby_mark = fence_mark(cluster, "group:lobby").await?;

    // A dry run prints the plan and changes nothing.
    let (ok, said) = ctl(&["restore", &id, "--dry-run", "-o", "json"])?;
    ensure!(ok, "{said}");
    let dry: Value = serde_json::from_str(&said)?;
    ensure!(
        dry["plan"]["replace"]["groups"]["remove"] == json!(["extra"])
            && dry["plan"]["replace"]["users"]["add"] == json!(["alice"]),
        "{dry}"
    );
    let (status, extra) = rest.get("/groups/extra").await?;
    ensure!(
        status == 200 && extra["deleting"] == false,
        "untouched: {status} {extra}"
    );
    ensure!(
        fence_mark(cluster, "group:lobby").await? == lobby_mark,
        "a dry run takes no lease"
    );

    // The restore, with both schedulers and both gateways running.
    let (ok, said) = ctl(&["restore", &id])?;
    ensure!(ok && said.contains("restored backup"), "{said}");
    let restored_mark = fence_mark(cluster, "group:lobby").await?;
    ensure!(
        restored_mark > lobby_mark,
        "the restore raised the fence mark ({lobby_mark} → {restored_mark})"
    );

    // The configuration is the backup's.
    let (_, lobby) = rest.get("/groups/lobby").await?;
    ensure!(lobby["spec"]["minInstances"] == 2, "{lobby}");
    let (status, template) = rest.get("/templates/base").await?;
    ensure!(
        status == 200 && template["current"] == 1,
        "{status} {template}"
    );
    let (status, alice) = rest.get("/users/alice").await?;
    ensure!(status == 200, "alice is back: {status} {alice}");
    // What the restored state does not want is stopped the normal way; what it wants keeps
    // running, never restarted.
    for id in ["lobby-3", "extra-1"] {
        wait_doc(cluster, "instances", id, "stopped after the restore", |d| {
            d.get_str("state") == Ok("STOPPED")
        })
        .await?;
    }
    rest.wait_gone("/groups/extra", Duration::from_secs(60))
        .await?;
    let after = running(cluster, &["lobby-1", "lobby-2"]).await?;
    for (was, now) in before.iter().zip(&after) {
        ensure!(
            was.get_str("planHash")? == now.get_str("planHash")?,
            "{} was restarted: {was:?} → {now:?}",
            was.get_str("_id")?
        );
    }
    let stopped = wait_state(cluster, "instances", "lobby-3", "STOPPED").await?;
    let token = stopped.get_document("_fence")?.get_i64("token")?;
    ensure!(
        token > lobby_mark,
        "lobby-3 was stopped under a token issued after the restore ({token} > {lobby_mark})"
    );
    let journal = process_journal(cluster, &["node-1"])?;
    let launches = journal.iter().filter(|e| e.event == "launch").count();
    ensure!(
        launches == 4,
        "lobby-1..3 and extra-1, each once: {journal:?}"
    );

    // A damaged archive is refused with what is wrong; so is another cluster's backup.
    let archive = rest.get_bytes(&format!("/backups/{id}/archive")).await?.1;
    let (status, body) = rest
        .put_bytes(
            "/backups/broken/archive",
            archive[..archive.len() / 2].to_vec(),
        )
        .await?;
    ensure!(
        status == 400
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("truncated or corrupt")),
        "{status} {body}"
    );
    let (status, body) = rest
        .put_bytes("/backups/elsewhere/archive", foreign(&archive)?)
        .await?;
    ensure!(status == 201, "{status} {body}");
    let (ok, said) = ctl(&["restore", "elsewhere", "--dry-run"])?;
    ensure!(
        !ok && said.contains("OTHER_CLUSTER") && said.contains("some-other-cluster"),
        "{said}"
    );
    let (ok, said) = ctl(&["restore", "elsewhere", "--dry-run", "--force"])?;
    ensure!(ok && said.contains("nothing was changed"), "{said}");
    let (ok, said) = ctl(&["backup", "delete", "elsewhere"])?;
    ensure!(ok, "{said}");
    let (ok, listed) = ctl(&["backup", "list", "-o", "json"])?;
    ensure!(
        ok && !listed.contains("elsewhere") && listed.contains(&id),
        "{listed}"
    );

    let last = system.schedulers.len().saturating_sub(1);
    system.finish(cluster, last).await
}

scenario_tests! {
    a_restore_under_running_replicas_brings_the_backup_back_and_restarts_nothing_it_keeps: backup_restore,
}
