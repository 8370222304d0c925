//! `prexorctl groups`: list, show, apply (create or update from a spec file), delete, start an instance.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{Client, read_spec};
use crate::Output;
use crate::render::{self, Column};

const GROUP_COLUMNS: &[Column] = &[
    ("NAME", "/name"),
    ("REVISION", "/revision"),
    ("SCALING", "/spec/scaling"),
    ("MIN", "/spec/minInstances"),
    ("MAX", "/spec/maxInstances"),
    ("INSTANCES", "/status/instances"),
    ("PAUSED UNTIL", "/status/pausedUntilMs"),
    ("DELETING", "/deleting"),
];
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group with its instance counts.
    List,
    /// One group: spec, revision, status.
    Get { name: String },
    /// Create the group, or update it to the spec (JSON or YAML file; fields in docs/scheduling.md).
    Apply {
        name: String,
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Stop the group's instances, then remove it.
    Delete { name: String },
}

pub async fn groups(
    client: &Client,
    command: GroupCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::List => render::list(&client.groups().await?, GROUP_COLUMNS, out)?,
        GroupCommand::Get { name } => render::object(&client.group(&name).await?, out)?,
        GroupCommand::Apply { name, file } => {
            let spec = read_spec(&file)?;
            let answer = match client.group(&name).await {
                Ok(current) => {
                    client
                        .update_group(&name, &spec, Some(current.revision))
                        .await?
                }
                Err(err) if err.status_code() == Some(404) => {
                    client.create_group(&name, &spec).await?
                }
                Err(err) => return Err(err.into()),
            };
            render::done(
                &answer,
                &format!("group {name} at revision {}", answer.revision),
                out,
            )?;
        }
        GroupCommand::Delete { name } => {
            let answer = client.delete_group(&name).await?;
            render::done(
                &answer,
                &format!("group {name} is being deleted: its instances stop, then it is removed"),
                out,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
