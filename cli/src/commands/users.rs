//! `prexorctl users`, `roles` and `audit`.

use std::process::ExitCode;

use clap::Subcommand;
use prexor_client::{NewUser, User, UserChange};

use super::Client;
use crate::Output;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Every user: roles, whether disabled, last sign-in.
    List,
    /// Create a user; the password is asked for twice at the terminal (not echoed), or read
    /// from the first line of stdin with --password-stdin or when stdin is not a terminal.
    Create {
        /// The new user's name.
        username: String,
        /// A role to grant (repeatable).
        #[arg(long = "role", short = 'r', required = true)]
        roles: Vec<String>,
        /// Read the password from the first line of stdin instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Replace a user's roles.
    SetRoles {
        /// The user.
        username: String,
        /// A role to grant (repeatable; the others are taken away).
        #[arg(long = "role", short = 'r', required = true)]
        roles: Vec<String>,
    },
    /// Refuse the user's sign-ins and end their sessions.
    Disable {
        /// The user.
        username: String,
    },
    /// Let a disabled user sign in again.
    Enable {
        /// The user.
        username: String,
    },
    /// Delete a user and end their sessions.
    Delete {
        /// The user.
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Every role with its permissions.
    List,
    /// A custom role (permissions like groups:read, nodes:*, *:read).
    Create {
        /// The role's name.
        name: String,
        /// A permission (repeatable).
        #[arg(long = "permission", short = 'p', required = true)]
        permissions: Vec<String>,
    },
    /// Delete a custom role no user holds.
    Delete {
        /// The role's name.
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
        UserCommand::Create {
            username,
            roles,
            password_stdin,
        } => {
            let prompt = format!("password for {username}: ");
            let password = crate::password::read(password_stdin, &prompt, true).await?;
            if password.is_empty() {
                anyhow::bail!("no password given");
            }
            let new = NewUser {
                username: username.clone(),
                password,
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
