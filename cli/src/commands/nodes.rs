//! `prexorctl nodes`: list, show, cordon, uncordon, drain, join tokens, delete.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use prexor_client::DrainRequest;
use prexor_model::nodes::DrainState;

use super::Client;
use crate::Output;
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
    /// Everything about one node (its resources, drain, and how its servers are isolated).
    #[command(alias = "show")]
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
        NodeCommand::List => render::list(&client.nodes().await?, NODE_COLUMNS, out)?,
        NodeCommand::Get { id } => render::object(&client.node(&id).await?, out)?,
        NodeCommand::Cordon { id } => {
            client.cordon(&id, true).await?;
            println!("node {id} cordoned");
        }
        NodeCommand::Uncordon { id } => {
            client.cordon(&id, false).await?;
            println!("node {id} uncordoned");
        }
        NodeCommand::Drain {
            id,
            timeout,
            shutdown,
            wait,
        } => {
            let request = DrainRequest {
                timeout: Some(timeout),
                shutdown,
            };
            let answer = client.drain_node(&id, &request).await?;
            render::done(&answer, &format!("draining node {id}"), out)?;
            if wait {
                loop {
                    let drain = client.drain(&id).await?;
                    let state = drain.state.parse().ok();
                    if matches!(state, Some(DrainState::Done | DrainState::Cancelled)) {
                        println!("drain of {id}: {}", drain.state);
                        if state == Some(DrainState::Cancelled) {
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
            client.undrain(&id).await?;
            println!("node {id}: drain cancelled, uncordoned");
        }
        NodeCommand::Delete { id } => {
            client.delete_node(&id).await?;
            println!("node {id} deleted");
        }
        NodeCommand::JoinToken { id, ttl } => {
            let answer = client.join_token(&id, &ttl).await?;
            match out {
                Output::Table => println!("{}", answer.token),
                _ => render::object(&answer, out)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
