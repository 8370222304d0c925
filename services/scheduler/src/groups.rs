//! Groups under their leases: placement (node, port and memory reserved atomically with the
//! plan), dispatch through any gateway with `(group scope, token)`, folding the daemons'
//! reports into the instance state machine, healing crashed instances and stopping surplus.
//!
//! Every write is fenced with the group's token, so a deposed holder cannot place, dispatch or
//! record anything after a peer took the group; the plan is persisted before it is dispatched, so
//! a new holder dispatches the same plan and never re-plans.
//!
//! One tick of a group ([`Groups::converge`], here) goes through the phases in the submodules:
//! `snapshot` (what it reads), `health` (ended, lost and stray instances, crash loops),
//! `requests` (operator requests, deleting the group), `scaling` (DYNAMIC targets), `placement`,
//! `dispatch` (start commands), `halts` (stops and kills) and `deployments`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prexor_coord::{EventLog, Lease};
use prexor_domain::{InstanceState, ScalingMode, now_ms};
use prexor_serve::Gateways;
use prexor_store::{Store, StoreError, Write};
use tracing::Instrument;

mod canary;
pub(crate) mod deployments;
mod dispatch;
mod explain;
mod halts;
mod health;
mod placement;
mod requests;
mod scaling;
mod snapshot;
mod variables;
mod warm;

pub(crate) use health::crash_looping;
use scaling::dynamic_names;
pub use snapshot::Snapshot;
pub(crate) use snapshot::SnapshotReads;

pub use prexor_model::instances::INSTANCES;
pub use prexor_model::nodes::NODE_ALLOCATIONS;
pub use prexor_model::nodes::NODES;
pub use prexor_model::nodes::PORT_RESERVATIONS;

/// No scale decisions for a newly acquired group until its nodes reported, or this long passed.
const CONVERGENCE_GRACE: Duration = Duration::from_secs(5);
/// A settled group whose inputs did not change is judged again every this many ticks anyway.
const SETTLED_REJUDGE_EVERY: u64 = 10;
pub use prexor_model::groups::GROUP_STATE;
/// Up to this many held groups a snapshot filters with `$in`; beyond, it reads whole collections.
const IN_QUERY_LIMIT: usize = 32;
/// What each server reports about its load (players), written by the API's workload endpoints.
pub use prexor_model::instances::INSTANCE_LOAD;
/// Operator requests for a group's instances (`stop`, `kill`, `start`), written by the API and
/// carried out (then deleted) by the group's lease holder.
pub use prexor_model::instances::INSTANCE_REQUESTS;
pub use prexor_model::instances::STRAYS;
/// An instance on a node unreachable for longer than this is replaced elsewhere.
const DISCONNECT_GRACE: Duration = Duration::from_secs(20);
/// A crash loop: this many crashes of a group's instances within the window...
const CRASH_LOOP_CRASHES: u64 = 3;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(300);
/// ...pauses new placements for this long, doubled each time it recurs (at most 30 min).
const CRASH_LOOP_PAUSE: Duration = Duration::from_secs(30);
pub(crate) use prexor_model::instances::CRASHES;
/// A stray's kill is sent again after this long while the node still reports it running.
const STRAY_KILL_EVERY: Duration = Duration::from_secs(10);

/// Scheduler-side instance states (the forward-only machine of [`InstanceState`]).
const SCHEDULED: &str = InstanceState::Scheduled.as_str();
const PREPARING: &str = InstanceState::Preparing.as_str();
const PREPARED: &str = InstanceState::Prepared.as_str();
const STARTING: &str = InstanceState::Starting.as_str();
const RUNNING: &str = InstanceState::Running.as_str();
const DRAINING: &str = InstanceState::Draining.as_str();
const STOPPING: &str = InstanceState::Stopping.as_str();
const STOPPED: &str = InstanceState::Stopped.as_str();
const CRASHED: &str = InstanceState::Crashed.as_str();

pub struct Groups {
    pub store: Store,
    pub gateways: Gateways,
    events: EventLog,
    /// The replica's mirror, which placements read their view from.
    mirror: crate::mirror::Mirror,
    /// Held by a placement from reading its view to its write: placements reserve memory on the
    /// same few node records, and transactions writing one record at once abort each other
    /// (MongoDB's write conflict); one at a time per replica, each sees the ones before it.
    placing: tokio::sync::Mutex<()>,
    /// The scheduler's tick (`scheduler.evaluationIntervalSeconds`).
    interval: Duration,
    /// Per group: the token last worked under and when it was first seen (convergence gate).
    seen: Mutex<HashMap<String, (u64, Instant, i64)>>,
    /// When this replica last queried a node about an overdue instance (`<id>:<plan>` → ms).
    queried: Mutex<HashMap<String, i64>>,
    /// Groups last judged settled (nothing to do until an input changes), with the lease token
    /// they were judged under.
    settled: Mutex<HashMap<String, u64>>,
    /// Ticks that chose groups to judge ([`Groups::to_judge`]).
    rounds: std::sync::atomic::AtomicU64,
    /// Per group: what this replica last recorded about a placement that left instances
    /// missing ([`explain`]).
    explained: Mutex<HashMap<String, u64>>,
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
    /// In the group's warm pool ([`warm`]): not one of the group's instances yet.
    warm: bool,
    /// Its node prepares it and starts nothing (a warm instance without `warmPool.started`).
    prepare_only: bool,
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
            warm: doc.get_bool("warm").unwrap_or(false),
            prepare_only: doc.get_bool("prepareOnly").unwrap_or(false),
        })
    }

    fn is_active(&self) -> bool {
        !self.state.is_empty() && !prexor_model::instances::has_ended(&self.state)
    }
}

impl Groups {
    pub fn new(
        store: Store,
        gateways: Gateways,
        events: EventLog,
        mirror: crate::mirror::Mirror,
        interval: Duration,
    ) -> Groups {
        Groups {
            store,
            gateways,
            events,
            mirror,
            placing: tokio::sync::Mutex::new(()),
            interval,
            seen: Mutex::new(HashMap::new()),
            queried: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            rounds: std::sync::atomic::AtomicU64::new(0),
            explained: Mutex::new(HashMap::new()),
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
        self.settled
            .lock()
            .expect("settled lock")
            .retain(|name, _| held.contains(name));
        self.explained
            .lock()
            .expect("explained lock")
            .retain(|name, _| held.contains(name));
    }

    /// The groups of `held` (name, lease token) this tick judges: every group whose inputs
    /// changed (`changes`; `None`: unknown, so all of them) or that was not settled when last
    /// judged under this token, and each settled one every [`SETTLED_REJUDGE_EVERY`] ticks
    /// anyway (spread over the ticks by name).
    pub fn to_judge<'a>(
        &self,
        held: impl Iterator<Item = (&'a str, u64)>,
        changes: Option<&crate::mirror::Changes>,
    ) -> Vec<String> {
        let round = self
            .rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let settled = self.settled.lock().expect("settled lock");
        held.filter(|(name, token)| {
            let quiet = changes.is_some_and(|c| !c.touches(name))
                && settled.get(*name) == Some(token)
                && !round
                    .wrapping_add(prexor_domain::fnv1a(name))
                    .is_multiple_of(SETTLED_REJUDGE_EVERY);
            !quiet
        })
        .map(|(name, _)| name.to_owned())
        .collect()
    }

    async fn write(&self, lease: &Lease, writes: Vec<Write>) -> Result<(), StoreError> {
        self.store
            .fenced_write(&lease.fence(), writes)
            .await
            .map(|_| ())
    }

    /// [`Groups::write`] of writes whose `require_match` conditions a change made meanwhile
    /// (through the API, or by a peer) may have broken: `false` then, and nothing was written
    /// (the next tick sees the change).
    async fn write_unless_changed(
        &self,
        lease: &Lease,
        writes: Vec<Write>,
    ) -> Result<bool, StoreError> {
        match self.write(lease, writes).await {
            Ok(()) => Ok(true),
            Err(StoreError::Precondition { .. }) => Ok(false),
            Err(err) => Err(err),
        }
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
    /// One convergence step for group `name` under `lease`, from this tick's snapshot; notes
    /// whether the group was settled, so that the next ticks leave it alone until an input
    /// changes ([`Groups::to_judge`]).
    pub async fn converge(&self, name: &str, lease: &Lease, snap: &Snapshot) -> anyhow::Result<()> {
        // Linked to the last write of the group that carried a trace context (an operator's
        // create or change; docs/observability.md, "Traces").
        let span = tracing::info_span!("scheduler.group", group = name, token = lease.token());
        if let Some(entry) = snap.groups.get(name) {
            prexor_telemetry::trace::link(
                &span,
                &prexor_telemetry::trace::from_traceparent(&entry.traceparent),
            );
        }
        self.converge_traced(name, lease, snap)
            .instrument(span)
            .await
    }

    async fn converge_traced(
        &self,
        name: &str,
        lease: &Lease,
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        let settled = snap
            .groups
            .get(name)
            .is_some_and(|entry| snapshot::is_settled(name, entry, snap));
        self.settled.lock().expect("settled lock").remove(name);
        self.step(name, lease, snap).await?;
        if settled && self.gate_passed(name, lease) {
            self.settled
                .lock()
                .expect("settled lock")
                .insert(name.to_owned(), lease.token());
        }
        Ok(())
    }

    /// The group has been held under `lease` for the convergence grace at least (its gate is
    /// open whatever its nodes reported).
    fn gate_passed(&self, name: &str, lease: &Lease) -> bool {
        self.seen
            .lock()
            .expect("seen lock")
            .get(name)
            .is_some_and(|(token, since, _)| {
                *token == lease.token() && since.elapsed() >= CONVERGENCE_GRACE
            })
    }

    /// [`Groups::converge`]'s step.
    async fn step(&self, name: &str, lease: &Lease, snap: &Snapshot) -> anyhow::Result<()> {
        let Some(entry) = snap.groups.get(name) else {
            return Ok(());
        };
        // An unusable spec was reported when the document was read.
        let Ok(spec) = &entry.spec else {
            return Ok(());
        };
        let revision = entry.revision;
        let mut instances: Vec<Instance> = snap
            .instances
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|d| Instance::from_doc(d))
            .collect();

        // 1. What the daemons reported about the current plans moves the state machine forward
        // (the moves to one state in one write).
        let mut moves: BTreeMap<&'static str, (InstanceState, Vec<&mut Instance>)> =
            BTreeMap::new();
        for instance in &mut instances {
            if instance.reported_plan_hash.as_deref() != Some(instance.plan_hash.as_str()) {
                continue;
            }
            let reported = instance.reported_state.clone();
            let to = match (instance.state.as_str(), reported.as_deref()) {
                (SCHEDULED | PREPARING | PREPARED | STARTING, Some("RUNNING")) => {
                    InstanceState::Running
                }
                (SCHEDULED | PREPARING | PREPARED, Some("STARTING")) => InstanceState::Starting,
                (SCHEDULED | PREPARING, Some("PREPARED")) => InstanceState::Prepared,
                (SCHEDULED, Some("PREPARING")) => InstanceState::Preparing,
                (state, Some(reported @ ("STOPPED" | "CRASHED")))
                    if !prexor_model::instances::has_ended(state) =>
                {
                    let reason = instance.reported_detail.clone();
                    self.finish(lease, instance, reported, &reason).await?;
                    continue;
                }
                _ => continue,
            };
            moves
                .entry(to.as_str())
                .or_insert_with(|| (to, Vec::new()))
                .1
                .push(instance);
        }
        for (to, moving) in moves.into_values() {
            self.set_states(lease, moving, to).await?;
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
                .is_some_and(|n| prexor_model::nodes::node_is_online(n))
        };
        self.settle_overdue(name, lease, &mut instances, &online)
            .await?;

        if entry.deleting {
            return self.tear_down(name, spec, lease, &instances).await;
        }
        self.operator_requests(name, spec, revision, lease, &mut instances, snap)
            .await?;

        // 2. Placed but not confirmed started: dispatch (again) the persisted plans; so too for
        // a prepared instance taken from the warm pool and not started yet.
        let now = now_ms();
        let mut due = Vec::new();
        for instance in instances.iter_mut().filter(|i| {
            (i.state == SCHEDULED || (i.state == PREPARED && !i.prepare_only))
                && i.next_attempt_at_ms <= now
        }) {
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

        // 5. Scale to the desired set of names (maintenance: start nothing, stop nothing). The
        // warm pool's instances are not the group's until a scale-up takes them.
        let wanted: Vec<String> = {
            let active = members(&instances);
            match spec.scaling {
                ScalingMode::Manual => Vec::new(),
                ScalingMode::Static => (1..=spec.min_instances)
                    .map(|k| format!("{name}-{k}"))
                    .collect(),
                ScalingMode::Dynamic => {
                    let target = self
                        .dynamic_target(name, spec, lease, snap, &active)
                        .await?;
                    let warm: Vec<&Instance> = instances
                        .iter()
                        .filter(|i| i.is_active() && i.warm)
                        .collect();
                    // Hashed only for a group with a warm pool to choose from.
                    let hash = if warm.is_empty() {
                        String::new()
                    } else {
                        spec.hash()
                    };
                    dynamic_names(name, target, &active, &snap.players, &warm, &hash)
                }
            }
        };
        if spec.maintenance {
            return Ok(());
        }
        self.take_warm(name, lease, &mut instances, &wanted, snap)
            .await?;
        if spec.scaling == ScalingMode::Manual {
            return self
                .keep_warm_pool(name, spec, revision, lease, &instances, &wanted, false)
                .await;
        }
        let active = members(&instances);
        if let Some(deployment) = snap.deployments.get(name) {
            self.roll(
                name, spec, revision, lease, deployment, &active, &wanted, snap,
            )
            .instrument(deployments::deployment_span(name, deployment))
            .await?;
        }
        let attempts: HashMap<String, i64> = instances
            .iter()
            .map(|i| (i.id.clone(), i.attempt))
            .collect();
        if !paused {
            let missing: Vec<(String, i64)> = wanted
                .iter()
                .filter(|id| !active.contains_key(*id))
                .map(|id| (id.clone(), attempts.get(id).copied().unwrap_or(0) + 1))
                .collect();
            let mut placed = self
                .place_all(name, spec, revision, &missing, lease, None)
                .await?;
            if !missing.is_empty() {
                self.explain_placement(name, spec, lease, missing.len(), placed.len())
                    .await?;
            }
            self.dispatch_all(name, lease, placed.iter_mut().collect())
                .await?;
        }
        self.keep_warm_pool(name, spec, revision, lease, &instances, &wanted, paused)
            .await?;
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

    /// Moves `instance` forward to `state` (a move the lifecycle does not allow is refused,
    /// here and by the write's filter, so a stale view never moves it backwards).
    async fn set_state(
        &self,
        lease: &Lease,
        instance: &mut Instance,
        state: InstanceState,
    ) -> anyhow::Result<()> {
        self.set_states(lease, vec![instance], state).await
    }

    /// [`Groups::set_state`] for several instances in one fenced write (the acks of one tick's
    /// dispatch); an instance that moved on meanwhile is left as it is by the write's filter.
    async fn set_states(
        &self,
        lease: &Lease,
        instances: Vec<&mut Instance>,
        state: InstanceState,
    ) -> anyhow::Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let writes = instances
            .iter()
            .map(|instance| advance_write(instance, state, doc! {}))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.write(lease, writes).await?;
        futures::future::join_all(
            instances
                .iter()
                .map(|i| self.state_changed(i, state.as_str(), "")),
        )
        .await;
        for instance in instances {
            instance.state = state.as_str().to_owned();
        }
        Ok(())
    }

    /// [`Groups::set_state`] with more fields set in the same write and a reason for the event.
    async fn advance(
        &self,
        lease: &Lease,
        instance: &Instance,
        state: InstanceState,
        set: Document,
        why: &str,
    ) -> anyhow::Result<()> {
        self.write(lease, vec![advance_write(instance, state, set)?])
            .await?;
        self.state_changed(instance, state.as_str(), why).await;
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
        let writes = vec![
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
        ];
        // Ended meanwhile (another report, a peer): nothing to record twice.
        self.write_unless_changed(lease, writes).await?;
        metrics::counter!("prexor_scheduler_instances_ended_total", "state" => state.to_string())
            .increment(1);
        tracing::info!(instance = %instance.id, node = %instance.node, state, reason, "instance ended");
        self.state_changed(instance, state, reason).await;
        Ok(())
    }

    /// `INSTANCE_STATE_CHANGED` for `instance` now in `state`; `warm` tells followers (proxies)
    /// that it is in its group's warm pool, not one of its servers yet.
    async fn state_changed(&self, instance: &Instance, state: &str, detail: &str) {
        self.events
            .publish(
                "INSTANCE_STATE_CHANGED",
                &instance.id,
                serde_json::json!({
                    "group": &instance.group, "state": state, "detail": detail, "warm": instance.warm,
                }),
            )
            .await;
    }
}

/// The group's own live instances by id (its warm pool's are not the group's until taken).
fn members(instances: &[Instance]) -> BTreeMap<String, &Instance> {
    instances
        .iter()
        .filter(|i| i.is_active() && !i.warm)
        .map(|i| (i.id.clone(), i))
        .collect()
}

/// The write moving `instance` forward to `state` with `set`: a move the lifecycle does not
/// allow is refused here, and the write's filter (plan and predecessor states) keeps a stale view
/// from moving it backwards.
fn advance_write(
    instance: &Instance,
    state: InstanceState,
    mut set: Document,
) -> anyhow::Result<Write> {
    let allowed = InstanceState::parse(&instance.state).is_some_and(|from| from.may_become(state));
    anyhow::ensure!(
        allowed,
        "instance {} cannot go from {} to {state}",
        instance.id,
        instance.state
    );
    set.insert("state", state.as_str());
    set.insert("stateAtMs", now_ms());
    Ok(Write::update_one(
        INSTANCES,
        doc! {
            "_id": &instance.id,
            "planHash": &instance.plan_hash,
            "state": { "$in": InstanceState::predecessors(state) },
        },
        doc! { "$set": set },
    ))
}

/// How to end an instance.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Halt {
    /// Console stop command, then SIGKILL after the grace period.
    Stop { grace_s: u32 },
    /// SIGKILL now.
    Kill,
}
