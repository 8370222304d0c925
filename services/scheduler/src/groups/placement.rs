//! Placing an instance: a node with the labels, memory and a free port, reserved in one fenced
//! write together with the persisted plan (layers of the group's templates and modules, files,
//! the workload token), so a new holder dispatches the same plan and never re-plans.
//!
//! The choice itself is [`placement::solve`]'s, over a view read here; this module reads, writes
//! and retries when another replica wins a port or the memory first.

use std::collections::{BTreeMap, HashMap, HashSet};

use mongodb::bson::{Bson, Document, doc};
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, WarmPool, now_ms};
use prexor_model::instances::{INSTANCE_PLANS, PlanLayer};
use prexor_model::nodes::{NodeAllocation, NodeRecord, PortReservation};
use prexor_model::workflows::ModuleState;
use prexor_model::workflows::modules::ModuleRecord;
use prexor_model::{decode_each, decode_each_raw};
use prexor_store::{StoreError, Write};
use sha2::{Digest, Sha256};

use prexor_domain::placement;

use super::{
    DRAINING, Groups, INSTANCES, Instance, NODE_ALLOCATIONS, NODES, PORT_RESERVATIONS, PREPARED,
    PREPARING, RUNNING, SCHEDULED, STARTING, STOPPING,
};

/// Nodes, and ports on each, a placement tries when other replicas win the race for them.
const PLACEMENT_NODE_TRIES: usize = 3;
const PLACEMENT_PORT_TRIES: usize = 3;
/// Times a tick decides a group's batch again over a fresh view before placing one by one.
const PLACEMENT_BATCH_TRIES: usize = 3;

/// The instance's credential for the workload endpoints (`pxw.<instance>.<secret>`), handed to
/// the server in its environment; only its hash is kept with the instance record.
pub(super) fn workload_token(id: &str) -> String {
    let secret = prexor_domain::hex(&rand::random::<[u8; 24]>());
    format!("pxw.{id}.{secret}")
}

pub(super) fn plan_doc(
    group: &str,
    spec: &GroupSpec,
    id: &str,
    port: u16,
    token: &str,
    modules: &[PlanLayer],
) -> Document {
    let mut env: Document = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Bson::String(v.clone())))
        .collect();
    env.insert("PREXOR_INSTANCE_ID", id);
    env.insert("PREXOR_GROUP", group);
    env.insert("PREXOR_INSTANCE_TOKEN", token);
    let mut plan = doc! {
        "group": group,
        "command": spec.command.clone(),
        "env": env,
        "port": i64::from(port),
        "memoryMb": spec.memory_mb as i64,
        "layers": spec
            .templates
            .iter()
            .map(|t| Bson::Document(doc! { "hash": &t.hash, "name": &t.name }))
            .chain(
                modules
                    .iter()
                    .map(|m| Bson::Document(doc! { "hash": &m.hash, "name": &m.name })),
            )
            .collect::<Vec<_>>(),
        "instance": id,
    };
    if !spec.variables.is_empty() {
        // As declared: a secret only as where its value comes from (read at dispatch).
        let variables = mongodb::bson::to_bson(&spec.variables).expect("variables serialize");
        plan.insert("variables", variables);
    }
    if !spec.config_rules.is_empty() {
        let rules = mongodb::bson::to_bson(&spec.config_rules).expect("config rules serialize");
        plan.insert("configRules", rules);
    }
    plan
}

pub(super) fn plan_hash(plan: &Document, id: &str, attempt: i64, revision: i64) -> String {
    let canonical = serde_json::to_string(&Bson::Document(plan.clone()).into_relaxed_extjson())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{id}|{attempt}|{revision}|{canonical}").as_bytes());
    prexor_domain::hex(&digest[..12])
}

/// The memory of `need_mb` reserved on `node` in the fenced write, refused (a precondition)
/// if it no longer fits in `allocatable_mb`.
fn reserve(node: &str, allocatable_mb: i64, need_mb: i64) -> Write {
    Write::update_one(
        NODE_ALLOCATIONS,
        doc! { "_id": node, "reservedMb": { "$lte": allocatable_mb - need_mb } },
        doc! { "$inc": { "reservedMb": need_mb } },
    )
    .require_match()
}

/// One placement decided and not yet written: the instance, its node and port, its plan.
struct Placing {
    id: String,
    attempt: i64,
    node: String,
    port: u16,
    token: String,
    plan: Document,
    plan_hash: String,
    /// Placed for the group's warm pool (`docs/scheduling.md`, "Warm pool").
    warm: Option<WarmPool>,
}

impl Placing {
    #[allow(clippy::too_many_arguments)]
    fn new(
        group: &str,
        spec: &GroupSpec,
        revision: i64,
        id: &str,
        attempt: i64,
        choice: &placement::Placement,
        modules: &[PlanLayer],
        warm: Option<WarmPool>,
    ) -> Placing {
        let token = workload_token(id);
        let plan = plan_doc(group, spec, id, choice.port, &token, modules);
        let plan_hash = plan_hash(&plan, id, attempt, revision);
        Placing {
            id: id.to_string(),
            attempt,
            node: choice.node.clone(),
            port: choice.port,
            token,
            plan,
            plan_hash,
            warm,
        }
    }

    /// Its writes besides the memory: the port reservation (an expired block on the port goes
    /// in the same transaction — never a plain multi-document delete on a collection
    /// transactions write), the persisted plan and the instance record.
    fn writes(&self, group: &str, spec: &GroupSpec, revision: i64) -> Vec<Write> {
        let (id, node, port) = (self.id.as_str(), self.node.as_str(), self.port);
        vec![
            Write::delete_one(
                PORT_RESERVATIONS,
                doc! { "_id": format!("{node}:{port}"), "blockedUntilMs": { "$lt": now_ms() } },
            ),
            Write::insert(
                PORT_RESERVATIONS,
                doc! { "_id": format!("{node}:{port}"), "nodeId": node, "port": i64::from(port), "group": group, "instance": id },
            ),
            Write::update_one(
                INSTANCE_PLANS,
                doc! { "_id": id },
                doc! { "$set": {
                    "group": group,
                    "planHash": &self.plan_hash,
                    "plan": self.plan.clone(),
                } },
            )
            .upsert(),
            Write::update_one(
                INSTANCES,
                doc! { "_id": id },
                self.record_update(group, spec, revision),
            )
            .upsert(),
        ]
    }

    /// The instance record as placed. A warm instance's record says so (and whether its node
    /// only prepares it); a member's loses what an earlier warm attempt under its name left.
    fn record_update(&self, group: &str, spec: &GroupSpec, revision: i64) -> Document {
        let mut set = doc! {
            "group": group,
            "nodeId": &self.node,
            "state": SCHEDULED,
            "planHash": &self.plan_hash,
            "port": i64::from(self.port),
            "memoryMb": spec.memory_mb as i64,
            "attempt": self.attempt,
            "revision": revision,
            "workloadTokenHash": prexor_domain::sha256_hex(self.token.as_bytes()),
            "specHash": spec.hash(),
            "nextAttemptAtMs": 0_i64,
            "scheduledAtMs": now_ms(),
        };
        let mut unset = doc! { "plan": "" };
        match self.warm {
            Some(pool) => {
                set.insert("warm", true);
                set.insert("prepareOnly", !pool.started);
            }
            None => {
                unset.insert("warm", "");
                unset.insert("prepareOnly", "");
            }
        }
        doc! { "$set": set, "$unset": unset }
    }
}

impl Groups {
    /// Places the instances `wanted` (id and attempt) of one tick: one read of the view, the
    /// choices made one after another over it ([`placement::solve_many`]), and one fenced
    /// transaction for all of them. When another replica wins a port or the memory meanwhile,
    /// the transaction writes nothing and the batch is decided again over a fresh view, a few
    /// times; past that they are placed one by one ([`Groups::place`]). With `warm`, they are
    /// placed for the group's warm pool.
    pub(super) async fn place_all(
        &self,
        group: &str,
        spec: &GroupSpec,
        revision: i64,
        wanted: &[(String, i64)],
        lease: &Lease,
        warm: Option<WarmPool>,
    ) -> anyhow::Result<Vec<Instance>> {
        if wanted.len() < 2 {
            let mut placed = Vec::new();
            for (id, attempt) in wanted {
                placed.extend(
                    self.place(group, spec, revision, id, *attempt, lease, warm)
                        .await?,
                );
            }
            return Ok(placed);
        }
        let Some(module_layers) = self.module_layers(group, spec).await? else {
            return Ok(Vec::new());
        };
        let request = placement::Request::of(group, spec);
        let need = request.memory_mb;
        let mut decided = 0;
        for round in 0..PLACEMENT_BATCH_TRIES {
            let _turn = self.placing.lock().await;
            let mut view = self.placement_view(group).await?;
            let (choices, why) = placement::solve_many(&mut view.cluster, &request, wanted.len());
            if let Some(why) = why
                && round == 0
            {
                tracing::warn!(
                    group,
                    placed = choices.len(),
                    wanted = wanted.len(),
                    need_mb = need,
                    %why,
                    "no online node has room for the rest of the group's instances"
                );
            }
            if choices.is_empty() {
                return Ok(Vec::new());
            }
            decided = choices.len();
            let mut per_node: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
            for choice in &choices {
                per_node
                    .entry(&choice.node)
                    .or_insert((choice.allocatable_mb, 0))
                    .1 += need;
            }
            let mut writes = Vec::new();
            for (node, (allocatable, sum)) in &per_node {
                if !view.allocated.contains(*node) {
                    self.prepare_allocation(node).await?;
                }
                writes.push(reserve(node, *allocatable, *sum));
            }
            let mut planned = Vec::new();
            for ((id, attempt), choice) in wanted.iter().zip(&choices) {
                let placing = Placing::new(
                    group,
                    spec,
                    revision,
                    id,
                    *attempt,
                    choice,
                    &module_layers,
                    warm,
                );
                writes.extend(placing.writes(group, spec, revision));
                planned.push(placing);
            }
            prexor_serve::failpoint::hit("scheduler.before-placement-write");
            match self.write(lease, writes).await {
                Ok(()) => {
                    prexor_serve::failpoint::hit("scheduler.after-plan-persisted");
                    return Ok(futures::future::join_all(
                        planned
                            .into_iter()
                            .map(|placing| self.placed(group, spec, placing)),
                    )
                    .await);
                }
                Err(err)
                    if err.is_duplicate_key() || matches!(err, StoreError::Precondition { .. }) =>
                {
                    metrics::counter!("prexor_scheduler_placement_conflicts_total").increment(1);
                    tracing::debug!(
                        group,
                        round,
                        "another replica placed on the same nodes meanwhile; deciding again"
                    );
                }
                Err(err) => return Err(err.into()),
            }
        }
        tracing::info!(
            group,
            "other replicas kept winning the same ports or memory; placing one by one"
        );
        let mut placed = Vec::new();
        for (id, attempt) in wanted.iter().take(decided) {
            placed.extend(
                self.place(group, spec, revision, id, *attempt, lease, warm)
                    .await?,
            );
        }
        Ok(placed)
    }

    /// Places `id` (attempt `attempt`): reads the candidate nodes, lets [`placement::solve`]
    /// pick a node and a free port, and in one fenced write reserves memory and port and persists
    /// the plan. `None` when no node fits now.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn place(
        &self,
        group: &str,
        spec: &GroupSpec,
        revision: i64,
        id: &str,
        attempt: i64,
        lease: &Lease,
        warm: Option<WarmPool>,
    ) -> anyhow::Result<Option<Instance>> {
        let Some(module_layers) = self.module_layers(group, spec).await? else {
            return Ok(None);
        };
        let _turn = self.placing.lock().await;
        let View {
            mut cluster,
            allocated,
        } = self.placement_view(group).await?;
        let request = placement::Request::of(group, spec);
        let need = request.memory_mb;
        let mut next = placement::solve(&cluster, &request);
        if let Err(why) = &next {
            tracing::warn!(
                group,
                instance = id,
                need_mb = need,
                %why,
                "no online node has room for the instance"
            );
            return Ok(None);
        }
        // Another replica placing on the same nodes can win a port or the memory between the
        // read and the write: the next port, then the next node, a few times each; past that the
        // next tick reads afresh.
        let mut nodes_tried = 0;
        let mut ports_tried = 0;
        let mut current: Option<String> = None;
        while let Ok(choice) = next {
            if current.as_deref() != Some(choice.node.as_str()) {
                if nodes_tried == PLACEMENT_NODE_TRIES {
                    break;
                }
                nodes_tried += 1;
                ports_tried = 0;
                current = Some(choice.node.clone());
                if !allocated.contains(&choice.node) {
                    self.prepare_allocation(&choice.node).await?;
                }
            }
            ports_tried += 1;
            let placing = Placing::new(
                group,
                spec,
                revision,
                id,
                attempt,
                &choice,
                &module_layers,
                warm,
            );
            let mut writes = vec![reserve(&choice.node, choice.allocatable_mb, need)];
            writes.extend(placing.writes(group, spec, revision));
            // Everything decided, nothing written: a pause here (the stale-write test stops the
            // process at this point) makes the write below arrive with a deposed token.
            prexor_serve::failpoint::hit("scheduler.before-placement-write");
            match self.write(lease, writes).await {
                Ok(()) => {
                    // The plan is persisted, not yet dispatched: a new holder must dispatch
                    // exactly this plan (the placement-time failover test dies here).
                    prexor_serve::failpoint::hit("scheduler.after-plan-persisted");
                    return Ok(Some(self.placed(group, spec, placing).await));
                }
                // Another replica took that port meanwhile: the next one, a few times.
                Err(err) if err.is_duplicate_key() => {
                    cluster.hold_port(&choice.node, choice.port);
                    if ports_tried == PLACEMENT_PORT_TRIES {
                        cluster.exclude(&choice.node);
                    }
                }
                // ...or the memory: the next node.
                Err(StoreError::Precondition { .. }) => cluster.exclude(&choice.node),
                Err(err) => return Err(err.into()),
            }
            next = placement::solve(&cluster, &request);
        }
        Ok(None)
    }

    /// Makes sure `node` has an allocation record for the fenced `$inc` to match.
    async fn prepare_allocation(&self, node: &str) -> Result<(), StoreError> {
        self.store
            .bounded(
                "preparing a node allocation record",
                self.store
                    .documents(NODE_ALLOCATIONS)
                    .update_one(
                        doc! { "_id": node },
                        doc! { "$setOnInsert": { "reservedMb": 0_i64 } },
                    )
                    .upsert(true),
            )
            .await
            .map(drop)
    }

    /// Counts a placement written, names it in the log and announces it; the instance as the
    /// tick goes on with it.
    async fn placed(&self, group: &str, spec: &GroupSpec, placing: Placing) -> Instance {
        let Placing {
            id,
            attempt,
            node,
            port,
            plan,
            plan_hash,
            warm,
            ..
        } = placing;
        metrics::counter!("prexor_scheduler_placements_total").increment(1);
        tracing::info!(group, instance = %id, %node, port, attempt, warm = warm.is_some(), "placed");
        let instance = Instance {
            id,
            group: group.to_string(),
            spec_hash: spec.hash(),
            node,
            state: SCHEDULED.into(),
            plan_hash,
            port,
            memory_mb: spec.memory_mb,
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
            warm: warm.is_some(),
            prepare_only: warm.is_some_and(|pool| !pool.started),
        };
        self.state_changed(&instance, SCHEDULED, &instance.node)
            .await;
        instance
    }

    /// What [`placement::solve`] chooses from, as committed now (not the tick's snapshot: every
    /// placement of a tick must see the reservations of the ones before it): from the mirror
    /// once it holds every change committed before this call, else read from MongoDB (of the
    /// instances and reservations only the fields placement reads).
    pub(super) async fn placement_view(&self, group: &str) -> Result<View, StoreError> {
        let mirrored = match self.mirror.sync().await {
            Ok(Some(generation)) => self.mirror.read(generation, PlacementReads::from_mirror),
            _ => None,
        };
        let reads = match mirrored {
            Some(reads) => reads,
            None => PlacementReads::fetch(&self.store).await?,
        };
        Ok(View {
            cluster: cluster_view(
                group,
                &reads.nodes,
                &reads.allocations,
                &reads.active,
                &reads.reservations,
                now_ms(),
            ),
            allocated: reads.allocations.into_iter().map(|a| a.id).collect(),
        })
    }

    /// The active version of each module the group attaches, as plan layers; `None` (nothing is
    /// placed) while one of them is not installed.
    pub(super) async fn module_layers(
        &self,
        group: &str,
        spec: &GroupSpec,
    ) -> anyhow::Result<Option<Vec<PlanLayer>>> {
        if spec.modules.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let found: Vec<ModuleRecord> = decode_each(
            crate::modules::MODULES,
            self.store
                .find_all(
                    crate::modules::MODULES,
                    "reading the group's modules",
                    doc! { "_id": { "$in": &spec.modules } },
                )
                .await?,
        );
        let mut layers = Vec::new();
        for name in &spec.modules {
            let active = found
                .iter()
                .find(|m| m.name == *name)
                .filter(|m| m.state == ModuleState::Active)
                .and_then(|m| m.active.as_ref());
            let Some(active) = active else {
                tracing::warn!(group, module = %name, "the group attaches a module that is not installed; nothing is placed");
                return Ok(None);
            };
            layers.push(PlanLayer {
                hash: active.hash.clone(),
                name: format!("module {name}@{}", active.version),
            });
        }
        Ok(Some(layers))
    }
}

/// Instance states that hold a node's memory and port (placement counts them per node).
const ACTIVE: [&str; 7] = [
    SCHEDULED, PREPARING, PREPARED, STARTING, RUNNING, DRAINING, STOPPING,
];

/// The records a placement view is made of: every node and allocation, the active instances
/// (their group and node), every port reservation.
struct PlacementReads {
    nodes: Vec<NodeRecord>,
    allocations: Vec<NodeAllocation>,
    active: Vec<Placed>,
    reservations: Vec<PortReservation>,
}

impl PlacementReads {
    async fn fetch(store: &prexor_store::Store) -> Result<PlacementReads, StoreError> {
        let (nodes, allocations, active, reservations) = tokio::try_join!(
            store.find_all(NODES, "listing nodes", doc! {}),
            store.find_all(NODE_ALLOCATIONS, "reading node allocations", doc! {}),
            store.find_projected(
                INSTANCES,
                "counting instances per node",
                doc! { "state": { "$in": &ACTIVE[..] } },
                doc! { "group": 1, "nodeId": 1 },
            ),
            store.find_projected(
                PORT_RESERVATIONS,
                "reading port reservations",
                doc! {},
                doc! { "nodeId": 1, "port": 1, "blockedUntilMs": 1 },
            ),
        )?;
        Ok(PlacementReads {
            nodes: decode_each(NODES, nodes),
            allocations: decode_each(NODE_ALLOCATIONS, allocations),
            active: decode_each(INSTANCES, active),
            reservations: decode_each(PORT_RESERVATIONS, reservations),
        })
    }

    /// The same records decoded straight from the mirror's BSON.
    fn from_mirror(mirror: &crate::mirror::Collections) -> PlacementReads {
        PlacementReads {
            nodes: decode_each_raw(NODES, mirror.all(NODES)),
            allocations: decode_each_raw(NODE_ALLOCATIONS, mirror.all(NODE_ALLOCATIONS)),
            active: decode_each_raw(
                INSTANCES,
                mirror
                    .all(INSTANCES)
                    .filter(|d| d.get_str("state").is_ok_and(|s| ACTIVE.contains(&s))),
            ),
            reservations: decode_each_raw(PORT_RESERVATIONS, mirror.all(PORT_RESERVATIONS)),
        }
    }
}

/// Where an active instance runs: all a placement view reads of an instance record (decoded
/// without the rest of it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Placed {
    #[serde(default)]
    group: String,
    #[serde(default)]
    node_id: String,
}

/// What a placement decides over, and the nodes that already have an allocation record (the
/// others get one before the fenced `$inc` that must match it).
pub(super) struct View {
    pub(super) cluster: placement::Cluster,
    allocated: HashSet<String>,
}

/// The placement view for group `group`, from the records [`Groups::placement_view`] read:
/// every node (in the order read), their allocations and active instances, and the port
/// reservations (a block that expired before `now` no longer holds its port).
fn cluster_view(
    group: &str,
    nodes: &[NodeRecord],
    allocations: &[NodeAllocation],
    active: &[Placed],
    reservations: &[PortReservation],
    now: i64,
) -> placement::Cluster {
    let reserved: HashMap<&str, i64> = allocations
        .iter()
        .map(|a| (a.id.as_str(), a.reserved_mb))
        .collect();
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for instance in active {
        let count = counts.entry(instance.node_id.as_str()).or_default();
        count.0 += usize::from(instance.group == group);
        count.1 += 1;
    }
    let views = nodes
        .iter()
        .map(|n| {
            let (group_instances, instances) =
                counts.get(n.id.as_str()).copied().unwrap_or_default();
            placement::NodeView {
                id: n.id.clone(),
                online: n.is_online(),
                cordoned: n.cordoned,
                host: Some(n.host_id.clone()).filter(|h| !h.is_empty()),
                labels: n.labels.clone(),
                allocatable_mb: n.resources.as_ref().map(|r| r.memory_allocatable_mb),
                reserved_mb: reserved.get(n.id.as_str()).copied().unwrap_or(0),
                group_instances,
                instances,
            }
        })
        .collect();
    let held = reservations
        .iter()
        // An expired block (a foreign process held the port) no longer counts.
        .filter(|r| r.blocked_until_ms.is_none_or(|until| until >= now))
        .filter_map(|r| Some((r.node_id.clone(), u16::try_from(r.port).ok()?)));
    placement::Cluster::new(views, held)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use prexor_domain::placement::{NodeView, PortDomain};

    #[test]
    fn the_view_reads_what_placement_decides_on() {
        let nodes = [
            doc! {
                "_id": "a", "state": "ONLINE", "hostId": "h1",
                "labels": { "zone": "eu", "weight": 3_i64 },
                "resources": { "memoryAllocatableMb": 8192_i64 },
            },
            doc! { "_id": "b", "state": "OFFLINE", "hostId": "h1", "cordoned": false },
            doc! {
                "_id": "c", "state": "ONLINE", "hostId": "", "cordoned": true,
                "resources": { "memoryAllocatableMb": 4096_i32 },
            },
        ];
        let allocations = [doc! { "_id": "a", "reservedMb": 1024_i64 }];
        let active = [
            doc! { "_id": "lobby-1", "group": "lobby", "nodeId": "a" },
            doc! { "_id": "game-1", "group": "game", "nodeId": "a" },
            doc! { "_id": "game-2", "group": "game", "nodeId": "c" },
        ];
        let reservations = [
            doc! { "_id": "b:25565", "nodeId": "b", "port": 25565_i64 },
            doc! { "_id": "c:25566", "nodeId": "c", "port": 25566_i64 },
            doc! { "_id": "a:25567", "nodeId": "a", "port": 25567_i64, "blockedUntilMs": 2_000_i64 },
            doc! { "_id": "a:25568", "nodeId": "a", "port": 25568_i64, "blockedUntilMs": 999_i64 },
            doc! { "_id": "a:70000", "nodeId": "a", "port": 70_000_i64 },
        ];
        let view = cluster_view(
            "lobby",
            &decode_each(NODES, nodes),
            &decode_each(NODE_ALLOCATIONS, allocations),
            &decode_each(INSTANCES, active),
            &decode_each(PORT_RESERVATIONS, reservations),
            1_000,
        );

        assert_eq!(
            view.nodes[0],
            NodeView {
                id: "a".into(),
                online: true,
                cordoned: false,
                host: Some("h1".into()),
                // A label that is not a string matches no selector.
                labels: [("zone".to_owned(), "eu".to_owned())].into(),
                allocatable_mb: Some(8192),
                reserved_mb: 1024,
                group_instances: 1,
                instances: 2,
            }
        );
        assert!(!view.nodes[1].online && !view.nodes[1].cordoned);
        // An empty host is none; memory stored as a 32-bit integer reads as well.
        let c = &view.nodes[2];
        assert!(c.cordoned && c.host.is_none());
        assert_eq!(c.allocatable_mb, Some(4096));
        assert_eq!((c.group_instances, c.instances), (0, 1));
        // b's port is its host's (a's too), a block held until later counts, an expired one
        // does not.
        assert_eq!(
            view.ports_in_use[&PortDomain::Host("h1".into())],
            BTreeSet::from([25565, 25567])
        );
        assert_eq!(
            view.ports_in_use[&PortDomain::Node("c".into())],
            BTreeSet::from([25566])
        );
    }
}
