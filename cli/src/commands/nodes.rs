//! `prexorctl nodes`: list, show, cordon, uncordon, drain, join tokens, delete.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::seg;
use crate::Output;
use crate::client::Client;
use crate::render::{self, Column};

const NODE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("STATE", "/state"),
    ("GATEWAY", "/gateway"),
    ("CORDONED", "/cordoned"),
    ("DRAIN", "/drain/state"),
    ("RESERVED MB", "/reservedMb"),
    ("ALLOCATABLE MB", "/resources/memoryAllocatableMb"),
    ("LABELS", "/labels"),
];
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    List,
    Get {
        id: String,
    },
    /// No new placements on the node.
    Cordon {
        id: String,
    },
    Uncordon {
        id: String,
    },
    /// Move everything off the node (durable; finishes even if a controller dies).
    Drain {
        id: String,
        /// Time the instances get to stop before they are killed.
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Shut the daemon down once the node is empty.
        #[arg(long)]
        shutdown: bool,
        /// Wait until the drain is done.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a drain and uncordon the node.
    Undrain {
        id: String,
    },
    /// Forget a disconnected node.
    Delete {
        id: String,
    },
    /// A single-use join token for a new node (put it in its daemon.joinToken).
    JoinToken {
        id: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub async fn nodes(client: &Client, command: NodeCommand, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::List => render::list(&client.get("/nodes").await?, NODE_COLUMNS, out)?,
        NodeCommand::Get { id } => {
            render::object(&client.get(&format!("/nodes/{}", seg(&id))).await?, out)?
        }
        NodeCommand::Cordon { id } => {
            let _: Value = client
                .send(
                    Method::POST,
                    &format!("/nodes/{}/cordon", seg(&id)),
                    json!({}),
                )
                .await?;
            println!("node {id} cordoned");
        }
        NodeCommand::Uncordon { id } => {
            let _: Value = client
                .send(
                    Method::POST,
                    &format!("/nodes/{}/uncordon", seg(&id)),
                    json!({}),
                )
                .await?;
            println!("node {id} uncordoned");
        }
        NodeCommand::Drain {
            id,
            timeout,
            shutdown,
            wait,
        } => {
            let answer: Value = client
                .send(
                    Method::POST,
                    &format!("/nodes/{}/drain", seg(&id)),
                    json!({ "timeout": timeout, "shutdown": shutdown }),
                )
                .await?;
            render::done(&answer, &format!("draining node {id}"), out)?;
            if wait {
                loop {
                    let drain: Value = client.get(&format!("/nodes/{}/drain", seg(&id))).await?;
                    let state = drain["state"].as_str().unwrap_or("?").to_owned();
                    if matches!(state.as_str(), "DONE" | "CANCELLED") {
                        println!("drain of {id}: {state}");
                        if state == "CANCELLED" {
                            // Not drained: a script waiting for it must not go on as if it were.
                            return Ok(ExitCode::FAILURE);
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        NodeCommand::Undrain { id } => {
            let _: Value = client
                .send(
                    Method::POST,
                    &format!("/nodes/{}/undrain", seg(&id)),
                    json!({}),
                )
                .await?;
            println!("node {id}: drain cancelled, uncordoned");
        }
        NodeCommand::Delete { id } => {
            let _: Value = client.delete(&format!("/nodes/{}", seg(&id))).await?;
            println!("node {id} deleted");
        }
        NodeCommand::JoinToken { id, ttl } => {
            let answer: Value = client
                .send(
                    Method::POST,
                    &format!("/nodes/{}/join-token", seg(&id)),
                    json!({ "expiresIn": ttl }),
                )
                .await?;
            match out {
                Output::Table => println!("{}", answer["token"].as_str().unwrap_or_default()),
                _ => render::object(&answer, out)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
