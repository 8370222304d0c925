//! Saved clusters (contexts): controller URL, user and session token per cluster, in
//! `$PREXORCTL_CONFIG` or `~/.config/prexorctl/config.json` (mode 0600: it holds tokens).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

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
    if let Some(path) = std::env::var_os("PREXORCTL_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; set PREXORCTL_CONFIG to the config file to use")?;
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
