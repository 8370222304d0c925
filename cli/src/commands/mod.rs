//! Day-to-day operations, one file per resource: groups, instances, nodes, templates,
//! deployments, modules, backups, tokens, users (with roles and the audit log) and events —
//! each a thin, checked call of the REST API (docs/api.md).

mod backups;
mod deployments;
mod events;
mod groups;
mod instances;
mod modules;
mod nodes;
mod templates;
mod tokens;
mod users;

pub use backups::*;
pub use deployments::*;
pub use events::*;
pub use groups::*;
pub use instances::*;
pub use modules::*;
pub use nodes::*;
pub use templates::*;
pub use tokens::*;
pub use users::*;

use std::path::PathBuf;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Output;
use crate::client::Client;
use crate::render;

/// Escapes a path segment.
pub(crate) fn seg(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

pub(crate) fn read_spec(file: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        serde_norway::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))
    } else {
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid JSON (name it .yaml for YAML)",
                file.display()
            )
        })
    }
}

/// POSTs an operator request (start, stop, kill) and reports what the API answered.
pub(crate) async fn request(client: &Client, path: &str, out: Output) -> anyhow::Result<()> {
    let answer: Value = client.send(Method::POST, path, json!({})).await?;
    render::done(
        &answer,
        answer["message"].as_str().unwrap_or("requested"),
        out,
    )
}
