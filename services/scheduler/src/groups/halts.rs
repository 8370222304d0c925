//! Stopping and killing instances under the group's fence, and never waiting forever for a
//! node to say how an instance ended.
//!
//! A halt (stop or kill) is recorded first, by a fenced write that moves the instance to
//! STOPPING with the halt and the token, and only then sent, with that token, and only while
//! the lease is still valid here: a holder paused between deciding and sending finds its write
//! refused (a peer took the group) or its lease expired, and sends nothing. A recorded halt the
//! node has not acknowledged is sent again on the next tick, by whoever holds the group then.
//!
//! An instance left PREPARING, STARTING or STOPPING longer than its grace plus a tick on an
//! ONLINE node is queried on the node and settled from the answer ([`verdict`]).

use std::time::Duration;

use futures::future::join_all;
use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::{InstanceState, now_ms};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{
    AckResult, CommandAck, InstanceState as Reported, KillInstance, QueryInstance, StopInstance,
};
use prexor_serve::SendError;
use prexor_store::{StoreError, Write};

use crate::commands::fenced_command;

use super::{CRASHED, Groups, Halt, INSTANCES, Instance, PREPARING, STARTING, STOPPED, STOPPING};

/// How long a server may take from its start to RUNNING before the node is asked (the
/// daemon's own startup probe gives up after 120 s and reports RUNNING then).
const STARTUP_GRACE: Duration = Duration::from_secs(130);

/// The halt recorded with a STOPPING instance (`halt` in its record).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct HaltRecord {
    pub how: Halt,
    /// The node acknowledged it.
    pub acked: bool,
}

impl HaltRecord {
    pub(super) fn from_doc(doc: &mongodb::bson::Document) -> Option<HaltRecord> {
        let how = match doc.get_str("verb").ok()? {
            "kill" => Halt::Kill,
            _ => Halt::Stop {
                grace_s: (doc.get_i64("graceMs").unwrap_or(0) / 1000) as u32,
            },
        };
        Some(HaltRecord {
            how,
            acked: doc.get_bool("acked").unwrap_or(false),
        })
    }
}

impl Halt {
    fn verb(self) -> &'static str {
        match self {
            Halt::Stop { .. } => "stop",
            Halt::Kill => "kill",
        }
    }

    fn grace_ms(self) -> i64 {
        match self {
            Halt::Stop { grace_s } => i64::from(grace_s) * 1000,
            Halt::Kill => 0,
        }
    }

    /// The command for `instance`'s process of `plan` (a process of another plan is left alone).
    fn action(self, instance: &str, plan: &str) -> Action {
        match self {
            Halt::Stop { grace_s } => Action::Stop(StopInstance {
                instance_id: instance.to_owned(),
                grace_period_ms: grace_s.saturating_mul(1000),
                stop_command: String::new(),
                plan_hash: plan.to_owned(),
            }),
            Halt::Kill => Action::Kill(KillInstance {
                instance_id: instance.to_owned(),
                plan_hash: plan.to_owned(),
            }),
        }
    }
}

/// What a node's answer about an overdue instance means.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// It ended (or never ran there): record that.
    Finish(&'static str, String),
    /// It got further than recorded.
    Advance(InstanceState),
    /// It still runs although it is STOPPING: the stop never arrived, send it again.
    Resend,
    /// It is still stopping past its grace: kill it.
    Kill,
    /// Nothing to do yet.
    Wait,
}

/// Settles an instance recorded as `ours` (PREPARING, STARTING or STOPPING) under `plan` from
/// the node's answer to a query.
pub(super) fn verdict(ours: &str, plan: &str, node: &str, ack: &CommandAck) -> Verdict {
    let ended = if ours == STOPPING { STOPPED } else { CRASHED };
    if ack.actual_state() == Reported::Unspecified
        || (!ack.plan_hash.is_empty() && ack.plan_hash != plan)
    {
        return Verdict::Finish(ended, format!("node {node} does not run it"));
    }
    let said = |state: &str| format!("node {node} says it is {state}: {}", ack.message);
    match (ack.actual_state(), ours) {
        (Reported::Stopped, _) => Verdict::Finish(STOPPED, said("STOPPED")),
        (Reported::Crashed, _) => Verdict::Finish(CRASHED, said("CRASHED")),
        (Reported::Preparing | Reported::Starting | Reported::Running, STOPPING) => Verdict::Resend,
        (Reported::Running, _) => Verdict::Advance(InstanceState::Running),
        (Reported::Starting, PREPARING) => Verdict::Advance(InstanceState::Starting),
        (Reported::Stopping, STOPPING) => Verdict::Kill,
        _ => Verdict::Wait,
    }
}

impl Groups {
    /// [`Groups::halt_all`] for one instance: true once it is recorded STOPPING.
    pub(super) async fn stop(
        &self,
        group: &str,
        lease: &Lease,
        instance: &Instance,
        how: Halt,
        why: &str,
    ) -> anyhow::Result<bool> {
        let recorded = self
            .halt_all(group, lease, vec![(instance, how, why.to_owned())])
            .await?;
        Ok(recorded > 0)
    }

    /// Records each instance STOPPING with its halt, then sends the halts together under the
    /// same token and records each answer; how many were recorded.
    pub(super) async fn halt_all(
        &self,
        group: &str,
        lease: &Lease,
        halts: Vec<(&Instance, Halt, String)>,
    ) -> anyhow::Result<usize> {
        let mut recorded = Vec::new();
        for (instance, how, why) in halts {
            if self.record_halt(lease, instance, how, &why).await? {
                recorded.push((instance, how, why));
            }
        }
        if recorded.is_empty() {
            return Ok(0);
        }
        // Between the write and the sends: a pause here (the fence test stops the process at
        // this point) outlives the lease, and nothing may be sent then.
        prexor_serve::failpoint::hit("scheduler.before-halt-send");
        if !lease.is_valid() {
            tracing::warn!(
                group,
                "the group's lease expired before its halts were sent; the next holder sends them"
            );
            return Ok(recorded.len());
        }
        let outcomes = join_all(recorded.iter().map(|(instance, how, _)| {
            let command = fenced_command(
                lease,
                format!("{}:{}:{}", how.verb(), instance.id, instance.plan_hash),
                how.action(&instance.id, &instance.plan_hash),
            );
            self.gateways.send(&instance.node, command)
        }))
        .await;
        for ((instance, how, why), outcome) in recorded.iter().zip(outcomes) {
            self.record_halt_ack(group, lease, instance, *how, why, outcome)
                .await?;
        }
        Ok(recorded.len())
    }

    /// The fenced write that comes before a halt is sent: STOPPING, the halt, the token.
    async fn record_halt(
        &self,
        lease: &Lease,
        instance: &Instance,
        how: Halt,
        why: &str,
    ) -> anyhow::Result<bool> {
        let mut set = doc! {
            "state": STOPPING,
            "stopReason": why,
            "halt": {
                "verb": how.verb(), "graceMs": how.grace_ms(), "acked": false,
                "token": lease.token() as i64, "atMs": now_ms(),
            },
        };
        if instance.state != STOPPING {
            set.insert("stateAtMs", now_ms());
        }
        let written = self
            .write(
                lease,
                vec![
                    Write::update_one(
                        INSTANCES,
                        doc! {
                            "_id": &instance.id,
                            "planHash": &instance.plan_hash,
                            "state": { "$nin": [STOPPED, CRASHED] },
                        },
                        doc! { "$set": set },
                    )
                    .require_match(),
                ],
            )
            .await;
        match written {
            Ok(()) => {}
            // It ended meanwhile: nothing to halt.
            Err(StoreError::Precondition { .. }) => return Ok(false),
            Err(err) => return Err(err.into()),
        }
        if instance.state != STOPPING {
            self.state_changed(instance, STOPPING, why).await;
        }
        Ok(true)
    }

    /// What the node answered to a halt: acknowledged, or the node does not run the instance
    /// any more (it is then recorded as ended: no report of its end will come), or nothing yet
    /// (sent again next tick).
    async fn record_halt_ack(
        &self,
        group: &str,
        lease: &Lease,
        instance: &Instance,
        how: Halt,
        why: &str,
        outcome: Result<CommandAck, SendError>,
    ) -> anyhow::Result<()> {
        let verb = how.verb();
        let ack = match outcome {
            Ok(ack) => ack,
            Err(reason) => {
                tracing::info!(instance = %instance.id, "{verb} not delivered yet (sent again next tick): {reason}");
                return Ok(());
            }
        };
        match ack.result() {
            AckResult::Done | AckResult::Already => {}
            AckResult::StaleFence => anyhow::bail!(
                "node {} refused group {group}'s token {} for a {verb}: {}",
                instance.node,
                lease.token(),
                ack.message
            ),
            _ => {
                tracing::warn!(instance = %instance.id, "{verb} refused (sent again next tick): {}", ack.message);
                return Ok(());
            }
        }
        let ours = ack.plan_hash.is_empty() || ack.plan_hash == instance.plan_hash;
        let gone = matches!(
            ack.actual_state(),
            Reported::Stopped | Reported::Crashed | Reported::Unspecified
        );
        // The node runs nothing of this plan: nothing will report its end.
        if ack.result() == AckResult::Already && (gone || !ours) {
            let state = if ours && ack.actual_state() == Reported::Crashed {
                CRASHED
            } else {
                STOPPED
            };
            let reason = format!("{why}; the node no longer runs it: {}", ack.message);
            return self.finish_record(lease, instance, state, &reason).await;
        }
        self.set_halt_acked(lease, instance, true).await?;
        tracing::info!(group, instance = %instance.id, "{verb} ({why})");
        Ok(())
    }

    /// Whether the node took the STOPPING instance's halt (`false`: send it again next tick).
    async fn set_halt_acked(
        &self,
        lease: &Lease,
        instance: &Instance,
        acked: bool,
    ) -> anyhow::Result<()> {
        self.write(
            lease,
            vec![Write::update_one(
                INSTANCES,
                doc! { "_id": &instance.id, "planHash": &instance.plan_hash, "state": STOPPING },
                doc! { "$set": { "halt.acked": acked } },
            )],
        )
        .await?;
        Ok(())
    }

    /// Halts recorded but not acknowledged (the sender failed, died or was paused) go out again.
    pub(super) async fn resend_halts(
        &self,
        group: &str,
        lease: &Lease,
        instances: &[Instance],
    ) -> anyhow::Result<()> {
        let pending: Vec<(&Instance, Halt, String)> = instances
            .iter()
            .filter(|i| i.state == STOPPING)
            .filter_map(|i| {
                let halt = i.halt.filter(|h| !h.acked)?;
                Some((i, halt.how, i.stop_reason.clone()))
            })
            .collect();
        if !pending.is_empty() {
            self.halt_all(group, lease, pending).await?;
        }
        Ok(())
    }

    /// Queries the node about every instance overdue in PREPARING, STARTING or STOPPING and
    /// settles it from the answer.
    pub(super) async fn settle_overdue(
        &self,
        group: &str,
        lease: &Lease,
        instances: &mut [Instance],
        online: &(dyn Fn(&str) -> bool + Sync),
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let tick = self.interval.as_millis() as i64;
        let overdue: Vec<usize> = instances
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                let grace = match i.state.as_str() {
                    PREPARING | STARTING => STARTUP_GRACE.as_millis() as i64,
                    // Only once the node took the halt (an unacknowledged one is re-sent).
                    STOPPING if i.halt.is_none_or(|h| h.acked) => {
                        i.halt.map_or(0, |h| h.how.grace_ms())
                    }
                    _ => return false,
                };
                i.state_at_ms > 0 && now - i.state_at_ms > grace + tick && online(&i.node)
            })
            .filter(|(_, i)| self.query_due(i, now))
            .map(|(index, _)| index)
            .collect();
        if overdue.is_empty() {
            return Ok(());
        }
        let answers = join_all(overdue.iter().map(|index| {
            let instance = &instances[*index];
            let command = fenced_command(
                lease,
                format!("query:{}:{}:{now}", instance.id, instance.plan_hash),
                Action::Query(QueryInstance {
                    instance_id: instance.id.clone(),
                }),
            );
            self.gateways.send(&instance.node, command)
        }))
        .await;
        for (index, answer) in overdue.into_iter().zip(answers) {
            let instance = &mut instances[index];
            let ack = match answer {
                Ok(ack) if ack.result() == AckResult::Done => ack,
                Ok(ack) => {
                    tracing::info!(instance = %instance.id, "query refused: {}", ack.message);
                    continue;
                }
                Err(reason) => {
                    tracing::info!(instance = %instance.id, "query not answered: {reason}");
                    continue;
                }
            };
            let verdict = verdict(&instance.state, &instance.plan_hash, &instance.node, &ack);
            tracing::info!(group, instance = %instance.id, state = %instance.state, ?verdict, "settling an overdue instance from its node's answer");
            metrics::counter!("prexor_scheduler_overdue_settled_total").increment(1);
            match verdict {
                Verdict::Finish(state, reason) => {
                    self.finish(lease, instance, state, &reason).await?
                }
                Verdict::Advance(state) => self.set_state(lease, instance, state).await?,
                Verdict::Resend => self.set_halt_acked(lease, instance, false).await?,
                Verdict::Kill => {
                    let why = format!("still stopping past its grace ({})", instance.stop_reason);
                    self.stop(group, lease, instance, Halt::Kill, &why).await?;
                }
                Verdict::Wait => {}
            }
        }
        Ok(())
    }

    /// At most one query per instance and plan per [`STARTUP_GRACE`] from this replica.
    fn query_due(&self, instance: &Instance, now: i64) -> bool {
        let key = format!("{}:{}", instance.id, instance.plan_hash);
        let mut queried = self.queried.lock().expect("queried lock");
        queried.retain(|_, at| now - *at < STARTUP_GRACE.as_millis() as i64);
        if queried.contains_key(&key) {
            return false;
        }
        queried.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(state: Reported, plan: &str) -> CommandAck {
        CommandAck {
            result: AckResult::Done as i32,
            actual_state: state as i32,
            plan_hash: plan.into(),
            message: "m".into(),
            ..CommandAck::default()
        }
    }

    #[test]
    fn an_instance_the_node_does_not_run_is_ended() {
        let unknown = answer(Reported::Unspecified, "");
        assert_eq!(
            verdict(STOPPING, "p", "n", &unknown),
            Verdict::Finish(STOPPED, "node n does not run it".into())
        );
        assert!(matches!(
            verdict(STARTING, "p", "n", &unknown),
            Verdict::Finish(CRASHED, _)
        ));
        let other_plan = answer(Reported::Running, "older");
        assert!(matches!(
            verdict(PREPARING, "p", "n", &other_plan),
            Verdict::Finish(CRASHED, _)
        ));
    }

    #[test]
    fn the_nodes_state_settles_the_record() {
        assert!(matches!(
            verdict(STOPPING, "p", "n", &answer(Reported::Stopped, "p")),
            Verdict::Finish(STOPPED, _)
        ));
        assert!(matches!(
            verdict(STARTING, "p", "n", &answer(Reported::Crashed, "p")),
            Verdict::Finish(CRASHED, _)
        ));
        assert_eq!(
            verdict(STARTING, "p", "n", &answer(Reported::Running, "p")),
            Verdict::Advance(InstanceState::Running)
        );
        assert_eq!(
            verdict(PREPARING, "p", "n", &answer(Reported::Starting, "p")),
            Verdict::Advance(InstanceState::Starting)
        );
        assert_eq!(
            verdict(STARTING, "p", "n", &answer(Reported::Starting, "p")),
            Verdict::Wait
        );
        assert_eq!(
            verdict(STOPPING, "p", "n", &answer(Reported::Running, "p")),
            Verdict::Resend
        );
        assert_eq!(
            verdict(STOPPING, "p", "n", &answer(Reported::Stopping, "p")),
            Verdict::Kill
        );
    }

    #[test]
    fn a_recorded_halt_is_read_back() {
        let stop = doc! { "verb": "stop", "graceMs": 30_000_i64, "acked": true };
        assert_eq!(
            HaltRecord::from_doc(&stop),
            Some(HaltRecord {
                how: Halt::Stop { grace_s: 30 },
                acked: true
            })
        );
        let kill = doc! { "verb": "kill", "graceMs": 0_i64, "acked": false };
        assert_eq!(
            HaltRecord::from_doc(&kill),
            Some(HaltRecord {
                how: Halt::Kill,
                acked: false
            })
        );
        assert_eq!(Halt::Stop { grace_s: 2 }.grace_ms(), 2000);
    }
}
