//! Preparing one server from its plan: the instance directory in `daemon.serversDir` (template
//! layers in order, then the plan's files, placeholders substituted, then its config rules:
//! [`crate::config_rules`]), its argv and environment;
//! [`crate::supervise`] then starts it under a shim, at once or (a warm-pool instance, prepared
//! only) when a later start of the same plan takes it.

use std::path::Path;

use prexor_proto::v1::CompositionPlan;

use crate::instances::Instances;
use crate::layers::{self, LayerError};

impl Instances {
    /// Prepares the instance directory and starts the process under its shim; its pid.
    pub(crate) async fn launch(&self, plan: &CompositionPlan) -> Result<i32, LayerError> {
        self.prepare(plan).await?;
        self.start_prepared(plan).await
    }

    /// Starts the server of `plan` from its directory, prepared before ([`Instances::prepare`]);
    /// its pid.
    pub(crate) async fn start_prepared(&self, plan: &CompositionPlan) -> Result<i32, LayerError> {
        let inner = &self.inner;
        let dir = inner.isolation.instance_dir(&plan.instance_id);
        let substitute = substitution(plan, &inner.node_id);
        let argv: Vec<String> = plan.command.iter().map(|a| substitute(a)).collect();
        let env = crate::isolation::server_env(plan, &inner.node_id, &dir, &substitute);
        self.start_shim(plan, dir, argv, env).await
    }

    /// Prepares the instance directory of `plan`: its template layers in order, its files, its
    /// placeholders substituted, its config rules applied. Nothing is started.
    pub(crate) async fn prepare(&self, plan: &CompositionPlan) -> Result<(), LayerError> {
        let inner = &self.inner;
        let id = plan.instance_id.clone();
        let dir = inner.isolation.instance_dir(&id);
        let substitute = substitution(plan, &inner.node_id);
        let permanent = LayerError::Permanent;
        let fresh = !dir.exists();
        std::fs::create_dir_all(&dir)
            .map_err(|e| permanent(format!("cannot create {}: {e}", dir.display())))?;
        // Every layer of the instance shares one budget (daemon.instanceDiskMb).
        let budget = inner.layers.budget;
        let mut used = 0u64;
        for layer in &plan.layers {
            let archive = inner.layers.archive(&layer.hash).await?;
            let dest = dir.clone();
            let name = if layer.name.is_empty() {
                layer.hash.clone()
            } else {
                layer.name.clone()
            };
            let left = budget.instance_bytes.saturating_sub(used);
            let unpacked =
                tokio::task::spawn_blocking(move || layers::unpack(&archive, &dest, left, &budget))
                    .await
                    .map_err(|e| permanent(e.to_string()))?;
            match unpacked {
                Ok(bytes) => used += bytes,
                Err(e) => {
                    // A directory made for this start holds nothing but the refused layers: it
                    // goes, so they do not keep the disk they were refused for.
                    if fresh {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(permanent(format!("template layer {name}: {e}")));
                }
            }
        }
        if !plan.layers.is_empty() {
            substitute_tree(&dir, &substitute).map_err(permanent)?;
        }
        for file in &plan.files {
            let path = dir.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| permanent(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(&path, substitute(&file.content))
                .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))?;
        }
        crate::config_rules::apply(&dir, &plan.config_rules, &substitute).map_err(permanent)?;
        Ok(())
    }
}

/// The placeholders of `plan` on node `node_id` (`{port}`, `{instance}`, `{group}`, `{node}`,
/// `{memory}`, `{vars.NAME}`), substituted in a string.
fn substitution<'a>(plan: &'a CompositionPlan, node_id: &'a str) -> impl Fn(&str) -> String + 'a {
    let variables: std::collections::BTreeMap<String, String> = plan
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    move |s: &str| {
        let s = s
            .replace("{port}", &plan.port.to_string())
            .replace("{instance}", &plan.instance_id)
            .replace("{group}", &plan.group)
            .replace("{node}", node_id)
            .replace("{memory}", &plan.memory_mb.to_string());
        prexor_domain::variables::substitute_vars(&s, &variables)
    }
}

/// Substitutes placeholders in the configuration files (by extension, under 1 MiB) below `dir`.
fn substitute_tree(dir: &Path, substitute: &dyn Fn(&str) -> String) -> Result<(), String> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file()
                && meta.len() < 1024 * 1024
                && layers::is_config_file(&path)
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                let replaced = substitute(&text);
                if replaced != text {
                    std::fs::write(&path, replaced)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Refuses plans that can never run, naming the problem.
pub(crate) fn check_plan(plan: &CompositionPlan) -> Result<(), String> {
    prexor_domain::validate_name(&plan.instance_id)
        .map_err(|e| format!("instance id {:?}: {e}", plan.instance_id))?;
    if plan.plan_hash.is_empty() {
        return Err("the plan has no hash".into());
    }
    if plan.command.first().is_none_or(|c| c.is_empty()) {
        return Err("the plan has no command".into());
    }
    if plan.port > u32::from(u16::MAX) {
        return Err(format!("port {} is not a TCP port", plan.port));
    }
    for file in &plan.files {
        if file.path.is_empty() || !prexor_domain::paths::stays_inside(&file.path) {
            return Err(format!(
                "plan file {:?} must be a relative path inside the instance directory",
                file.path
            ));
        }
    }
    Ok(())
}
