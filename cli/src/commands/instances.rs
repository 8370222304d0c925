//! `prexorctl instances`: list, show, crashes, stop, kill, console (follow and type into it).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{request, seg};
use crate::Output;
use crate::client::{Client, read_events};
use crate::render::{self, Column};

const INSTANCE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("GROUP", "/group"),
    ("NODE", "/nodeId"),
    ("PORT", "/port"),
    ("STATE", "/state"),
    ("REPORTED", "/reported/state"),
    ("PID", "/reported/pid"),
    ("ATTEMPT", "/attempt"),
];
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Instances, filtered by group, node or state.
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    /// One instance with its plan and last report.
    Get { id: String },
    /// Start one more instance of a MANUAL group.
    Start { group: String },
    /// Stop gracefully (a STATIC or DYNAMIC group starts it again).
    Stop { id: String },
    /// Kill at once.
    Kill { id: String },
    /// Send one console line.
    Command { id: String, line: Vec<String> },
    /// Show the console; with --follow, keep printing (and send lines typed on stdin).
    Console {
        id: String,
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = 100)]
        lines: usize,
    },
    /// Crash records (exit code, log tail).
    Crashes { id: String },
}

pub async fn instances(
    client: &Client,
    command: InstanceCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        InstanceCommand::List { group, node, state } => {
            let mut query = Vec::new();
            for (key, value) in [("group", group), ("node", node), ("state", state)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", seg(&value)));
                }
            }
            let path = if query.is_empty() {
                "/instances".to_owned()
            } else {
                format!("/instances?{}", query.join("&"))
            };
            render::list(&client.get(&path).await?, INSTANCE_COLUMNS, out)?;
        }
        InstanceCommand::Get { id } => {
            render::object(&client.get(&format!("/instances/{}", seg(&id))).await?, out)?
        }
        InstanceCommand::Start { group } => {
            request(client, &format!("/groups/{}/instances", seg(&group)), out).await?
        }
        InstanceCommand::Stop { id } => {
            request(client, &format!("/instances/{}/stop", seg(&id)), out).await?
        }
        InstanceCommand::Kill { id } => {
            request(client, &format!("/instances/{}/kill", seg(&id)), out).await?
        }
        InstanceCommand::Command { id, line } => {
            if line.is_empty() {
                bail!(
                    "give the console line to send, e.g. `prexorctl instances command {id} say hello`"
                );
            }
            let _: Value = client
                .send(
                    Method::POST,
                    &format!("/instances/{}/command", seg(&id)),
                    json!({ "command": line.join(" ") }),
                )
                .await?;
            println!("sent to {id}");
        }
        InstanceCommand::Console { id, follow, lines } => {
            let response = client
                .stream(&format!("/instances/{}/console?lines={lines}", seg(&id)))
                .await?;
            if follow {
                spawn_console_input(client, &id);
            }
            let deadline =
                (!follow).then(|| std::time::Instant::now() + Duration::from_millis(500));
            let printing = read_events(response, |event, data| {
                if event == "error" {
                    bail!("{data}");
                }
                println!("{data}");
                Ok(deadline.is_none_or(|d| std::time::Instant::now() < d))
            });
            match deadline {
                // Without --follow: the history, then stop once it has arrived.
                Some(_) => {
                    // Elapsed is the normal end; an error event or a broken stream is not.
                    if let Ok(printed) =
                        tokio::time::timeout(Duration::from_secs(2), printing).await
                    {
                        printed?;
                    }
                }
                None => printing.await?,
            }
        }
        InstanceCommand::Crashes { id } => render::list(
            &client
                .get(&format!("/instances/{}/crashes", seg(&id)))
                .await?,
            &[
                ("AT", "/atMs"),
                ("EXIT CODE", "/exitCode"),
                ("NODE", "/nodeId"),
                ("DETAIL", "/detail"),
            ],
            out,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Lines typed on stdin go to the instance's console while following it.
fn spawn_console_input(client: &Client, id: &str) {
    let client = client.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let sent: anyhow::Result<Value> = client
                .send(
                    Method::POST,
                    &format!("/instances/{}/command", seg(&id)),
                    json!({ "command": line }),
                )
                .await;
            if let Err(err) = sent {
                eprintln!("error: {err:#}");
            }
        }
    });
}
