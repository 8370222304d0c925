//! `prexorctl groups`: list, show, apply (create or update from a spec file), delete, start an instance.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{Client, read_spec};
use crate::Output;
use crate::render::{self, Column};
use crate::watch::{Watch, watch};

/// The events that change what `groups list` and `get` show.
const GROUP_EVENTS: &str =
    "GROUP_CREATED,GROUP_UPDATED,GROUP_DELETING,GROUP_DELETED,GROUP_SCALED,INSTANCE_STATE_CHANGED";

const GROUP_COLUMNS: &[Column] = &[
    ("NAME", "/name"),
    ("REVISION", "/revision"),
    ("SCALING", "/spec/scaling"),
    ("MIN", "/spec/minInstances"),
    ("MAX", "/spec/maxInstances"),
    ("INSTANCES", "/status/instances"),
    ("WARM", "/status/warm"),
    ("PAUSED UNTIL", "/status/pausedUntilMs"),
    ("DELETING", "/deleting"),
];
/// More with `-o wide`.
const GROUP_WIDE: &[Column] = &[
    ("PLATFORM", "/spec/platform"),
    ("VERSION", "/spec/version"),
    ("MEMORY MB", "/spec/memoryMb"),
    ("MAINTENANCE", "/spec/maintenance"),
    ("AFFINITY", "/spec/affinity"),
];
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group with its instance counts.
    List {
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// One group: spec, revision, status.
    Get {
        /// The group's name.
        #[arg(add = crate::complete::groups())]
        name: String,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Create the group, or update it to the spec (JSON or YAML file; fields in docs/scheduling.md).
    Apply {
        /// The group's name.
        #[arg(add = crate::complete::groups())]
        name: String,
        /// The spec file (.json, or .yaml / .yml).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Why the group has the instances it has: its scaling, and each node's verdict from the
    /// last placement that left instances missing.
    Explain {
        /// The group's name.
        #[arg(add = crate::complete::groups())]
        name: String,
    },
    /// Stop the group's instances, then remove it.
    Delete {
        /// The group's name.
        #[arg(add = crate::complete::groups())]
        name: String,
    },
}

pub async fn groups(
    client: &Client,
    command: GroupCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::List { watch: false } => {
            render::list_wide(&client.groups().await?, GROUP_COLUMNS, GROUP_WIDE, out)?;
        }
        GroupCommand::List { watch: true } => {
            let on = Watch {
                types: GROUP_EVENTS,
                subject: None,
            };
            return watch(client, on, async || {
                render::list_string(&client.groups().await?, GROUP_COLUMNS, GROUP_WIDE, out)
            })
            .await;
        }
        GroupCommand::Get { name, watch: false } => {
            render::object(&client.group(&name).await?, out)?;
        }
        GroupCommand::Get { name, watch: true } => {
            let on = Watch {
                types: GROUP_EVENTS,
                subject: Some(&name),
            };
            return watch(client, on, async || {
                render::object_string(&client.group(&name).await?, out)
            })
            .await;
        }
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
        GroupCommand::Explain { name } => {
            let explained = client.explain_group(&name).await?;
            if matches!(out, Output::Table | Output::Wide) {
                print_explanation(&explained);
            } else {
                render::object(&explained, out)?;
            }
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

/// A group's explanation as lines and a table of node verdicts.
fn print_explanation(explained: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    println!(
        "group:    {} (revision {})",
        text(&explained["group"]),
        text(&explained["revision"])
    );
    println!(
        "wanted:   {}   active: {}",
        text(&explained["wanted"]),
        text(&explained["active"])
    );
    println!("scaling:  {}", text(&explained["scaling"]));
    let placement = &explained["placement"];
    if placement.is_null() {
        println!("placement: every placement so far found room");
        return;
    }
    println!("placement: {}", text(&placement["outcome"]));
    let nodes = placement["nodes"].as_array().cloned().unwrap_or_default();
    let width = nodes
        .iter()
        .map(|n| text(&n["node"]).len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("  {:width$}  ELIGIBLE  REASON", "NODE");
    for node in &nodes {
        let eligible = if node["eligible"] == true {
            "yes"
        } else {
            "no"
        };
        println!(
            "  {:width$}  {eligible:8}  {}",
            text(&node["node"]),
            text(&node["reason"])
        );
    }
    let judged = placement["nodesJudged"].as_u64().unwrap_or(0);
    if judged > nodes.len() as u64 {
        println!(
            "  … {} more nodes; refused by reason: {}",
            judged - nodes.len() as u64,
            placement["refusedByReason"]
        );
    }
}
