//! What the instance endpoints show: instance records (without the workload token's hash; the
//! plan with the token hidden) and crash records, as typed views.

use std::collections::BTreeMap;

use prexor_model::instances::{
    CrashRecord, InstanceHalt, InstancePlan, InstanceRecord, InstanceReported, PlanLayer,
};
use serde::Serialize;

/// An instance as the API shows it: its record without the workload token's hash; the plan
/// only in `GET /instances/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceView {
    pub(crate) id: String,
    pub(crate) group: String,
    pub(crate) node_id: String,
    /// The scheduler's state (`SCHEDULED`, `RUNNING`, `STOPPED`, ...).
    pub(crate) state: String,
    pub(crate) plan_hash: String,
    pub(crate) port: i64,
    pub(crate) memory_mb: i64,
    pub(crate) attempt: i64,
    /// The group revision it was placed from.
    pub(crate) revision: i64,
    pub(crate) spec_hash: String,
    pub(crate) next_attempt_at_ms: i64,
    pub(crate) scheduled_at_ms: i64,
    /// In its group's warm pool: prepared (or started) ahead, not one of the group's instances
    /// and not announced to players until a scale-up takes it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) warm: bool,
    /// Warm and prepared only: its server starts when the instance is taken.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) prepare_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dispatch_retries: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_dispatch_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) drain_until_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stop_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) halt: Option<InstanceHaltView>,
    /// Why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ended_at_ms: Option<i64>,
    /// What its node last reported about the current plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reported: Option<InstanceReportedView>,
    /// The plan of its current placement (`GET /instances/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plan: Option<InstancePlanView>,
}

impl InstanceView {
    /// Without the plan (lists).
    pub(crate) fn summary(record: InstanceRecord) -> InstanceView {
        InstanceView {
            id: record.id,
            group: record.group,
            node_id: record.node_id,
            state: record.state,
            plan_hash: record.plan_hash,
            port: record.port,
            memory_mb: record.memory_mb,
            attempt: record.attempt,
            revision: record.revision,
            spec_hash: record.spec_hash,
            next_attempt_at_ms: record.next_attempt_at_ms,
            scheduled_at_ms: record.scheduled_at_ms,
            warm: record.warm,
            prepare_only: record.prepare_only,
            state_at_ms: record.state_at_ms,
            dispatch_retries: record.dispatch_retries,
            last_dispatch_error: record.last_dispatch_error,
            drain_until_ms: record.drain_until_ms,
            stop_reason: record.stop_reason,
            halt: record.halt.map(InstanceHaltView::from),
            reason: record.reason,
            ended_at_ms: record.ended_at_ms,
            reported: record.reported.map(InstanceReportedView::from),
            plan: None,
        }
    }

    /// With `plan` (the instance's workload token in it hidden).
    pub(crate) fn detail(record: InstanceRecord, plan: Option<InstancePlan>) -> InstanceView {
        InstanceView {
            plan: plan.map(InstancePlanView::from),
            ..InstanceView::summary(record)
        }
    }
}

/// The halt sent to a STOPPING instance.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceHaltView {
    /// `stop` or `kill`.
    pub(crate) verb: String,
    pub(crate) grace_ms: i64,
    /// The node acknowledged it.
    pub(crate) acked: bool,
    /// The group lease token it was sent under.
    pub(crate) token: i64,
    pub(crate) at_ms: i64,
}

impl From<InstanceHalt> for InstanceHaltView {
    fn from(h: InstanceHalt) -> InstanceHaltView {
        InstanceHaltView {
            verb: h.verb,
            grace_ms: h.grace_ms,
            acked: h.acked,
            token: h.token,
            at_ms: h.at_ms,
        }
    }
}

/// What the instance's node reported.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceReportedView {
    /// The daemon's state (`RUNNING`, `CRASHED`, ...).
    pub(crate) state: String,
    pub(crate) plan_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<i64>,
    /// Null while the process has not exited.
    pub(crate) exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    /// The node's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) at_ms: Option<i64>,
    /// The gateway's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) received_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<String>,
}

impl From<InstanceReported> for InstanceReportedView {
    fn from(r: InstanceReported) -> InstanceReportedView {
        InstanceReportedView {
            state: r.state,
            plan_hash: r.plan_hash,
            node_id: r.node_id,
            pid: r.pid,
            port: r.port,
            exit_code: r.exit_code,
            detail: r.detail,
            at_ms: r.at_ms,
            received_at_ms: r.received_at_ms,
            seq: r.seq,
            epoch: r.epoch,
        }
    }
}

/// What the node runs for the instance.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstancePlanView {
    group: String,
    command: Vec<String>,
    /// `PREXOR_INSTANCE_TOKEN` is shown as `(hidden)`.
    env: BTreeMap<String, String>,
    port: i64,
    memory_mb: i64,
    /// Template layers, then module layers.
    layers: Vec<PlanLayerView>,
    instance: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PlanLayerView {
    hash: String,
    name: String,
}

impl From<InstancePlan> for InstancePlanView {
    fn from(mut plan: InstancePlan) -> InstancePlanView {
        if let Some(token) = plan.env.get_mut("PREXOR_INSTANCE_TOKEN") {
            "(hidden)".clone_into(token);
        }
        InstancePlanView {
            group: plan.group,
            command: plan.command,
            env: plan.env,
            port: plan.port,
            memory_mb: plan.memory_mb,
            layers: plan
                .layers
                .into_iter()
                .map(|PlanLayer { hash, name }| PlanLayerView { hash, name })
                .collect(),
            instance: plan.instance,
        }
    }
}

/// A crash of an instance (one per plan).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CrashView {
    /// `<instance>@<plan hash>`.
    pub(crate) id: String,
    pub(crate) instance_id: String,
    pub(crate) node_id: String,
    pub(crate) group: String,
    pub(crate) plan_hash: String,
    /// Null when the process never exited (it never started).
    pub(crate) exit_code: Option<i32>,
    /// The last console lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_tail: Option<Vec<String>>,
    pub(crate) detail: String,
    pub(crate) at_ms: i64,
    /// The node's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reported_at_ms: Option<i64>,
}

impl From<CrashRecord> for CrashView {
    fn from(c: CrashRecord) -> CrashView {
        CrashView {
            id: c.id,
            instance_id: c.instance_id,
            node_id: c.node_id,
            group: c.group,
            plan_hash: c.plan_hash,
            exit_code: c.exit_code,
            log_tail: c.log_tail,
            detail: c.detail,
            at_ms: c.at_ms,
            reported_at_ms: c.reported_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Bson, Document, doc};
    use serde_json::{Value, json};

    use super::*;

    /// An instance record as placement, the holder and the gateway write it.
    fn stored() -> Document {
        doc! {
            "_id": "lobby-1", "group": "lobby", "nodeId": "node-1", "state": "STOPPING",
            "planHash": "abc", "port": 25565_i64, "memoryMb": 512_i64, "attempt": 2_i64,
            "revision": 3_i64, "workloadTokenHash": "secret", "specHash": "s1",
            "nextAttemptAtMs": 0_i64, "scheduledAtMs": 10_i64, "stateAtMs": 20_i64,
            "dispatchRetries": 1_i64, "lastDispatchError": "busy", "stopReason": "surplus",
            "halt": { "verb": "stop", "graceMs": 30_000_i64, "acked": false, "token": 7_i64, "atMs": 21_i64 },
            "reported": {
                "state": "RUNNING", "pid": 0, "port": 25565_i64, "planHash": "abc",
                "nodeId": "node-1", "exitCode": Bson::Null, "detail": "", "atMs": 5_i64,
                "receivedAtMs": 6_i64, "seq": 4_i64, "epoch": "e1",
            },
            "_fence": { "scope": "group:lobby", "token": 7_i64 },
        }
    }

    /// [`stored`] as the API showed it: `id` for `_id`, no `_fence`, no token hash.
    fn shown() -> Value {
        json!({
            "id": "lobby-1", "group": "lobby", "nodeId": "node-1", "state": "STOPPING",
            "planHash": "abc", "port": 25565, "memoryMb": 512, "attempt": 2,
            "revision": 3, "specHash": "s1",
            "nextAttemptAtMs": 0, "scheduledAtMs": 10, "stateAtMs": 20,
            "dispatchRetries": 1, "lastDispatchError": "busy", "stopReason": "surplus",
            "halt": { "verb": "stop", "graceMs": 30_000, "acked": false, "token": 7, "atMs": 21 },
            "reported": {
                "state": "RUNNING", "pid": 0, "port": 25565, "planHash": "abc",
                "nodeId": "node-1", "exitCode": null, "detail": "", "atMs": 5,
                "receivedAtMs": 6, "seq": 4, "epoch": "e1",
            },
        })
    }

    fn record(doc: Document) -> InstanceRecord {
        mongodb::bson::from_document(doc).unwrap()
    }

    #[test]
    fn an_instance_shows_as_its_stored_record_did() {
        let view = InstanceView::summary(record(stored()));
        assert_eq!(serde_json::to_value(view).unwrap(), shown());
    }

    #[test]
    fn the_detail_has_the_plan_with_the_token_hidden() {
        let plan = doc! {
            "group": "lobby", "command": ["java", "-jar", "server.jar"],
            "env": { "A": "1", "PREXOR_INSTANCE_TOKEN": "pxw.lobby-1.secret" },
            "port": 25565_i64, "memoryMb": 512_i64,
            "layers": [{ "hash": "h1", "name": "base" }], "instance": "lobby-1",
        };
        let plan = mongodb::bson::from_document(plan).unwrap();
        let view = InstanceView::detail(record(stored()), Some(plan));
        let mut expected = shown();
        expected["plan"] = json!({
            "group": "lobby", "command": ["java", "-jar", "server.jar"],
            "env": { "A": "1", "PREXOR_INSTANCE_TOKEN": "(hidden)" },
            "port": 25565, "memoryMb": 512,
            "layers": [{ "hash": "h1", "name": "base" }], "instance": "lobby-1",
        });
        assert_eq!(serde_json::to_value(view).unwrap(), expected);
    }

    #[test]
    fn crashes_show_as_stored() {
        let cases = [
            (
                doc! {
                    "_id": "lobby-1@abc", "instanceId": "lobby-1", "nodeId": "node-1",
                    "group": "lobby", "planHash": "abc", "exitCode": 1, "logTail": ["boom"],
                    "detail": "exited", "atMs": 9_i64, "reportedAtMs": 8_i64,
                },
                json!({
                    "id": "lobby-1@abc", "instanceId": "lobby-1", "nodeId": "node-1",
                    "group": "lobby", "planHash": "abc", "exitCode": 1, "logTail": ["boom"],
                    "detail": "exited", "atMs": 9, "reportedAtMs": 8,
                }),
            ),
            (
                doc! {
                    "_id": "lobby-1@def", "instanceId": "lobby-1", "nodeId": "node-1",
                    "group": "lobby", "planHash": "def", "exitCode": Bson::Null,
                    "detail": "not started after 8 retries", "atMs": 9_i64,
                },
                json!({
                    "id": "lobby-1@def", "instanceId": "lobby-1", "nodeId": "node-1",
                    "group": "lobby", "planHash": "def", "exitCode": null,
                    "detail": "not started after 8 retries", "atMs": 9,
                }),
            ),
        ];
        for (stored, shown) in cases {
            let crash: CrashRecord = mongodb::bson::from_document(stored).unwrap();
            assert_eq!(serde_json::to_value(CrashView::from(crash)).unwrap(), shown);
        }
    }
}
