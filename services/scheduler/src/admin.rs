//! `prexor-scheduler group apply NAME --spec FILE`: creates or updates a group from a JSON spec
//! (validated, every problem listed), for operators on a controller host and the local stack
//! until the REST API manages groups.

use std::path::Path;

use prexor_config::SchedulerConfig;
use prexor_domain::GroupSpec;
use prexor_model::groups::GroupWriteError;
use prexor_store::Store;

/// Outcome of an apply, printed for the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated { revision: i64 },
    Unchanged,
}

pub async fn apply_group(
    config: SchedulerConfig,
    name: String,
    spec_file: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", spec_file.display()))?;
    let spec: GroupSpec = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a group spec: {e}", spec_file.display()))?;
    let problems = spec.problems(&name);
    if !problems.is_empty() {
        let listed: Vec<String> = problems
            .iter()
            .map(|p| format!("  - {}: {}", p.field, p.message))
            .collect();
        anyhow::bail!(
            "group {name:?} is invalid ({} problem{}):\n{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            listed.join("\n")
        );
    }
    let mongo = &config.common.mongo;
    let store = Store::connect(
        &mongo.uri,
        &mongo.database,
        "prexor-scheduler",
        mongo.timeout,
    )
    .await?;
    let applied = upsert(&store, &name, &spec).await?;
    match applied {
        Applied::Created => println!("group {name} created"),
        Applied::Updated { revision } => println!("group {name} updated to revision {revision}"),
        Applied::Unchanged => println!("group {name} unchanged"),
    }
    Ok(())
}

async fn upsert(store: &Store, name: &str, spec: &GroupSpec) -> anyhow::Result<Applied> {
    if prexor_model::groups::get_group(store, name)
        .await?
        .is_none()
    {
        return match prexor_model::groups::create_group(store, name, spec).await {
            Ok(_) => Ok(Applied::Created),
            Err(GroupWriteError::Exists(_)) => {
                anyhow::bail!("group {name} was created concurrently; apply again")
            }
            Err(err) => Err(err.into()),
        };
    }
    Ok(
        match prexor_model::groups::update_group(store, name, spec, None).await? {
            Some(record) => Applied::Updated {
                revision: record.revision,
            },
            None => Applied::Unchanged,
        },
    )
}
