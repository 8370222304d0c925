//! `prexorctl instances`: list, show, crashes, stop, kill, console (follow and type into it).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use prexor_client::{Followed, InstanceFilter};

use super::{Client, requested};
use crate::Output;
use crate::render::{self, Column};
use crate::watch::{Watch, watch};

/// The events that change what `instances list` and `get` show.
const INSTANCE_EVENTS: &str = "INSTANCE_STATE_CHANGED,INSTANCE_READY";

const INSTANCE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("GROUP", "/group"),
    ("NODE", "/nodeId"),
    ("PORT", "/port"),
    ("STATE", "/state"),
    ("WARM", "/warm"),
    ("REPORTED", "/reported/state"),
    ("PID", "/reported/pid"),
    ("ATTEMPT", "/attempt"),
];
/// More with `-o wide`.
const INSTANCE_WIDE: &[Column] = &[
    ("MEMORY MB", "/memoryMb"),
    ("REVISION", "/revision"),
    ("SCHEDULED", "/scheduledAtMs"),
    ("LAST DISPATCH ERROR", "/lastDispatchError"),
];
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Instances, filtered by group, node or state.
    List {
        /// Only this group's instances.
        #[arg(long, add = crate::complete::groups())]
        group: Option<String>,
        /// Only instances placed on this node.
        #[arg(long, add = crate::complete::nodes())]
        node: Option<String>,
        /// Only instances in this state (RUNNING, STOPPED, ...).
        #[arg(long)]
        state: Option<String>,
        /// `true`: only instances of the groups' warm pools; `false`: only the groups' own.
        #[arg(long)]
        warm: Option<bool>,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// One instance with its plan and last report.
    Get {
        /// The instance's id (GROUP-N).
        #[arg(add = crate::complete::instances())]
        id: String,
        /// Show it again whenever the event stream reports a change to it, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Start one more instance of a MANUAL group.
    Start {
        /// The MANUAL group.
        #[arg(add = crate::complete::groups())]
        group: String,
    },
    /// Stop gracefully (a STATIC or DYNAMIC group starts it again).
    Stop {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
    },
    /// Kill at once.
    Kill {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
    },
    /// Send one console line.
    Command {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
        /// The line to send (its words are joined by spaces).
        line: Vec<String>,
    },
    /// Show the console; with --follow, keep printing (and send lines typed on stdin).
    Console {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
        /// Keep printing new lines (reconnecting when the connection drops) until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// How many earlier lines to show first.
        #[arg(long, default_value_t = 100)]
        lines: usize,
    },
    /// Save files of the instance's directory as a new version of a template (created if
    /// needed), e.g. a server configured by hand.
    SaveToTemplate {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
        /// The template to add the version to.
        #[arg(long)]
        template: String,
        /// A file or directory of the instance's directory, relative to it (repeat for more).
        #[arg(long = "path", required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Crash records (exit code, log tail).
    Crashes {
        /// The instance's id.
        #[arg(add = crate::complete::instances())]
        id: String,
    },
}

pub async fn instances(
    client: &Client,
    command: InstanceCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        InstanceCommand::List {
            group,
            node,
            state,
            warm,
            watch: watching,
        } => {
            let filter = InstanceFilter {
                group,
                node,
                state,
                warm,
            };
            if !watching {
                render::list_wide(
                    &client.instances(&filter).await?,
                    INSTANCE_COLUMNS,
                    INSTANCE_WIDE,
                    out,
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            let on = Watch {
                types: INSTANCE_EVENTS,
                subject: None,
            };
            return watch(client, on, async || {
                let listed = client.instances(&filter).await?;
                render::list_string(&listed, INSTANCE_COLUMNS, INSTANCE_WIDE, out)
            })
            .await;
        }
        InstanceCommand::Get { id, watch: false } => {
            render::object(&client.instance(&id).await?, out)?;
        }
        InstanceCommand::Get { id, watch: true } => {
            let on = Watch {
                types: INSTANCE_EVENTS,
                subject: Some(&id),
            };
            return watch(client, on, async || {
                render::object_string(&client.instance(&id).await?, out)
            })
            .await;
        }
        InstanceCommand::Start { group } => requested(&client.start_instance(&group).await?, out)?,
        InstanceCommand::Stop { id } => requested(&client.stop_instance(&id).await?, out)?,
        InstanceCommand::Kill { id } => requested(&client.kill_instance(&id).await?, out)?,
        InstanceCommand::SaveToTemplate {
            id,
            template,
            paths,
        } => {
            let answer = client.save_to_template(&id, &template, &paths).await?;
            render::done(
                &answer,
                &format!(
                    "{id}: saved as template {template}, version {} (current)",
                    answer["current"]
                ),
                out,
            )?;
        }
        InstanceCommand::Command { id, line } => {
            if line.is_empty() {
                bail!(
                    "give the console line to send, e.g. `prexorctl instances command {id} say hello`"
                );
            }
            client.send_command(&id, &line.join(" ")).await?;
            println!("sent to {id}");
        }
        InstanceCommand::Console {
            id,
            follow: true,
            lines,
        } => {
            let mut console = client
                .follow(
                    &prexor_client::console_path(&id, lines),
                    prexor_client::console_resume(&id),
                    None,
                )
                .await?;
            spawn_console_input(client, &id);
            loop {
                match console.next().await? {
                    Followed::Event(event) if event.event == "error" => bail!("{}", event.data),
                    Followed::Event(event) if event.event == "gap" => {
                        eprintln!("warning: some console lines were missed while reconnecting");
                    }
                    Followed::Event(event) => println!("{}", event.data),
                    other => super::report(&other),
                }
            }
        }
        // Without --follow: the history, then stop once it has arrived.
        InstanceCommand::Console { id, lines, .. } => {
            let mut console = client.console(&id, lines).await?;
            let deadline = std::time::Instant::now() + Duration::from_millis(500);
            let printing = async {
                while let Some(event) = console.next().await? {
                    if event.event == "error" {
                        bail!("{}", event.data);
                    }
                    println!("{}", event.data);
                    if std::time::Instant::now() >= deadline {
                        break;
                    }
                }
                anyhow::Ok(())
            };
            // Elapsed is the normal end; an error event or a broken stream is not.
            if let Ok(printed) = tokio::time::timeout(Duration::from_secs(2), printing).await {
                printed?;
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
