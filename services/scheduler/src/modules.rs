//! Platform-module mutations under `prexor:v1:lease:platform-module`: the one mutation in flight
//! (`module_mutation`, created by the API) goes REQUESTED → VERIFIED → applied, each step a
//! fenced write. Applying is one transaction that changes the module and removes the mutation, so
//! a holder killed at any point leaves either the old state with the mutation still pending (the
//! next holder continues) or the new state with nothing pending: never half of it.

use mongodb::bson::{Bson, Document, doc};
use prexor_coord::{EventLog, Lease};
use prexor_domain::now_ms;
use prexor_store::{BLOB_CHUNKS, BLOBS, Store, Write};

pub const MODULES: &str = "modules";
pub const MODULE_MUTATION: &str = "module_mutation";
const TEMPLATES: &str = "templates";

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
                    .find_one(doc! { "_id": "current" }),
            )
            .await?
        else {
            return Ok(());
        };
        let name = mutation.get_str("module").unwrap_or_default().to_owned();
        let action = mutation.get_str("action").unwrap_or_default().to_owned();
        let module = store
            .bounded(
                "reading a module",
                store.documents(MODULES).find_one(doc! { "_id": &name }),
            )
            .await?;
        let problem = match &module {
            None => Some(format!("module {name} no longer exists")),
            Some(module) => self.problem(&action, &name, &mutation, module).await?,
        };
        if let Some(problem) = problem {
            return self.fail(lease, &name, &action, &mutation, &problem).await;
        }
        let module = module.expect("checked above");
        match mutation.get_str("step").unwrap_or_default() {
            "REQUESTED" => {
                self.store
                    .fenced_write(
                        &lease.fence(),
                        vec![
                            Write::update_one(
                                MODULE_MUTATION,
                                doc! { "_id": "current", "step": "REQUESTED" },
                                doc! { "$set": { "step": "VERIFIED", "verifiedAtMs": now_ms() } },
                            )
                            .require_match(),
                        ],
                    )
                    .await?;
                tracing::info!(module = %name, action, "module mutation verified");
                Ok(())
            }
            "VERIFIED" => self.apply(lease, &name, &action, &mutation, &module).await,
            other => {
                let problem = format!("unknown step {other:?}");
                self.fail(lease, &name, &action, &mutation, &problem).await
            }
        }
    }

    /// Why the mutation cannot go ahead, checked before every step.
    async fn problem(
        &self,
        action: &str,
        name: &str,
        mutation: &Document,
        module: &Document,
    ) -> anyhow::Result<Option<String>> {
        Ok(match action {
            "install" | "upgrade" => {
                let hash = mutation.get_str("hash").unwrap_or_default();
                match self.store.blob_size(hash).await? {
                    None => Some(format!("the artifact {hash} of {name} is not stored")),
                    Some(_) => None,
                }
            }
            "uninstall" => {
                let attached = self
                    .store
                    .find_all(
                        prexor_store::GROUPS,
                        "finding the module's groups",
                        doc! { "spec.modules": name },
                    )
                    .await?;
                (!attached.is_empty())
                    .then(|| format!("module {name} was attached to a group since the request"))
            }
            "delete-storage" => (module.get_str("state") == Ok("ACTIVE"))
                .then(|| format!("module {name} is installed")),
            other => Some(format!("unknown action {other:?}")),
        })
    }

    /// The mutation's effect and its removal, in one fenced transaction.
    async fn apply(
        &self,
        lease: &Lease,
        name: &str,
        action: &str,
        mutation: &Document,
        module: &Document,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let version = mutation.get_str("version").unwrap_or_default();
        let hash = mutation.get_str("hash").unwrap_or_default();
        let record = doc! {
            "action": action,
            "version": if version.is_empty() { Bson::Null } else { Bson::String(version.to_owned()) },
            "by": mutation.get_str("requestedBy").unwrap_or_default(),
            "atMs": now,
            "result": "DONE",
        };
        let mut writes = match action {
            "install" | "upgrade" => vec![Write::update_one(
                MODULES,
                doc! { "_id": name },
                doc! {
                    "$set": {
                        "state": "ACTIVE",
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
                    "$set": { "state": "UNINSTALLED", "active": Bson::Null, "lastMutation": &record },
                    "$push": { "history": &record },
                },
            )],
            _ => self.delete_storage(name, module).await?,
        };
        writes.push(Write::delete_one(
            MODULE_MUTATION,
            doc! { "_id": "current", "step": "VERIFIED" },
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
    async fn delete_storage(&self, name: &str, module: &Document) -> anyhow::Result<Vec<Write>> {
        let hashes: Vec<String> = module
            .get_array("versions")
            .map(|v| {
                v.iter()
                    .filter_map(|v| v.as_document()?.get_str("hash").ok().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let (others, templates) = tokio::try_join!(
            self.store.find_all(
                MODULES,
                "reading other modules",
                doc! { "_id": { "$ne": name } }
            ),
            self.store.find_all(TEMPLATES, "reading templates", doc! {}),
        )?;
        let used_elsewhere = |hash: &str| {
            others.iter().chain(templates.iter()).any(|d| {
                d.get_array("versions").is_ok_and(|v| {
                    v.iter()
                        .filter_map(|v| v.as_document())
                        .any(|v| v.get_str("hash") == Ok(hash))
                })
            })
        };
        let mut writes = vec![Write::delete_one(MODULES, doc! { "_id": name })];
        for hash in hashes.iter().filter(|h| !used_elsewhere(h)) {
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
        name: &str,
        action: &str,
        mutation: &Document,
        problem: &str,
    ) -> anyhow::Result<()> {
        let record = doc! {
            "action": action,
            "version": mutation.get_str("version").map_or(Bson::Null, |v| Bson::String(v.to_owned())),
            "by": mutation.get_str("requestedBy").unwrap_or_default(),
            "atMs": now_ms(),
            "result": format!("FAILED: {problem}"),
        };
        self.store
            .fenced_write(
                &lease.fence(),
                vec![
                    Write::update_one(
                        MODULES,
                        doc! { "_id": name },
                        doc! { "$set": { "lastMutation": &record }, "$push": { "history": &record } },
                    ),
                    Write::delete_one(MODULE_MUTATION, doc! { "_id": "current" }),
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
