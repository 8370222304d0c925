//! `prexorctl nodes`: list, show, cordon, uncordon, drain, join tokens, delete.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use prexor_client::DrainRequest;
use prexor_model::nodes::DrainState;

use super::Client;
use crate::Output;
use crate::progress::Progress;
use crate::render::{self, Column};
use crate::watch::{Watch, watch};

/// The events that change what `nodes list` and `get` show.
const NODE_EVENTS: &str = "NODE_ONLINE,NODE_OFFLINE,NODE_UNREACHABLE,NODE_CORDONED,NODE_UNCORDONED,NODE_DELETED,NODE_DRAIN_REQUESTED,NODE_DRAIN_STARTED,NODE_DRAINED";

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
/// More with `-o wide`.
const NODE_WIDE: &[Column] = &[
    ("CPU", "/resources/cpuCores"),
    ("MEMORY MB", "/resources/memoryTotalMb"),
    ("VERSION", "/version"),
    ("HOST", "/hostId"),
    ("HEARTBEAT", "/lastHeartbeatMs"),
];
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: state, gateway, cordon, drain, memory, labels.
    List {
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Everything about one node (its resources, drain, and how its servers are isolated).
    #[command(alias = "show")]
    Get {
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
        id: String,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// No new placements on the node.
    Cordon {
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
        id: String,
    },
    /// Placements on the node again.
    Uncordon {
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
        id: String,
    },
    /// Move everything off the node (durable; finishes even if a controller dies).
    Drain {
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
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
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
        id: String,
    },
    /// Forget a disconnected node.
    Delete {
        /// The node's id.
        #[arg(add = crate::complete::nodes())]
        id: String,
    },
    /// A single-use join token for a new node (put it in its daemon.joinToken).
    JoinToken {
        /// The new node's id.
        id: String,
        /// How long the token may be redeemed.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub async fn nodes(client: &Client, command: NodeCommand, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::List { watch: false } => {
            render::list_wide(&client.nodes().await?, NODE_COLUMNS, NODE_WIDE, out)?;
        }
        NodeCommand::List { watch: true } => {
            let on = Watch {
                types: NODE_EVENTS,
                subject: None,
            };
            return watch(client, on, async || {
                render::list_string(&client.nodes().await?, NODE_COLUMNS, NODE_WIDE, out)
            })
            .await;
        }
        NodeCommand::Get { id, watch: false } => render::object(&client.node(&id).await?, out)?,
        NodeCommand::Get { id, watch: true } => {
            let on = Watch {
                types: NODE_EVENTS,
                subject: Some(&id),
            };
            return watch(client, on, async || {
                render::object_string(&client.node(&id).await?, out)
            })
            .await;
        }
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
                let mut progress = Progress::new(&format!("drain of {id}"));
                loop {
                    let drain = client.drain(&id).await?;
                    progress.update(None, &drain.state);
                    let state = drain.state.parse().ok();
                    if matches!(state, Some(DrainState::Done | DrainState::Cancelled)) {
                        progress.finish();
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
                _ if out.human() => println!("{}", answer.token),
                _ => render::object(&answer, out)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
