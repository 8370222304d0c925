//! DYNAMIC scaling: the target from the players the instances report, and which instances a
//! group keeps at that target.

use std::collections::{BTreeMap, HashMap};

use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, now_ms};
use prexor_store::Write;

use super::{DRAINING, GROUP_STATE, Groups, Instance, RUNNING, STOPPING, Snapshot};

/// The instances a DYNAMIC group keeps at `target`: the fullest running ones, then the lowest
/// free names `<group>-<k>`; the emptiest ones are the first to go.
pub(super) fn dynamic_names(
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

impl Groups {
    /// A DYNAMIC group's instance count from its load: one more when the running ones are
    /// `scaleUpPercent` full, one fewer when one fewer would stay below that for
    /// `scaleDownDelaySeconds`; no change within `cooldownSeconds` of the last one. The target,
    /// the last change and the low-load start are kept in `group_state` (fenced), so they
    /// survive a failover.
    pub(super) async fn dynamic_target(
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
