//! Healing: retiring ended instances, giving up those on nodes that stayed away, stopping
//! strays, and pausing a group whose instances crash in a loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, InstanceState, now_ms};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{AckResult, InstanceState as Reported};
use prexor_store::{StoreError, Write};

use crate::commands::fenced_command;

use super::{
    CONVERGENCE_GRACE, CRASH_LOOP_CRASHES, CRASH_LOOP_PAUSE, CRASH_LOOP_WINDOW, CRASHED,
    DISCONNECT_GRACE, DRAINING, GROUP_STATE, Groups, Halt, Instance, RUNNING, STRAY_KILL_EVERY,
    STRAYS, Snapshot,
};

/// Whether a group whose crash-loop pause ends (or ended) at `paused_until_ms` counts as crash
/// looping (`prexor_scheduler_groups_crash_looping`): paused now, or paused less than a crash
/// window ago (the gap before the next, longer pause of a loop that recurs, or before the loop is
/// over).
pub(crate) fn crash_looping(paused_until_ms: i64, now_ms: i64) -> bool {
    paused_until_ms > 0 && now_ms - paused_until_ms <= CRASH_LOOP_WINDOW.as_millis() as i64
}

impl Snapshot {
    /// How many of the snapshot's groups are in a crash loop ([`crash_looping`]). As of the
    /// snapshot: a pause [`Groups::crash_loop_pause`] starts in a tick counts from the next one.
    pub(crate) fn crash_looping(&self, now_ms: i64) -> usize {
        self.states
            .values()
            .filter(|state| crash_looping(state.get_i64("pausedUntilMs").unwrap_or(0), now_ms))
            .count()
    }
}

impl Groups {
    /// Takes `instance` out of service: a RUNNING server with players online DRAINS first (it
    /// stays up, DRAINING in the API and events, for proxies to send nobody new) until its
    /// players left or `drainSeconds` passed; then it is stopped. True once it is STOPPING.
    pub(super) async fn retire(
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

    pub(super) async fn give_up_lost_nodes(
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
                (state != prexor_model::nodes::NodeState::Online.as_str()
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
    pub(super) async fn stop_strays(
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
            if prexor_model::instances::has_ended(state) {
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
            let command = fenced_command(
                lease,
                format!("kill-stray:{id}:{plan}"),
                Action::Kill(prexor_proto::v1::KillInstance {
                    instance_id: instance.clone(),
                    plan_hash: plan.to_owned(),
                }),
            );
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
    pub(super) async fn crash_loop_pause(
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
    pub(super) fn gate_open(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_counts_as_crash_looping_while_paused_and_for_a_window_after() {
        let now = 10_000_000;
        let window = CRASH_LOOP_WINDOW.as_millis() as i64;
        let state = |id: &str, until: i64| {
            (
                id.to_owned(),
                Arc::new(doc! { "_id": id, "pausedUntilMs": until, "pauseLevel": 1_i64 }),
            )
        };
        let snapshot = Snapshot {
            states: [
                state("paused", now + 30_000),
                state("between-pauses", now - 60_000),
                state("quiet-again", now - window - 1),
                ("never".to_owned(), Arc::new(doc! { "_id": "never" })),
            ]
            .into_iter()
            .collect(),
            ..Snapshot::default()
        };
        assert_eq!(snapshot.crash_looping(now), 2);
        assert_eq!(Snapshot::default().crash_looping(now), 0);
    }
}
