//! The warm pool of a DYNAMIC group (`warmPool`; docs/scheduling.md, "Warm pool"): instances
//! placed and prepared ahead (with `started`, also running idle) beyond the group's target,
//! never announced to players. A scale-up takes them before it places new ones, and the pool is
//! refilled to its size.
//!
//! Like every placement, a warm instance is a record written under the group's fence with the
//! lowest free name, so a holder that dies mid-refill leaves records its successor counts: the
//! pool is filled once, never twice. Taking an instance is one fenced write (`warm: false`);
//! a prepared one is then sent its start (again, until its node reports it starting).

use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, ScalingMode, now_ms};
use prexor_store::Write;

use super::scaling::instance_index;
use super::{
    DRAINING, Groups, INSTANCE_LOAD, INSTANCES, Instance, PREPARED, RUNNING, STOPPING, Snapshot,
};

/// A warm instance a scale-up may take: not leaving, and placed from the current spec.
pub(super) fn usable(instance: &Instance, spec_hash: &str) -> bool {
    instance.state != STOPPING && instance.state != DRAINING && instance.spec_hash == spec_hash
}

/// Prepared, or (started) running: taken, it needs no more preparing.
pub(super) fn is_ready(instance: &Instance) -> bool {
    instance.state == PREPARED || instance.state == RUNNING
}

/// What keeps a group's pool at its size this tick.
#[derive(Debug, Default, PartialEq)]
pub(super) struct PoolChange {
    /// Warm instances to stop, with why.
    pub retire: Vec<(String, &'static str)>,
    /// Names to place warm instances under.
    pub add: Vec<String>,
}

/// The change that keeps group `name`'s warm pool at its size: warm instances of an older spec,
/// beyond the size (the least ready first), or of a pool no longer configured are stopped; new
/// ones take the lowest names neither a live instance nor `wanted` holds. The pool never takes
/// the group past `maxInstances`: its size is what is left below it once `wanted` counts.
pub(super) fn pool_change(
    name: &str,
    spec: &GroupSpec,
    wanted: &[String],
    instances: &[Instance],
) -> PoolChange {
    let size = match spec.warm_pool {
        Some(pool) if spec.scaling == ScalingMode::Dynamic => {
            pool.prepared
                .min(spec.max_instances.saturating_sub(wanted.len() as u32)) as usize
        }
        _ => 0,
    };
    let warm: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.is_active() && i.warm && i.state != STOPPING && i.state != DRAINING)
        .collect();
    if size == 0 && warm.is_empty() {
        return PoolChange::default();
    }
    // Hashed only for a group with a pool (not on every tick of every DYNAMIC group).
    let hash = if warm.is_empty() {
        String::new()
    } else {
        spec.hash()
    };
    let (mut fresh, stale): (Vec<&Instance>, Vec<&Instance>) =
        warm.into_iter().partition(|i| i.spec_hash == hash);
    fresh.sort_by_key(|i| (!is_ready(i), instance_index(&i.id)));
    let mut retire: Vec<(String, &'static str)> = stale
        .iter()
        .map(|i| (i.id.clone(), "warm, of an older spec"))
        .collect();
    let beyond = if spec.warm_pool.is_some() {
        "warm, beyond the pool's size"
    } else {
        "warm, and the group has no warm pool"
    };
    retire.extend(fresh.iter().skip(size).map(|i| (i.id.clone(), beyond)));
    let taken = |id: &str| {
        wanted.iter().any(|w| w == id) || instances.iter().any(|i| i.is_active() && i.id == id)
    };
    let mut add = Vec::new();
    let mut k = 1;
    while add.len() < size.saturating_sub(fresh.len()) {
        let candidate = format!("{name}-{k}");
        if !taken(&candidate) {
            add.push(candidate);
        }
        k += 1;
    }
    PoolChange { retire, add }
}

impl Groups {
    /// Takes the warm instances among `wanted` into the group (one fenced write) and sends the
    /// prepared ones their start.
    pub(super) async fn take_warm(
        &self,
        name: &str,
        lease: &Lease,
        instances: &mut [Instance],
        wanted: &[String],
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        let taking: Vec<usize> = instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.warm && i.is_active() && wanted.contains(&i.id))
            .map(|(index, _)| index)
            .collect();
        if taking.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let writes = taking
            .iter()
            .map(|index| {
                let i = &instances[*index];
                Write::update_one(
                    INSTANCES,
                    doc! { "_id": &i.id, "planHash": &i.plan_hash, "warm": true },
                    doc! { "$set": {
                        "warm": false, "prepareOnly": false, "nextAttemptAtMs": 0_i64,
                        "takenFromPoolAtMs": now,
                    } },
                )
            })
            .collect();
        self.write(lease, writes).await?;
        metrics::counter!("prexor_scheduler_warm_taken_total").increment(taking.len() as u64);
        for index in &taking {
            let instance = &mut instances[*index];
            instance.warm = false;
            instance.prepare_only = false;
            instance.next_attempt_at_ms = 0;
            tracing::info!(group = name, instance = %instance.id, state = %instance.state, "taken from the warm pool");
            let state = instance.state.clone();
            self.state_changed(instance, &state, "taken from the warm pool")
                .await;
        }
        self.announce_ready(
            name,
            &taking
                .iter()
                .map(|i| instances[*i].id.clone())
                .collect::<Vec<_>>(),
        )
        .await?;
        let mut start = Vec::new();
        for (index, instance) in instances.iter_mut().enumerate() {
            if taking.contains(&index) && instance.state == PREPARED {
                instance.plan = match snap.plan_of(name, &instance.id) {
                    Some(plan) => Some(plan),
                    None => self.persisted_plan(instance).await?,
                };
                start.push(instance);
            }
        }
        self.dispatch_all(name, lease, start).await
    }

    /// Announces (`INSTANCE_READY`) the instances among `taken` whose server reported itself
    /// ready while it was warm (the api held the announcement back then). Read after the take's
    /// write: a readiness recorded before it is seen here, one after it was announced by the api.
    async fn announce_ready(&self, name: &str, taken: &[String]) -> anyhow::Result<()> {
        let ready = self
            .store
            .find_all(
                INSTANCE_LOAD,
                "reading the readiness of instances taken from the warm pool",
                doc! { "_id": { "$in": taken }, "ready": true },
            )
            .await?;
        for load in ready {
            if let Ok(id) = load.get_str("_id") {
                self.events
                    .publish("INSTANCE_READY", id, serde_json::json!({ "group": name }))
                    .await;
            }
        }
        Ok(())
    }

    /// Keeps the warm pool at its size ([`pool_change`]): stops what does not belong in it and,
    /// unless placements are `paused` (a crash loop), places and dispatches what is missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn keep_warm_pool(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &Lease,
        instances: &[Instance],
        wanted: &[String],
        paused: bool,
    ) -> anyhow::Result<()> {
        let change = pool_change(name, spec, wanted, instances);
        for (id, why) in &change.retire {
            if let Some(instance) = instances.iter().find(|i| &i.id == id) {
                self.retire(name, spec, lease, instance, 0, why).await?;
            }
        }
        if paused || change.add.is_empty() {
            return Ok(());
        }
        let missing: Vec<(String, i64)> = change
            .add
            .into_iter()
            .map(|id| {
                let attempt = instances
                    .iter()
                    .find(|i| i.id == id)
                    .map_or(0, |i| i.attempt);
                (id, attempt + 1)
            })
            .collect();
        let mut placed = self
            .place_all(name, spec, revision, &missing, lease, spec.warm_pool)
            .await?;
        // Persisted, not dispatched: the warm-pool failover test dies here.
        if !placed.is_empty() {
            prexor_serve::failpoint::hit("scheduler.warm-pool-placed");
        }
        self.dispatch_all(name, lease, placed.iter_mut().collect())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prexor_domain::WarmPool;

    fn spec(prepared: Option<u32>, max: u32) -> GroupSpec {
        let mut spec: GroupSpec = serde_json::from_value(serde_json::json!({
            "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256,
            "portRange": { "from": 30000, "to": 30099 },
            "minInstances": 1, "maxInstances": max, "scaling": "DYNAMIC",
            "dynamic": { "maxPlayers": 20 },
        }))
        .unwrap();
        spec.warm_pool = prepared.map(|prepared| WarmPool {
            prepared,
            started: false,
        });
        spec
    }

    fn instance(id: &str, state: &str, warm: bool, spec_hash: &str) -> Instance {
        let mut instance = Instance::from_doc(&doc! {
            "_id": id, "group": "g", "state": state, "specHash": spec_hash, "warm": warm,
        })
        .unwrap();
        instance.attempt = 1;
        instance
    }

    fn names(change: &PoolChange) -> (Vec<&str>, Vec<&str>) {
        (
            change.retire.iter().map(|(id, _)| id.as_str()).collect(),
            change.add.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn an_empty_pool_fills_with_the_lowest_free_names() {
        let spec = spec(Some(2), 10);
        let hash = spec.hash();
        let members = [instance("g-1", RUNNING, false, &hash)];
        let wanted = ["g-1".to_string(), "g-2".to_string()];
        let change = pool_change("g", &spec, &wanted, &members);
        // g-2 is wanted (placed this tick), so the pool takes g-3 and g-4.
        assert_eq!(names(&change), (vec![], vec!["g-3", "g-4"]));
    }

    #[test]
    fn a_full_pool_changes_nothing_and_a_refill_counts_what_is_placed() {
        let spec = spec(Some(2), 10);
        let hash = spec.hash();
        let wanted = ["g-1".to_string()];
        let full = [
            instance("g-1", RUNNING, false, &hash),
            instance("g-2", super::super::SCHEDULED, true, &hash),
            instance("g-3", PREPARED, true, &hash),
        ];
        assert_eq!(
            pool_change("g", &spec, &wanted, &full),
            PoolChange::default()
        );
        // One taken (now a member): one more, after every live name.
        let mut taken = full;
        taken[2].warm = false;
        let wanted = ["g-1".to_string(), "g-3".to_string()];
        assert_eq!(
            names(&pool_change("g", &spec, &wanted, &taken)),
            (vec![], vec!["g-4"])
        );
    }

    #[test]
    fn stale_excess_and_unwanted_warm_instances_retire() {
        let spec = spec(Some(1), 10);
        let hash = spec.hash();
        let wanted = ["g-1".to_string()];
        let instances = [
            instance("g-1", RUNNING, false, &hash),
            instance("g-2", super::super::PREPARING, true, &hash),
            instance("g-3", PREPARED, true, &hash),
            instance("g-4", PREPARED, true, "older"),
            instance("g-5", STOPPING, true, "older"),
        ];
        let change = pool_change("g", &spec, &wanted, &instances);
        // The ready g-3 stays; the one still preparing goes, as does the stale one; the one
        // already stopping is left to finish.
        assert_eq!(names(&change), (vec!["g-4", "g-2"], vec![]));
        assert_eq!(change.retire[0].1, "warm, of an older spec");
        // No pool any more: every warm instance goes.
        let mut none = spec.clone();
        none.warm_pool = None;
        let hash = none.hash();
        let instances = [
            instance("g-1", RUNNING, false, &hash),
            instance("g-2", super::super::PREPARING, true, &hash),
            instance("g-3", PREPARED, true, &hash),
        ];
        let change = pool_change("g", &none, &wanted, &instances);
        assert_eq!(names(&change), (vec!["g-3", "g-2"], vec![]));
        assert_eq!(change.retire[0].1, "warm, and the group has no warm pool");
    }

    #[test]
    fn the_pool_never_takes_the_group_past_its_maximum() {
        let spec = spec(Some(3), 4);
        let hash = spec.hash();
        let wanted: Vec<String> = (1..=3).map(|k| format!("g-{k}")).collect();
        let members: Vec<Instance> = wanted
            .iter()
            .map(|id| instance(id, RUNNING, false, &hash))
            .collect();
        assert_eq!(
            names(&pool_change("g", &spec, &wanted, &members)),
            (vec![], vec!["g-4"])
        );
    }
}
