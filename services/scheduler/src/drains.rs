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
use prexor_proto::v1::{AckResult, Command, ShutdownNode};
use prexor_serve::Gateways;
use prexor_store::{Store, Write};

use crate::groups::{INSTANCE_REQUESTS, INSTANCES, NODES};

pub const NODE_DRAINS: &str = "node_drains";
/// The workflow name of a node's drain (`workflow:drain-<node>`).
pub const DRAIN_PREFIX: &str = "drain-";

const PENDING: &str = "PENDING";
const DRAINING: &str = "DRAINING";
const DONE: &str = "DONE";

/// Drains in these states are work for a scheduler.
pub fn is_open(drain: &Document) -> bool {
    matches!(drain.get_str("state"), Ok(PENDING | DRAINING))
}

pub struct Drains {
    pub store: Store,
    pub gateways: Gateways,
    pub events: EventLog,
}

impl Drains {
    /// One step of `node`'s drain under `lease`.
    pub async fn step(&self, node: &str, lease: &Lease, drain: &Document) -> anyhow::Result<()> {
        let fence = lease.fence();
        let now = now_ms();
        if drain.get_str("state") == Ok(PENDING) {
            self.store
                .fenced_write(
                    &fence,
                    vec![
                        Write::update_one(
                            NODE_DRAINS,
                            doc! { "_id": node, "state": PENDING },
                            doc! { "$set": { "state": DRAINING, "startedAtMs": now, "holder": lease.scope().to_string() } },
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
        let started = drain.get_i64("startedAtMs").unwrap_or(now);
        let timeout_ms = drain.get_i64("timeoutMs").unwrap_or(600_000);
        let active = self
            .store
            .find_all(
                INSTANCES,
                "listing the node's instances",
                doc! { "nodeId": node, "state": { "$nin": ["STOPPED", "CRASHED"], "$exists": true } },
            )
            .await?;
        if active.is_empty() {
            return self.finish(node, lease, drain).await;
        }
        let escalate = now > started + timeout_ms;
        let by = format!(
            "drain of node {node} (requested by {})",
            drain.get_str("requestedBy").unwrap_or("an operator")
        );
        let mut writes = Vec::new();
        for instance in &active {
            let (Ok(id), Ok(group)) = (instance.get_str("_id"), instance.get_str("group")) else {
                continue;
            };
            // Each instance leaves like a surplus one (draining while players are online);
            // past the drain's timeout whatever is left is killed.
            let action = if escalate {
                "kill"
            } else if instance.get_str("state") == Ok("STOPPING") {
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
    async fn finish(&self, node: &str, lease: &Lease, drain: &Document) -> anyhow::Result<()> {
        if drain.get_bool("shutdown").unwrap_or(false) {
            self.update_draining(
                node,
                lease,
                doc! { "shutdownRequestedAtMs": now_ms(), "shutdownToken": lease.token() as i64 },
            )
            .await?;
            if !lease.is_valid() {
                return Ok(());
            }
            let command = Command {
                command_id: format!("shutdown:{node}:{}", lease.token()),
                scope: lease.scope().to_string(),
                fence_token: lease.token(),
                action: Some(Action::Shutdown(ShutdownNode {
                    grace_period_ms: 30_000,
                })),
            };
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
                            doc! { "_id": node, "state": "ONLINE" },
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
            doc! { "state": DONE, "finishedAtMs": now_ms() },
        )
        .await?;
        tracing::info!(node, "drain done");
        self.events
            .publish(
                "NODE_DRAINED",
                node,
                serde_json::json!({ "shutdown": drain.get_bool("shutdown").unwrap_or(false) }),
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
                        doc! { "_id": node, "state": DRAINING },
                        doc! { "$set": set },
                    )
                    .require_match(),
                ],
            )
            .await?;
        Ok(())
    }
}
