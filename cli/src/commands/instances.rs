//! `prexorctl instances`: list, show, crashes, stop, kill, console (follow and type into it).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use prexor_client::InstanceFilter;

use super::{Client, requested};
use crate::Output;
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
            let filter = InstanceFilter { group, node, state };
            render::list(&client.instances(&filter).await?, INSTANCE_COLUMNS, out)?;
        }
        InstanceCommand::Get { id } => render::object(&client.instance(&id).await?, out)?,
        InstanceCommand::Start { group } => requested(&client.start_instance(&group).await?, out)?,
        InstanceCommand::Stop { id } => requested(&client.stop_instance(&id).await?, out)?,
        InstanceCommand::Kill { id } => requested(&client.kill_instance(&id).await?, out)?,
        InstanceCommand::Command { id, line } => {
            if line.is_empty() {
                bail!(
                    "give the console line to send, e.g. `prexorctl instances command {id} say hello`"
                );
            }
            client.send_command(&id, &line.join(" ")).await?;
            println!("sent to {id}");
        }
        InstanceCommand::Console { id, follow, lines } => {
            let mut console = client.console(&id, lines).await?;
            if follow {
                spawn_console_input(client, &id);
            }
            let deadline =
                (!follow).then(|| std::time::Instant::now() + Duration::from_millis(500));
            let printing = async {
                while let Some(event) = console.next().await? {
                    if event.event == "error" {
                        bail!("{}", event.data);
                    }
                    println!("{}", event.data);
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        break;
                    }
                }
                anyhow::Ok(())
            };
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
            &client.crashes(&id).await?,
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
            if let Err(err) = client.send_command(&id, &line).await {
                eprintln!("error: {:#}", anyhow::Error::from(err));
            }
        }
    });
}
