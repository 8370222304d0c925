//! Saved clusters (contexts): controller URL, user and session token per cluster, in
//! `$PREXORCTL_CONFIG`, else `$XDG_CONFIG_HOME/prexorctl/config.json`, else
//! `~/.config/prexorctl/config.json` (mode 0600: it holds tokens); and `prexorctl context
//! list|current|use|rename|delete`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::render::{self, Output};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub controller: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// The cluster CA (PEM) an https:// controller's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PREXORCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    // The XDG base directory spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return Ok(dir.join("prexorctl/config.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
        "neither XDG_CONFIG_HOME nor HOME is set; set PREXORCTL_CONFIG to the config file to use",
    )?;
    Ok(PathBuf::from(home).join(".config/prexorctl/config.json"))
}

impl Config {
    pub fn load() -> anyhow::Result<Config> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a prexorctl config; fix or delete it",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> anyhow::Result<()> {
        // It holds tokens: readable by its owner only, and never half-written.
        let path = path()?;
        prexor_pki::write_private(&path, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }

    /// The context named `name`, or the current one.
    pub fn get(&self, name: Option<&str>) -> anyhow::Result<Option<&Context>> {
        match name {
            Some(name) => self.contexts.get(name).map(Some).with_context(|| {
                format!(
                    "no context {name:?}; known: {}",
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
            None => Ok(self.current.as_deref().and_then(|c| self.contexts.get(c))),
        }
    }
}

/// `prexorctl context ...`: the saved clusters, in the config file only (nothing is sent to a
/// cluster).
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Every saved context: name, controller, user, whether signed in (* marks the current one).
    #[command(alias = "ls")]
    List,
    /// The current context's name (exits 1 when there is none).
    Current,
    /// Make NAME the current context.
    Use {
        /// A saved context (see `prexorctl context list`).
        name: String,
    },
    /// Rename a saved context (the current one stays current).
    Rename {
        /// The context's name now.
        old: String,
        /// Its new name (must not be taken).
        new: String,
    },
    /// Forget a saved context and its session token (the session itself is not ended:
    /// `prexorctl --context NAME logout` first for that).
    Delete {
        /// The context to forget.
        name: String,
    },
}

pub fn context(command: ContextCommand, out: Output) -> anyhow::Result<ExitCode> {
    let mut config = Config::load()?;
    match command {
        ContextCommand::List => {
            let rows: Vec<_> = config
                .contexts
                .iter()
                .map(|(name, ctx)| {
                    json!({
                        "current": config.current.as_deref() == Some(name),
                        "name": name,
                        "controller": ctx.controller,
                        "user": ctx.user,
                        "signedIn": ctx.token.is_some(),
                    })
                })
                .collect();
            let marked: Vec<_> = rows
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r["mark"] = json!(if r["current"] == true { "*" } else { "" });
                    r["session"] = json!(if r["signedIn"] == true {
                        "signed in"
                    } else {
                        "(signed out)"
                    });
                    r
                })
                .collect();
            let shown: &[serde_json::Value] = if out.human() { &marked } else { &rows };
            render::list(
                shown,
                &[
                    ("CURRENT", "/mark"),
                    ("NAME", "/name"),
                    ("CONTROLLER", "/controller"),
                    ("USER", "/user"),
                    ("SESSION", "/session"),
                ],
                out,
            )?;
        }
        ContextCommand::Current => match &config.current {
            Some(name) if config.contexts.contains_key(name) => println!("{name}"),
            _ => bail!("no current context: `prexorctl login` or `prexorctl context use NAME`"),
        },
        ContextCommand::Use { name } => {
            config.get(Some(&name))?;
            config.current = Some(name.clone());
            config.save()?;
            println!("now using context {name:?}");
        }
        ContextCommand::Rename { old, new } => {
            if config.contexts.contains_key(&new) {
                bail!("a context {new:?} exists already; delete it first");
            }
            config.get(Some(&old))?;
            if let Some(ctx) = config.contexts.remove(&old) {
                config.contexts.insert(new.clone(), ctx);
            }
            if config.current.as_deref() == Some(old.as_str()) {
                config.current = Some(new.clone());
            }
            config.save()?;
            println!("context {old:?} renamed to {new:?}");
        }
        ContextCommand::Delete { name } => {
            config.get(Some(&name))?;
            config.contexts.remove(&name);
            let was_current = config.current.as_deref() == Some(name.as_str());
            if was_current {
                config.current = None;
            }
            config.save()?;
            println!("context {name:?} deleted");
            if was_current {
                eprintln!("there is no current context now: `prexorctl context use NAME`");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
