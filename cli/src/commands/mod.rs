//! Day-to-day operations, one file per resource: groups, instances, nodes, templates,
//! deployments, modules, backups, tokens, users (with roles and the audit log) and events —
//! each a thin, checked call of the REST API (docs/api.md).

mod apply;
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

pub use apply::*;
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

use std::path::Path;

use anyhow::Context;
use prexor_client::{Accepted, GroupSpec};
pub(crate) use prexor_client::{Client, segment};

use crate::Output;
use crate::render;

/// A group spec from a JSON or YAML file (fields in docs/scheduling.md).
pub(crate) fn read_spec(file: &Path) -> anyhow::Result<GroupSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let spec: serde_json::Value = if is_yaml {
        serde_norway::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid JSON (name it .yaml for YAML)",
                file.display()
            )
        })?
    };
    serde_json::from_value(spec).with_context(|| {
        format!(
            "{} is not a group spec (fields in docs/scheduling.md)",
            file.display()
        )
    })
}

/// Reports what the api answered to an operator request (start, stop, kill).
pub(crate) fn requested(answer: &Accepted, out: Output) -> anyhow::Result<()> {
    render::done(answer, &answer.message, out)
}
