//! `prexorctl deployments`: start a rolling deployment, follow it, pause, resume, roll back.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{read_spec, seg};
use crate::Output;
use crate::client::Client;
use crate::render::{self, Column};

const DEPLOYMENT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("GROUP", "/group"),
    ("STATE", "/state"),
    ("UPDATED", "/live/updated"),
    ("ACTIVE", "/live/active"),
    ("ROLLED BACK", "/rolledBack"),
    ("BY", "/createdBy"),
];

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Roll a group out to a new spec (or its current one again).
    Create {
        group: String,
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        batch_size: i64,
        #[arg(long, default_value_t = 1)]
        max_unavailable: i64,
        /// Follow the rollout until it is done, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    List {
        group: String,
    },
    Get {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Back to the spec the deployment started from.
    Rollback {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

/// Follows a deployment until it is done, with a progress bar.
async fn wait_deployment(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    loop {
        let deployment: Value = client.get(&format!("/deployments/{}", seg(id))).await?;
        let updated = deployment["live"]["updated"].as_u64().unwrap_or(0);
        let total = deployment["live"]["active"]
            .as_u64()
            .unwrap_or(0)
            .max(updated);
        let state = deployment["state"].as_str().unwrap_or("?");
        let width = 30usize;
        let filled = if total == 0 {
            width
        } else {
            (updated as usize * width) / total as usize
        };
        eprint!(
            "\r[{}{}] {updated}/{total} {state:<8}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        match state {
            "DONE" => {
                eprintln!();
                println!("deployment {id} done");
                return Ok(ExitCode::SUCCESS);
            }
            "PAUSED" => {
                eprintln!();
                println!("deployment {id} is paused (prexorctl deployments resume {id})");
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

pub async fn deployments(
    client: &Client,
    command: DeploymentCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let (answer, wait): (Value, bool) = match command {
        DeploymentCommand::Create {
            group,
            file,
            batch_size,
            max_unavailable,
            wait,
        } => {
            let mut body = json!({ "batchSize": batch_size, "maxUnavailable": max_unavailable });
            if let Some(file) = &file {
                body["spec"] = read_spec(file)?;
            }
            let answer = client
                .send(
                    Method::POST,
                    &format!("/groups/{}/deployments", seg(&group)),
                    body,
                )
                .await?;
            (answer, wait)
        }
        DeploymentCommand::List { group } => {
            render::list(
                &client
                    .get(&format!("/groups/{}/deployments", seg(&group)))
                    .await?,
                DEPLOYMENT_COLUMNS,
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Get { id } => {
            render::object(
                &client.get(&format!("/deployments/{}", seg(&id))).await?,
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Pause { id } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/pause", seg(&id)),
                    json!({}),
                )
                .await?,
            false,
        ),
        DeploymentCommand::Resume { id, wait } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/resume", seg(&id)),
                    json!({}),
                )
                .await?,
            wait,
        ),
        DeploymentCommand::Rollback { id, wait } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/rollback", seg(&id)),
                    json!({}),
                )
                .await?,
            wait,
        ),
    };
    let id = answer["id"].as_str().unwrap_or_default().to_owned();
    render::done(
        &answer,
        &format!(
            "deployment {id}: {}",
            answer["state"].as_str().unwrap_or("?")
        ),
        out,
    )?;
    if wait {
        return wait_deployment(client, &id).await;
    }
    Ok(ExitCode::SUCCESS)
}
