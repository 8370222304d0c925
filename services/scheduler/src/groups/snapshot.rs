//! What a tick reads: every collection the group needs, read once (from the change-stream
//! mirror, or from MongoDB) and indexed by group and id.

use prexor_model::workflows::DeploymentState;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mongodb::bson::{Document, RawDocument, doc};
use prexor_domain::{InstanceState, ScalingMode, now_ms};
use prexor_store::{Store, StoreError};

use super::{
    CRASH_LOOP_WINDOW, CRASHES, GROUP_STATE, IN_QUERY_LIMIT, INSTANCE_LOAD, INSTANCE_REQUESTS,
    INSTANCES, NODES, STRAYS, deployments,
};

/// Everything one tick needs about the groups this replica holds, read in a handful of queries
/// (not per group), so that a tick's cost in steady state does not grow with round trips.
#[derive(Default)]
pub struct Snapshot {
    pub(super) groups: HashMap<String, Arc<crate::reconciler::GroupEntry>>,
    pub(super) instances: HashMap<String, Vec<Arc<Document>>>,
    pub(super) states: HashMap<String, Arc<Document>>,
    pub(super) strays: HashMap<String, Vec<Arc<Document>>>,
    pub(super) nodes: HashMap<String, Arc<Document>>,
    /// Crash times (ms) of the last crash-loop window, per group.
    pub(super) crashes: HashMap<String, Vec<i64>>,
    /// Operator requests (stop, kill, start), per group.
    pub(super) requests: HashMap<String, Vec<Arc<Document>>>,
    /// Players online per instance, as the servers report them (`instance_load`).
    pub(super) players: HashMap<String, u64>,
    /// The load metrics each instance reported last (`instance_load.metrics`), with when.
    pub(super) metrics: HashMap<String, Reported>,
    /// The rolling deployment of each group, if one is under way.
    pub(super) deployments: HashMap<String, Arc<Document>>,
}

/// One instance's last load report (`/api/v1/workload/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reported {
    pub tps: Option<f64>,
    pub mspt: Option<f64>,
    pub memory_used_mb: Option<i64>,
    pub at_ms: i64,
    /// The server said it is ready (`/api/v1/workload/ready`).
    pub ready: bool,
}

impl Reported {
    /// Metrics older than this do not count: a server that stopped reporting is neither idle
    /// nor healthy.
    pub const FRESH_MS: i64 = 60_000;

    /// Its metrics were reported within [`Reported::FRESH_MS`] of `now`.
    pub fn is_fresh(&self, now: i64) -> bool {
        now - self.at_ms <= Reported::FRESH_MS
    }

    fn of(load: &Document) -> Option<Reported> {
        let ready = load.get_bool("ready").unwrap_or(false);
        let Ok(metrics) = load.get_document("metrics") else {
            return Some(Reported {
                ready,
                ..Reported::default()
            });
        };
        let number = |key: &str| metrics.get(key).and_then(mongodb::bson::Bson::as_f64);
        Some(Reported {
            ready,
            tps: number("tps"),
            mspt: number("mspt"),
            memory_used_mb: metrics
                .get_i64("memoryUsedMb")
                .ok()
                .or_else(|| metrics.get_i32("memoryUsedMb").ok().map(i64::from)),
            at_ms: load.get_i64("metricsAtMs").unwrap_or(0),
        })
    }
}

impl Snapshot {
    /// The composition plan kept in instance `id`'s own record (written before plans moved to
    /// `instance_plans`).
    pub(super) fn plan_of(&self, group: &str, id: &str) -> Option<Document> {
        self.instances
            .get(group)?
            .iter()
            .find(|d| d.get_str("_id") == Ok(id))?
            .get_document("plan")
            .ok()
            .cloned()
    }
}

/// Group `name` has nothing to do as long as none of its inputs changes: no instance between
/// states (each is RUNNING as its node reports, on an online node, or has ended), nothing asked of
/// it (no request, stray, rolling deployment, recent crash, deletion), and for a STATIC group
/// exactly its wanted instances. A DYNAMIC group never is (its load moves). A group whose spec
/// cannot be used is (nothing is done for it until its document changes).
pub(super) fn is_settled(
    name: &str,
    entry: &crate::reconciler::GroupEntry,
    snap: &Snapshot,
) -> bool {
    let Ok(spec) = &entry.spec else {
        return true;
    };
    let busy = |docs: Option<&Vec<Arc<Document>>>| docs.is_some_and(|d| !d.is_empty());
    if entry.deleting
        || spec.scaling == ScalingMode::Dynamic
        || busy(snap.strays.get(name))
        || busy(snap.requests.get(name))
        || snap.crashes.get(name).is_some_and(|c| !c.is_empty())
        || snap.deployments.contains_key(name)
    {
        return false;
    }
    let mut active = HashSet::new();
    for instance in snap.instances.get(name).into_iter().flatten() {
        let state = instance.get_str("state").unwrap_or_default();
        if prexor_model::instances::has_ended(state) {
            continue;
        }
        let reported = instance.get_document("reported").ok();
        let steady = state == InstanceState::Running.as_str()
            && reported.is_some_and(|r| {
                r.get_str("state") == Ok(InstanceState::Running.as_str())
                    && r.get_str("planHash") == instance.get_str("planHash")
            })
            && instance
                .get_str("nodeId")
                .ok()
                .and_then(|node| snap.nodes.get(node))
                .is_some_and(|node| prexor_model::nodes::node_is_online(node));
        if !steady {
            return false;
        }
        active.insert(instance.get_str("_id").unwrap_or_default());
    }
    match spec.scaling {
        ScalingMode::Static if !spec.maintenance => {
            active.len() == spec.min_instances as usize
                && (1..=spec.min_instances).all(|k| active.contains(format!("{name}-{k}").as_str()))
        }
        _ => true,
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
    pub(super) async fn fetch(
        store: &Store,
        names: &[String],
    ) -> Result<SnapshotReads, StoreError> {
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
                scoped(doc! { "state": DeploymentState::Rolling })
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
    /// that [`SnapshotReads::fetch`]'s queries select, found through the mirror's group index and
    /// decoded (only these: a tick decodes what it judges).
    pub(crate) fn from_mirror(c: &crate::mirror::Collections, names: &[String]) -> SnapshotReads {
        let window = now_ms() - CRASH_LOOP_WINDOW.as_millis() as i64;
        let decoded = |collection: &str, docs: &mut dyn Iterator<Item = &RawDocument>| {
            docs.filter_map(|raw| crate::mirror::document(collection, raw))
                .map(Arc::new)
                .collect::<Vec<_>>()
        };
        let of_held = |collection: &str, keep: &dyn Fn(&RawDocument) -> bool| {
            decoded(
                collection,
                &mut c.of_groups(collection, names).filter(|raw| keep(raw)),
            )
        };
        SnapshotReads {
            instances: of_held(INSTANCES, &|d| d.get("state").is_ok_and(|s| s.is_some())),
            states: of_held(GROUP_STATE, &|_| true),
            strays: of_held(STRAYS, &|_| true),
            nodes: decoded(NODES, &mut c.all(NODES)),
            crashes: of_held(CRASHES, &|d| d.get_i64("atMs").is_ok_and(|at| at > window)),
            requests: of_held(INSTANCE_REQUESTS, &|_| true),
            loads: of_held(INSTANCE_LOAD, &|_| true),
            deployments: of_held(deployments::DEPLOYMENTS, &|d| {
                d.get_str("state") == Ok(DeploymentState::Rolling.as_str())
            }),
        }
    }

    pub(super) fn empty() -> SnapshotReads {
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
        let loads = mine(self.loads, "group");
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
            metrics: loads
                .iter()
                .filter_map(|l| Some((l.get_str("_id").ok()?.to_string(), Reported::of(l)?)))
                .collect(),
            players: loads
                .iter()
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

pub(super) fn by_group(docs: Vec<Arc<Document>>) -> HashMap<String, Vec<Arc<Document>>> {
    let mut grouped: HashMap<String, Vec<Arc<Document>>> = HashMap::new();
    for doc in docs {
        if let Ok(group) = doc.get_str("group") {
            grouped.entry(group.to_string()).or_default().push(doc);
        }
    }
    grouped
}

pub(super) fn by_id(docs: Vec<Arc<Document>>) -> HashMap<String, Arc<Document>> {
    docs.into_iter()
        .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::GroupEntry;

    fn group(name: &str, scaling: &str, min: i64) -> GroupEntry {
        let mut spec = doc! {
            "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256_i64,
            "portRange": { "from": 30000, "to": 30099 },
            "minInstances": min, "maxInstances": 4_i64, "scaling": scaling,
        };
        if scaling == "DYNAMIC" {
            spec.insert("dynamic", doc! { "maxPlayers": 20_i64 });
        }
        let entry = GroupEntry::new(name, &doc! { "_id": name, "spec": spec });
        assert!(entry.spec.is_ok(), "{:?}", entry.spec);
        entry
    }

    fn running(id: &str, node: &str) -> Arc<Document> {
        Arc::new(doc! {
            "_id": id, "group": "g", "nodeId": node, "state": "RUNNING", "planHash": "p",
            "reported": { "state": "RUNNING", "planHash": "p" },
        })
    }

    fn snapshot(instances: Vec<Arc<Document>>) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.instances.insert("g".into(), instances);
        snap.nodes.insert(
            "n1".into(),
            Arc::new(doc! { "_id": "n1", "state": "ONLINE" }),
        );
        snap.nodes.insert(
            "n2".into(),
            Arc::new(doc! { "_id": "n2", "state": "DISCONNECTED" }),
        );
        snap
    }

    #[test]
    fn a_static_group_with_exactly_its_running_instances_is_settled() {
        let static2 = group("g", "STATIC", 2);
        let both = snapshot(vec![running("g-1", "n1"), running("g-2", "n1")]);
        assert!(is_settled("g", &static2, &both));
        // One missing, one too many, or one on a node that is not online: work to do.
        assert!(!is_settled(
            "g",
            &static2,
            &snapshot(vec![running("g-1", "n1")])
        ));
        let three = snapshot(vec![
            running("g-1", "n1"),
            running("g-2", "n1"),
            running("g-3", "n1"),
        ]);
        assert!(!is_settled("g", &static2, &three));
        let lost = snapshot(vec![running("g-1", "n1"), running("g-2", "n2")]);
        assert!(!is_settled("g", &static2, &lost));
        // An ended instance does not count.
        let mut ended = doc! { "_id": "g-3", "group": "g", "nodeId": "n2", "state": "CRASHED" };
        ended.insert("planHash", "p");
        let with_ended = snapshot(vec![
            running("g-1", "n1"),
            running("g-2", "n1"),
            Arc::new(ended),
        ]);
        assert!(is_settled("g", &static2, &with_ended));
    }

    #[test]
    fn anything_between_states_or_asked_of_a_group_unsettles_it() {
        let manual = group("g", "MANUAL", 0);
        assert!(is_settled(
            "g",
            &manual,
            &snapshot(vec![running("g-1", "n1")])
        ));
        let starting = Arc::new(doc! {
            "_id": "g-1", "group": "g", "nodeId": "n1", "state": "STARTING", "planHash": "p",
            "reported": { "state": "STARTING", "planHash": "p" },
        });
        assert!(!is_settled("g", &manual, &snapshot(vec![starting])));
        // Running under an older plan than the one placed.
        let stale = Arc::new(doc! {
            "_id": "g-1", "group": "g", "nodeId": "n1", "state": "RUNNING", "planHash": "q",
            "reported": { "state": "RUNNING", "planHash": "p" },
        });
        assert!(!is_settled("g", &manual, &snapshot(vec![stale])));
        let request = Arc::new(doc! { "_id": "r", "group": "g" });
        let mut asked = snapshot(vec![running("g-1", "n1")]);
        asked.requests.insert("g".into(), vec![request.clone()]);
        assert!(!is_settled("g", &manual, &asked));
        let mut strays = snapshot(vec![]);
        strays.strays.insert("g".into(), vec![request.clone()]);
        assert!(!is_settled("g", &manual, &strays));
        let mut crashed = snapshot(vec![]);
        crashed.crashes.insert("g".into(), vec![1]);
        assert!(!is_settled("g", &manual, &crashed));
        let mut rolling = snapshot(vec![]);
        rolling.deployments.insert("g".into(), request);
        assert!(!is_settled("g", &manual, &rolling));
        // A DYNAMIC group follows its load: never settled.
        assert!(!is_settled(
            "g",
            &group("g", "DYNAMIC", 0),
            &snapshot(vec![])
        ));
        // A group being deleted is not; one whose spec is unusable is (until it changes).
        let mut deleting = group("g", "MANUAL", 0);
        deleting.deleting = true;
        assert!(!is_settled("g", &deleting, &snapshot(vec![])));
        let unusable = GroupEntry::new("g", &doc! { "_id": "g", "spec": { "platform": "fake" } });
        assert!(unusable.spec.is_err());
        assert!(is_settled("g", &unusable, &snapshot(vec![])));
    }
}
