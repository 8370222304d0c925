//! `prexorctl users`, `roles` and `audit`.

use std::process::ExitCode;

use clap::Subcommand;
use prexor_client::{NewUser, User, UserChange};

use super::Client;
use crate::Output;
use crate::render;

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
    match command {
        UserCommand::List => render::list(
            &client.users().await?,
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
            let new = NewUser {
                username: username.clone(),
                password: password.trim_end_matches(['\r', '\n']).to_owned(),
                roles,
            };
            let answer = client.create_user(&new).await?;
            render::done(&answer, &format!("user {username} created"), out)?;
        }
        UserCommand::SetRoles { username, roles } => {
            let change = UserChange {
                roles: Some(roles),
                ..UserChange::default()
            };
            render::done(
                &client.update_user(&username, &change).await?,
                &format!("user {username} updated (their sessions ended)"),
                out,
            )?;
        }
        UserCommand::Disable { username } => {
            render::done(
                &set_disabled(client, &username, true).await?,
                &format!("user {username} disabled"),
                out,
            )?;
        }
        UserCommand::Enable { username } => {
            render::done(
                &set_disabled(client, &username, false).await?,
                &format!("user {username} enabled"),
                out,
            )?;
        }
        UserCommand::Delete { username } => {
            client.delete_user(&username).await?;
            println!("user {username} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_disabled(
    client: &Client,
    username: &str,
    disabled: bool,
) -> Result<User, prexor_client::Error> {
    let change = UserChange {
        disabled: Some(disabled),
        ..UserChange::default()
    };
    client.update_user(username, &change).await
}

pub async fn roles(client: &Client, command: RoleCommand, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        RoleCommand::List => render::list(
            &client.roles().await?,
            &[
                ("ROLE", "/name"),
                ("BUILT-IN", "/builtin"),
                ("PERMISSIONS", "/permissions"),
            ],
            out,
        )?,
        RoleCommand::Create { name, permissions } => {
            let answer = client.create_role(&name, &permissions).await?;
            render::done(&answer, &format!("role {name} created"), out)?;
        }
        RoleCommand::Delete { name } => {
            client.delete_role(&name).await?;
            println!("role {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The newest `limit` entries of the audit log.
pub async fn audit(client: &Client, limit: usize, out: Output) -> anyhow::Result<ExitCode> {
    render::list(
        &client.audit(limit).await?,
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
