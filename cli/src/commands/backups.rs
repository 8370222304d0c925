//! `prexorctl backup` and `prexorctl restore`: create, list, verify, download, upload, delete, restore.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, segment};
use crate::Output;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Snapshot the cluster's state now (kept in the cluster; `download` for a local copy).
    Create {
        /// Also save the archive to this file.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
    },
    /// Every backup, newest first.
    List,
    /// One backup and its manifest.
    Get {
        /// The backup's id.
        id: String,
    },
    /// Re-read a backup and check every count and hash; exits 1 when it is damaged.
    Verify {
        /// The backup's id.
        id: String,
    },
    /// Save a backup's archive to a file.
    Download {
        /// The backup's id.
        id: String,
        /// Where to save the archive.
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
    },
    /// Import an archive (checked before it is kept) under ID.
    Upload {
        /// The id to keep it under.
        id: String,
        /// The archive (from `backup download`).
        file: std::path::PathBuf,
    },
    /// Delete a backup kept in the cluster.
    Delete {
        /// The backup's id.
        id: String,
    },
}

pub async fn backups(
    client: &Client,
    command: BackupCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let path = |id: &str| format!("/backups/{}", segment(id));
    match command {
        BackupCommand::Create { file } => {
            let made: Value = client.post("/backups", &json!({})).await?;
            let id = made["id"].as_str().unwrap_or_default().to_owned();
            if let Some(file) = file {
                save(client, &id, &file).await?;
            }
            match out {
                _ if out.human() => println!(
                    "backup {id} created ({} bytes)",
                    made["size"].as_i64().unwrap_or(0)
                ),
                _ => render::object(&made, out)?,
            }
        }
        BackupCommand::List => render::list(
            &client.all::<Value>("/backups").await?,
            &[
                ("ID", "/id"),
                ("CREATED", "/createdAtMs"),
                ("BY", "/createdBy"),
                ("SIZE", "/size"),
                ("CLUSTER", "/clusterId"),
                ("BLOBS", "/blobs"),
            ],
            out,
        )?,
        BackupCommand::Get { id } => {
            render::object(&client.get::<Value>(&path(&id)).await?, out)?;
        }
        BackupCommand::Verify { id } => {
            let checked: Value = client
                .post(&format!("{}/verify", path(&id)), &json!({}))
                .await?;
            match out {
                _ if out.human() => println!(
                    "backup {id} is intact: {} collections, {} blobs, every count and hash as in its manifest",
                    checked["collections"].as_object().map_or(0, |c| c.len()),
                    checked["blobs"]
                ),
                _ => render::object(&checked, out)?,
            }
        }
        BackupCommand::Download { id, file } => {
            save(client, &id, &file).await?;
            println!("backup {id} saved to {}", file.display());
        }
        BackupCommand::Upload { id, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let made: Value = client
                .put_bytes(&format!("{}/archive", path(&id)), bytes)
                .await?;
            match out {
                _ if out.human() => println!("backup {id} imported from {}", file.display()),
                _ => render::object(&made, out)?,
            }
        }
        BackupCommand::Delete { id } => {
            let _: Value = client.delete(&path(&id)).await?;
            println!("backup {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn save(client: &Client, id: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = client
        .get_bytes(&format!("/backups/{}/archive", segment(id)))
        .await?;
    std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))
}

/// `prexorctl restore ID`: replaces the cluster's configuration with the backup's while every
/// replica keeps running.
pub async fn restore(
    client: &Client,
    id: &str,
    dry_run: bool,
    force: bool,
    timeout: Option<String>,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "dryRun": dry_run, "force": force });
    if let Some(timeout) = timeout {
        body["timeout"] = json!(timeout);
    }
    let answer: Value = client
        .post(&format!("/backups/{}/restore", segment(id)), &body)
        .await?;
    if !out.human() {
        render::object(&answer, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {id}:",
        if dry_run {
            "restoring would change, for backup"
        } else {
            "restored backup"
        }
    );
    let plan = &answer["plan"];
    for (name, change) in plan["replace"].as_object().into_iter().flatten() {
        let list = |key: &str| -> String {
            change[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "  {name}: keep {}, add [{}], remove [{}]",
            change["keep"],
            list("add"),
            list("remove")
        );
    }
    for (name, added) in plan["addMissing"].as_object().into_iter().flatten() {
        println!("  {name}: add {added} missing");
    }
    if dry_run {
        println!("nothing was changed (dry run)");
    } else {
        println!(
            "{} leases taken and released; the schedulers now reconcile what runs with the restored configuration",
            answer["leasesTaken"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
