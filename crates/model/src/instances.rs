//! Instances: their records (`instances`, states from [`prexor_domain::InstanceState`]), plans,
//! operator requests, reported load, crash history and strays.

use std::collections::BTreeMap;

pub use prexor_domain::InstanceState;
use serde::{Deserialize, Serialize};

/// One record per instance: where it runs, its state, what its node reports.
pub const INSTANCES: &str = "instances";
/// The composition plan of each instance (`_id` = instance id, with its `planHash`): written in
/// the same transaction as the instance record, kept apart because plans are large and only
/// dispatching one reads it, while every scheduler tick reads every instance record.
pub const INSTANCE_PLANS: &str = "instance_plans";
/// Operator requests for a group's instances (`stop`, `kill`, `start`), written by the API and
/// carried out (then deleted) by the group's lease holder.
pub const INSTANCE_REQUESTS: &str = "instance_requests";
/// What each server reports about its load (players), written by the API's workload endpoints.
pub const INSTANCE_LOAD: &str = "instance_load";
/// One record per crash of an instance, read for crash-loop detection and by operators.
pub const CRASHES: &str = "crashes";
/// Processes a node reported that no instance record owns, stopped by the group's holder.
pub const STRAYS: &str = "stray_instances";

/// Instance states that no longer hold a process (the filter `{"$nin": ENDED}` finds the live
/// ones).
pub const ENDED: &[InstanceState] = &[InstanceState::Stopped, InstanceState::Crashed];

/// `{ "$nin": [ended states], "$exists": true }`: instances that may still hold a process.
pub fn live_filter() -> mongodb::bson::Bson {
    mongodb::bson::Bson::Document(mongodb::bson::doc! { "$nin": ended_states(), "$exists": true })
}

/// `[ended states]`, for `$nin` filters without the `$exists` condition.
pub fn ended_states() -> mongodb::bson::Bson {
    mongodb::bson::Bson::Array(ENDED.iter().map(|s| s.as_str().into()).collect())
}

/// Whether a stored state string is STOPPED or CRASHED.
pub fn has_ended(state: &str) -> bool {
    InstanceState::parse(state).is_some_and(InstanceState::is_terminal)
}

/// The states a node reports for an instance it holds (what its inventory digest covers): a
/// process it runs, or a prepared directory waiting for its start.
pub const REPORTED_LIVE: [InstanceState; 5] = [
    InstanceState::Preparing,
    InstanceState::Prepared,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Stopping,
];

/// An instance record as stored. Placement writes the first block of fields in one write (they
/// default when a record predates one of them); the rest appear as the instance moves on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub node_id: String,
    /// An [`InstanceState`] string (`RUNNING`); [`InstanceRecord::state`] parses it.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub plan_hash: String,
    #[serde(default)]
    pub port: i64,
    #[serde(default)]
    pub memory_mb: i64,
    #[serde(default)]
    pub attempt: i64,
    /// The group revision the instance was placed from.
    #[serde(default)]
    pub revision: i64,
    /// Hash of the spec the instance was placed from (empty for records older than that).
    #[serde(default)]
    pub spec_hash: String,
    #[serde(default)]
    pub next_attempt_at_ms: i64,
    #[serde(default)]
    pub scheduled_at_ms: i64,
    /// In the group's warm pool: placed and prepared (or started) but not one of the group's
    /// instances yet, and not announced to players (`docs/scheduling.md`, "Warm pool").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// Its node prepares the directory and does not start the server until the instance is
    /// taken from the warm pool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prepare_only: bool,
    /// SHA-256 of the instance's workload token (never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_token_hash: Option<String>,
    /// When the current state was entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_at_ms: Option<i64>,
    /// Dispatches of the current plan that the node could not take yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dispatch_error: Option<String>,
    /// DRAINING: stopped at the latest then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// STOPPING: the halt sent (or to be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<InstanceHalt>,
    /// Why it ended (STOPPED, CRASHED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    /// The last report of its node about the current plan (written by the owning gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<InstanceReported>,
    /// The plan, in records written before plans moved to [`INSTANCE_PLANS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<InstancePlan>,
}

impl InstanceRecord {
    /// The state, if it is one this version knows.
    pub fn state(&self) -> Option<InstanceState> {
        InstanceState::parse(&self.state)
    }

    /// STOPPED or CRASHED.
    pub fn has_ended(&self) -> bool {
        has_ended(&self.state)
    }
}

/// The halt recorded with a STOPPING instance (`halt`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceHalt {
    /// `stop` or `kill`.
    #[serde(default)]
    pub verb: String,
    #[serde(default)]
    pub grace_ms: i64,
    /// The node acknowledged it.
    #[serde(default)]
    pub acked: bool,
    /// The group lease token it was sent under.
    #[serde(default)]
    pub token: i64,
    #[serde(default)]
    pub at_ms: i64,
}

/// What a node reported about an instance (`reported`), as its gateway stored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReported {
    /// The daemon's state name (`RUNNING`, `CRASHED`, ...).
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub plan_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Stored as null while the process has not exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The node's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// The gateway's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The daemon session the seq belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// A composition plan: what the node runs for the instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePlan {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub command: Vec<String>,
    /// The group's env plus `PREXOR_INSTANCE_ID`, `PREXOR_GROUP`, `PREXOR_INSTANCE_TOKEN`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub port: i64,
    #[serde(default)]
    pub memory_mb: i64,
    /// Template layers, then module layers, in the order they are unpacked.
    #[serde(default)]
    pub layers: Vec<PlanLayer>,
    #[serde(default)]
    pub instance: String,
}

/// One layer of a plan (a blob).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanLayer {
    pub hash: String,
    #[serde(default)]
    pub name: String,
}

/// The plan of an instance's current placement (`instance_plans`, `_id` = instance id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRecord {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub plan_hash: String,
    #[serde(default)]
    pub plan: InstancePlan,
}

/// An operator request for the group's lease holder (`instance_requests`, `_id` =
/// `<action>:<instance>` or `<action>:<group>:<nonce>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRequest {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub group: String,
    /// `start`, `stop`, `kill` or `drain`.
    #[serde(default)]
    pub action: String,
    /// Who asked (a user, or the drain of a node).
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_ms: i64,
    /// The instance it is about (none for `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The trace context (`traceparent`) of the operator's request that asked for it: the
    /// scheduler carries it out in that trace (docs/observability.md, "Traces").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A crash of an instance (`crashes`, `_id` = `<instance>@<plan hash>`: one per plan).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrashRecord {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub plan_hash: String,
    /// Stored as null when the process never exited (it never started).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The last console lines (from the node's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<Vec<String>>,
    #[serde(default)]
    pub detail: String,
    /// The gateway's (or scheduler's) clock when it was recorded.
    #[serde(default)]
    pub at_ms: i64,
    /// The node's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at_ms: Option<i64>,
}

/// What a server reports about itself (`instance_load`, `_id` = instance id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceLoad {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<i64>,
    /// Everyone online.
    #[serde(default)]
    pub player_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub players_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<LoadMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_at_ms: Option<i64>,
}

/// Server metrics as last reported (`instance_load.metrics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadMetrics {
    #[serde(default)]
    pub tps: Option<f64>,
    #[serde(default)]
    pub mspt: Option<f64>,
    #[serde(default)]
    pub memory_used_mb: Option<i64>,
}

/// The network over time: one [`NetworkSample`] per interval (`_id` = the interval's start,
/// Unix ms), written by every api replica for the same interval (the last write wins: they read
/// the same records) and pruned past the retention (docs/dashboard.md, "Overview charts").
pub const NETWORK_HISTORY: &str = "network_history";

/// Players and instances at one moment, as the overview's charts draw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSample {
    /// The interval's start (Unix ms).
    #[serde(rename = "_id")]
    pub at_ms: i64,
    /// Players online on live instances.
    pub players: i64,
    /// Live instances (any state but STOPPED and CRASHED).
    pub instances: i64,
    /// Of those, RUNNING.
    pub running: i64,
    /// The api replica that wrote it last.
    #[serde(default)]
    pub replica: String,
}
