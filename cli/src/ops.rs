//! Day-to-day operations: groups, instances, nodes, templates, deployments, tokens, users,
//! roles, audit and events — each a thin, checked call of the REST API (docs/api.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Output;
use crate::client::{Client, read_events};
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

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    List,
    Get {
        name: String,
    },
    /// Upload a .tar.gz as the template's new version.
    Upload {
        name: String,
        file: PathBuf,
    },
    /// Make an earlier version current.
    Rollback {
        name: String,
        version: i64,
    },
    Delete {
        name: String,
    },
}

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

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    List,
    Get {
        name: String,
    },
    /// Store a version (a .tar.gz of the files it adds to every instance, e.g. plugins/x.jar).
    Upload {
        name: String,
        version: String,
        file: PathBuf,
    },
    Install {
        name: String,
        version: String,
    },
    Upgrade {
        name: String,
        version: String,
    },
    Uninstall {
        name: String,
    },
    /// Remove an uninstalled module and its stored versions.
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Snapshot the cluster's state now (kept in the cluster; `download` for a local copy).
    Create {
        /// Also save the archive to this file.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
    },
    /// Every backup, newest first.
    List,
    /// One backup and its manifest.
    Get {
        id: String,
    },
    /// Re-read a backup and check every count and hash; exits 1 when it is damaged.
    Verify {
        id: String,
    },
    /// Save a backup's archive to a file.
    Download {
        id: String,
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
    },
    /// Import an archive (checked before it is kept) under ID.
    Upload {
        id: String,
        file: std::path::PathBuf,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Your API tokens (`--owner all` with users:read for everyone's).
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    /// A new API token (shown once).
    Create {
        name: String,
        /// Permission to grant (repeatable; default: everything you hold).
        #[arg(long = "permission", short = 'p')]
        permissions: Vec<String>,
        #[arg(long)]
        expires_in: Option<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    List,
    /// Create a user; the password is read from stdin.
    Create {
        username: String,
        #[arg(long = "role", short = 'r', required = true)]
        roles: Vec<String>,
    },
    /// Replace a user's roles.
    SetRoles {
        username: String,
        #[arg(long = "role", short = 'r', required = true)]
        roles: Vec<String>,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    Delete {
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    List,
    /// A custom role (permissions like groups:read, nodes:*, *:read).
    Create {
        name: String,
        #[arg(long = "permission", short = 'p', required = true)]
        permissions: Vec<String>,
    },
    Delete {
        name: String,
    },
}

fn read_spec(file: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        serde_norway::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))
    } else {
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid JSON (name it .yaml for YAML)",
                file.display()
            )
        })
    }
}

/// Escapes a path segment.
fn seg(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

pub async fn groups(
    client: &Client,
    command: GroupCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::List => render::list(&client.get("/groups").await?, GROUP_COLUMNS, out)?,
        GroupCommand::Get { name } => {
            render::object(&client.get(&format!("/groups/{}", seg(&name))).await?, out)?
        }
        GroupCommand::Apply { name, file } => {
            let spec = read_spec(&file)?;
            let path = format!("/groups/{}", seg(&name));
            let existing: Result<Value, _> = client.get(&path).await;
            let answer: Value = match existing {
                Ok(current) => {
                    client
                        .send(
                            Method::PUT,
                            &path,
                            json!({ "spec": spec, "revision": current["revision"] }),
                        )
                        .await?
                }
                Err(err) if crate::client::refused_with(&err) == Some(404) => {
                    client
                        .send(
                            Method::POST,
                            "/groups",
                            json!({ "name": name, "spec": spec }),
                        )
                        .await?
                }
                Err(err) => return Err(err),
            };
            render::done(
                &answer,
                &format!("group {name} at revision {}", answer["revision"]),
                out,
            )?;
        }
        GroupCommand::Delete { name } => {
            let answer: Value = client.delete(&format!("/groups/{}", seg(&name))).await?;
            render::done(
                &answer,
                &format!("group {name} is being deleted: its instances stop, then it is removed"),
                out,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

pub async fn templates(
    client: &Client,
    command: TemplateCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        TemplateCommand::List => render::list(
            &client.get("/templates").await?,
            &[
                ("NAME", "/name"),
                ("CURRENT", "/current"),
                ("VERSIONS", "/versions"),
                ("SIZE", "/size"),
                ("HASH", "/hash"),
            ],
            out,
        )?,
        TemplateCommand::Get { name } => render::object(
            &client.get(&format!("/templates/{}", seg(&name))).await?,
            out,
        )?,
        TemplateCommand::Upload { name, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer: Value = client
                .put_bytes(&format!("/templates/{}", seg(&name)), bytes)
                .await?;
            render::done(
                &answer,
                &format!("template {name}: version {} is current", answer["current"]),
                out,
            )?;
        }
        TemplateCommand::Rollback { name, version } => {
            let answer: Value = client
                .send(
                    Method::POST,
                    &format!("/templates/{}/rollback", seg(&name)),
                    json!({ "version": version }),
                )
                .await?;
            render::done(
                &answer,
                &format!("template {name}: version {version} is current"),
                out,
            )?;
        }
        TemplateCommand::Delete { name } => {
            let _: Value = client.delete(&format!("/templates/{}", seg(&name))).await?;
            println!("template {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a deployment until it is done, with a progress bar.
async fn wait_deployment(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    loop {
        let deployment: Value = client.get(&format!("/deployments/{}", seg(id))).await?;
        let updated = deployment["live"]["updated"].as_u64().unwrap_or(0);
        let total = deployment["live"]["active"]
            .as_u64()
            .unwrap_or(0)
            .max(updated);
        let state = deployment["state"].as_str().unwrap_or("?");
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
        match state {
            "DONE" => {
                eprintln!();
                println!("deployment {id} done");
                return Ok(ExitCode::SUCCESS);
            }
            "PAUSED" => {
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
    let (answer, wait): (Value, bool) = match command {
        DeploymentCommand::Create {
            group,
            file,
            batch_size,
            max_unavailable,
            wait,
        } => {
            let mut body = json!({ "batchSize": batch_size, "maxUnavailable": max_unavailable });
            if let Some(file) = &file {
                body["spec"] = read_spec(file)?;
            }
            let answer = client
                .send(
                    Method::POST,
                    &format!("/groups/{}/deployments", seg(&group)),
                    body,
                )
                .await?;
            (answer, wait)
        }
        DeploymentCommand::List { group } => {
            render::list(
                &client
                    .get(&format!("/groups/{}/deployments", seg(&group)))
                    .await?,
                DEPLOYMENT_COLUMNS,
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Get { id } => {
            render::object(
                &client.get(&format!("/deployments/{}", seg(&id))).await?,
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        DeploymentCommand::Pause { id } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/pause", seg(&id)),
                    json!({}),
                )
                .await?,
            false,
        ),
        DeploymentCommand::Resume { id, wait } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/resume", seg(&id)),
                    json!({}),
                )
                .await?,
            wait,
        ),
        DeploymentCommand::Rollback { id, wait } => (
            client
                .send(
                    Method::POST,
                    &format!("/deployments/{}/rollback", seg(&id)),
                    json!({}),
                )
                .await?,
            wait,
        ),
    };
    let id = answer["id"].as_str().unwrap_or_default().to_owned();
    render::done(
        &answer,
        &format!(
            "deployment {id}: {}",
            answer["state"].as_str().unwrap_or("?")
        ),
        out,
    )?;
    if wait {
        return wait_deployment(client, &id).await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn modules(
    client: &Client,
    command: ModuleCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let (path, body) = match command {
        ModuleCommand::List => {
            render::list(
                &client.get("/modules").await?,
                &[
                    ("NAME", "/id"),
                    ("STATE", "/state"),
                    ("ACTIVE", "/active/version"),
                    ("LAST MUTATION", "/lastMutation/result"),
                ],
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        ModuleCommand::Get { name } => {
            render::object(&client.get(&format!("/modules/{}", seg(&name))).await?, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        ModuleCommand::Upload {
            name,
            version,
            file,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer: Value = client
                .put_bytes(
                    &format!("/modules/{}/versions/{}", seg(&name), seg(&version)),
                    bytes,
                )
                .await?;
            render::done(
                &answer,
                &format!("module {name}: version {version} stored"),
                out,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        ModuleCommand::Install { name, version } => (
            format!("/modules/{}/install", seg(&name)),
            json!({ "version": version }),
        ),
        ModuleCommand::Upgrade { name, version } => (
            format!("/modules/{}/upgrade", seg(&name)),
            json!({ "version": version }),
        ),
        ModuleCommand::Uninstall { name } => {
            (format!("/modules/{}/uninstall", seg(&name)), json!({}))
        }
        ModuleCommand::Delete { name } => {
            let answer: Value = client.delete(&format!("/modules/{}", seg(&name))).await?;
            render::done(&answer, &format!("module {name}: deletion requested"), out)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let answer: Value = client.send(Method::POST, &path, body).await?;
    let module = answer["module"].as_str().unwrap_or("?");
    render::done(
        &answer,
        &format!(
            "{} of module {module} requested (see prexorctl modules get {module})",
            answer["action"].as_str().unwrap_or("mutation"),
        ),
        out,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// POSTs an operator request (start, stop, kill) and reports what the API answered.
async fn request(client: &Client, path: &str, out: Output) -> anyhow::Result<()> {
    let answer: Value = client.send(Method::POST, path, json!({})).await?;
    render::done(
        &answer,
        answer["message"].as_str().unwrap_or("requested"),
        out,
    )
}

pub async fn backups(
    client: &Client,
    command: BackupCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let path = |id: &str| format!("/backups/{}", seg(id));
    match command {
        BackupCommand::Create { file } => {
            let made: Value = client.send(Method::POST, "/backups", json!({})).await?;
            let id = made["id"].as_str().unwrap_or_default().to_owned();
            if let Some(file) = file {
                save(client, &id, &file).await?;
            }
            match out {
                Output::Table => println!(
                    "backup {id} created ({} bytes)",
                    made["size"].as_i64().unwrap_or(0)
                ),
                _ => render::object(&made, out)?,
            }
        }
        BackupCommand::List => render::list(
            &client.get("/backups").await?,
            &[
                ("ID", "/id"),
                ("CREATED", "/createdAtMs"),
                ("BY", "/createdBy"),
                ("SIZE", "/size"),
                ("CLUSTER", "/clusterId"),
                ("BLOBS", "/blobs"),
            ],
            out,
        )?,
        BackupCommand::Get { id } => {
            render::object(&client.get::<Value>(&path(&id)).await?, out)?;
        }
        BackupCommand::Verify { id } => {
            let checked: Value = client
                .send(Method::POST, &format!("{}/verify", path(&id)), json!({}))
                .await?;
            match out {
                Output::Table => println!(
                    "backup {id} is intact: {} collections, {} blobs, every count and hash as in its manifest",
                    checked["collections"].as_object().map_or(0, |c| c.len()),
                    checked["blobs"]
                ),
                _ => render::object(&checked, out)?,
            }
        }
        BackupCommand::Download { id, file } => {
            save(client, &id, &file).await?;
            println!("backup {id} saved to {}", file.display());
        }
        BackupCommand::Upload { id, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let made: Value = client
                .put_bytes(&format!("{}/archive", path(&id)), bytes)
                .await?;
            match out {
                Output::Table => println!("backup {id} imported from {}", file.display()),
                _ => render::object(&made, out)?,
            }
        }
        BackupCommand::Delete { id } => {
            let _: Value = client.delete(&path(&id)).await?;
            println!("backup {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn save(client: &Client, id: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = client
        .get_bytes(&format!("/backups/{}/archive", seg(id)))
        .await?;
    std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))
}

/// `prexorctl restore ID`: replaces the cluster's configuration with the backup's while every
/// replica keeps running.
pub async fn restore(
    client: &Client,
    id: &str,
    dry_run: bool,
    force: bool,
    timeout: Option<String>,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "dryRun": dry_run, "force": force });
    if let Some(timeout) = timeout {
        body["timeout"] = json!(timeout);
    }
    let answer: Value = client
        .send(Method::POST, &format!("/backups/{}/restore", seg(id)), body)
        .await?;
    if out != Output::Table {
        render::object(&answer, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {id}:",
        if dry_run {
            "restoring would change, for backup"
        } else {
            "restored backup"
        }
    );
    let plan = &answer["plan"];
    for (name, change) in plan["replace"].as_object().into_iter().flatten() {
        let list = |key: &str| -> String {
            change[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "  {name}: keep {}, add [{}], remove [{}]",
            change["keep"],
            list("add"),
            list("remove")
        );
    }
    for (name, added) in plan["addMissing"].as_object().into_iter().flatten() {
        println!("  {name}: add {added} missing");
    }
    if dry_run {
        println!("nothing was changed (dry run)");
    } else {
        println!(
            "{} leases taken and released; the schedulers now reconcile what runs with the restored configuration",
            answer["leasesTaken"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tokens(
    client: &Client,
    command: TokenCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::List { owner } => {
            let path = match owner {
                Some(owner) => format!("/auth/tokens?owner={}", seg(&owner)),
                None => "/auth/tokens".to_owned(),
            };
            render::list(
                &client.get(&path).await?,
                &[
                    ("ID", "/id"),
                    ("NAME", "/name"),
                    ("OWNER", "/owner"),
                    ("PERMISSIONS", "/permissions"),
                    ("EXPIRES", "/expiresAtMs"),
                    ("LAST USED", "/lastUsedAtMs"),
                ],
                out,
            )?;
        }
        TokenCommand::Create {
            name,
            permissions,
            expires_in,
        } => {
            let mut body = json!({ "name": name });
            if !permissions.is_empty() {
                body["permissions"] = json!(permissions);
            }
            if let Some(expires_in) = expires_in {
                body["expiresIn"] = json!(expires_in);
            }
            let answer: Value = client.send(Method::POST, "/auth/tokens", body).await?;
            match out {
                Output::Table => {
                    println!("{}", answer["token"].as_str().unwrap_or_default());
                    eprintln!("(shown once; id {})", answer["id"].as_str().unwrap_or("?"));
                }
                _ => render::object(&answer, out)?,
            }
        }
        TokenCommand::Delete { id } => {
            let _: Value = client.delete(&format!("/auth/tokens/{}", seg(&id))).await?;
            println!("token {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn users(client: &Client, command: UserCommand, out: Output) -> anyhow::Result<ExitCode> {
    let patch = |username: &str, body: Value| {
        let path = format!("/users/{}", seg(username));
        async move { client.send::<Value>(Method::PATCH, &path, body).await }
    };
    match command {
        UserCommand::List => render::list(
            &client.get("/users").await?,
            &[
                ("USER", "/username"),
                ("ROLES", "/roles"),
                ("DISABLED", "/disabled"),
                ("LAST LOGIN", "/lastLoginAtMs"),
            ],
            out,
        )?,
        UserCommand::Create { username, roles } => {
            eprintln!("password for {username} (from stdin):");
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let answer: Value = client
                .send(
                    Method::POST,
                    "/users",
                    json!({ "username": username, "password": password.trim_end_matches(['\r', '\n']), "roles": roles }),
                )
                .await?;
            render::done(&answer, &format!("user {username} created"), out)?;
        }
        UserCommand::SetRoles { username, roles } => {
            render::done(
                &patch(&username, json!({ "roles": roles })).await?,
                &format!("user {username} updated (their sessions ended)"),
                out,
            )?;
        }
        UserCommand::Disable { username } => {
            render::done(
                &patch(&username, json!({ "disabled": true })).await?,
                &format!("user {username} disabled"),
                out,
            )?;
        }
        UserCommand::Enable { username } => {
            render::done(
                &patch(&username, json!({ "disabled": false })).await?,
                &format!("user {username} enabled"),
                out,
            )?;
        }
        UserCommand::Delete { username } => {
            let _: Value = client.delete(&format!("/users/{}", seg(&username))).await?;
            println!("user {username} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn roles(client: &Client, command: RoleCommand, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        RoleCommand::List => render::list(
            &client.get("/roles").await?,
            &[
                ("ROLE", "/name"),
                ("BUILT-IN", "/builtin"),
                ("PERMISSIONS", "/permissions"),
            ],
            out,
        )?,
        RoleCommand::Create { name, permissions } => {
            let answer: Value = client
                .send(
                    Method::POST,
                    "/roles",
                    json!({ "name": name, "permissions": permissions }),
                )
                .await?;
            render::done(&answer, &format!("role {name} created"), out)?;
        }
        RoleCommand::Delete { name } => {
            let _: Value = client.delete(&format!("/roles/{}", seg(&name))).await?;
            println!("role {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(client: &Client, limit: u32, out: Output) -> anyhow::Result<ExitCode> {
    let page: Value = client.get(&format!("/audit?limit={limit}")).await?;
    render::list(
        &page["entries"],
        &[
            ("AT", "/atMs"),
            ("ACTOR", "/actor"),
            ("VIA", "/via"),
            ("ACTION", "/action"),
            ("TARGET", "/target"),
        ],
        out,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Follows domain events (optionally of some types) until interrupted.
pub async fn events(client: &Client, types: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match types {
        Some(types) => format!("/events?types={}", seg(&types)),
        None => "/events".to_owned(),
    };
    let response = client.stream(&path).await?;
    read_events(response, |event, data| {
        let parsed: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        println!(
            "{event:<24} {:<24} {}",
            parsed["subject"].as_str().unwrap_or("-"),
            parsed["data"]
        );
        Ok(true)
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
