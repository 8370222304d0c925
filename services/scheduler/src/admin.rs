//! `prexor-scheduler group apply NAME --spec FILE`: creates or updates a group from a JSON spec
//! (validated, every problem listed), for operators on a controller host and the local stack
//! until the REST API manages groups.

use std::path::Path;

use mongodb::bson::{self, doc};
use prexor_config::SchedulerConfig;
use prexor_domain::GroupSpec;
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
    let spec_doc = bson::to_document(spec)?;
    let groups = store.documents("groups");
    let current = store
        .bounded("reading the group", groups.find_one(doc! { "_id": name }))
        .await?;
    let Some(current) = current else {
        let inserted = store
            .bounded(
                "creating the group",
                groups.insert_one(doc! { "_id": name, "spec": &spec_doc, "revision": 1_i64 }),
            )
            .await;
        return match inserted {
            Ok(_) => Ok(Applied::Created),
            Err(err) if err.is_duplicate_key() => {
                anyhow::bail!("group {name} was created concurrently; apply again")
            }
            Err(err) => Err(err.into()),
        };
    };
    if current.get_document("spec").ok() == Some(&spec_doc) {
        return Ok(Applied::Unchanged);
    }
    let revision = current.get_i64("revision").unwrap_or(1);
    // Compare-and-set on the revision: a concurrent change is not overwritten silently.
    let updated = store
        .bounded(
            "updating the group",
            groups.update_one(
                doc! { "_id": name, "revision": revision },
                doc! { "$set": { "spec": &spec_doc, "revision": revision + 1 } },
            ),
        )
        .await?;
    if updated.matched_count == 0 {
        anyhow::bail!("group {name} changed concurrently; apply again");
    }
    Ok(Applied::Updated {
        revision: revision + 1,
    })
}
