//! The lease reconciler: every tick, each scheduler replica holds its fair share of the work
//! scopes (every group, the platform-module scope, and a workflow scope per open node drain). It acquires unowned scopes up to its
//! share, hands surplus back when peers joined, drops scopes whose group is gone; the keeper
//! renews what it holds and releases everything on SIGTERM, so peers take the work on their
//! next tick. A crashed replica's leases expire after the TTL and are taken the tick after.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mongodb::bson::{Document, doc};
use prexor_coord::{LeaseKeeper, Leases, Registry};
use prexor_domain::{GroupSpec, Scope, ServiceKind};
use prexor_store::Store;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

pub use prexor_model::groups::GROUPS;

/// Open node drains by node id.
type Drains = HashMap<String, Document>;

/// What a tick uses of a group's document: its spec, parsed and validated once per change of the
/// document (not once per tick), and the few fields a step reads (the document itself is not
/// kept: at 10,000 groups the decoded documents were most of a scheduler's memory).
pub struct GroupEntry {
    /// The spec, or why the group cannot be scheduled (no spec, unreadable, invalid).
    pub spec: Result<GroupSpec, String>,
    /// The document's revision (1 when it has none).
    pub revision: i64,
    /// The group is being deleted.
    pub deleting: bool,
    /// The trace context of the last write that carried one (docs/observability.md, "Traces").
    pub traceparent: String,
}

impl GroupEntry {
    pub(crate) fn new(name: &str, doc: &Document) -> GroupEntry {
        let spec = match doc.get_document("spec") {
            Err(_) => Err("the group has no spec".to_string()),
            Ok(spec) => match mongodb::bson::from_document::<GroupSpec>(spec.clone()) {
                Err(err) => Err(format!("the group's spec is unreadable: {err}")),
                Ok(spec) => {
                    let problems = spec.problems(name);
                    if problems.is_empty() {
                        Ok(spec)
                    } else {
                        Err(format!(
                            "the group's spec is invalid: {}",
                            problems
                                .iter()
                                .map(|p| format!("{}: {}", p.field, p.message))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                    }
                }
            },
        };
        if let Err(reason) = &spec {
            tracing::warn!(group = name, "not scheduling the group: {reason}");
        }
        GroupEntry {
            spec,
            revision: doc.get_i64("revision").unwrap_or(1),
            deleting: doc.get_bool("deleting").unwrap_or(false),
            traceparent: doc
                .get_str(prexor_telemetry::trace::TRACEPARENT)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// Every group by name.
pub type GroupMap = HashMap<String, Arc<GroupEntry>>;

/// `(revision, updatedAtMs)`: every write to a group document changes it.
type Stamp = (i64, i64);

fn stamp(doc: &Document) -> Stamp {
    (
        doc.get_i64("revision").unwrap_or(0),
        doc.get_i64("updatedAtMs").unwrap_or(0),
    )
}

fn raw_stamp(raw: &mongodb::bson::RawDocument) -> Stamp {
    (
        raw.get_i64("revision").unwrap_or(0),
        raw.get_i64("updatedAtMs").unwrap_or(0),
    )
}

/// Groups converging at the same time within one tick.
const GROUPS_AT_ONCE: usize = 8;

/// A tick that judged at least this many groups, and most of those it holds, hands the memory it
/// freed back to the system.
const RELEASE_AFTER_JUDGING: usize = 1_000;

/// More changed groups than this are read with one full listing instead of an `$in` query.
const CHANGED_QUERY_LIMIT: usize = 256;

/// The group documents as of the last tick. Each tick lists only the groups' stamps and re-reads
/// the documents whose stamp changed: at 1,000 groups, reading every spec every tick was most
/// of the tick.
#[derive(Default)]
pub struct GroupDocs {
    docs: Mutex<HashMap<String, (Stamp, Arc<GroupEntry>)>>,
}

impl GroupDocs {
    /// Every group, re-reading from MongoDB only the documents whose stamp changed.
    async fn refresh(&self, store: &Store) -> Result<GroupMap, prexor_store::StoreError> {
        let listed = store
            .find_projected(
                GROUPS,
                "listing groups",
                doc! {},
                doc! { "revision": 1, "updatedAtMs": 1 },
            )
            .await?;
        let stamps = stamps(listed.iter().map(|d| (d.get_str("_id").ok(), stamp(d))));
        let changed = self.changed(&stamps);
        let fresh = match changed.len() {
            0 => Vec::new(),
            n if n > CHANGED_QUERY_LIMIT => {
                store.find_all(GROUPS, "reading groups", doc! {}).await?
            }
            _ => {
                store
                    .find_all(
                        GROUPS,
                        "reading changed groups",
                        doc! { "_id": { "$in": changed } },
                    )
                    .await?
            }
        };
        Ok(self.apply(&stamps, fresh))
    }

    /// Every group, from the mirror's copy of the collection (decoding only the documents that
    /// changed).
    fn refresh_from(&self, mirror: &crate::mirror::Collections) -> GroupMap {
        let stamps = stamps(
            mirror
                .all(GROUPS)
                .map(|raw| (raw.get_str("_id").ok(), raw_stamp(raw))),
        );
        let changed = self.changed(&stamps);
        let fresh = mirror
            .of_groups(GROUPS, &changed)
            .filter_map(|raw| crate::mirror::document(GROUPS, raw))
            .collect();
        self.apply(&stamps, fresh)
    }

    /// The groups whose stamp differs from the document held.
    fn changed(&self, stamps: &HashMap<String, Stamp>) -> Vec<String> {
        let docs = self.docs.lock().expect("group docs lock");
        stamps
            .iter()
            .filter(|(name, stamp)| docs.get(*name).map(|(s, _)| s) != Some(*stamp))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forgets groups that are gone, takes the `fresh` documents in, and returns every group.
    fn apply(&self, stamps: &HashMap<String, Stamp>, fresh: Vec<Document>) -> GroupMap {
        let mut docs = self.docs.lock().expect("group docs lock");
        docs.retain(|name, _| stamps.contains_key(name));
        for doc in fresh {
            if let Ok(name) = doc.get_str("_id").map(str::to_owned) {
                let stamp = stamp(&doc);
                docs.insert(
                    name.clone(),
                    (stamp, Arc::new(GroupEntry::new(&name, &doc))),
                );
            }
        }
        docs.iter()
            .map(|(name, (_, entry))| (name.clone(), entry.clone()))
            .collect()
    }
}

fn stamps<'a>(docs: impl Iterator<Item = (Option<&'a str>, Stamp)>) -> HashMap<String, Stamp> {
    docs.filter_map(|(id, stamp)| Some((id?.to_owned(), stamp)))
        .collect()
}

/// The groups among `leases`.
fn group_names(leases: &[prexor_coord::Lease]) -> HashSet<String> {
    leases
        .iter()
        .filter_map(|l| match l.scope() {
            Scope::Group(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// How long the last tick's phase took (`sync`, `scopes`, `leases`, `snapshot`, `groups`,
/// `workflows`).
fn phase_took(phase: &'static str, started: Instant) {
    metrics::gauge!("prexor_scheduler_tick_phase_seconds", "phase" => phase)
        .set(started.elapsed().as_secs_f64());
}

/// The span of one phase of a tick, a child of the tick's span `scheduler.tick`
/// (docs/observability.md, "Traces"); it ends when dropped.
fn phase_span(phase: &'static str) -> tracing::Span {
    tracing::info_span!(
        "scheduler.phase",
        otel.name = %format_args!("scheduler.{phase}"),
        phase
    )
}

/// The state of the work this replica holds, once per tick (docs/observability.md, "Metrics"):
/// groups in a crash loop — counted over every group held, from the mirror when the tick used it
/// (a settled group is not in the snapshot, and a pause can outlast the crashes that caused it) —
/// and stalled deployments, from the snapshot (a rolling deployment's group is always judged).
fn held_work(snapshot: &crate::groups::Snapshot, crash_looping: Option<usize>) {
    let now = prexor_domain::now_ms();
    metrics::gauge!("prexor_scheduler_groups_crash_looping")
        .set(crash_looping.unwrap_or_else(|| snapshot.crash_looping(now)) as f64);
    metrics::gauge!("prexor_scheduler_deployments_stalled")
        .set(snapshot.deployments_stalled(now) as f64);
}

pub struct Reconciler {
    pub groups: crate::groups::Groups,
    pub drains: crate::drains::Drains,
    pub modules: crate::modules::Modules,
    pub guard: prexor_serve::guard::StoreGuard,
    pub store: Store,
    pub group_docs: GroupDocs,
    pub mirror: crate::mirror::Mirror,
    pub leases: Leases,
    pub keeper: LeaseKeeper,
    pub registry: Registry,
    pub replica_id: String,
    pub interval: Duration,
    /// The last [`Reconciler::scopes`] from the mirror, with the versions it was read at.
    pub scopes_cache: Mutex<Option<(Vec<u64>, Arc<Scopes>)>>,
}

/// What a tick works on: every scope, every group's document, the open drains by node.
pub struct Scopes {
    pub all: BTreeSet<Scope>,
    pub groups: GroupMap,
    pub drains: Drains,
}

/// What one tick saw and did (logged at debug, exported as metrics).
#[derive(Debug, Default)]
pub struct TickOutcome {
    pub scopes: usize,
    pub replicas: usize,
    pub share: usize,
    pub acquired: usize,
    pub released: usize,
    pub held: usize,
}

impl Reconciler {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Ticks failing for longer than the self-fencing deadline (MongoDB unreachable from
        // here, say) mean this replica cannot do the work it holds: it lets every lease go so
        // that a healthy peer takes the scopes on its next tick, and takes none back until a
        // tick succeeds again.
        let give_up_after = self.leases.timing().self_fence_after;
        let mut failing_since: Option<Instant> = None;
        held_work(&crate::groups::Snapshot::default(), None);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let started = Instant::now();
            let span = tracing::info_span!(
                "scheduler.tick",
                replica = %self.replica_id,
                held = Empty,
                acquired = Empty,
                released = Empty,
                otel.status_code = Empty,
            );
            let ticked = self.tick().instrument(span.clone()).await;
            match &ticked {
                Ok(outcome) => {
                    span.record("held", outcome.held);
                    span.record("acquired", outcome.acquired);
                    span.record("released", outcome.released);
                }
                Err(_) => {
                    span.record("otel.status_code", "ERROR");
                }
            }
            drop(span);
            match ticked {
                Ok(outcome) => {
                    failing_since = None;
                    metrics::gauge!("prexor_scheduler_scopes_held").set(outcome.held as f64);
                    metrics::gauge!("prexor_scheduler_fair_share").set(outcome.share as f64);
                    if outcome.acquired + outcome.released > 0 {
                        tracing::info!(
                            held = outcome.held,
                            acquired = outcome.acquired,
                            released = outcome.released,
                            share = outcome.share,
                            replicas = outcome.replicas,
                            scopes = outcome.scopes,
                            "lease reconciler tick"
                        );
                    }
                }
                Err(err) => {
                    metrics::counter!("prexor_scheduler_tick_failures_total").increment(1);
                    tracing::warn!("lease reconciler tick failed: {err}");
                    let since = *failing_since.get_or_insert(started);
                    let held = self.keeper.len();
                    if held > 0 && since.elapsed() >= give_up_after {
                        tracing::warn!(
                            held,
                            failing_for = ?since.elapsed(),
                            "ticks keep failing: releasing every lease for a healthy peer to take"
                        );
                        metrics::counter!("prexor_scheduler_leases_given_up_total")
                            .increment(held as u64);
                        self.keeper.release_all().await;
                    }
                }
            }
            let took = started.elapsed().as_secs_f64();
            metrics::histogram!("prexor_scheduler_tick_seconds").record(took);
            metrics::gauge!("prexor_scheduler_last_tick_seconds").set(took);
            metrics::counter!("prexor_scheduler_ticks_total").increment(1);
        }
    }

    /// Every scope there is work for (each group, the platform modules, each open drain), with
    /// every group's document for this tick's snapshot and the open drains by node. From the
    /// mirror they are computed again only when its groups or drains changed.
    async fn scopes(&self, synced: Option<u64>) -> anyhow::Result<Arc<Scopes>> {
        const READ: [&str; 2] = [GROUPS, crate::drains::NODE_DRAINS];
        let versions = synced.and_then(|generation| {
            let mut key = self.mirror.versions(generation, &READ)?;
            key.push(generation);
            Some(key)
        });
        if let Some(key) = &versions
            && let Some((cached, scopes)) = &*self.scopes_cache.lock().expect("scopes cache")
            && cached == key
        {
            return Ok(scopes.clone());
        }
        let mirrored = synced.and_then(|generation| {
            self.mirror.read(generation, |c| {
                let groups = self.group_docs.refresh_from(c);
                let drains: Vec<Document> = c
                    .all(crate::drains::NODE_DRAINS)
                    .filter_map(|raw| crate::mirror::document(crate::drains::NODE_DRAINS, raw))
                    .collect();
                (groups, drains)
            })
        });
        let (by_name, drains) = match mirrored {
            Some(read) => read,
            None => tokio::try_join!(
                self.group_docs.refresh(&self.store),
                self.store.find_all(
                    crate::drains::NODE_DRAINS,
                    "listing node drains",
                    doc! { "state": prexor_model::nodes::DrainState::open_filter() }
                ),
            )?,
        };
        let drains: Drains = drains
            .into_iter()
            .filter(prexor_model::nodes::drain_is_open)
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
            .collect();
        let scopes = Arc::new(Scopes {
            all: Scope::scheduled(
                by_name.keys().map(String::as_str),
                drains.keys().map(String::as_str),
            ),
            groups: by_name,
            drains,
        });
        *self.scopes_cache.lock().expect("scopes cache") =
            versions.map(|key| (key, scopes.clone()));
        Ok(scopes)
    }

    /// The tick's `leases` phase: lets go of scopes that no longer exist and of a surplus over
    /// `share`, takes free scopes up to it; the scopes held then.
    async fn balance(
        &self,
        scopes: &BTreeSet<Scope>,
        share: usize,
        outcome: &mut TickOutcome,
    ) -> anyhow::Result<Vec<Scope>> {
        // Scopes that no longer exist (a deleted group) are let go.
        for lease in self.keeper.held() {
            if !scopes.contains(lease.scope()) {
                self.keeper.release(lease.scope()).await;
                outcome.released += 1;
            }
        }
        let mut held: Vec<Scope> = self
            .keeper
            .held()
            .iter()
            .map(|l| l.scope().clone())
            .collect();

        // More than a fair share (a peer joined): hand the surplus back for peers to take.
        if held.len() > share {
            held.sort();
            for scope in held.split_off(share) {
                self.keeper.release(&scope).await;
                outcome.released += 1;
            }
        }

        // Less than a fair share: take free scopes, in random order so that replicas ticking
        // together rarely race for the same one.
        if held.len() < share {
            let mine: BTreeSet<&Scope> = held.iter().collect();
            let candidates: Vec<Scope> = scopes
                .iter()
                .filter(|s| !mine.contains(s))
                .cloned()
                .collect();
            let holders = self.leases.holders(&candidates).await?;
            let mut free: Vec<Scope> = candidates
                .into_iter()
                .zip(holders)
                .filter(|(_, holder)| holder.is_none())
                .map(|(scope, _)| scope)
                .collect();
            free.shuffle(&mut rand::rng());
            for scope in free {
                if held.len() >= share {
                    break;
                }
                if let Some(lease) = self.leases.acquire(&scope).await? {
                    self.groups
                        .events()
                        .publish(
                            "LEASE_ACQUIRED",
                            &scope.to_string(),
                            serde_json::json!({ "holder": &self.replica_id, "token": lease.token() }),
                        )
                        .await;
                    self.keeper.insert(lease);
                    held.push(scope);
                    outcome.acquired += 1;
                }
            }
        }
        Ok(held)
    }

    pub async fn tick(&self) -> anyhow::Result<TickOutcome> {
        // Never acquire or work under a lease from a Valkey that is not the cluster's store.
        if let Err(reason) = self.guard.allow_mutations() {
            tracing::debug!("not scheduling: {reason}");
            held_work(&crate::groups::Snapshot::default(), None);
            return Ok(TickOutcome::default());
        }
        let phase = Instant::now();
        // Everything committed before this point is in the mirror (or it is not used); the
        // replica list is read meanwhile.
        let (synced, listed) = async {
            tokio::join!(
                self.mirror.sync(),
                self.registry.list(Some(ServiceKind::Scheduler))
            )
        }
        .instrument(phase_span("sync"))
        .await;
        let (synced, listed) = (synced?, listed?);
        phase_took("sync", phase);
        let phase = Instant::now();
        let read = self.scopes(synced).instrument(phase_span("scopes")).await?;
        let (scopes, all_groups, drains) = (&read.all, &read.groups, &read.drains);
        phase_took("scopes", phase);
        let phase = Instant::now();
        // Ready peers plus this replica (which may not be registered yet on its first tick).
        let peers = listed
            .iter()
            .filter(|r| r.ready && r.id != self.replica_id)
            .count();
        let replicas = peers + 1;
        let share = scopes.len().div_ceil(replicas);
        let mut outcome = TickOutcome {
            scopes: scopes.len(),
            replicas,
            share,
            ..TickOutcome::default()
        };

        let held = self
            .balance(scopes, share, &mut outcome)
            .instrument(phase_span("leases"))
            .await?;
        outcome.held = held.len();

        // The work itself, under each group lease still held.
        let leases = self.keeper.held();
        let names = group_names(&leases);
        phase_took("leases", phase);
        self.groups.retain(&names);
        // Only the groups with something to judge: their inputs changed since the last tick, or
        // they were not settled (docs/scheduling.md, "The tick").
        let changes = synced.and_then(|generation| self.mirror.take_changes(generation));
        let judged: Vec<String> = self.groups.to_judge(
            leases.iter().filter_map(|lease| match lease.scope() {
                Scope::Group(name) => Some((name.as_str(), lease.token())),
                _ => None,
            }),
            changes.as_ref(),
        );
        metrics::gauge!("prexor_scheduler_groups_judged").set(judged.len() as f64);
        let phase = Instant::now();
        let mirrored = synced.and_then(|generation| {
            self.mirror.read(generation, |c| {
                crate::groups::SnapshotReads::from_mirror(c, &judged)
            })
        });
        let (snapshot, source) = match mirrored {
            Some(reads) => (reads.assemble(&judged, all_groups), "mirror"),
            None => (
                self.groups
                    .snapshot(&judged, all_groups)
                    .instrument(phase_span("snapshot"))
                    .await?,
                "mongo",
            ),
        };
        metrics::counter!("prexor_scheduler_snapshots_total", "source" => source).increment(1);
        phase_took("snapshot", phase);
        let phase = Instant::now();
        // Groups step side by side: one group waiting on a slow node or gateway (each command
        // has a deadline) does not hold up the others.
        let judged: HashSet<&str> = judged.iter().map(String::as_str).collect();
        let held_groups = leases.iter().filter_map(|lease| match lease.scope() {
            Scope::Group(name) if lease.is_valid() && judged.contains(name.as_str()) => {
                Some((name, lease))
            }
            _ => None,
        });
        futures::stream::iter(held_groups)
            .for_each_concurrent(GROUPS_AT_ONCE, |(name, lease)| {
                let snapshot = &snapshot;
                async move {
                    if let Err(err) = self.groups.converge(name, lease, snapshot).await {
                        tracing::warn!(group = %name, "group step failed: {err:#}");
                    }
                }
            })
            .instrument(phase_span("groups"))
            .await;
        let held_names: Vec<String> = names.iter().cloned().collect();
        let crash_looping = synced.and_then(|generation| {
            self.mirror.read(generation, |c| {
                let now = prexor_domain::now_ms();
                c.of_groups(crate::groups::GROUP_STATE, &held_names)
                    .filter(|state| {
                        crate::groups::crash_looping(
                            state.get_i64("pausedUntilMs").unwrap_or(0),
                            now,
                        )
                    })
                    .count()
            })
        });
        held_work(&snapshot, crash_looping);
        // Most of what it holds at once (it acquired them, or the mirror was reloaded), not the
        // tenth of settled groups re-judged every tick.
        let judged_many = judged.len() >= RELEASE_AFTER_JUDGING && judged.len() * 2 >= names.len();
        drop(snapshot);
        if judged_many {
            // What a tick over many groups decoded is free now; without this the resident size
            // stays at that peak (docs/scheduling.md, "Memory").
            prexor_telemetry::release_free_memory();
        }
        phase_took("groups", phase);
        let phase = Instant::now();
        async {
            for lease in &leases {
                let Some(node) = lease.scope().drained_node() else {
                    continue;
                };
                let Some(drain) = drains.get(node) else {
                    continue;
                };
                if !lease.is_valid() {
                    continue;
                }
                if let Err(err) = self.drains.step(node, lease, drain).await {
                    tracing::warn!(node, "drain step failed: {err:#}");
                }
            }
            // The mirror tells whether a module mutation is open at all (most ticks: none).
            let mutation_open = synced
                .and_then(|generation| {
                    self.mirror
                        .read(generation, |c| !c.is_empty(crate::modules::MODULE_MUTATION))
                })
                .unwrap_or(true);
            for lease in &leases {
                if lease.scope() == &Scope::PlatformModule
                    && mutation_open
                    && lease.is_valid()
                    && let Err(err) = self.modules.step(lease).await
                {
                    tracing::warn!("module mutation step failed: {err:#}");
                }
            }
        }
        .instrument(phase_span("workflows"))
        .await;
        phase_took("workflows", phase);
        Ok(outcome)
    }
}
