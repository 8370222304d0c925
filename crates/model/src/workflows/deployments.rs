//! Rolling deployments ([`super::DEPLOYMENTS`]): the record the API creates and the group's
//! lease holder advances.

use prexor_domain::GroupSpec;
use prexor_domain::canary::{CanaryGate, Strategy};
use serde::{Deserialize, Serialize};

use super::DeploymentState;

/// A rolling deployment as stored (`_id` = `<group>-r<revision>-<n>`). The API writes the
/// first block when it creates one; the holder records progress, a pause, resume or rollback
/// the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub group: String,
    pub state: DeploymentState,
    /// Instances replaced at a time.
    #[serde(default = "one")]
    pub batch_size: i64,
    /// The most of the group's instances not RUNNING at once.
    #[serde(default = "one")]
    pub max_unavailable: i64,
    #[serde(default)]
    pub from_revision: i64,
    /// The spec it started from, restored by a rollback (never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_spec: Option<GroupSpec>,
    #[serde(default)]
    pub from_spec_hash: String,
    #[serde(default)]
    pub to_revision: i64,
    /// The spec hash every instance is rolled to (the old one after a rollback).
    #[serde(default)]
    pub target_spec_hash: String,
    #[serde(default)]
    pub rolled_back: bool,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// Progress the holder last recorded: instances running the target spec...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    /// ...of the instances the group wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// The trace context (`traceparent`) of the operator's request that created it; the
    /// scheduler's steps link to it (docs/observability.md, "Traces").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// ROLLING (a batch at a time from the start) or CANARY (behind [`Self::canary`]).
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryGate>,
    /// CANARY, written by the holder: the canaries healthy since then...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_since_ms: Option<i64>,
    /// ...the gate passed then (the rest rolls on)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_passed_at_ms: Option<i64>,
    /// ...and the gate's state in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

impl DeploymentRecord {
    /// ROLLING or PAUSED: it still holds its group.
    pub fn is_open(&self) -> bool {
        DeploymentState::OPEN.contains(&self.state)
    }
}

fn one() -> i64 {
    1
}
