//! `prexorctl tokens`: API tokens — list, create (scoped, expiring), revoke.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::seg;
use crate::Output;
use crate::client::Client;
use crate::render::{self};

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
