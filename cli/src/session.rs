//! `prexorctl login`, `logout` and `context`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::client::Client;
use crate::contexts::{Config, Context};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    token: String,
    expires_at_ms: i64,
}

/// Reads a password: from stdin when asked to (scripts), else prompted without echo.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if from_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    eprint!("password: ");
    std::io::stderr().flush()?;
    let stty = |arg: &str| {
        Command::new("stty")
            .arg(arg)
            .stdin(Stdio::inherit())
            .status()
    };
    let _ = stty("-echo");
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = stty("echo");
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn login(
    controller: &str,
    user: &str,
    password_stdin: bool,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let password = read_password(password_stdin)?;
    if password.is_empty() {
        bail!("no password given");
    }
    let client = Client::new(controller, None)?;
    let session: Session = client
        .send(
            reqwest::Method::POST,
            "/auth/login",
            serde_json::json!({ "username": user, "password": password }),
        )
        .await?;
    let mut config = Config::load()?;
    config.contexts.insert(
        name.to_owned(),
        Context {
            controller: client.base().to_owned(),
            user: Some(user.to_owned()),
            token: Some(session.token),
        },
    );
    config.current = Some(name.to_owned());
    config.save()?;
    let hours = (session.expires_at_ms - now_ms()) / 3_600_000;
    println!(
        "signed in to {} as {user} (context {name:?}, session valid for {hours} h)",
        client.base()
    );
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn logout(client: &Client, context: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut config = Config::load()?;
    let name = context
        .map(str::to_owned)
        .or_else(|| config.current.clone())
        .context("no context to log out of")?;
    let ended: anyhow::Result<serde_json::Value> = client
        .send(reqwest::Method::POST, "/auth/logout", serde_json::json!({}))
        .await;
    match ended {
        Ok(_) => {}
        // The session already ended on the server (expired, revoked, its user disabled): there
        // is nothing left to revoke, and the context still has to forget it.
        Err(err) if crate::client::refused_with(&err) == Some(401) => {}
        Err(err) => return Err(err),
    }
    if let Some(ctx) = config.contexts.get_mut(&name) {
        ctx.token = None;
    }
    config.save()?;
    println!("logged out of context {name:?}");
    Ok(ExitCode::SUCCESS)
}

pub fn list_contexts() -> anyhow::Result<ExitCode> {
    let config = Config::load()?;
    for (name, ctx) in &config.contexts {
        let marker = if config.current.as_deref() == Some(name) {
            "*"
        } else {
            " "
        };
        println!(
            "{marker} {name}\t{}\t{}{}",
            ctx.controller,
            ctx.user.as_deref().unwrap_or("-"),
            if ctx.token.is_some() {
                ""
            } else {
                " (signed out)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn use_context(name: &str) -> anyhow::Result<ExitCode> {
    let mut config = Config::load()?;
    config.get(Some(name))?;
    config.current = Some(name.to_owned());
    config.save()?;
    println!("now using context {name:?}");
    Ok(ExitCode::SUCCESS)
}
