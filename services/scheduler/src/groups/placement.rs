//! Placing an instance: a node with the labels, memory and a free port, reserved in one fenced
//! write together with the persisted plan (layers of the group's templates and modules, files,
//! the workload token), so a new holder dispatches the same plan and never re-plans.

use std::collections::{HashMap, HashSet};

use mongodb::bson::{Bson, Document, doc};
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, now_ms};
use prexor_store::{INSTANCE_PLANS, StoreError, Write};
use sha2::{Digest, Sha256};

use super::{
    DRAINING, Groups, INSTANCES, Instance, NODE_ALLOCATIONS, NODES, PORT_RESERVATIONS, PREPARING,
    RUNNING, SCHEDULED, STARTING, STOPPING,
};

/// The instance's credential for the workload endpoints (`pxw.<instance>.<secret>`), handed to
/// the server in its environment; only its hash is kept with the instance record.
pub(super) fn workload_token(id: &str) -> String {
    let secret: [u8; 24] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("pxw.{id}.{hex}")
}

pub(super) fn plan_doc(
    group: &str,
    spec: &GroupSpec,
    id: &str,
    port: u16,
    token: &str,
    modules: &[Document],
) -> Document {
    let mut env: Document = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Bson::String(v.clone())))
        .collect();
    env.insert("PREXOR_INSTANCE_ID", id);
    env.insert("PREXOR_GROUP", group);
    env.insert("PREXOR_INSTANCE_TOKEN", token);
    doc! {
        "group": group,
        "command": spec.command.clone(),
        "env": env,
        "port": i64::from(port),
        "memoryMb": spec.memory_mb as i64,
        "layers": spec
            .templates
            .iter()
            .map(|t| Bson::Document(doc! { "hash": &t.hash, "name": &t.name }))
            .chain(modules.iter().cloned().map(Bson::Document))
            .collect::<Vec<_>>(),
        "instance": id,
    }
}

pub(super) fn plan_hash(plan: &Document, id: &str, attempt: i64, revision: i64) -> String {
    let canonical = serde_json::to_string(&Bson::Document(plan.clone()).into_relaxed_extjson())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{id}|{attempt}|{revision}|{canonical}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

impl Groups {
    /// Places `id` (attempt `attempt`): picks a node and a free port, and in one fenced write
    /// reserves memory and port and persists the plan. `None` when no node fits now.
    pub(super) async fn place(
        &self,
        group: &str,
        spec: &GroupSpec,
        revision: i64,
        id: &str,
        attempt: i64,
        lease: &Lease,
    ) -> anyhow::Result<Option<Instance>> {
        let Some(module_layers) = self.module_layers(group, spec).await? else {
            return Ok(None);
        };
        let nodes: Vec<Document> = self
            .store
            .find_all(
                NODES,
                "listing nodes",
                doc! { "state": "ONLINE", "cordoned": { "$ne": true } },
            )
            .await?;
        let allocations: HashMap<String, i64> = self
            .store
            .find_all(NODE_ALLOCATIONS, "reading node allocations", doc! {})
            .await?
            .into_iter()
            .filter_map(|d| {
                Some((
                    d.get_str("_id").ok()?.to_string(),
                    d.get_i64("reservedMb").unwrap_or(0),
                ))
            })
            .collect();
        let need = spec.memory_mb as i64;
        let mut candidates: Vec<(String, i64)> = nodes
            .iter()
            .filter(|n| {
                let labels = n.get_document("labels").ok();
                let has = |k: &String, v: &String| {
                    labels.and_then(|l| l.get_str(k).ok()) == Some(v.as_str())
                };
                spec.affinity.iter().all(|(k, v)| has(k, v))
                    && !spec.anti_affinity.iter().any(|(k, v)| has(k, v))
            })
            .filter_map(|n| {
                let node = n.get_str("_id").ok()?.to_string();
                let allocatable = n
                    .get_document("resources")
                    .ok()?
                    .get_i64("memoryAllocatableMb")
                    .ok()?;
                let free = allocatable - allocations.get(&node).copied().unwrap_or(0);
                (free >= need).then_some((node, allocatable))
            })
            .collect();
        if candidates.is_empty() {
            tracing::warn!(
                group,
                instance = id,
                need_mb = need,
                "no online node has room for the instance"
            );
            return Ok(None);
        }
        // Score: fewest instances of this group on the node (spread), then most free memory,
        // then fewest instances in all.
        let running = self
            .store
            .find_all(
                INSTANCES,
                "counting instances per node",
                doc! { "state": { "$in": [SCHEDULED, PREPARING, STARTING, RUNNING, DRAINING, STOPPING] } },
            )
            .await?;
        let count_on = |node: &str, only_group: bool| {
            running
                .iter()
                .filter(|i| i.get_str("nodeId") == Ok(node))
                .filter(|i| !only_group || i.get_str("group") == Ok(group))
                .count()
        };
        candidates.sort_by_key(|(node, allocatable)| {
            (
                count_on(node, true),
                std::cmp::Reverse(allocatable - allocations.get(node).copied().unwrap_or(0)),
                count_on(node, false),
            )
        });
        for (node, allocatable) in candidates.into_iter().take(3) {
            self.store
                .bounded(
                    "preparing a node allocation record",
                    self.store
                        .documents(NODE_ALLOCATIONS)
                        .update_one(
                            doc! { "_id": &node },
                            doc! { "$setOnInsert": { "reservedMb": 0_i64 } },
                        )
                        .upsert(true),
                )
                .await?;
            // Nodes on one host share its ports.
            let host = nodes
                .iter()
                .find(|n| n.get_str("_id") == Ok(node.as_str()))
                .and_then(|n| n.get_str("hostId").ok())
                .filter(|h| !h.is_empty());
            let neighbours: Vec<String> = match host {
                Some(host) => self
                    .store
                    .find_projected(
                        NODES,
                        "listing the nodes of a host",
                        doc! { "hostId": host },
                        doc! { "_id": 1 },
                    )
                    .await?
                    .iter()
                    .filter_map(|n| n.get_str("_id").ok().map(str::to_owned))
                    .collect(),
                None => vec![node.clone()],
            };
            let used: HashSet<i64> = self
                .store
                .find_all(
                    PORT_RESERVATIONS,
                    "reading port reservations",
                    doc! { "nodeId": { "$in": neighbours } },
                )
                .await?
                .iter()
                // An expired block (a foreign process held the port) no longer counts.
                .filter(|d| {
                    d.get_i64("blockedUntilMs")
                        .map_or(true, |until| until >= now_ms())
                })
                .filter_map(|d| d.get_i64("port").ok())
                .collect();
            let ports = (spec.port_range.from..=spec.port_range.to)
                .filter(|p| !used.contains(&i64::from(*p)));
            for port in ports.take(3) {
                let token = workload_token(id);
                let plan = plan_doc(group, spec, id, port, &token, &module_layers);
                let plan_hash = plan_hash(&plan, id, attempt, revision);
                // Everything decided, nothing written: a pause here (the stale-write test stops
                // the process at this point) makes the write below arrive with a deposed token.
                prexor_serve::failpoint::hit("scheduler.before-placement-write");
                let placed = self
                    .write(
                        lease,
                        vec![
                            Write::update_one(
                                NODE_ALLOCATIONS,
                                doc! { "_id": &node, "reservedMb": { "$lte": allocatable - need } },
                                doc! { "$inc": { "reservedMb": need } },
                            )
                            .require_match(),
                            // An expired block on this port goes in the same transaction (never
                            // a plain multi-document delete on a collection transactions write).
                            Write::delete_one(
                                PORT_RESERVATIONS,
                                doc! { "_id": format!("{node}:{port}"), "blockedUntilMs": { "$lt": now_ms() } },
                            ),
                            Write::insert(
                                PORT_RESERVATIONS,
                                doc! { "_id": format!("{node}:{port}"), "nodeId": &node, "port": i64::from(port), "group": group, "instance": id },
                            ),
                            Write::update_one(
                                INSTANCE_PLANS,
                                doc! { "_id": id },
                                doc! { "$set": {
                                    "group": group,
                                    "planHash": &plan_hash,
                                    "plan": plan.clone(),
                                } },
                            )
                            .upsert(),
                            Write::update_one(
                                INSTANCES,
                                doc! { "_id": id },
                                doc! { "$set": {
                                    "group": group,
                                    "nodeId": &node,
                                    "state": SCHEDULED,
                                    "planHash": &plan_hash,
                                    "port": i64::from(port),
                                    "memoryMb": need,
                                    "attempt": attempt,
                                    "revision": revision,
                                    "workloadTokenHash": prexor_domain::sha256_hex(token.as_bytes()),
                                    "specHash": spec.hash(),
                                    "nextAttemptAtMs": 0_i64,
                                    "scheduledAtMs": now_ms(),
                                }, "$unset": { "plan": "" } },
                            )
                            .upsert(),
                        ],
                    )
                    .await;
                match placed {
                    Ok(()) => {
                        // The plan is persisted, not yet dispatched: a new holder must dispatch
                        // exactly this plan (the placement-time failover test dies here).
                        prexor_serve::failpoint::hit("scheduler.after-plan-persisted");
                        metrics::counter!("prexor_scheduler_placements_total").increment(1);
                        tracing::info!(group, instance = id, %node, port, attempt, "placed");
                        self.state_changed(group, id, SCHEDULED, &node).await;
                        return Ok(Some(Instance {
                            id: id.to_string(),
                            group: group.to_string(),
                            spec_hash: spec.hash(),
                            node: node.clone(),
                            state: SCHEDULED.into(),
                            plan_hash,
                            port,
                            memory_mb: need as u64,
                            attempt,
                            next_attempt_at_ms: 0,
                            dispatch_retries: 0,
                            drain_until_ms: 0,
                            state_at_ms: now_ms(),
                            halt: None,
                            stop_reason: String::new(),
                            plan: Some(plan),
                            reported_state: None,
                            reported_plan_hash: None,
                            reported_detail: String::new(),
                        }));
                    }
                    // Another replica took that port or the memory meanwhile: try the next.
                    Err(err) if err.is_duplicate_key() => continue,
                    Err(StoreError::Precondition { .. }) => break,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(None)
    }

    /// The active version of each module the group attaches, as plan layers; `None` (nothing is
    /// placed) while one of them is not installed.
    pub(super) async fn module_layers(
        &self,
        group: &str,
        spec: &GroupSpec,
    ) -> anyhow::Result<Option<Vec<Document>>> {
        if spec.modules.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let found = self
            .store
            .find_all(
                crate::modules::MODULES,
                "reading the group's modules",
                doc! { "_id": { "$in": &spec.modules } },
            )
            .await?;
        let mut layers = Vec::new();
        for name in &spec.modules {
            let active = found
                .iter()
                .find(|m| m.get_str("_id") == Ok(name.as_str()))
                .filter(|m| m.get_str("state") == Ok("ACTIVE"))
                .and_then(|m| m.get_document("active").ok());
            let Some(active) = active else {
                tracing::warn!(group, module = %name, "the group attaches a module that is not installed; nothing is placed");
                return Ok(None);
            };
            layers.push(doc! {
                "hash": active.get_str("hash").unwrap_or_default(),
                "name": format!("module {name}@{}", active.get_str("version").unwrap_or("?")),
            });
        }
        Ok(Some(layers))
    }
}
