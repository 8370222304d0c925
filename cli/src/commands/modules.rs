//! `prexorctl modules`: upload versions, install, upgrade, uninstall, delete, the mutation in flight.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, segment};
use crate::Output;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Every module: state, active version, last mutation.
    List,
    /// One module, its versions and the mutation in flight.
    Get {
        /// The module's name.
        name: String,
    },
    /// Store a version (a .tar.gz of the files it adds to every instance, e.g. plugins/x.jar).
    Upload {
        /// The module's name.
        name: String,
        /// The version's name (e.g. 1.2.0).
        version: String,
        /// The .tar.gz.
        file: PathBuf,
    },
    /// Install a stored version on every group that lists the module.
    Install {
        /// The module's name.
        name: String,
        /// A stored version.
        version: String,
    },
    /// Replace the installed version with another stored one.
    Upgrade {
        /// The module's name.
        name: String,
        /// A stored version.
        version: String,
    },
    /// Remove the module from every instance (its versions stay stored).
    Uninstall {
        /// The module's name.
        name: String,
    },
    /// Remove an uninstalled module and its stored versions.
    Delete {
        /// The module's name.
        name: String,
    },
}

pub async fn modules(
    client: &Client,
    command: ModuleCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let (path, body) = match command {
        ModuleCommand::List => {
            render::list(
                &client.all::<Value>("/modules").await?,
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
            render::object(
                &client
                    .get::<Value>(&format!("/modules/{}", segment(&name)))
                    .await?,
                out,
            )?;
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
                    &format!("/modules/{}/versions/{}", segment(&name), segment(&version)),
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
            format!("/modules/{}/install", segment(&name)),
            json!({ "version": version }),
        ),
        ModuleCommand::Upgrade { name, version } => (
            format!("/modules/{}/upgrade", segment(&name)),
            json!({ "version": version }),
        ),
        ModuleCommand::Uninstall { name } => {
            (format!("/modules/{}/uninstall", segment(&name)), json!({}))
        }
        ModuleCommand::Delete { name } => {
            let answer: Value = client
                .delete(&format!("/modules/{}", segment(&name)))
                .await?;
            render::done(&answer, &format!("module {name}: deletion requested"), out)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let answer: Value = client.post(&path, &body).await?;
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
