//! Dispatching persisted plans: the start commands of one group's tick go out together (a
//! frozen or unreachable gateway costs one deadline, not one per instance), then the acks are
//! recorded under the group's fence (every plan the nodes took in one write, the rest in turn). A node that cannot take a plan yet gets it again
//! after a backoff (the start-retry intent), at most [`START_RETRIES`] times.

use futures::future::join_all;
use mongodb::bson::{Bson, Document, doc};
use prexor_coord::Lease;
use prexor_domain::{ConfigChange as Change, InstanceState, now_ms};
use prexor_model::instances::INSTANCE_PLANS;
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{
    AckResult, CommandAck, CompositionPlan, ConfigRule, SetKey, StartInstance, TemplateLayer,
    TextReplace,
};
use prexor_store::{StoreError, Write};

use crate::commands::fenced_command;

use super::{
    CRASHED, CRASHES, Groups, INSTANCES, Instance, PORT_RESERVATIONS, PREPARED, SCHEDULED,
};

/// Dispatches of one plan that a node could not take (TRANSIENT, or no gateway reached it)
/// before the instance is given up and placed again.
const START_RETRIES: i64 = 8;
/// What a daemon's TRANSIENT ack says when a foreign process holds the plan's port.
const PORT_IN_USE: &str = "in use on this host";
/// A prepared instance taken from the warm pool whose node took the start is sent it again
/// after this long if its node has not reported it starting by then.
const PREPARED_START_AGAIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a port that a foreign process holds stays out of placement on that node.
const PORT_BLOCK: std::time::Duration = std::time::Duration::from_secs(60);

/// What the answer to one start command means for its instance.
#[derive(Debug, PartialEq)]
enum Dispatched {
    /// The node has the plan (now or already).
    Taken,
    /// The node cannot take it yet, or no gateway reached it: dispatched again after a backoff
    /// (never sooner than `hint_ms`).
    NotYet { hint_ms: u64, reason: String },
    /// A process outside PrexorCloud holds the plan's port on that host.
    PortHeld(String),
    /// The node refused the plan for good.
    Refused(String),
    /// The node has seen a newer token of the group: this holder is deposed.
    StaleFence(String),
}

impl Dispatched {
    fn of<E: std::fmt::Display>(outcome: Result<CommandAck, E>) -> Dispatched {
        let ack = match outcome {
            Ok(ack) => ack,
            Err(reason) => {
                return Dispatched::NotYet {
                    hint_ms: 0,
                    reason: reason.to_string(),
                };
            }
        };
        match ack.result() {
            AckResult::Done | AckResult::Already => Dispatched::Taken,
            AckResult::Transient if ack.message.contains(PORT_IN_USE) => {
                Dispatched::PortHeld(ack.message)
            }
            AckResult::Transient => Dispatched::NotYet {
                hint_ms: u64::from(ack.retry_after_ms),
                reason: ack.message,
            },
            AckResult::Permanent | AckResult::Unspecified => Dispatched::Refused(ack.message),
            AckResult::StaleFence => Dispatched::StaleFence(ack.message),
        }
    }
}

impl Groups {
    /// The plan persisted for `instance` under its current plan hash (`instance_plans`).
    pub(super) async fn persisted_plan(
        &self,
        instance: &Instance,
    ) -> Result<Option<Document>, StoreError> {
        let found = self
            .store
            .find_all(
                INSTANCE_PLANS,
                "reading an instance's plan",
                doc! { "_id": &instance.id, "planHash": &instance.plan_hash },
            )
            .await?;
        Ok(found
            .into_iter()
            .next()
            .and_then(|d| d.get_document("plan").ok().cloned()))
    }

    /// Sends each instance's persisted plan to its node, all at once, and records what each ack
    /// says.
    pub(super) async fn dispatch_all(
        &self,
        group: &str,
        lease: &Lease,
        instances: Vec<&mut Instance>,
    ) -> anyhow::Result<()> {
        let mut ready = Vec::new();
        let mut unresolved = Vec::new();
        for instance in instances {
            match &instance.plan {
                Some(plan) => match composition_plan(group, instance, plan) {
                    Ok(plan) => {
                        let command = fenced_command(
                            lease,
                            format!("start:{}:{}", instance.id, instance.plan_hash),
                            Action::Start(StartInstance { plan: Some(plan) }),
                        );
                        ready.push((instance, command));
                    }
                    Err(why) => unresolved.push((instance, why)),
                },
                None => tracing::warn!(
                    instance = %instance.id,
                    plan_hash = %instance.plan_hash,
                    "no persisted plan for this placement; not dispatching it"
                ),
            }
        }
        // A holder paused since it read the snapshot sends nothing once its lease is gone (and
        // the gateways refuse a token below the group's mark anyway).
        if !lease.is_valid() {
            return Ok(());
        }
        // A plan whose variables cannot be read here (a secret's source is missing) is not
        // sent: the placement ends, saying which source (never a value), and is placed again.
        for (instance, why) in unresolved {
            let reason = format!("not started: {why}");
            self.finish(lease, instance, CRASHED, &reason).await?;
        }
        if ready.is_empty() {
            return Ok(());
        }
        let outcomes = join_all(
            ready
                .iter()
                .map(|(instance, command)| self.gateways.send(&instance.node, command.clone())),
        )
        .await;
        // The usual answers (the node took the plan; it cannot yet) are recorded for all of
        // them in one write each, the rarer ones in turn.
        let mut taken = Vec::new();
        let mut starting = Vec::new();
        let mut deferred = Vec::new();
        for ((instance, _), outcome) in ready.into_iter().zip(outcomes) {
            match Dispatched::of(outcome) {
                Dispatched::Taken => {
                    if instance.state == SCHEDULED {
                        taken.push(instance);
                    } else if instance.state == PREPARED {
                        starting.push(instance);
                    }
                }
                Dispatched::NotYet { hint_ms, reason } => {
                    tracing::info!(instance = %instance.id, node = %instance.node, "dispatch deferred: {reason}");
                    deferred.push((instance, hint_ms, reason));
                }
                Dispatched::PortHeld(message) => {
                    // Something outside PrexorCloud holds the port on that host: give the slot
                    // up, keep the port off limits there for a while, place again elsewhere.
                    let reason = format!("not started: {message}");
                    self.finish(lease, instance, CRASHED, &reason).await?;
                    self.block_port(&instance.node, instance.port).await?;
                }
                Dispatched::Refused(message) => {
                    let reason = format!("the node refused the plan: {message}");
                    self.finish(lease, instance, CRASHED, &reason).await?;
                }
                Dispatched::StaleFence(message) => anyhow::bail!(
                    "node {} refused group {group}'s token {}: {message}",
                    instance.node,
                    lease.token(),
                ),
            }
        }
        self.set_states(lease, taken, InstanceState::Preparing)
            .await?;
        self.start_again_later(lease, starting).await?;
        self.retry_later(lease, deferred).await
    }

    /// Prepared instances whose node took the start: sent it again only if they have not
    /// reported starting after [`PREPARED_START_AGAIN`] (one write for all of them).
    async fn start_again_later(
        &self,
        lease: &Lease,
        instances: Vec<&mut Instance>,
    ) -> anyhow::Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let at = now_ms() + PREPARED_START_AGAIN.as_millis() as i64;
        let writes = instances
            .iter()
            .map(|i| {
                Write::update_one(
                    INSTANCES,
                    doc! { "_id": &i.id, "planHash": &i.plan_hash, "state": PREPARED },
                    doc! { "$set": { "nextAttemptAtMs": at } },
                )
            })
            .collect();
        self.write(lease, writes).await?;
        for instance in instances {
            instance.next_attempt_at_ms = at;
        }
        Ok(())
    }

    /// Keeps `node:port` out of placement for a minute (a foreign process holds it).
    async fn block_port(&self, node: &str, port: u16) -> anyhow::Result<()> {
        let blocked = self
            .store
            .bounded(
                "blocking a port",
                self.store.documents(PORT_RESERVATIONS).insert_one(doc! {
                    "_id": format!("{node}:{port}"),
                    "nodeId": node,
                    "port": i64::from(port),
                    "blockedUntilMs": now_ms() + PORT_BLOCK.as_millis() as i64,
                }),
            )
            .await;
        match blocked {
            Ok(_) => Ok(()),
            Err(err) if err.is_duplicate_key() => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The start-retry intent: the plan is dispatched again after a backoff (doubling from 1 s,
    /// at most 30 s, never sooner than the daemon's hint), at most [`START_RETRIES`] times; then
    /// the instance is given up as CRASHED with a crash record (so a group whose instances never
    /// start pauses like a crash loop) and placed again as a new attempt. `deferred` holds each
    /// instance with the daemon's hint (ms) and the reason; the retries are recorded in one write.
    async fn retry_later(
        &self,
        lease: &Lease,
        deferred: Vec<(&mut Instance, u64, String)>,
    ) -> anyhow::Result<()> {
        let mut writes = Vec::new();
        let mut again = Vec::new();
        for (instance, hint_ms, reason) in deferred {
            let retries = instance.dispatch_retries + 1;
            if retries > START_RETRIES {
                self.give_up_start(lease, instance, &reason).await?;
                continue;
            }
            let at = now_ms() + start_backoff_ms(retries, hint_ms) as i64;
            writes.push(Write::update_one(
                INSTANCES,
                doc! { "_id": &instance.id, "planHash": &instance.plan_hash },
                doc! { "$set": { "nextAttemptAtMs": at, "dispatchRetries": retries, "lastDispatchError": reason } },
            ));
            again.push((instance, at, retries));
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.write(lease, writes).await?;
        for (instance, at, retries) in again {
            instance.next_attempt_at_ms = at;
            instance.dispatch_retries = retries;
        }
        Ok(())
    }

    /// The start retries are used up: a crash record, and the instance ended as CRASHED.
    async fn give_up_start(
        &self,
        lease: &Lease,
        instance: &mut Instance,
        reason: &str,
    ) -> anyhow::Result<()> {
        let detail = format!("not started after {START_RETRIES} retries: {reason}");
        self.write(
            lease,
            vec![
                Write::update_one(
                    CRASHES,
                    doc! { "_id": format!("{}@{}", instance.id, instance.plan_hash) },
                    doc! { "$setOnInsert": {
                        "instanceId": &instance.id,
                        "nodeId": &instance.node,
                        "group": &instance.group,
                        "planHash": &instance.plan_hash,
                        "exitCode": Bson::Null,
                        "detail": &detail,
                        "atMs": now_ms(),
                    } },
                )
                .upsert(),
            ],
        )
        .await?;
        metrics::counter!("prexor_scheduler_start_retries_exhausted_total").increment(1);
        self.finish(lease, instance, CRASHED, &detail).await
    }
}

/// The wait before the `retries`-th dispatch retry: doubling from 1 s to at most 30 s, never
/// sooner than the daemon's hint.
fn start_backoff_ms(retries: i64, hint_ms: u64) -> u64 {
    let doubling = 1000u64 << (retries.max(1) - 1).min(5);
    doubling.min(30_000).max(hint_ms)
}

/// The start command's plan: the persisted plan with its variables' values (secrets read now).
fn composition_plan(
    group: &str,
    instance: &Instance,
    plan: &Document,
) -> Result<CompositionPlan, String> {
    let strings = |key: &str| -> Vec<String> {
        plan.get_array(key)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(CompositionPlan {
        instance_id: instance.id.clone(),
        group: group.to_string(),
        plan_hash: instance.plan_hash.clone(),
        command: strings("command"),
        env: plan
            .get_document("env")
            .map(|e| {
                e.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        port: u32::from(instance.port),
        memory_mb: instance.memory_mb,
        files: Vec::new(),
        layers: plan
            .get_array("layers")
            .map(|a| {
                a.iter()
                    .filter_map(|l| {
                        let l = l.as_document()?;
                        Some(TemplateLayer {
                            hash: l.get_str("hash").ok()?.to_string(),
                            name: l.get_str("name").unwrap_or_default().to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        config_rules: plan
            .get_array("configRules")
            .map(|rules| rules.iter().filter_map(config_rule).collect())
            .unwrap_or_default(),
        variables: super::variables::resolve(plan)?.into_iter().collect(),
        prepare_only: instance.prepare_only,
    })
}

/// A persisted config rule as the daemon takes it (one that no longer reads as a rule, written
/// by another version, is left out rather than sent wrong).
fn config_rule(stored: &Bson) -> Option<ConfigRule> {
    use prexor_proto::v1::config_rule::Change as Sent;
    let rule: prexor_domain::ConfigRule = mongodb::bson::from_bson(stored.clone()).ok()?;
    let text = |t: &prexor_domain::TextReplace| TextReplace {
        find: t.find.clone(),
        with: t.with.clone(),
    };
    let change = match rule.change()? {
        Change::Set(format, set) => Sent::Set(SetKey {
            format: format.as_str().to_owned(),
            key: set.key.clone(),
            value_json: serde_json::to_string(&set.value).ok()?,
        }),
        Change::Replace(replace) => Sent::Replace(text(replace)),
        Change::Regex(regex) => Sent::Regex(text(regex)),
    };
    Some(ConfigRule {
        file: rule.file,
        change: Some(change),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_to_a_start_is_classified_once() {
        let ack = |result: AckResult, message: &str| -> Result<CommandAck, String> {
            Ok(CommandAck {
                result: result as i32,
                message: message.into(),
                retry_after_ms: 1500,
                ..Default::default()
            })
        };
        assert_eq!(Dispatched::of(ack(AckResult::Done, "")), Dispatched::Taken);
        assert_eq!(
            Dispatched::of(ack(AckResult::Already, "")),
            Dispatched::Taken
        );
        assert_eq!(
            Dispatched::of(ack(AckResult::Transient, "unpacking layers")),
            Dispatched::NotYet {
                hint_ms: 1500,
                reason: "unpacking layers".into()
            }
        );
        let held = format!("port 30001 {PORT_IN_USE}");
        assert_eq!(
            Dispatched::of(ack(AckResult::Transient, &held)),
            Dispatched::PortHeld(held)
        );
        assert_eq!(
            Dispatched::of(ack(AckResult::Permanent, "no such layer")),
            Dispatched::Refused("no such layer".into())
        );
        assert_eq!(
            Dispatched::of(ack(AckResult::StaleFence, "token 3 < 4")),
            Dispatched::StaleFence("token 3 < 4".into())
        );
        assert_eq!(
            Dispatched::of(Err::<CommandAck, _>("no gateway reached node n1")),
            Dispatched::NotYet {
                hint_ms: 0,
                reason: "no gateway reached node n1".into()
            }
        );
    }

    #[test]
    fn start_retries_back_off_and_honour_the_hint() {
        let waits: Vec<u64> = (1..=8).map(|n| start_backoff_ms(n, 0)).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(start_backoff_ms(1, 5000), 5000);
    }
}
