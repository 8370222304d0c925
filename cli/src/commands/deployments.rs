//! `prexorctl deployments`: start a rolling deployment, follow it, pause, resume, roll back.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use prexor_client::NewDeployment;
use prexor_model::workflows::DeploymentState;

use super::{Client, read_spec};
use crate::Output;
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
        let deployment = client.deployment(id).await?;
        let updated = deployment.live.updated;
        let total = deployment.live.active.max(updated);
        let state = if deployment.state.is_empty() {
            "?"
        } else {
            deployment.state.as_str()
        };
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
        match state.parse() {
            Ok(DeploymentState::Done) => {
                eprintln!();
                println!("deployment {id} done");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(DeploymentState::Paused) => {
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
    let (answer, wait) = match command {
        DeploymentCommand::Create {
            group,
            file,
            batch_size,
            max_unavailable,
            wait,
        } => {
            let new = NewDeployment {
                spec: file.as_deref().map(read_spec).transpose()?,
                batch_size,
                max_unavailable,
            };
            (client.create_deployment(&group, &new).await?, wait)
        }
        DeploymentCommand::List { group } => {
            render::list(&client.deployments(&group).await?, DEPLOYMENT_COLUMNS, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Get { id } => {
            render::object(&client.deployment(&id).await?, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Pause { id } => (client.pause_deployment(&id).await?, false),
        DeploymentCommand::Resume { id, wait } => (client.resume_deployment(&id).await?, wait),
        DeploymentCommand::Rollback { id, wait } => (client.rollback_deployment(&id).await?, wait),
    };
    let state = if answer.state.is_empty() {
        "?"
    } else {
        answer.state.as_str()
    };
    render::done(&answer, &format!("deployment {}: {state}", answer.id), out)?;
    if wait {
        return wait_deployment(client, &answer.id).await;
    }
    Ok(ExitCode::SUCCESS)
}
