//! Canary deployments before their gate passes (docs/scheduling.md, "Canary deployments"): the
//! holder updates only the canaries, watches them (ready, and at least `minTps` in their last
//! report) and keeps the gate's state in the deployment record under the group's token — when
//! the canaries became healthy, when the gate passed — so a holder that takes over mid-canary
//! goes on from there. Past `timeoutSeconds` without passing, it rolls the deployment back, the
//! group's previous spec and the deployment in one fenced transaction.

use std::collections::BTreeMap;

use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::canary::CanaryGate;
use prexor_domain::{GroupSpec, now_ms};
use prexor_model::groups::GROUPS;
use prexor_model::workflows::DeploymentState;
use prexor_model::workflows::deployments::DeploymentRecord;
use prexor_store::Write;

use super::deployments::DEPLOYMENTS;
use super::snapshot::Reported;
use super::{Groups, Halt, Instance, RUNNING, Snapshot};

/// What the gate says now: healthy, and the state in words.
fn judge(
    gate: &CanaryGate,
    canaries: &[&Instance],
    wanted: usize,
    snap: &Snapshot,
    now: i64,
) -> (bool, String) {
    if canaries.len() < wanted {
        return (
            false,
            format!(
                "waiting for {wanted} canaries to run the new spec ({} running)",
                canaries.len()
            ),
        );
    }
    let mut failing = Vec::new();
    for canary in canaries {
        let report = snap.metrics.get(&canary.id);
        let tps = report.filter(|r| r.is_fresh(now)).and_then(|r| r.tps);
        match (report.is_some_and(|r| r.ready), tps) {
            (false, _) => failing.push(format!("{} has not reported ready", canary.id)),
            (true, None) => failing.push(format!(
                "{} has reported no TPS in the last {} s",
                canary.id,
                Reported::FRESH_MS / 1000
            )),
            (true, Some(tps)) if tps < gate.min_tps => failing.push(format!(
                "{} runs at {tps} TPS, below {}",
                canary.id, gate.min_tps
            )),
            _ => {}
        }
    }
    let names: Vec<&str> = canaries.iter().map(|c| c.id.as_str()).collect();
    if failing.is_empty() {
        (
            true,
            format!(
                "canaries {} ready at {} TPS or more; the rest rolls once that held for {} s",
                names.join(", "),
                gate.min_tps,
                gate.healthy_seconds
            ),
        )
    } else {
        (
            false,
            format!("canaries not healthy: {}", failing.join("; ")),
        )
    }
}

impl Groups {
    /// One step of CANARY deployment `deployment` (its gate not passed yet) of group `name`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn canary_step(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &Lease,
        deployment: &DeploymentRecord,
        gate: CanaryGate,
        active: &BTreeMap<String, &Instance>,
        wanted: &[String],
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        let id = deployment.id.as_str();
        let target = deployment.target_spec_hash.as_str();
        let now = now_ms();
        if now - deployment.created_at_ms >= i64::from(gate.timeout_seconds) * 1000 {
            let why = format!(
                "the canaries did not pass the gate within {} s ({})",
                gate.timeout_seconds,
                deployment.gate.as_deref().unwrap_or("no canary ran")
            );
            return self
                .canary_roll_back(name, revision, lease, deployment, &why)
                .await;
        }
        let count = (gate.instances as usize).clamp(1, wanted.len().max(1));
        let on_target: Vec<&Instance> = wanted
            .iter()
            .filter_map(|n| active.get(n).copied())
            .filter(|i| i.spec_hash == target)
            .collect();
        // Start canaries up to their count, within the deployment's batch and unavailability.
        let running = |n: &String| active.get(n).is_some_and(|i| i.state == RUNNING);
        let unavailable = wanted.iter().filter(|n| !running(n)).count();
        let budget = (deployment.max_unavailable.max(1) as usize)
            .saturating_sub(unavailable)
            .min(deployment.batch_size.max(1) as usize)
            .min(count.saturating_sub(on_target.len()));
        let how = Halt::Stop {
            grace_s: spec.stop_grace_seconds,
        };
        let halts = active
            .values()
            .copied()
            .filter(|i| i.spec_hash != target && i.state == RUNNING && wanted.contains(&i.id))
            .take(budget)
            .map(|i| (i, how, format!("deployment {id} (canary)")))
            .collect();
        self.halt_all(name, lease, halts).await?;

        let canaries: Vec<&Instance> = on_target
            .into_iter()
            .filter(|i| i.state == RUNNING)
            .collect();
        let (healthy, text) = judge(&gate, &canaries, count, snap, now);
        let since = healthy.then(|| deployment.gate_since_ms.unwrap_or(now));
        let passed = since.is_some_and(|s| now - s >= i64::from(gate.healthy_seconds) * 1000);
        let text = if passed {
            format!("passed: {text}")
        } else {
            text
        };
        if since == deployment.gate_since_ms && deployment.gate.as_deref() == Some(&text) {
            return Ok(());
        }
        let mut set = doc! { "gate": &text, "updatedAtMs": now };
        let mut update = doc! {};
        match since {
            Some(since) => {
                set.insert("gateSinceMs", since);
            }
            None => {
                update.insert("$unset", doc! { "gateSinceMs": "" });
            }
        }
        if passed {
            set.insert("canaryPassedAtMs", now);
        }
        update.insert("$set", set);
        let writes = vec![
            Write::update_one(
                DEPLOYMENTS,
                doc! { "_id": id, "state": DeploymentState::Rolling, "canaryPassedAtMs": { "$exists": false } },
                update,
            )
            .require_match(),
        ];
        // Paused or rolled back through the API meanwhile: the next tick sees it.
        if !self.write_unless_changed(lease, writes).await? {
            return Ok(());
        }
        tracing::info!(group = name, deployment = id, passed, gate = %text, "canary gate");
        if passed {
            self.events
                .publish(
                    "DEPLOYMENT_CANARY_PASSED",
                    id,
                    serde_json::json!({ "group": name, "gate": text }),
                )
                .await;
        }
        Ok(())
    }

    /// Rolls `deployment` back to the spec it started from: the group's spec (one revision on)
    /// and the deployment in one fenced transaction; nothing when either changed meanwhile.
    async fn canary_roll_back(
        &self,
        name: &str,
        revision: i64,
        lease: &Lease,
        deployment: &DeploymentRecord,
        why: &str,
    ) -> anyhow::Result<()> {
        let Some(from) = &deployment.from_spec else {
            tracing::warn!(group = name, deployment = %deployment.id, "the deployment records no spec to roll back to; left as it is");
            return Ok(());
        };
        let now = now_ms();
        let from_doc = mongodb::bson::to_document(from)?;
        let writes = vec![
            Write::update_one(
                GROUPS,
                doc! { "_id": name, "revision": revision, "deleting": { "$ne": true } },
                doc! { "$set": { "spec": from_doc, "revision": revision + 1, "updatedAtMs": now } },
            )
            .require_match(),
            Write::update_one(
                DEPLOYMENTS,
                doc! { "_id": &deployment.id, "state": DeploymentState::Rolling, "rolledBack": { "$ne": true } },
                doc! { "$set": {
                    "rolledBack": true,
                    "targetSpecHash": from.hash(),
                    "rolledBackBy": "canary gate",
                    "gate": format!("rolled back: {why}"),
                    "updatedAtMs": now,
                } },
            )
            .require_match(),
        ];
        // Changed meanwhile (through the API, or by a peer): the next tick sees it.
        if !self.write_unless_changed(lease, writes).await? {
            return Ok(());
        }
        tracing::warn!(group = name, deployment = %deployment.id, "canary deployment rolled back: {why}");
        self.events
            .publish(
                "DEPLOYMENT_ROLLED_BACK",
                &deployment.id,
                serde_json::json!({ "group": name, "by": "canary gate", "reason": why }),
            )
            .await;
        Ok(())
    }
}
