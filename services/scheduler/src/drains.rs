//! Node drains: durable intents (`node_drains`, one per node, created through the API) carried
//! out under the workflow lease `workflow:drain-<node>`, step by step, each step a fenced write,
//! so a new holder resumes where the store says the drain is.
//!
//! PENDING → DRAINING: the node is cordoned (no new placements). While DRAINING, every active
//! instance on the node gets a stop request for its group's lease holder (which stops it, and a
//! STATIC group places it again on another node); past the drain's timeout the requests become
//! kills. With nothing active left on the node: DONE (node cordoned), or, if asked, the daemon is
//! told to shut down first. An operator can cancel (CANCELLED) through the API.

use mongodb::bson::{Document, doc};
use prexor_coord::{EventLog, Lease};
use prexor_domain::now_ms;
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{AckResult, ShutdownNode};
use prexor_serve::Gateways;
use prexor_store::{Store, Write};

use prexor_model::instances::{InstanceRecord, InstanceState};
use prexor_model::nodes::{DrainRecord, DrainState, NodeState};

use crate::commands::fenced_command;
use crate::groups::{INSTANCE_REQUESTS, INSTANCES, NODES};

pub use prexor_model::nodes::NODE_DRAINS;

pub struct Drains {
    pub store: Store,
    pub gateways: Gateways,
    pub events: EventLog,
}

impl Drains {
    /// One step of `node`'s drain under `lease`.
    pub async fn step(&self, node: &str, lease: &Lease, drain: &Document) -> anyhow::Result<()> {
        // An unreadable drain is left as it is (every tick says so) rather than carried out
        // from guesses; the node's other work goes on.
        let drain: DrainRecord = match prexor_model::decode(NODE_DRAINS, drain.clone()) {
            Ok(drain) => drain,
            Err(err) => {
                tracing::warn!(node, "{err}; the drain waits");
                return Ok(());
            }
        };
        let fence = lease.fence();
        let now = now_ms();
        if drain.state == DrainState::Pending {
            self.store
                .fenced_write(
                    &fence,
                    vec![
                        Write::update_one(
                            NODE_DRAINS,
                            doc! { "_id": node, "state": DrainState::Pending },
                            doc! { "$set": { "state": DrainState::Draining, "startedAtMs": now, "holder": lease.scope().to_string() } },
                        )
                        .require_match(),
                        Write::update_one(
                            NODES,
                            doc! { "_id": node },
                            doc! { "$set": { "cordoned": true } },
                        ),
                    ],
                )
                .await?;
            tracing::info!(node, "drain started: node cordoned");
            self.events
                .publish("NODE_DRAIN_STARTED", node, serde_json::json!({}))
                .await;
        }
        let started = drain.started_at_ms.unwrap_or(now);
        let active: Vec<InstanceRecord> = prexor_model::decode_each(
            INSTANCES,
            self.store
                .find_all(
                    INSTANCES,
                    "listing the node's instances",
                    doc! { "nodeId": node, "state": prexor_model::instances::live_filter() },
                )
                .await?,
        );
        if active.is_empty() {
            return self.finish(node, lease, &drain).await;
        }
        let escalate = now > started + drain.timeout_ms;
        let requester = match drain.requested_by.as_str() {
            "" => "an operator",
            by => by,
        };
        let by = format!("drain of node {node} (requested by {requester})");
        let mut writes = Vec::new();
        for instance in &active {
            // No group, no holder to ask.
            if instance.group.is_empty() {
                continue;
            }
            let (id, group) = (&instance.id, &instance.group);
            // Each instance leaves like a surplus one (draining while players are online);
            // past the drain's timeout whatever is left is killed.
            let action = if escalate {
                "kill"
            } else if instance.state() == Some(InstanceState::Stopping) {
                continue;
            } else {
                "drain"
            };
            writes.push(
                Write::update_one(
                    INSTANCE_REQUESTS,
                    doc! { "_id": format!("{action}:{id}") },
                    doc! { "$set": { "group": group, "instance": id, "action": action, "by": &by, "atMs": now } },
                )
                .upsert(),
            );
        }
        if !writes.is_empty() {
            tracing::info!(
                node,
                instances = writes.len(),
                escalate,
                "drain: asking the groups' holders to stop the node's instances"
            );
            self.store.fenced_write(&fence, writes).await?;
        }
        Ok(())
    }

    /// Nothing runs on the node any more: shut its daemon down if asked (recorded on the drain
    /// by a fenced write before it is sent with the same token), then DONE.
    async fn finish(&self, node: &str, lease: &Lease, drain: &DrainRecord) -> anyhow::Result<()> {
        if drain.shutdown {
            self.update_draining(
                node,
                lease,
                doc! { "shutdownRequestedAtMs": now_ms(), "shutdownToken": lease.token() as i64 },
            )
            .await?;
            if !lease.is_valid() {
                return Ok(());
            }
            let command = fenced_command(
                lease,
                format!("shutdown:{node}:{}", lease.token()),
                Action::Shutdown(ShutdownNode {
                    grace_period_ms: 30_000,
                }),
            );
            match self.gateways.send(node, command).await {
                Ok(ack) if matches!(ack.result(), AckResult::Done | AckResult::Already) => {}
                Ok(ack) => {
                    tracing::warn!(node, "the daemon refused to shut down: {}", ack.message);
                    return Ok(());
                }
                Err(reason) => {
                    // An offline node is as shut down as it gets.
                    let online = self
                        .store
                        .find_all(
                            NODES,
                            "reading the node",
                            doc! { "_id": node, "state": NodeState::Online },
                        )
                        .await?;
                    if !online.is_empty() {
                        tracing::info!(node, "shutdown deferred: {reason}");
                        return Ok(());
                    }
                }
            }
        }
        self.update_draining(
            node,
            lease,
            doc! { "state": DrainState::Done, "finishedAtMs": now_ms() },
        )
        .await?;
        tracing::info!(node, "drain done");
        self.events
            .publish(
                "NODE_DRAINED",
                node,
                serde_json::json!({ "shutdown": drain.shutdown }),
            )
            .await;
        Ok(())
    }

    /// Sets fields of `node`'s drain while it is DRAINING (refused, and nothing written, once it
    /// is not).
    async fn update_draining(
        &self,
        node: &str,
        lease: &Lease,
        set: Document,
    ) -> anyhow::Result<()> {
        self.store
            .fenced_write(
                &lease.fence(),
                vec![
                    Write::update_one(
                        NODE_DRAINS,
                        doc! { "_id": node, "state": DrainState::Draining },
                        doc! { "$set": set },
                    )
                    .require_match(),
                ],
            )
            .await?;
        Ok(())
    }
}
