//! `prexorctl templates`: list, show, upload a layer, roll back, download, delete.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, segment};
use crate::Output;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Every template: current version, versions kept, size, hash.
    List,
    /// One template and its versions.
    Get {
        /// The template's name.
        name: String,
    },
    /// Upload a .tar.gz as the template's new version.
    Upload {
        /// The template's name (created on the first upload).
        name: String,
        /// The layer: a .tar.gz of the files it adds.
        file: PathBuf,
    },
    /// Make an earlier version current.
    Rollback {
        /// The template's name.
        name: String,
        /// The version to make current.
        version: i64,
    },
    /// Delete a template no group uses, with every version.
    Delete {
        /// The template's name.
        name: String,
    },
}

pub async fn templates(
    client: &Client,
    command: TemplateCommand,
    out: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        TemplateCommand::List => render::list(
            &client.all::<Value>("/templates").await?,
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
            &client
                .get::<Value>(&format!("/templates/{}", segment(&name)))
                .await?,
            out,
        )?,
        TemplateCommand::Upload { name, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer: Value = client
                .put_bytes(&format!("/templates/{}", segment(&name)), bytes)
                .await?;
            render::done(
                &answer,
                &format!("template {name}: version {} is current", answer["current"]),
                out,
            )?;
        }
        TemplateCommand::Rollback { name, version } => {
            let answer: Value = client
                .post(
                    &format!("/templates/{}/rollback", segment(&name)),
                    &json!({ "version": version }),
                )
                .await?;
            render::done(
                &answer,
                &format!("template {name}: version {version} is current"),
                out,
            )?;
        }
        TemplateCommand::Delete { name } => {
            let _: Value = client
                .delete(&format!("/templates/{}", segment(&name)))
                .await?;
            println!("template {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
