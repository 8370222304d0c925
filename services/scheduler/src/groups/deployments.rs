//! Rolling deployments (`deployments`, created through the API), driven by the group's lease
//! holder: instances not running the deployment's target spec are stopped a batch at a time,
//! never leaving more than `maxUnavailable` of the group's instances not RUNNING, and the group
//! places them again from its current spec. Progress is derived from the instances' spec hashes,
//! so a holder that takes over mid-rollout never restarts an instance that is already updated.

use prexor_model::workflows::DeploymentState;
use prexor_model::workflows::deployments::DeploymentRecord;
use std::collections::BTreeMap;

use mongodb::bson::{Document, doc};
use prexor_domain::canary::Strategy;
use prexor_domain::{GroupSpec, now_ms};
use prexor_store::Write;

use super::{Groups, Halt, Instance, RUNNING, Snapshot};

pub use prexor_model::workflows::DEPLOYMENTS;

/// A rolling deployment whose progress (`updated` of `total`) has not changed for longer than
/// this is stalled (`prexor_scheduler_deployments_stalled`, docs/observability.md).
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl Snapshot {
    /// How many rolling deployments of the held groups are stalled ([`STALLED_AFTER`]): their
    /// last recorded progress (`updatedAtMs`, set by [`Groups::roll`] when it changes and by the
    /// api on pause, resume and rollback; `createdAtMs` before any) is older than the bound.
    pub(crate) fn deployments_stalled(&self, now_ms: i64) -> usize {
        let bound = STALLED_AFTER.as_millis() as i64;
        self.deployments
            .values()
            .filter(|deployment| {
                let last = deployment
                    .get_i64("updatedAtMs")
                    .or_else(|_| deployment.get_i64("createdAtMs"))
                    .unwrap_or(now_ms);
                now_ms - last > bound
            })
            .count()
    }
}

/// The span of a step of `deployment` of group `name`, linked to the operator's request that
/// created (or last changed) the deployment (docs/observability.md, "Traces").
pub(super) fn deployment_span(name: &str, deployment: &Document) -> tracing::Span {
    let span = tracing::info_span!(
        "scheduler.deployment",
        group = name,
        deployment = deployment.get_str("_id").unwrap_or_default(),
    );
    prexor_telemetry::trace::link(&span, &prexor_telemetry::trace::from_document(deployment));
    span
}

impl Groups {
    /// One step of `deployment` (state ROLLING) of group `name` (at `revision`), in
    /// [`deployment_span`]; a CANARY deployment whose gate has not passed goes through
    /// [`Groups::canary_step`] instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn roll(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &prexor_coord::Lease,
        deployment: &Document,
        active: &BTreeMap<String, &Instance>,
        wanted: &[String],
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        // An unreadable deployment is not rolled (every tick says so); the group goes on.
        let deployment: DeploymentRecord =
            match prexor_model::decode(DEPLOYMENTS, deployment.clone()) {
                Ok(deployment) => deployment,
                Err(err) => {
                    tracing::warn!(group = name, "{err}; skipped");
                    return Ok(());
                }
            };
        let id = deployment.id.as_str();
        let target = deployment.target_spec_hash.as_str();
        if spec.hash() != target {
            // The API writes the spec first, then points the deployment at it (rollback): wait.
            tracing::debug!(
                group = name,
                deployment = id,
                "the group's spec is not the deployment's target yet"
            );
            return Ok(());
        }
        if let Some(gate) = deployment.canary
            && deployment.strategy == Strategy::Canary
            && !deployment.rolled_back
            && deployment.canary_passed_at_ms.is_none()
        {
            return self
                .canary_step(
                    name,
                    spec,
                    revision,
                    lease,
                    &deployment,
                    gate,
                    active,
                    wanted,
                    snap,
                )
                .await;
        }
        let batch = deployment.batch_size.max(1) as usize;
        let max_unavailable = deployment.max_unavailable.max(1) as usize;
        let running = |n: &String| active.get(n).is_some_and(|i| i.state == RUNNING);
        let updated = wanted
            .iter()
            .filter(|n| running(n) && active.get(*n).is_some_and(|i| i.spec_hash == target))
            .count();
        let unavailable = wanted.iter().filter(|n| !running(n)).count();
        let outdated: Vec<&Instance> = active
            .values()
            .copied()
            .filter(|i| i.spec_hash != target && i.state == RUNNING && wanted.contains(&i.id))
            .collect();
        let budget = max_unavailable.saturating_sub(unavailable).min(batch);
        let how = Halt::Stop {
            grace_s: spec.stop_grace_seconds,
        };
        let halts = outdated
            .iter()
            .take(budget)
            .map(|i| (*i, how, format!("deployment {id}")))
            .collect();
        self.halt_all(name, lease, halts).await?;
        let total = wanted.len();
        let stale_left = active.values().any(|i| i.spec_hash != target);
        let done = updated == total && !stale_left;
        let recorded = (
            deployment.updated.unwrap_or(-1),
            deployment.total.unwrap_or(-1),
        );
        if recorded == (updated as i64, total as i64) && !done {
            return Ok(());
        }
        let mut set =
            doc! { "updated": updated as i64, "total": total as i64, "updatedAtMs": now_ms() };
        if done {
            set.insert("state", DeploymentState::Done);
            set.insert("finishedAtMs", now_ms());
        }
        let writes = vec![
            Write::update_one(
                DEPLOYMENTS,
                doc! { "_id": id, "state": DeploymentState::Rolling },
                doc! { "$set": set },
            )
            .require_match(),
        ];
        // Paused or rolled back through the API in the meantime: the next tick sees it.
        if !self.write_unless_changed(lease, writes).await? {
            return Ok(());
        }
        let kind = if done {
            "DEPLOYMENT_DONE"
        } else {
            "DEPLOYMENT_PROGRESS"
        };
        tracing::info!(
            group = name,
            deployment = id,
            updated,
            total,
            done,
            "deployment progress"
        );
        self.events
            .publish(
                kind,
                id,
                serde_json::json!({ "group": name, "updated": updated, "total": total }),
            )
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_deployment_without_progress_for_the_bound_is_stalled() {
        let now = 100_000_000;
        let bound = STALLED_AFTER.as_millis() as i64;
        let snapshot = Snapshot {
            deployments: [
                (
                    "moving",
                    doc! { "createdAtMs": now - 2 * bound, "updatedAtMs": now - 1_000 },
                ),
                (
                    "stuck",
                    doc! { "createdAtMs": now - 3 * bound, "updatedAtMs": now - bound - 1 },
                ),
                ("new-and-stuck", doc! { "createdAtMs": now - bound - 1 }),
                ("new", doc! { "createdAtMs": now - 1_000 }),
            ]
            .into_iter()
            .map(|(group, d)| (group.to_owned(), Arc::new(d)))
            .collect(),
            ..Snapshot::default()
        };
        assert_eq!(snapshot.deployments_stalled(now), 2);
    }
}
