//! Groups under their leases: placement (node, port and memory reserved atomically with the
//! plan), dispatch through any gateway with `(group scope, token)`, folding the daemons'
//! reports into the instance state machine, healing crashed instances and stopping surplus.
//!
//! Every write is fenced with the group's token, so a deposed holder cannot place, dispatch or
//! record anything after a peer took the group; the plan is persisted before it is dispatched, so
//! a new holder dispatches the same plan and never re-plans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use prexor_coord::{EventLog, Lease};
use prexor_domain::{GroupSpec, InstanceState, ScalingMode, now_ms};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{AckResult, Command, InstanceState as Reported};
use prexor_serve::Gateways;
use prexor_store::{GROUPS, Store, StoreError, Write};
use sha2::{Digest, Sha256};

pub(crate) mod deployments;
mod dispatch;
mod halts;

use prexor_store::INSTANCE_PLANS;
pub use prexor_store::INSTANCES;
pub const NODES: &str = "nodes";
pub const NODE_ALLOCATIONS: &str = "node_allocations";
pub const PORT_RESERVATIONS: &str = "port_reservations";

/// No scale decisions for a newly acquired group until its nodes reported, or this long passed.
const CONVERGENCE_GRACE: Duration = Duration::from_secs(5);
pub const GROUP_STATE: &str = "group_state";
/// Up to this many held groups a snapshot filters with `$in`; beyond, it reads whole collections.
const IN_QUERY_LIMIT: usize = 32;
pub const STRAYS: &str = "stray_instances";
/// Operator requests for a group's instances (`stop`, `kill`, `start`), written by the API and
/// carried out (then deleted) by the group's lease holder.
pub const INSTANCE_REQUESTS: &str = "instance_requests";
/// What each server reports about its load (players), written by the API's workload endpoints.
pub const INSTANCE_LOAD: &str = "instance_load";
/// An instance on a node unreachable for longer than this is replaced elsewhere.
const DISCONNECT_GRACE: Duration = Duration::from_secs(20);
/// A crash loop: this many crashes of a group's instances within the window...
const CRASH_LOOP_CRASHES: u64 = 3;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(300);
/// ...pauses new placements for this long, doubled each time it recurs (at most 30 min).
const CRASH_LOOP_PAUSE: Duration = Duration::from_secs(30);
pub(crate) const CRASHES: &str = "crashes";
/// A stray's kill is sent again after this long while the node still reports it running.
const STRAY_KILL_EVERY: Duration = Duration::from_secs(10);

/// Scheduler-side instance states (the forward-only machine of [`InstanceState`]).
const SCHEDULED: &str = InstanceState::Scheduled.as_str();
const PREPARING: &str = InstanceState::Preparing.as_str();
const STARTING: &str = InstanceState::Starting.as_str();
const RUNNING: &str = InstanceState::Running.as_str();
const DRAINING: &str = InstanceState::Draining.as_str();
const STOPPING: &str = InstanceState::Stopping.as_str();
const STOPPED: &str = InstanceState::Stopped.as_str();
const CRASHED: &str = InstanceState::Crashed.as_str();

fn is_terminal(state: &str) -> bool {
    state == STOPPED || state == CRASHED
}

/// Everything one tick needs about the groups this replica holds, read in a handful of queries
/// (not per group), so that a tick's cost in steady state does not grow with round trips.
#[derive(Default)]
pub struct Snapshot {
    groups: HashMap<String, Arc<crate::reconciler::GroupEntry>>,
    instances: HashMap<String, Vec<Arc<Document>>>,
    states: HashMap<String, Arc<Document>>,
    strays: HashMap<String, Vec<Arc<Document>>>,
    nodes: HashMap<String, Arc<Document>>,
    /// Crash times (ms) of the last crash-loop window, per group.
    crashes: HashMap<String, Vec<i64>>,
    /// Operator requests (stop, kill, start), per group.
    requests: HashMap<String, Vec<Arc<Document>>>,
    /// Players online per instance, as the servers report them (`instance_load`).
    players: HashMap<String, u64>,
    /// The rolling deployment of each group, if one is under way.
    deployments: HashMap<String, Arc<Document>>,
}

impl Snapshot {
    /// The composition plan kept in instance `id`'s own record (written before plans moved to
    /// `instance_plans`).
    fn plan_of(&self, group: &str, id: &str) -> Option<Document> {
        self.instances
            .get(group)?
            .iter()
            .find(|d| d.get_str("_id") == Ok(id))?
            .get_document("plan")
            .ok()
            .cloned()
    }
}

/// The store reads behind a [`Snapshot`], for a set of groups (or a superset of them).
pub(crate) struct SnapshotReads {
    instances: Vec<Arc<Document>>,
    states: Vec<Arc<Document>>,
    strays: Vec<Arc<Document>>,
    nodes: Vec<Arc<Document>>,
    crashes: Vec<Arc<Document>>,
    requests: Vec<Arc<Document>>,
    loads: Vec<Arc<Document>>,
    deployments: Vec<Arc<Document>>,
}

impl SnapshotReads {
    /// Eight queries, run together. With many groups it reads whole (small) collections and
    /// [`SnapshotReads::assemble`] filters: one pass over a collection is far cheaper than a
    /// large `$in` on the MongoDB-wire server, and the same on MongoDB.
    async fn fetch(store: &Store, names: &[String]) -> Result<SnapshotReads, StoreError> {
        if names.is_empty() {
            return Ok(SnapshotReads::empty());
        }
        let window = now_ms() - CRASH_LOOP_WINDOW.as_millis() as i64;
        let scoped = |filter: Document| -> Document {
            if names.len() <= IN_QUERY_LIMIT {
                let mut filter = filter;
                filter.insert("group", doc! { "$in": names });
                filter
            } else {
                filter
            }
        };
        let (instances, states, strays, nodes, crashes, requests, loads, deployments) = tokio::try_join!(
            store.find_all(
                INSTANCES,
                "listing instances",
                scoped(doc! { "state": { "$exists": true } })
            ),
            store.find_all(GROUP_STATE, "reading group states", doc! {}),
            store.find_all(STRAYS, "listing stray instances", scoped(doc! {})),
            store.find_all(NODES, "listing nodes", doc! {}),
            store.find_all(
                CRASHES,
                "reading recent crashes",
                scoped(doc! { "atMs": { "$gt": window } })
            ),
            store.find_all(
                INSTANCE_REQUESTS,
                "reading operator requests",
                scoped(doc! {})
            ),
            store.find_all(INSTANCE_LOAD, "reading instance load", scoped(doc! {})),
            store.find_all(
                deployments::DEPLOYMENTS,
                "reading deployments",
                scoped(doc! { "state": "ROLLING" })
            ),
        )?;
        let shared = |docs: Vec<Document>| docs.into_iter().map(Arc::new).collect();
        Ok(SnapshotReads {
            instances: shared(instances),
            states: shared(states),
            strays: shared(strays),
            nodes: shared(nodes),
            crashes: shared(crashes),
            requests: shared(requests),
            loads: shared(loads),
            deployments: shared(deployments),
        })
    }

    /// The same reads from the scheduler's mirror ([`crate::mirror`]): the documents of `names`
    /// that [`SnapshotReads::fetch`]'s queries select.
    pub(crate) fn from_mirror(c: &crate::mirror::Collections, names: &[String]) -> SnapshotReads {
        let held: HashSet<&str> = names.iter().map(String::as_str).collect();
        let window = now_ms() - CRASH_LOOP_WINDOW.as_millis() as i64;
        let of_held = |collection: &str, keep: &dyn Fn(&Document) -> bool| -> Vec<Arc<Document>> {
            c.get(collection)
                .into_iter()
                .flat_map(HashMap::values)
                .filter(|d| d.get_str("group").is_ok_and(|g| held.contains(g)) && keep(d))
                .cloned()
                .collect()
        };
        SnapshotReads {
            instances: of_held(INSTANCES, &|d| d.contains_key("state")),
            states: c
                .get(GROUP_STATE)
                .into_iter()
                .flat_map(HashMap::values)
                .filter(|d| d.get_str("_id").is_ok_and(|g| held.contains(g)))
                .cloned()
                .collect(),
            strays: of_held(STRAYS, &|_| true),
            nodes: c
                .get(NODES)
                .into_iter()
                .flat_map(HashMap::values)
                .cloned()
                .collect(),
            crashes: of_held(CRASHES, &|d| d.get_i64("atMs").is_ok_and(|at| at > window)),
            requests: of_held(INSTANCE_REQUESTS, &|_| true),
            loads: of_held(INSTANCE_LOAD, &|_| true),
            deployments: of_held(deployments::DEPLOYMENTS, &|d| {
                d.get_str("state") == Ok("ROLLING")
            }),
        }
    }

    fn empty() -> SnapshotReads {
        SnapshotReads {
            instances: Vec::new(),
            states: Vec::new(),
            strays: Vec::new(),
            nodes: Vec::new(),
            crashes: Vec::new(),
            requests: Vec::new(),
            loads: Vec::new(),
            deployments: Vec::new(),
        }
    }

    /// The snapshot of `names`, which must be among the groups the reads were made for.
    pub(crate) fn assemble(
        self,
        names: &[String],
        all_groups: &crate::reconciler::GroupMap,
    ) -> Snapshot {
        if names.is_empty() {
            return Snapshot::default();
        }
        let held: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mine = |docs: Vec<Arc<Document>>, key: &str| -> Vec<Arc<Document>> {
            docs.into_iter()
                .filter(|d| d.get_str(key).is_ok_and(|g| held.contains(g)))
                .collect()
        };
        let mut crash_times: HashMap<String, Vec<i64>> = HashMap::new();
        for crash in mine(self.crashes, "group") {
            if let (Ok(group), Ok(at)) = (crash.get_str("group"), crash.get_i64("atMs")) {
                crash_times.entry(group.to_string()).or_default().push(at);
            }
        }
        Snapshot {
            groups: names
                .iter()
                .filter_map(|n| Some((n.clone(), all_groups.get(n)?.clone())))
                .collect(),
            instances: by_group(mine(self.instances, "group")),
            states: by_id(mine(self.states, "_id")),
            strays: by_group(mine(self.strays, "group")),
            nodes: by_id(self.nodes),
            crashes: crash_times,
            requests: by_group(mine(self.requests, "group")),
            players: mine(self.loads, "group")
                .into_iter()
                .filter_map(|l| {
                    let players = l.get_array("playerNames").map_or(0, Vec::len) as u64;
                    Some((l.get_str("_id").ok()?.to_string(), players))
                })
                .collect(),
            deployments: mine(self.deployments, "group")
                .into_iter()
                .filter_map(|d| Some((d.get_str("group").ok()?.to_string(), d)))
                .collect(),
        }
    }
}

fn by_group(docs: Vec<Arc<Document>>) -> HashMap<String, Vec<Arc<Document>>> {
    let mut grouped: HashMap<String, Vec<Arc<Document>>> = HashMap::new();
    for doc in docs {
        if let Ok(group) = doc.get_str("group") {
            grouped.entry(group.to_string()).or_default().push(doc);
        }
    }
    grouped
}

fn by_id(docs: Vec<Arc<Document>>) -> HashMap<String, Arc<Document>> {
    docs.into_iter()
        .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
        .collect()
}

pub struct Groups {
    pub store: Store,
    pub gateways: Gateways,
    events: EventLog,
    /// The scheduler's tick (`scheduler.evaluationIntervalSeconds`).
    interval: Duration,
    /// Per group: the token last worked under and when it was first seen (convergence gate).
    seen: Mutex<HashMap<String, (u64, Instant, i64)>>,
    /// When this replica last queried a node about an overdue instance (`<id>:<plan>` → ms).
    queried: Mutex<HashMap<String, i64>>,
}

/// The scheduler-owned part of an instance record.
struct Instance {
    id: String,
    group: String,
    /// Hash of the spec the instance was placed from (empty for records older than that).
    spec_hash: String,
    node: String,
    state: String,
    plan_hash: String,
    port: u16,
    memory_mb: u64,
    attempt: i64,
    next_attempt_at_ms: i64,
    /// Dispatches of the current plan that the node could not take yet.
    dispatch_retries: i64,
    /// DRAINING: stopped at the latest then.
    drain_until_ms: i64,
    /// When the current state was entered (0 when not recorded).
    state_at_ms: i64,
    /// STOPPING: the halt sent (or to be sent) and whether the node took it.
    halt: Option<halts::HaltRecord>,
    stop_reason: String,
    plan: Option<Document>,
    reported_state: Option<String>,
    reported_plan_hash: Option<String>,
    reported_detail: String,
}

impl Instance {
    fn from_doc(doc: &Document) -> Option<Instance> {
        let reported = doc.get_document("reported").ok();
        Some(Instance {
            id: doc.get_str("_id").ok()?.to_string(),
            group: doc.get_str("group").unwrap_or_default().to_string(),
            spec_hash: doc.get_str("specHash").unwrap_or_default().to_string(),
            node: doc.get_str("nodeId").unwrap_or_default().to_string(),
            state: doc.get_str("state").unwrap_or_default().to_string(),
            plan_hash: doc.get_str("planHash").unwrap_or_default().to_string(),
            port: doc.get_i64("port").unwrap_or_default() as u16,
            memory_mb: doc.get_i64("memoryMb").unwrap_or_default() as u64,
            attempt: doc.get_i64("attempt").unwrap_or_default(),
            next_attempt_at_ms: doc.get_i64("nextAttemptAtMs").unwrap_or_default(),
            dispatch_retries: doc.get_i64("dispatchRetries").unwrap_or_default(),
            drain_until_ms: doc.get_i64("drainUntilMs").unwrap_or_default(),
            state_at_ms: doc
                .get_i64("stateAtMs")
                .or_else(|_| doc.get_i64("scheduledAtMs"))
                .unwrap_or_default(),
            halt: doc
                .get_document("halt")
                .ok()
                .and_then(halts::HaltRecord::from_doc),
            stop_reason: doc.get_str("stopReason").unwrap_or_default().to_string(),
            // Copied from the snapshot only when dispatched (`Snapshot::plan_of`).
            plan: None,
            reported_state: reported.and_then(|r| r.get_str("state").ok().map(str::to_string)),
            reported_plan_hash: reported
                .and_then(|r| r.get_str("planHash").ok().map(str::to_string)),
            reported_detail: reported
                .and_then(|r| r.get_str("detail").ok())
                .unwrap_or_default()
                .to_string(),
        })
    }

    fn is_active(&self) -> bool {
        !self.state.is_empty() && !is_terminal(&self.state)
    }
}

impl Groups {
    pub fn new(store: Store, gateways: Gateways, events: EventLog, interval: Duration) -> Groups {
        Groups {
            store,
            gateways,
            events,
            interval,
            seen: Mutex::new(HashMap::new()),
            queried: Mutex::new(HashMap::new()),
        }
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Forgets groups no longer held (their next holder starts its own gate).
    pub fn retain(&self, held: &HashSet<String>) {
        self.seen
            .lock()
            .expect("seen lock")
            .retain(|name, _| held.contains(name));
    }

    async fn write(&self, lease: &Lease, writes: Vec<Write>) -> Result<(), StoreError> {
        self.store
            .fenced_write(&lease.fence(), writes)
            .await
            .map(|_| ())
    }

    /// Reads what a tick needs for `names` (the groups held) and assembles it with every group's
    /// document (read by the reconciler anyway).
    pub async fn snapshot(
        &self,
        names: &[String],
        all_groups: &crate::reconciler::GroupMap,
    ) -> Result<Snapshot, StoreError> {
        let raw = SnapshotReads::fetch(&self.store, names).await?;
        Ok(raw.assemble(names, all_groups))
    }
    /// One convergence step for group `name` under `lease`, from this tick's snapshot.
    pub async fn converge(&self, name: &str, lease: &Lease, snap: &Snapshot) -> anyhow::Result<()> {
        let Some(entry) = snap.groups.get(name) else {
            return Ok(());
        };
        // An unusable spec was reported when the document was read.
        let Ok(spec) = &entry.spec else {
            return Ok(());
        };
        let group = &entry.doc;
        let revision = group.get_i64("revision").unwrap_or(1);
        let mut instances: Vec<Instance> = snap
            .instances
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|d| Instance::from_doc(d))
            .collect();

        // 1. What the daemons reported about the current plans moves the state machine forward.
        for instance in &mut instances {
            if instance.reported_plan_hash.as_deref() != Some(instance.plan_hash.as_str()) {
                continue;
            }
            let reported = instance.reported_state.clone();
            match (instance.state.clone().as_str(), reported.as_deref()) {
                (SCHEDULED | PREPARING | STARTING, Some("RUNNING")) => {
                    self.set_state(lease, instance, InstanceState::Running)
                        .await?;
                }
                (SCHEDULED | PREPARING, Some("STARTING")) => {
                    self.set_state(lease, instance, InstanceState::Starting)
                        .await?;
                }
                (SCHEDULED, Some("PREPARING")) => {
                    self.set_state(lease, instance, InstanceState::Preparing)
                        .await?;
                }
                (state, Some(reported @ ("STOPPED" | "CRASHED"))) if !is_terminal(state) => {
                    let reason = instance.reported_detail.clone();
                    self.finish(lease, instance, reported, &reason).await?;
                }
                _ => {}
            }
        }

        // 1b. Instances on a node that has been unreachable longer than the disconnect grace are
        // given up (and placed again below); their processes, if the node comes back, are
        // strays that get stopped.
        self.give_up_lost_nodes(lease, &mut instances, &snap.nodes)
            .await?;
        self.stop_strays(
            name,
            lease,
            snap.strays.get(name).map(Vec::as_slice).unwrap_or_default(),
        )
        .await?;
        // 1c. Halts recorded but not taken yet go out again; instances overdue in a transient
        // state are settled from what their node says.
        self.resend_halts(name, lease, &instances).await?;
        let online = |node: &str| {
            snap.nodes
                .get(node)
                .is_some_and(|n| n.get_str("state") == Ok("ONLINE"))
        };
        self.settle_overdue(name, lease, &mut instances, &online)
            .await?;

        if group.get_bool("deleting").unwrap_or(false) {
            return self.tear_down(name, spec, lease, &instances).await;
        }
        self.operator_requests(name, spec, revision, lease, &mut instances, snap)
            .await?;

        // 2. Placed but not confirmed started: dispatch (again) the persisted plans.
        let now = now_ms();
        let mut due = Vec::new();
        for instance in instances
            .iter_mut()
            .filter(|i| i.state == SCHEDULED && i.next_attempt_at_ms <= now)
        {
            instance.plan = match snap.plan_of(name, &instance.id) {
                Some(plan) => Some(plan),
                None => self.persisted_plan(instance).await?,
            };
            due.push(instance);
        }
        self.dispatch_all(name, lease, due).await?;

        // 3. Convergence gate for a newly acquired group.
        if !self.gate_open(name, lease, &instances, &snap.nodes) {
            return Ok(());
        }

        // 4. A crash loop pauses new placements, longer each time it recurs.
        let paused = self.crash_loop_pause(name, lease, snap).await?;

        // 5. Scale to the desired set of names (maintenance: start nothing, stop nothing).
        let active: BTreeMap<String, &Instance> = instances
            .iter()
            .filter(|i| i.is_active())
            .map(|i| (i.id.clone(), i))
            .collect();
        let wanted: Vec<String> = match spec.scaling {
            ScalingMode::Manual => return Ok(()),
            ScalingMode::Static => (1..=spec.min_instances)
                .map(|k| format!("{name}-{k}"))
                .collect(),
            ScalingMode::Dynamic => {
                let target = self
                    .dynamic_target(name, spec, lease, snap, &active)
                    .await?;
                dynamic_names(name, target, &active, &snap.players)
            }
        };
        if spec.maintenance {
            return Ok(());
        }
        if let Some(deployment) = snap.deployments.get(name) {
            self.roll(name, spec, lease, deployment, &active, &wanted)
                .await?;
        }
        let attempts: HashMap<String, i64> = instances
            .iter()
            .map(|i| (i.id.clone(), i.attempt))
            .collect();
        if !paused {
            let mut placed = Vec::new();
            for id in wanted.iter().filter(|id| !active.contains_key(*id)) {
                let attempt = attempts.get(id).copied().unwrap_or(0) + 1;
                placed.extend(self.place(name, spec, revision, id, attempt, lease).await?);
            }
            self.dispatch_all(name, lease, placed.iter_mut().collect())
                .await?;
        }
        // Surplus instances leave, draining first; a DRAINING one keeps leaving even if it is
        // wanted again (it is replaced once stopped).
        for instance in active
            .values()
            .filter(|i| (!wanted.contains(&i.id) || i.state == DRAINING) && i.state != STOPPING)
        {
            let players = snap.players.get(&instance.id).copied().unwrap_or(0);
            self.retire(
                name,
                spec,
                lease,
                instance,
                players,
                "above the desired count",
            )
            .await?;
        }
        Ok(())
    }

    /// Takes `instance` out of service: a RUNNING server with players online DRAINS first (it
    /// stays up, DRAINING in the API and events, for proxies to send nobody new) until its
    /// players left or `drainSeconds` passed; then it is stopped. True once it is STOPPING.
    async fn retire(
        &self,
        group: &str,
        spec: &GroupSpec,
        lease: &Lease,
        instance: &Instance,
        players: u64,
        why: &str,
    ) -> anyhow::Result<bool> {
        let now = now_ms();
        if instance.state == RUNNING && players > 0 && spec.drain_seconds > 0 {
            let until = now + i64::from(spec.drain_seconds) * 1000;
            self.advance(
                lease,
                instance,
                InstanceState::Draining,
                doc! { "drainUntilMs": until, "stopReason": why },
                why,
            )
            .await?;
            tracing::info!(group, instance = %instance.id, players, "draining ({why})");
            return Ok(false);
        }
        if instance.state == DRAINING && players > 0 && now < instance.drain_until_ms {
            return Ok(false);
        }
        let how = Halt::Stop {
            grace_s: spec.stop_grace_seconds,
        };
        self.stop(group, lease, instance, how, why).await
    }

    async fn give_up_lost_nodes(
        &self,
        lease: &Lease,
        instances: &mut [Instance],
        nodes: &HashMap<String, Arc<Document>>,
    ) -> anyhow::Result<()> {
        let hosting: HashSet<&str> = instances
            .iter()
            .filter(|i| i.is_active())
            .map(|i| i.node.as_str())
            .collect();
        let docs: Vec<&Document> = hosting
            .iter()
            .filter_map(|n| nodes.get(*n).map(|d| d.as_ref()))
            .collect();
        let now = now_ms();
        let lost: HashMap<String, String> = docs
            .iter()
            .filter_map(|n| {
                let id = n.get_str("_id").ok()?.to_string();
                let state = n.get_str("state").ok()?;
                let since = n.get_i64("disconnectedAtMs").unwrap_or(0);
                (state != "ONLINE"
                    && since > 0
                    && now - since > DISCONNECT_GRACE.as_millis() as i64)
                    .then(|| (id, state.to_string()))
            })
            .collect();
        for instance in instances.iter_mut().filter(|i| i.is_active()) {
            if let Some(state) = lost.get(&instance.node) {
                let reason = format!(
                    "node {} is {state} for more than {DISCONNECT_GRACE:?}",
                    instance.node
                );
                self.finish(lease, instance, CRASHED, &reason).await?;
            }
        }
        Ok(())
    }

    /// Stops processes of older plans that a node reported after it came back: each kill is
    /// recorded on the stray (a fenced write) before it is sent with the same token, at most
    /// every [`STRAY_KILL_EVERY`] until the node reports the process ended.
    async fn stop_strays(
        &self,
        group: &str,
        lease: &Lease,
        strays: &[Arc<Document>],
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let mut kills = Vec::new();
        for stray in strays {
            let Ok(id) = stray.get_str("_id") else {
                continue;
            };
            let reported = stray.get_document("reported").ok();
            let state = reported
                .and_then(|r| r.get_str("state").ok())
                .unwrap_or_default();
            if matches!(state, "STOPPED" | "CRASHED") {
                self.write(lease, vec![Write::delete_one(STRAYS, doc! { "_id": id })])
                    .await?;
                continue;
            }
            let last = stray
                .get_document("kill")
                .and_then(|k| k.get_i64("atMs"))
                .unwrap_or(0);
            if now - last < STRAY_KILL_EVERY.as_millis() as i64 {
                continue;
            }
            let plan = reported
                .and_then(|r| r.get_str("planHash").ok())
                .unwrap_or_default();
            let recorded = self
                .write(
                    lease,
                    vec![
                        Write::update_one(
                            STRAYS,
                            doc! { "_id": id, "reported.planHash": plan },
                            doc! { "$set": { "kill": { "token": lease.token() as i64, "atMs": now } } },
                        )
                        .require_match(),
                    ],
                )
                .await;
            match recorded {
                Ok(()) => {}
                Err(StoreError::Precondition { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
            let instance = stray.get_str("instanceId").unwrap_or_default().to_owned();
            let node = stray.get_str("nodeId").unwrap_or_default().to_owned();
            let command = Command {
                command_id: format!("kill-stray:{id}:{plan}"),
                scope: lease.scope().to_string(),
                fence_token: lease.token(),
                action: Some(Action::Kill(prexor_proto::v1::KillInstance {
                    instance_id: instance.clone(),
                    plan_hash: plan.to_owned(),
                })),
            };
            kills.push((id.to_owned(), plan.to_owned(), instance, node, command));
        }
        prexor_serve::failpoint::hit("scheduler.before-halt-send");
        if kills.is_empty() || !lease.is_valid() {
            return Ok(());
        }
        let outcomes = futures::future::join_all(
            kills
                .iter()
                .map(|(_, _, _, node, command)| self.gateways.send(node, command.clone())),
        )
        .await;
        for ((stray, plan, instance, node, _), outcome) in kills.iter().zip(outcomes) {
            match outcome {
                Ok(ack)
                    if ack.result() == AckResult::Already
                        && (ack.plan_hash != *plan
                            || matches!(
                                ack.actual_state(),
                                Reported::Stopped | Reported::Crashed | Reported::Unspecified
                            )) =>
                {
                    // Nothing of it runs there (any more): nothing will report its end.
                    self.write(
                        lease,
                        vec![Write::delete_one(STRAYS, doc! { "_id": stray })],
                    )
                    .await?;
                    tracing::info!(group, %instance, %node, "stray record dropped: {}", ack.message);
                }
                Ok(ack) => {
                    tracing::warn!(group, %instance, %node, "killed a stray process of an older plan: {}", ack.message);
                    metrics::counter!("prexor_scheduler_strays_stopped_total").increment(1);
                }
                Err(reason) => {
                    tracing::info!(group, %instance, %node, "stray not stopped yet: {reason}")
                }
            }
        }
        Ok(())
    }

    /// Whether the group is paused for a crash loop: `CRASH_LOOP_CRASHES` crashes within
    /// `CRASH_LOOP_WINDOW` start a pause of `CRASH_LOOP_PAUSE` × 2^(n-1) (at most 30 min), kept
    /// in `group_state` under the group's token so that it survives failover.
    async fn crash_loop_pause(
        &self,
        name: &str,
        lease: &Lease,
        snap: &Snapshot,
    ) -> anyhow::Result<bool> {
        let now = now_ms();
        let state = snap.states.get(name).cloned().unwrap_or_default();
        let paused_until = state.get_i64("pausedUntilMs").unwrap_or(0);
        if now < paused_until {
            return Ok(true);
        }
        let since = now - CRASH_LOOP_WINDOW.as_millis() as i64;
        // Crashes after the last pause ended count towards the next one.
        let recent = snap
            .crashes
            .get(name)
            .into_iter()
            .flatten()
            .filter(|at| **at > since.max(paused_until))
            .count() as u64;
        let level = state.get_i64("pauseLevel").unwrap_or(0);
        if recent < CRASH_LOOP_CRASHES {
            if level > 0 && paused_until < since {
                // Quiet for a whole window: the next loop starts from the shortest pause.
                self.write(
                    lease,
                    vec![Write::update_one(
                        GROUP_STATE,
                        doc! { "_id": name },
                        doc! { "$set": { "pauseLevel": 0_i64 } },
                    )],
                )
                .await?;
            }
            return Ok(false);
        }
        let level = level + 1;
        let pause = CRASH_LOOP_PAUSE
            .saturating_mul(2u32.saturating_pow((level - 1).clamp(0, 16) as u32))
            .min(Duration::from_secs(1800));
        let until = now + pause.as_millis() as i64;
        self.write(
            lease,
            vec![Write::update_one(
                GROUP_STATE,
                doc! { "_id": name },
                doc! { "$set": { "pausedUntilMs": until, "pauseLevel": level, "pauseReason": format!("{recent} crashes within {CRASH_LOOP_WINDOW:?}") } },
            )
            .upsert()],
        )
        .await?;
        metrics::counter!("prexor_scheduler_crash_loop_pauses_total").increment(1);
        tracing::warn!(
            group = name,
            crashes = recent,
            ?pause,
            level,
            "crash loop: pausing new instances of the group"
        );
        Ok(true)
    }

    /// Newly acquired: wait until every node hosting the group's instances reported since, or
    /// the grace period passed.
    fn gate_open(
        &self,
        name: &str,
        lease: &Lease,
        instances: &[Instance],
        nodes: &HashMap<String, Arc<Document>>,
    ) -> bool {
        let (since, since_ms) = {
            let mut seen = self.seen.lock().expect("seen lock");
            let entry =
                seen.entry(name.to_string())
                    .or_insert((lease.token(), Instant::now(), now_ms()));
            if entry.0 != lease.token() {
                *entry = (lease.token(), Instant::now(), now_ms());
            }
            (entry.1, entry.2)
        };
        if since.elapsed() >= CONVERGENCE_GRACE {
            return true;
        }
        instances.iter().filter(|i| i.is_active()).all(|i| {
            nodes
                .get(&i.node)
                .and_then(|n| n.get_i64("lastHeartbeatMs").ok())
                .unwrap_or(0)
                >= since_ms
        })
    }

    /// Moves `instance` forward to `state` (a move the lifecycle does not allow is refused,
    /// here and by the write's filter, so a stale view never moves it backwards).
    async fn set_state(
        &self,
        lease: &Lease,
        instance: &mut Instance,
        state: InstanceState,
    ) -> anyhow::Result<()> {
        self.advance(lease, instance, state, doc! {}, "").await?;
        instance.state = state.as_str().to_owned();
        Ok(())
    }

    /// [`Groups::set_state`] with more fields set in the same write and a reason for the event.
    async fn advance(
        &self,
        lease: &Lease,
        instance: &Instance,
        state: InstanceState,
        mut set: Document,
        why: &str,
    ) -> anyhow::Result<()> {
        let allowed =
            InstanceState::parse(&instance.state).is_some_and(|from| from.may_become(state));
        anyhow::ensure!(
            allowed,
            "instance {} cannot go from {} to {state}",
            instance.id,
            instance.state
        );
        set.insert("state", state.as_str());
        set.insert("stateAtMs", now_ms());
        self.write(
            lease,
            vec![Write::update_one(
                INSTANCES,
                doc! {
                    "_id": &instance.id,
                    "planHash": &instance.plan_hash,
                    "state": { "$in": InstanceState::predecessors(state) },
                },
                doc! { "$set": set },
            )],
        )
        .await?;
        self.state_changed(&instance.group, &instance.id, state.as_str(), why)
            .await;
        Ok(())
    }

    /// The instance ended: record the terminal state and give its port and memory back, once.
    async fn finish(
        &self,
        lease: &Lease,
        instance: &mut Instance,
        state: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.finish_record(lease, instance, state, reason).await?;
        instance.state = state.to_string();
        Ok(())
    }

    /// [`Groups::finish`]'s writes and event, for an instance not held mutably.
    async fn finish_record(
        &self,
        lease: &Lease,
        instance: &Instance,
        state: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let result = self
            .write(
                lease,
                vec![
                    Write::update_one(
                        INSTANCES,
                        doc! { "_id": &instance.id, "planHash": &instance.plan_hash, "state": { "$nin": [STOPPED, CRASHED] } },
                        doc! { "$set": { "state": state, "reason": reason, "endedAtMs": now_ms() } },
                    )
                    .require_match(),
                    Write::delete_one(
                        PORT_RESERVATIONS,
                        doc! { "_id": format!("{}:{}", instance.node, instance.port), "instance": &instance.id },
                    ),
                    Write::update_one(
                        NODE_ALLOCATIONS,
                        doc! { "_id": &instance.node },
                        doc! { "$inc": { "reservedMb": -(instance.memory_mb as i64) } },
                    ),
                ],
            )
            .await;
        match result {
            Ok(()) | Err(StoreError::Precondition { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        metrics::counter!("prexor_scheduler_instances_ended_total", "state" => state.to_string())
            .increment(1);
        tracing::info!(instance = %instance.id, node = %instance.node, state, reason, "instance ended");
        self.state_changed(&instance.group, &instance.id, state, reason)
            .await;
        Ok(())
    }

    /// Places `id` (attempt `attempt`): picks a node and a free port, and in one fenced write
    /// reserves memory and port and persists the plan. `None` when no node fits now.
    async fn place(
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

    async fn state_changed(&self, group: &str, instance: &str, state: &str, detail: &str) {
        self.events
            .publish(
                "INSTANCE_STATE_CHANGED",
                instance,
                serde_json::json!({ "group": group, "state": state, "detail": detail }),
            )
            .await;
    }

    /// The active version of each module the group attaches, as plan layers; `None` (nothing is
    /// placed) while one of them is not installed.
    async fn module_layers(
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

    /// A DYNAMIC group's instance count from its load: one more when the running ones are
    /// `scaleUpPercent` full, one fewer when one fewer would stay below that for
    /// `scaleDownDelaySeconds`; no change within `cooldownSeconds` of the last one. The target,
    /// the last change and the low-load start are kept in `group_state` (fenced), so they
    /// survive a failover.
    async fn dynamic_target(
        &self,
        name: &str,
        spec: &GroupSpec,
        lease: &Lease,
        snap: &Snapshot,
        active: &BTreeMap<String, &Instance>,
    ) -> anyhow::Result<u32> {
        let Some(rules) = spec.dynamic else {
            return Ok(spec.min_instances);
        };
        let state = snap.states.get(name);
        let stored = state.and_then(|s| s.get_i64("scaleTarget").ok());
        let last_change = state
            .and_then(|s| s.get_i64("lastScaleAtMs").ok())
            .unwrap_or(0);
        let low_since = state.and_then(|s| s.get_i64("lowSinceMs").ok());
        let current = stored
            .map_or(spec.min_instances, |t| t.max(0) as u32)
            .clamp(spec.min_instances, spec.max_instances);
        let players: u64 = active
            .keys()
            .map(|id| snap.players.get(id).copied().unwrap_or(0))
            .sum();
        let full_at = |count: u32| {
            u64::from(count) * u64::from(rules.max_players) * u64::from(rules.scale_up_percent)
        };
        let started = active.values().filter(|i| i.state == RUNNING).count() as u32;
        let now = now_ms();
        let cooled = now - last_change >= i64::from(rules.cooldown_seconds) * 1000;
        let busy = players * 100 >= full_at(current);
        let quiet = current > spec.min_instances && players * 100 < full_at(current - 1);
        // (target, start of the low load still counting down)
        let (target, low) = if cooled && busy && started >= current && current < spec.max_instances
        {
            (current + 1, None)
        } else if quiet {
            let since = low_since.unwrap_or(now);
            if cooled && now - since >= i64::from(rules.scale_down_delay_seconds) * 1000 {
                (current - 1, None)
            } else {
                (current, Some(since))
            }
        } else {
            (current, None)
        };
        if Some(i64::from(target)) != stored || low != low_since {
            let mut set = doc! { "scaleTarget": i64::from(target) };
            if target != current {
                set.insert("lastScaleAtMs", now);
                tracing::info!(
                    group = name,
                    from = current,
                    to = target,
                    players,
                    "scaling"
                );
                self.events
                    .publish(
                        "GROUP_SCALED",
                        name,
                        serde_json::json!({ "from": current, "to": target, "players": players }),
                    )
                    .await;
            }
            let mut update = doc! {};
            match low {
                Some(since) => {
                    set.insert("lowSinceMs", since);
                }
                None => {
                    update.insert("$unset", doc! { "lowSinceMs": "" });
                }
            }
            update.insert("$set", set);
            self.write(
                lease,
                vec![Write::update_one(GROUP_STATE, doc! { "_id": name }, update).upsert()],
            )
            .await?;
        }
        Ok(target)
    }

    /// Carries out the operators' requests for this group's instances: stop and kill (a STATIC
    /// or DYNAMIC group then replaces the instance, i.e. restarts it), start (MANUAL groups, up
    /// to `maxInstances`). A request is deleted once done or moot.
    async fn operator_requests(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &Lease,
        instances: &mut Vec<Instance>,
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        let players = &snap.players;
        for request in snap.requests.get(name).into_iter().flatten() {
            let Ok(id) = request.get_str("_id") else {
                continue;
            };
            let done = match request.get_str("action").unwrap_or_default() {
                "drain" => {
                    // A node drain: the instance leaves like a surplus one (draining first).
                    let target = request.get_str("instance").unwrap_or_default();
                    match instances.iter().find(|i| i.id == target && i.is_active()) {
                        Some(instance) if instance.state == STOPPING => true,
                        Some(instance) => {
                            let by = request.get_str("by").unwrap_or("an operator");
                            let players = players.get(target).copied().unwrap_or(0);
                            self.retire(name, spec, lease, instance, players, by)
                                .await?
                        }
                        None => true,
                    }
                }
                action @ ("stop" | "kill") => {
                    let target = request.get_str("instance").unwrap_or_default();
                    match instances.iter().find(|i| i.id == target && i.is_active()) {
                        Some(instance) if instance.state == STOPPING && action == "stop" => true,
                        Some(instance) => {
                            let how = if action == "kill" {
                                Halt::Kill
                            } else {
                                Halt::Stop {
                                    grace_s: spec.stop_grace_seconds,
                                }
                            };
                            let by = request.get_str("by").unwrap_or("an operator");
                            self.stop(
                                name,
                                lease,
                                instance,
                                how,
                                &format!("{action} requested by {by}"),
                            )
                            .await?
                        }
                        None => true,
                    }
                }
                "start" => {
                    let active = instances.iter().filter(|i| i.is_active()).count() as u32;
                    if spec.scaling != ScalingMode::Manual || active >= spec.max_instances {
                        tracing::info!(
                            group = name,
                            active,
                            "manual start not possible; request dropped"
                        );
                        true
                    } else {
                        let taken: HashSet<&str> = instances
                            .iter()
                            .filter(|i| i.is_active())
                            .map(|i| i.id.as_str())
                            .collect();
                        let instance_id = (1..)
                            .map(|k| format!("{name}-{k}"))
                            .find(|candidate| !taken.contains(candidate.as_str()))
                            .expect("an unused name");
                        let attempt = instances
                            .iter()
                            .find(|i| i.id == instance_id)
                            .map_or(0, |i| i.attempt)
                            + 1;
                        match self
                            .place(name, spec, revision, &instance_id, attempt, lease)
                            .await?
                        {
                            Some(mut placed) => {
                                self.dispatch_all(name, lease, vec![&mut placed]).await?;
                                instances.retain(|i| i.id != instance_id);
                                instances.push(placed);
                                true
                            }
                            // No node fits now: the request stays for the next tick.
                            None => false,
                        }
                    }
                }
                other => {
                    tracing::warn!(
                        group = name,
                        request = id,
                        "unknown operator request {other:?}; dropped"
                    );
                    true
                }
            };
            if done {
                self.write(
                    lease,
                    vec![Write::delete_one(INSTANCE_REQUESTS, doc! { "_id": id })],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A group marked for deletion: stop every instance, then remove the group's records.
    async fn tear_down(
        &self,
        name: &str,
        spec: &GroupSpec,
        lease: &Lease,
        instances: &[Instance],
    ) -> anyhow::Result<()> {
        let active: Vec<&Instance> = instances.iter().filter(|i| i.is_active()).collect();
        let how = Halt::Stop {
            grace_s: spec.stop_grace_seconds,
        };
        let halts = active
            .iter()
            .filter(|i| i.state != STOPPING)
            .map(|i| (*i, how, "group deleted".to_owned()))
            .collect();
        self.halt_all(name, lease, halts).await?;
        if !active.is_empty() {
            return Ok(());
        }
        self.write(
            lease,
            vec![
                Write::delete_one(GROUPS, doc! { "_id": name, "deleting": true }),
                Write::delete_one(GROUP_STATE, doc! { "_id": name }),
            ],
        )
        .await?;
        tracing::info!(group = name, "group deleted");
        self.events
            .publish("GROUP_DELETED", name, serde_json::json!({}))
            .await;
        Ok(())
    }
}

/// The instances a DYNAMIC group keeps at `target`: the fullest running ones, then the lowest
/// free names `<group>-<k>`; the emptiest ones are the first to go.
fn dynamic_names(
    name: &str,
    target: u32,
    active: &BTreeMap<String, &Instance>,
    players: &HashMap<String, u64>,
) -> Vec<String> {
    let index = |id: &str| -> u64 {
        id.rsplit('-')
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let mut keep: Vec<&Instance> = active
        .values()
        .filter(|i| i.state != STOPPING && i.state != DRAINING)
        .copied()
        .collect();
    keep.sort_by_key(|i| {
        (
            std::cmp::Reverse(players.get(&i.id).copied().unwrap_or(0)),
            index(&i.id),
        )
    });
    let mut names: Vec<String> = keep
        .into_iter()
        .take(target as usize)
        .map(|i| i.id.clone())
        .collect();
    let mut k = 1;
    while names.len() < target as usize {
        let candidate = format!("{name}-{k}");
        if !names.contains(&candidate) && !active.contains_key(&candidate) {
            names.push(candidate);
        }
        k += 1;
    }
    names
}

/// How to end an instance.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Halt {
    /// Console stop command, then SIGKILL after the grace period.
    Stop { grace_s: u32 },
    /// SIGKILL now.
    Kill,
}

/// The instance's credential for the workload endpoints (`pxw.<instance>.<secret>`), handed to
/// the server in its environment; only its hash is kept with the instance record.
fn workload_token(id: &str) -> String {
    let secret: [u8; 24] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("pxw.{id}.{hex}")
}

fn plan_doc(
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

fn plan_hash(plan: &Document, id: &str, attempt: i64, revision: i64) -> String {
    let canonical = serde_json::to_string(&Bson::Document(plan.clone()).into_relaxed_extjson())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{id}|{attempt}|{revision}|{canonical}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: &str) -> Instance {
        Instance {
            id: id.into(),
            group: "g".into(),
            spec_hash: String::new(),
            node: "n".into(),
            state: state.into(),
            plan_hash: String::new(),
            port: 0,
            memory_mb: 0,
            attempt: 1,
            next_attempt_at_ms: 0,
            dispatch_retries: 0,
            drain_until_ms: 0,
            state_at_ms: 0,
            halt: None,
            stop_reason: String::new(),
            plan: None,
            reported_state: None,
            reported_plan_hash: None,
            reported_detail: String::new(),
        }
    }

    #[test]
    fn a_dynamic_group_keeps_its_fullest_instances_and_fills_the_lowest_names() {
        let (a, b, c) = (
            instance("g-1", RUNNING),
            instance("g-2", RUNNING),
            instance("g-4", RUNNING),
        );
        let active: BTreeMap<String, &Instance> = [&a, &b, &c]
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let players: HashMap<String, u64> = [("g-2".to_string(), 5), ("g-4".to_string(), 9)]
            .into_iter()
            .collect();
        assert_eq!(dynamic_names("g", 2, &active, &players), ["g-4", "g-2"]);
        assert_eq!(
            dynamic_names("g", 5, &active, &players),
            ["g-4", "g-2", "g-1", "g-3", "g-5"]
        );
    }

    #[test]
    fn a_draining_instance_is_never_kept() {
        let (a, b) = (instance("g-1", DRAINING), instance("g-2", RUNNING));
        let active: BTreeMap<String, &Instance> =
            [&a, &b].into_iter().map(|i| (i.id.clone(), i)).collect();
        let players: HashMap<String, u64> = [("g-1".to_string(), 30)].into_iter().collect();
        // g-1 is leaving: the group's second instance is a fresh one, not g-1 again.
        assert_eq!(dynamic_names("g", 2, &active, &players), ["g-2", "g-3"]);
    }
}
