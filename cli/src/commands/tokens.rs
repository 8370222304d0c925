//! `prexorctl tokens`: API tokens — list, create (scoped, expiring), revoke.

use std::process::ExitCode;

use clap::Subcommand;
use prexor_client::NewToken;

use super::Client;
use crate::Output;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Your API tokens (`--owner all` with users:read for everyone's).
    List {
        /// Whose tokens: a username, or `all`.
        #[arg(long)]
        owner: Option<String>,
    },
    /// A new API token (shown once).
    Create {
        /// A name to recognise it by.
        name: String,
        /// Permission to grant (repeatable; default: everything you hold).
        #[arg(long = "permission", short = 'p')]
        permissions: Vec<String>,
        /// How long it is valid (e.g. 30d, 12h; default: until deleted).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Revoke a token at once.
    Delete {
        /// The token's id.
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
            render::list(
                &client.tokens(owner.as_deref()).await?,
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
            let new = NewToken {
                name,
                permissions: (!permissions.is_empty()).then_some(permissions),
                expires_in,
            };
            let answer = client.create_token(&new).await?;
            match out {
                _ if out.human() => {
                    println!("{}", answer.token);
                    eprintln!("(shown once; id {})", answer.view.id);
                }
                _ => render::object(&answer, out)?,
            }
        }
        TokenCommand::Delete { id } => {
            client.delete_token(&id).await?;
            println!("token {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
