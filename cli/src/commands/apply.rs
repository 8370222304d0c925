//! `prexorctl apply -f FILE|DIR`: groups declared in files (one group spec per `.json`, `.yaml`
//! or `.yml` file, the group named after the file), made so in the cluster: created, updated
//! (at the revision read, so a concurrent change is not overwritten), left alone when equal;
//! with `--prune` the groups no file declares are deleted. `--dry-run` shows the difference
//! and changes nothing. Templates are referenced by name (`templates: [{name: base}]`): the
//! template's current version is what the group gets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use prexor_client::{Group, GroupSpec};
use serde_json::{Value, json};

use super::{Client, read_spec, segment};
use crate::Output;

/// One group as the files declare it.
struct Declared {
    name: String,
    file: PathBuf,
    spec: GroupSpec,
}

/// The spec files of `paths` (a directory: its .json, .yaml and .yml files, in name order).
fn spec_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn declared(paths: &[PathBuf]) -> anyhow::Result<Vec<Declared>> {
    let mut groups: Vec<Declared> = Vec::new();
    for file in spec_files(paths)? {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: no group name in the file name", file.display()))?
            .to_owned();
        if let Some(twice) = groups.iter().find(|g| g.name == name) {
            bail!(
                "group {name} is declared twice: {} and {}",
                twice.file.display(),
                file.display()
            );
        }
        let spec = read_spec(&file)?;
        groups.push(Declared { name, file, spec });
    }
    if groups.is_empty() {
        bail!("no group spec files (.json, .yaml, .yml) in the given paths");
    }
    Ok(groups)
}

/// `spec` with every template named without a hash resolved as the api would: to the version
/// the file pins, else the template's current one.
async fn resolved(client: &Client, spec: &GroupSpec, file: &Path) -> anyhow::Result<GroupSpec> {
    let mut spec = spec.clone();
    for template in &mut spec.templates {
        if !template.hash.is_empty() || template.name.is_empty() {
            continue;
        }
        let found: Value = match client
            .get(&format!("/templates/{}", segment(&template.name)))
            .await
        {
            Ok(found) => found,
            Err(err) if err.status_code() == Some(404) => bail!(
                "{}: template {:?} does not exist (upload it first: prexorctl templates upload)",
                file.display(),
                template.name
            ),
            Err(err) => return Err(err.into()),
        };
        // The version pinned in the file, else the current one.
        let version = template
            .version
            .map(u64::from)
            .or_else(|| found["current"].as_u64());
        let layer = found["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["version"].as_u64() == version))
            .with_context(|| {
                format!(
                    "{}: template {:?} has no version {version:?}",
                    file.display(),
                    template.name
                )
            })?;
        template.hash = layer["hash"].as_str().unwrap_or_default().to_owned();
        template.version = version.map(|v| v as u32);
    }
    Ok(spec)
}

/// The fields that differ between `from` and `to` (JSON values), as `path: from -> to` lines.
pub(crate) fn diff(path: &str, from: &Value, to: &Value, lines: &mut Vec<String>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff(
                    &at,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    lines,
                );
            }
        }
        (a, b) if a == b => {}
        (Value::Null, b) => lines.push(format!("+ {path}: {b}")),
        (a, Value::Null) => lines.push(format!("- {path}: {a}")),
        (a, b) => lines.push(format!("~ {path}: {a} -> {b}")),
    }
}

/// What applying does to one group.
#[derive(Debug)]
enum Change {
    Create,
    Update {
        revision: i64,
        fields: Vec<String>,
    },
    Unchanged,
    Prune,
    /// In the cluster, in no file, kept (no --prune).
    Kept,
}

pub async fn apply(
    client: &Client,
    paths: &[PathBuf],
    dry_run: bool,
    prune: bool,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let declared = declared(paths)?;
    let current: BTreeMap<String, Group> = client
        .groups()
        .await?
        .into_iter()
        .map(|g| (g.name.clone(), g))
        .collect();
    let mut plan: Vec<(String, Change, Option<&Declared>)> = Vec::new();
    for group in &declared {
        let change = match current.get(&group.name) {
            None => Change::Create,
            Some(now) => {
                let wanted = resolved(client, &group.spec, &group.file).await?;
                let mut fields = Vec::new();
                diff(
                    "",
                    &serde_json::to_value(&now.spec)?,
                    &serde_json::to_value(&wanted)?,
                    &mut fields,
                );
                if fields.is_empty() {
                    Change::Unchanged
                } else {
                    Change::Update {
                        revision: now.revision,
                        fields,
                    }
                }
            }
        };
        plan.push((group.name.clone(), change, Some(group)));
    }
    for (name, group) in &current {
        if declared.iter().any(|d| &d.name == name) || group.deleting {
            continue;
        }
        let change = if prune { Change::Prune } else { Change::Kept };
        plan.push((name.clone(), change, None));
    }

    let mut report = Vec::new();
    for (name, change, group) in &plan {
        let (action, fields): (&str, &[String]) = match change {
            Change::Create => ("create", &[]),
            Change::Update { fields, .. } => ("update", fields),
            Change::Unchanged => ("unchanged", &[]),
            Change::Prune => ("delete", &[]),
            Change::Kept => ("keep", &[]),
        };
        if !dry_run {
            match (change, group) {
                (Change::Create, Some(g)) => {
                    client.create_group(name, &g.spec).await?;
                }
                (Change::Update { revision, .. }, Some(g)) => {
                    client.update_group(name, &g.spec, Some(*revision)).await?;
                }
                (Change::Prune, _) => {
                    client.delete_group(name).await?;
                }
                _ => {}
            }
        }
        if out.human() {
            let done = match (dry_run, change) {
                (false, Change::Create) => "created",
                (false, Change::Update { .. }) => "updated",
                (false, Change::Prune) => "deleted (its instances stop first)",
                (_, Change::Kept) => "not in the files; kept (--prune deletes it)",
                _ => action,
            };
            println!("group {name}: {done}");
            for line in fields {
                println!("  {line}");
            }
        }
        report.push(json!({ "group": name, "action": action, "changes": fields }));
    }
    if out.human() {
        if dry_run {
            println!("nothing was changed (dry run)");
        }
    } else {
        crate::render::object(&json!({ "dryRun": dry_run, "groups": report }), out)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff;

    #[test]
    fn diffs_name_each_changed_field() {
        let mut lines = Vec::new();
        diff(
            "",
            &json!({ "memoryMb": 256, "env": { "A": "1", "B": "2" }, "command": ["x"] }),
            &json!({ "memoryMb": 512, "env": { "A": "1", "C": "3" }, "command": ["x"] }),
            &mut lines,
        );
        assert_eq!(
            lines,
            ["- env.B: \"2\"", "+ env.C: \"3\"", "~ memoryMb: 256 -> 512"]
        );
    }
}
