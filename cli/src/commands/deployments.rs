//! `prexorctl deployments`: start a rolling deployment, follow it, pause, resume, roll back.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use prexor_client::NewDeployment;
use prexor_domain::canary::{CanaryGate, Strategy};
use prexor_model::workflows::DeploymentState;

use super::{Client, read_spec};
use crate::Output;
use crate::progress::Progress;
use crate::render::{self, Column};
use crate::watch::{Watch, watch};

/// The events that change what `deployments list` and `get` show.
const DEPLOYMENT_EVENTS: &str = "DEPLOYMENT_CREATED,DEPLOYMENT_PAUSED,DEPLOYMENT_ROLLING,DEPLOYMENT_ROLLED_BACK,DEPLOYMENT_PROGRESS,DEPLOYMENT_DONE";

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
        /// The group to roll out.
        #[arg(add = crate::complete::groups())]
        group: String,
        /// The new spec (.json or .yaml); without it, the group's current spec again.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// Instances replaced at a time.
        #[arg(long, default_value_t = 1)]
        batch_size: i64,
        /// Instances that may be down at once during the rollout.
        #[arg(long, default_value_t = 1)]
        max_unavailable: i64,
        /// Update `--canary-instances` first and roll the rest only once they pass the health
        /// gate (ready, at least `--canary-min-tps` for `--canary-healthy-seconds`); rolled back
        /// automatically after `--canary-timeout-seconds` (docs/scheduling.md, "Canary
        /// deployments").
        #[arg(long)]
        canary: bool,
        /// Canaries updated first.
        #[arg(long, default_value_t = 1, requires = "canary")]
        canary_instances: u32,
        /// The TPS each canary must report at least.
        #[arg(long, default_value_t = 18.0, requires = "canary")]
        canary_min_tps: f64,
        /// How long the canaries must stay healthy.
        #[arg(long, default_value_t = 60, requires = "canary")]
        canary_healthy_seconds: u32,
        /// Rolled back when the gate has not passed this long after the start.
        #[arg(long, default_value_t = 600, requires = "canary")]
        canary_timeout_seconds: u32,
        /// Follow the rollout until it is done, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// A group's deployments.
    List {
        /// The group.
        #[arg(add = crate::complete::groups())]
        group: String,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// One deployment and its progress.
    Get {
        /// The deployment's id.
        id: String,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Stop replacing instances (the ones updated stay).
    Pause {
        /// The deployment's id.
        id: String,
    },
    /// Go on with a paused deployment.
    Resume {
        /// The deployment's id.
        id: String,
        /// Follow the rollout until it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Back to the spec the deployment started from.
    Rollback {
        /// The deployment's id.
        id: String,
        /// Follow the rollback until it is done.
        #[arg(long)]
        wait: bool,
    },
}

/// Follows a deployment until it is done: a progress bar on a terminal, else a line per change.
async fn wait_deployment(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new(&format!("deployment {id}"));
    loop {
        let deployment = client.deployment(id).await?;
        let updated = deployment.live.updated;
        let total = deployment.live.active.max(updated);
        let state = if deployment.state.is_empty() {
            "?"
        } else {
            deployment.state.as_str()
        };
        progress.update(Some((updated, total)), state);
        match state.parse() {
            Ok(DeploymentState::Done) => {
                progress.finish();
                println!("deployment {id} done");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(DeploymentState::Paused) => {
                progress.finish();
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
            canary,
            canary_instances,
            canary_min_tps,
            canary_healthy_seconds,
            canary_timeout_seconds,
            wait,
        } => {
            let new = NewDeployment {
                spec: file.as_deref().map(read_spec).transpose()?,
                batch_size,
                max_unavailable,
                strategy: canary.then_some(Strategy::Canary),
                canary: canary.then_some(CanaryGate {
                    instances: canary_instances,
                    min_tps: canary_min_tps,
                    healthy_seconds: canary_healthy_seconds,
                    timeout_seconds: canary_timeout_seconds,
                }),
            };
            (client.create_deployment(&group, &new).await?, wait)
        }
        DeploymentCommand::List {
            group,
            watch: false,
        } => {
            render::list(&client.deployments(&group).await?, DEPLOYMENT_COLUMNS, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::List { group, watch: true } => {
            let on = Watch {
                types: DEPLOYMENT_EVENTS,
                subject: None,
            };
            return watch(client, on, async || {
                let listed = client.deployments(&group).await?;
                render::list_string(&listed, DEPLOYMENT_COLUMNS, &[], out)
            })
            .await;
        }
        DeploymentCommand::Get { id, watch: false } => {
            render::object(&client.deployment(&id).await?, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Get { id, watch: true } => {
            let on = Watch {
                types: DEPLOYMENT_EVENTS,
                subject: Some(&id),
            };
            return watch(client, on, async || {
                render::object_string(&client.deployment(&id).await?, out)
            })
            .await;
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
