//! Operator requests (start, stop, kill through the API, carried out under the group's lease)
//! and tearing a deleted group down.

use std::collections::HashSet;

use mongodb::bson::{Document, doc};
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, ScalingMode};
use prexor_model::groups::GROUPS;
use prexor_model::instances::InstanceRequest;
use prexor_store::Write;
use tracing::Instrument;

use super::{GROUP_STATE, Groups, Halt, INSTANCE_REQUESTS, Instance, STOPPING, Snapshot};

impl Groups {
    /// Carries out the operators' requests for this group's instances: stop and kill (a STATIC
    /// or DYNAMIC group then replaces the instance, i.e. restarts it), start (MANUAL groups, up
    /// to `maxInstances`). A request is deleted once done or moot.
    pub(super) async fn operator_requests(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &Lease,
        instances: &mut Vec<Instance>,
        snap: &Snapshot,
    ) -> anyhow::Result<()> {
        for document in snap.requests.get(name).into_iter().flatten() {
            // An unreadable request stays (every tick says so); the group's others go on.
            let request: InstanceRequest =
                match prexor_model::decode(INSTANCE_REQUESTS, Document::clone(document)) {
                    Ok(request) => request,
                    Err(err) => {
                        tracing::warn!(group = name, "{err}; skipped");
                        continue;
                    }
                };
            // Carried out in the trace of the operator's request that asked for it, linked to
            // this tick (docs/observability.md, "Traces").
            let span = tracing::info_span!(
                "scheduler.request",
                group = name,
                request = %request.id,
                action = %request.action,
                instance = request.instance.as_deref().unwrap_or_default(),
                done = tracing::field::Empty,
            );
            prexor_telemetry::trace::adopt(&span, prexor_telemetry::trace::from_document(document));
            let done = self
                .operator_request(name, spec, revision, lease, instances, snap, &request)
                .instrument(span.clone())
                .await?;
            span.record("done", done);
        }
        Ok(())
    }

    /// Carries out one operator request; whether it is done (and deleted) or stays for the next
    /// tick.
    #[allow(clippy::too_many_arguments)]
    async fn operator_request(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: i64,
        lease: &Lease,
        instances: &mut Vec<Instance>,
        snap: &Snapshot,
        request: &InstanceRequest,
    ) -> anyhow::Result<bool> {
        let players = &snap.players;
        let id = request.id.as_str();
        let target = request.instance.as_deref().unwrap_or_default();
        let by = match request.by.as_str() {
            "" => "an operator",
            by => by,
        };
        let done = match request.action.as_str() {
            "drain" => {
                // A node drain: the instance leaves like a surplus one (draining first).
                match instances.iter().find(|i| i.id == target && i.is_active()) {
                    Some(instance) if instance.state == STOPPING => true,
                    Some(instance) => {
                        let players = players.get(target).copied().unwrap_or(0);
                        self.retire(name, spec, lease, instance, players, by)
                            .await?
                    }
                    None => true,
                }
            }
            action @ ("stop" | "kill") => {
                match instances.iter().find(|i| i.id == target && i.is_active()) {
                    Some(instance) if instance.state == STOPPING && action == "stop" => true,
                    Some(instance) => {
                        let how = if action == "kill" {
                            Halt::Kill
                        } else {
                            Halt::Stop {
                                grace_s: spec.stop_grace_seconds,
                            }
                        };
                        self.stop(
                            name,
                            lease,
                            instance,
                            how,
                            &format!("{action} requested by {by}"),
                        )
                        .await?
                    }
                    None => true,
                }
            }
            "start" => {
                let active = instances.iter().filter(|i| i.is_active()).count() as u32;
                if spec.scaling != ScalingMode::Manual || active >= spec.max_instances {
                    tracing::info!(
                        group = name,
                        active,
                        "manual start not possible; request dropped"
                    );
                    true
                } else {
                    let taken: HashSet<&str> = instances
                        .iter()
                        .filter(|i| i.is_active())
                        .map(|i| i.id.as_str())
                        .collect();
                    let instance_id = (1..)
                        .map(|k| format!("{name}-{k}"))
                        .find(|candidate| !taken.contains(candidate.as_str()))
                        .expect("an unused name");
                    let attempt = instances
                        .iter()
                        .find(|i| i.id == instance_id)
                        .map_or(0, |i| i.attempt)
                        + 1;
                    match self
                        .place(name, spec, revision, &instance_id, attempt, lease, None)
                        .await?
                    {
                        Some(mut placed) => {
                            self.dispatch_all(name, lease, vec![&mut placed]).await?;
                            instances.retain(|i| i.id != instance_id);
                            instances.push(placed);
                            true
                        }
                        // No node fits now: the request stays for the next tick.
                        None => false,
                    }
                }
            }
            other => {
                tracing::warn!(
                    group = name,
                    request = id,
                    "unknown operator request {other:?}; dropped"
                );
                true
            }
        };
        if done {
            self.write(
                lease,
                vec![Write::delete_one(INSTANCE_REQUESTS, doc! { "_id": id })],
            )
            .await?;
        }
        Ok(done)
    }

    /// A group marked for deletion: stop every instance, then remove the group's records.
    pub(super) async fn tear_down(
        &self,
        name: &str,
        spec: &GroupSpec,
        lease: &Lease,
        instances: &[Instance],
    ) -> anyhow::Result<()> {
        let active: Vec<&Instance> = instances.iter().filter(|i| i.is_active()).collect();
        let how = Halt::Stop {
            grace_s: spec.stop_grace_seconds,
        };
        let halts = active
            .iter()
            .filter(|i| i.state != STOPPING)
            .map(|i| (*i, how, "group deleted".to_owned()))
            .collect();
        self.halt_all(name, lease, halts).await?;
        if !active.is_empty() {
            return Ok(());
        }
        self.write(
            lease,
            vec![
                Write::delete_one(GROUPS, doc! { "_id": name, "deleting": true }),
                Write::delete_one(GROUP_STATE, doc! { "_id": name }),
            ],
        )
        .await?;
        tracing::info!(group = name, "group deleted");
        self.events
            .publish("GROUP_DELETED", name, serde_json::json!({}))
            .await;
        Ok(())
    }
}
