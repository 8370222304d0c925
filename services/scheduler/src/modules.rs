//! Platform-module mutations under `prexor:v1:lease:platform-module`: the one mutation in flight
//! (`module_mutation`, created by the API) goes REQUESTED → VERIFIED → applied, each step a
//! fenced write. Applying is one transaction that changes the module and removes the mutation, so
//! a holder killed at any point leaves either the old state with the mutation still pending (the
//! next holder continues) or the new state with nothing pending: never half of it.

use std::collections::HashSet;

use mongodb::bson::{Bson, doc};
use prexor_coord::{EventLog, Lease};
use prexor_domain::now_ms;
use prexor_model::workflows::modules::{ModuleRecord, MutationOutcome, MutationRecord};
use prexor_model::workflows::templates::{LayerVersion, TemplateRecord};
use prexor_model::workflows::{
    CURRENT_MUTATION, MUTATION_DONE, ModuleState, MutationStep, mutation_failed,
};
use prexor_model::{UnreadableRecord, decode};
use prexor_store::{BLOB_CHUNKS, BLOBS, Store, Write};

pub use prexor_model::workflows::MODULE_MUTATION;
pub use prexor_model::workflows::MODULES;
use prexor_model::workflows::TEMPLATES;

pub struct Modules {
    pub store: Store,
    pub events: EventLog,
}

impl Modules {
    /// One step of the mutation in flight, if any.
    pub async fn step(&self, lease: &Lease) -> anyhow::Result<()> {
        let store = &self.store;
        let Some(mutation) = store
            .bounded(
                "reading the module mutation",
                store
                    .documents(MODULE_MUTATION)
                    .find_one(doc! { "_id": CURRENT_MUTATION }),
            )
            .await?
        else {
            return Ok(());
        };
        // A mutation this version cannot read (an unknown step, a record edited by hand) fails
        // like any refused one, so it never blocks the next module change; a module it cannot
        // read is left untouched for a holder that can.
        let mutation: MutationRecord = match decode(MODULE_MUTATION, mutation.clone()) {
            Ok(mutation) => mutation,
            Err(err) => {
                return self
                    .fail(lease, &unreadable(&mutation), &err.to_string())
                    .await;
            }
        };
        let (name, action) = (mutation.module.as_str(), mutation.action.as_str());
        let module = store
            .bounded(
                "reading a module",
                store.documents(MODULES).find_one(doc! { "_id": name }),
            )
            .await?
            .map(|module| decode::<ModuleRecord>(MODULES, module))
            .transpose();
        let module = match module {
            Ok(module) => module,
            Err(err) => {
                tracing::warn!(module = name, action, "{err}; the module mutation waits");
                return Ok(());
            }
        };
        let problem = match &module {
            None => Some(format!("module {name} no longer exists")),
            Some(module) => self.problem(&mutation, module).await?,
        };
        if let Some(problem) = problem {
            return self.fail(lease, &mutation, &problem).await;
        }
        let module = module.expect("checked above");
        match mutation.step {
            MutationStep::Requested => {
                self.store
                    .fenced_write(
                        &lease.fence(),
                        vec![
                            Write::update_one(
                                MODULE_MUTATION,
                                doc! { "_id": CURRENT_MUTATION, "step": MutationStep::Requested },
                                doc! { "$set": { "step": MutationStep::Verified, "verifiedAtMs": now_ms() } },
                            )
                            .require_match(),
                        ],
                    )
                    .await?;
                tracing::info!(module = %name, action, "module mutation verified");
                Ok(())
            }
            MutationStep::Verified => self.apply(lease, &mutation, &module).await,
        }
    }

    /// Why the mutation cannot go ahead, checked before every step.
    async fn problem(
        &self,
        mutation: &MutationRecord,
        module: &ModuleRecord,
    ) -> anyhow::Result<Option<String>> {
        let name = &mutation.module;
        Ok(match mutation.action.as_str() {
            "install" | "upgrade" => {
                let hash = mutation.hash.as_deref().unwrap_or_default();
                match self.store.blob_size(hash).await? {
                    None => Some(format!("the artifact {hash} of {name} is not stored")),
                    Some(_) => None,
                }
            }
            "uninstall" => {
                let attached = self
                    .store
                    .find_all(
                        prexor_model::groups::GROUPS,
                        "finding the module's groups",
                        doc! { "spec.modules": name },
                    )
                    .await?;
                (!attached.is_empty())
                    .then(|| format!("module {name} was attached to a group since the request"))
            }
            "delete-storage" => {
                (module.state == ModuleState::Active).then(|| format!("module {name} is installed"))
            }
            other => Some(format!("unknown action {other:?}")),
        })
    }

    /// The mutation's effect and its removal, in one fenced transaction.
    async fn apply(
        &self,
        lease: &Lease,
        mutation: &MutationRecord,
        module: &ModuleRecord,
    ) -> anyhow::Result<()> {
        let (name, action) = (mutation.module.as_str(), mutation.action.as_str());
        let now = now_ms();
        let version = mutation.version.as_deref().unwrap_or_default();
        let hash = mutation.hash.as_deref().unwrap_or_default();
        let record = outcome(
            mutation,
            Some(version).filter(|v| !v.is_empty()),
            now,
            MUTATION_DONE.to_owned(),
        )?;
        let mut writes = match action {
            "install" | "upgrade" => vec![Write::update_one(
                MODULES,
                doc! { "_id": name },
                doc! {
                    "$set": {
                        "state": ModuleState::Active,
                        "active": { "version": version, "hash": hash, "sinceMs": now },
                        "lastMutation": &record,
                    },
                    "$push": { "history": &record },
                },
            )],
            "uninstall" => vec![Write::update_one(
                MODULES,
                doc! { "_id": name },
                doc! {
                    "$set": { "state": ModuleState::Uninstalled, "active": Bson::Null, "lastMutation": &record },
                    "$push": { "history": &record },
                },
            )],
            _ => self.delete_storage(name, module).await?,
        };
        writes.push(Write::delete_one(
            MODULE_MUTATION,
            doc! { "_id": CURRENT_MUTATION, "step": MutationStep::Verified },
        ));
        self.store.fenced_write(&lease.fence(), writes).await?;
        tracing::info!(module = name, action, version, "module mutation done");
        let kind = match action {
            "install" => "MODULE_INSTALLED",
            "upgrade" => "MODULE_UPGRADED",
            "uninstall" => "MODULE_UNINSTALLED",
            _ => "MODULE_DELETED",
        };
        self.events
            .publish(kind, name, serde_json::json!({ "version": version }))
            .await;
        Ok(())
    }

    /// Removes the module and every stored artifact that nothing else (another module, a
    /// template) refers to.
    async fn delete_storage(
        &self,
        name: &str,
        module: &ModuleRecord,
    ) -> anyhow::Result<Vec<Write>> {
        let (others, templates) = tokio::try_join!(
            self.store.find_all(
                MODULES,
                "reading other modules",
                doc! { "_id": { "$ne": name } }
            ),
            self.store.find_all(TEMPLATES, "reading templates", doc! {}),
        )?;
        let mut writes = vec![Write::delete_one(MODULES, doc! { "_id": name })];
        let used_elsewhere: Result<Vec<Vec<String>>, UnreadableRecord> = others
            .into_iter()
            .map(|d| Ok(hashes(decode::<ModuleRecord>(MODULES, d)?.versions)))
            .chain(
                templates
                    .into_iter()
                    .map(|d| Ok(hashes(decode::<TemplateRecord>(TEMPLATES, d)?.versions))),
            )
            .collect();
        let used_elsewhere: HashSet<String> = match used_elsewhere {
            Ok(used) => used.into_iter().flatten().collect(),
            Err(err) => {
                // What that record refers to is unknown: deleting a blob it may still use would
                // lose data, keeping them all only costs space.
                tracing::warn!(
                    module = name,
                    "{err}; the module's stored versions are kept"
                );
                return Ok(writes);
            }
        };
        for hash in module
            .versions
            .iter()
            .map(|v| v.hash.as_str())
            .filter(|h| !used_elsewhere.contains(*h))
        {
            let chunks = self
                .store
                .bounded(
                    "reading a blob",
                    self.store.documents(BLOBS).find_one(doc! { "_id": hash }),
                )
                .await?
                .and_then(|b| b.get_i64("chunks").ok())
                .unwrap_or(0);
            let ids: Vec<String> = (0..chunks).map(|i| format!("{hash}:{i}")).collect();
            writes.push(Write::delete_one(BLOBS, doc! { "_id": hash }));
            if !ids.is_empty() {
                writes.push(Write::delete_many(
                    BLOB_CHUNKS,
                    doc! { "_id": { "$in": ids } },
                ));
            }
        }
        Ok(writes)
    }

    /// Ends the mutation without changing the module, recording why.
    async fn fail(
        &self,
        lease: &Lease,
        mutation: &MutationRecord,
        problem: &str,
    ) -> anyhow::Result<()> {
        let (name, action) = (mutation.module.as_str(), mutation.action.as_str());
        let record = outcome(
            mutation,
            mutation.version.as_deref(),
            now_ms(),
            mutation_failed(problem),
        )?;
        self.store
            .fenced_write(
                &lease.fence(),
                vec![
                    Write::update_one(
                        MODULES,
                        doc! { "_id": name },
                        doc! { "$set": { "lastMutation": &record }, "$push": { "history": &record } },
                    ),
                    Write::delete_one(MODULE_MUTATION, doc! { "_id": CURRENT_MUTATION }),
                ],
            )
            .await?;
        tracing::warn!(module = name, action, "module mutation failed: {problem}");
        self.events
            .publish(
                "MODULE_MUTATION_FAILED",
                name,
                serde_json::json!({ "action": action, "problem": problem }),
            )
            .await;
        Ok(())
    }
}

/// What can be told of a mutation that does not read as a [`MutationRecord`], to fail it under
/// its module's name.
fn unreadable(raw: &mongodb::bson::Document) -> MutationRecord {
    let text = |field: &str| raw.get_str(field).unwrap_or_default().to_owned();
    MutationRecord {
        id: CURRENT_MUTATION.to_owned(),
        module: text("module"),
        action: text("action"),
        step: MutationStep::Requested,
        requested_by: text("requestedBy"),
        requested_at_ms: 0,
        version: raw.get_str("version").ok().map(str::to_owned),
        hash: None,
        verified_at_ms: None,
    }
}

/// The outcome of `mutation` as its module records it (`lastMutation`, `history`).
fn outcome(
    mutation: &MutationRecord,
    version: Option<&str>,
    at_ms: i64,
    result: String,
) -> anyhow::Result<Bson> {
    Ok(mongodb::bson::to_bson(&MutationOutcome {
        action: mutation.action.clone(),
        version: version.map(str::to_owned),
        by: mutation.requested_by.clone(),
        at_ms,
        result,
    })?)
}

/// The blobs of a module's or template's versions.
fn hashes<V>(versions: Vec<LayerVersion<V>>) -> Vec<String> {
    versions.into_iter().map(|v| v.hash).collect()
}
