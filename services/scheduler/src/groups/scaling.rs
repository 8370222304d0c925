//! DYNAMIC scaling: the target from the players the instances report, and which instances a
//! group keeps at that target.

use std::collections::{BTreeMap, HashMap};

use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::load::{Pressure, average};
use prexor_domain::{DynamicScaling, GroupSpec, LoadMetric, now_ms};
use prexor_store::Write;

use super::snapshot::Reported;
use super::{DRAINING, GROUP_STATE, Groups, Instance, RUNNING, STOPPING, Snapshot};

/// The instances a DYNAMIC group keeps at `target`: the fullest running ones, then instances
/// of its warm pool (`warm`: ready ones first; only of the current spec, `spec_hash`), then the
/// lowest free names `<group>-<k>`; the emptiest ones are the first to go.
pub(super) fn dynamic_names(
    name: &str,
    target: u32,
    active: &BTreeMap<String, &Instance>,
    players: &HashMap<String, u64>,
    warm: &[&Instance],
    spec_hash: &str,
) -> Vec<String> {
    let mut keep: Vec<&Instance> = active
        .values()
        .filter(|i| i.state != STOPPING && i.state != DRAINING)
        .copied()
        .collect();
    keep.sort_by_key(|i| {
        (
            std::cmp::Reverse(players.get(&i.id).copied().unwrap_or(0)),
            instance_index(&i.id),
        )
    });
    let mut names: Vec<String> = keep
        .into_iter()
        .take(target as usize)
        .map(|i| i.id.clone())
        .collect();
    let mut ready: Vec<&Instance> = warm
        .iter()
        .filter(|i| super::warm::usable(i, spec_hash))
        .copied()
        .collect();
    ready.sort_by_key(|i| (!super::warm::is_ready(i), instance_index(&i.id)));
    for instance in ready {
        if names.len() >= target as usize {
            break;
        }
        names.push(instance.id.clone());
    }
    let taken = |id: &str| active.contains_key(id) || warm.iter().any(|w| w.id == id);
    let mut k = 1;
    while names.len() < target as usize {
        let candidate = format!("{name}-{k}");
        if !names.contains(&candidate) && !taken(&candidate) {
            names.push(candidate);
        }
        k += 1;
    }
    names
}

/// The number `k` of an instance id `<group>-<k>` (ids without one sort last).
pub(super) fn instance_index(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(u64::MAX)
}

impl Groups {
    /// A DYNAMIC group's instance count from its load: `step` more when the running ones are
    /// `scaleUpPercent` full (or, with `load`, the metric says busy), `step` fewer when that
    /// many fewer would stay below the mark (or the metric says idle) for
    /// `scaleDownDelaySeconds`; no change within `cooldownSeconds` of the last one. The target,
    /// the last change, the low-load start, the signal and the decision are kept in
    /// `group_state` (fenced), so they survive a failover and the API shows them.
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
        let now = now_ms();
        let reading = read_signal(spec, &rules, current, snap, active, now);
        let started = active.values().filter(|i| i.state == RUNNING).count() as u32;
        let cooled = now - last_change >= i64::from(rules.cooldown_seconds) * 1000;
        let step = rules.step.max(1);
        let grow = reading.pressure == Pressure::Up && current < spec.max_instances;
        let shrink = reading.pressure == Pressure::Down && current > spec.min_instances;
        // (target, start of the low load still counting down, the decision in words)
        let (target, low, decision) = if grow && !cooled {
            (
                current,
                None,
                format!(
                    "busy, but cooling down: no change within {} s of the last",
                    rules.cooldown_seconds
                ),
            )
        } else if grow && started < current {
            (
                current,
                None,
                format!("busy; waiting for all {current} instances to run before adding more"),
            )
        } else if grow {
            let to = (current + step).min(spec.max_instances);
            (to, None, format!("busy: scaled from {current} to {to}"))
        } else if shrink {
            let since = low_since.unwrap_or(now);
            let to = current.saturating_sub(step).max(spec.min_instances);
            if cooled && now - since >= i64::from(rules.scale_down_delay_seconds) * 1000 {
                (
                    to,
                    None,
                    format!(
                        "idle for {} s: scaled from {current} to {to}",
                        rules.scale_down_delay_seconds
                    ),
                )
            } else {
                (
                    current,
                    Some(since),
                    format!(
                        "idle: scales from {current} to {to} once idle for {} s",
                        rules.scale_down_delay_seconds
                    ),
                )
            }
        } else if reading.pressure == Pressure::Down {
            (
                current,
                None,
                format!("idle, at minInstances ({})", spec.min_instances),
            )
        } else if reading.pressure == Pressure::Up {
            (
                current,
                None,
                format!("busy, but at maxInstances ({})", spec.max_instances),
            )
        } else {
            (current, None, format!("holding at {current}"))
        };
        let signal =
            doc! { "metric": reading.metric, "value": reading.value, "reading": &reading.text };
        let unchanged = Some(i64::from(target)) == stored
            && low == low_since
            && state.and_then(|s| s.get_document("signal").ok()) == Some(&signal)
            && state.and_then(|s| s.get_str("decision").ok()) == Some(decision.as_str());
        if !unchanged {
            let mut set =
                doc! { "scaleTarget": i64::from(target), "signal": signal, "decision": &decision };
            if target != current {
                set.insert("lastScaleAtMs", now);
                tracing::info!(group = name, from = current, to = target, signal = %reading.text, "scaling");
                self.events
                    .publish(
                        "GROUP_SCALED",
                        name,
                        serde_json::json!({ "from": current, "to": target, "signal": reading.text, "players": reading.players }),
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

/// What a DYNAMIC group's signal reads: its metric and value (rounded, so that a flicker in the
/// last digit writes nothing), in words, and what it says to do.
struct Reading {
    metric: &'static str,
    value: f64,
    text: String,
    players: u64,
    pressure: Pressure,
}

fn read_signal(
    spec: &GroupSpec,
    rules: &DynamicScaling,
    current: u32,
    snap: &Snapshot,
    active: &BTreeMap<String, &Instance>,
    now: i64,
) -> Reading {
    let players: u64 = active
        .keys()
        .map(|id| snap.players.get(id).copied().unwrap_or(0))
        .sum();
    let Some(load) = rules.load else {
        let full_at = |count: u32| {
            u64::from(count) * u64::from(rules.max_players) * u64::from(rules.scale_up_percent)
        };
        let fewer = current
            .saturating_sub(rules.step.max(1))
            .max(spec.min_instances);
        let pressure = if players * 100 >= full_at(current) {
            Pressure::Up
        } else if current > spec.min_instances && players * 100 < full_at(fewer) {
            Pressure::Down
        } else {
            Pressure::Hold
        };
        let capacity = u64::from(current) * u64::from(rules.max_players);
        return Reading {
            metric: "players",
            value: players as f64,
            text: format!(
                "{players} players on {current} instances of {} (scale up at {} %)",
                capacity, rules.scale_up_percent
            ),
            players,
            pressure,
        };
    };
    let values: Vec<f64> = active
        .values()
        .filter(|i| i.state == RUNNING)
        .filter_map(|i| snap.metrics.get(&i.id))
        .filter(|r| r.is_fresh(now))
        .filter_map(|r| match load.metric {
            LoadMetric::Tps => r.tps,
            LoadMetric::Mspt => r.mspt,
            LoadMetric::Memory => r
                .memory_used_mb
                .map(|used| used as f64 * 100.0 / spec.memory_mb.max(1) as f64),
        })
        .collect();
    let metric = load.metric.as_str();
    match average(&values) {
        None => Reading {
            metric,
            value: 0.0,
            text: format!(
                "no running instance reported {metric} in the last {} s",
                Reported::FRESH_MS / 1000
            ),
            players,
            pressure: Pressure::Hold,
        },
        Some(mean) => {
            let value = (mean * 10.0).round() / 10.0;
            let unit = if load.metric == LoadMetric::Memory {
                " %"
            } else {
                ""
            };
            Reading {
                metric,
                value,
                text: format!(
                    "{metric} {value}{unit} on average over {} running instances (busy at {}, idle at {})",
                    values.len(),
                    load.scale_up_at,
                    load.scale_down_at
                ),
                players,
                pressure: load.pressure(value),
            }
        }
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
            warm: false,
            prepare_only: false,
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
        assert_eq!(
            dynamic_names("g", 2, &active, &players, &[], ""),
            ["g-4", "g-2"]
        );
        assert_eq!(
            dynamic_names("g", 5, &active, &players, &[], ""),
            ["g-4", "g-2", "g-1", "g-3", "g-5"]
        );
    }

    #[test]
    fn a_scale_up_takes_ready_warm_instances_of_the_current_spec_first() {
        let member = instance("g-1", RUNNING);
        let active: BTreeMap<String, &Instance> = [(member.id.clone(), &member)].into();
        let warm = |id: &str, state: &str, spec: &str| Instance {
            warm: true,
            spec_hash: spec.into(),
            ..instance(id, state)
        };
        let (preparing, prepared, stale) = (
            warm("g-2", super::super::PREPARING, "s1"),
            warm("g-3", super::super::PREPARED, "s1"),
            warm("g-4", super::super::PREPARED, "s0"),
        );
        let pool = [&preparing, &prepared, &stale];
        let players = HashMap::new();
        // The prepared one before the one still preparing; the stale one never; new names
        // skip every warm instance's name.
        assert_eq!(
            dynamic_names("g", 2, &active, &players, &pool, "s1"),
            ["g-1", "g-3"]
        );
        assert_eq!(
            dynamic_names("g", 4, &active, &players, &pool, "s1"),
            ["g-1", "g-3", "g-2", "g-5"]
        );
        // Not scaling up: no warm instance is taken.
        assert_eq!(
            dynamic_names("g", 1, &active, &players, &pool, "s1"),
            ["g-1"]
        );
    }

    #[test]
    fn a_draining_instance_is_never_kept() {
        let (a, b) = (instance("g-1", DRAINING), instance("g-2", RUNNING));
        let active: BTreeMap<String, &Instance> =
            [&a, &b].into_iter().map(|i| (i.id.clone(), i)).collect();
        let players: HashMap<String, u64> = [("g-1".to_string(), 30)].into_iter().collect();
        // g-1 is leaving: the group's second instance is a fresh one, not g-1 again.
        assert_eq!(
            dynamic_names("g", 2, &active, &players, &[], ""),
            ["g-2", "g-3"]
        );
    }
}
