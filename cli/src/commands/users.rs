//! `prexorctl users`, `roles` and `audit`.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::seg;
use crate::Output;
use crate::client::Client;
use crate::render::{self};

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
