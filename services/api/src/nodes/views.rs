//! What the node endpoints show: node records with their allocation and drain, and drain
//! records, as typed views.

use std::collections::BTreeMap;

use prexor_model::nodes::{DrainRecord, DrainState, NodeRecord, NodeResources, NodeState};
use serde::Serialize;

/// A node as the API shows it: its record, the memory the schedulers reserved on it and its
/// drain.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeView {
    pub(crate) id: String,
    /// Whether its daemon is connected.
    #[schema(value_type = String, example = "ONLINE")]
    pub(crate) state: NodeState,
    /// The gateway replica holding (or that last held) its session.
    pub(crate) gateway: String,
    pub(crate) ownership_token: i64,
    /// The daemon's version.
    pub(crate) version: String,
    pub(crate) host_id: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// Null until the daemon reports them.
    pub(crate) resources: Option<NodeResourcesView>,
    /// How its daemon keeps servers apart (null from daemons that do not say).
    pub(crate) isolation: Option<NodeIsolationView>,
    pub(crate) connected_at_ms: i64,
    pub(crate) last_heartbeat_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) disconnected_at_ms: Option<i64>,
    /// No new placements on it.
    pub(crate) cordoned: bool,
    /// Memory reserved by placements.
    pub(crate) reserved_mb: i64,
    /// Its drain (running or the last one), if it was ever drained.
    pub(crate) drain: Option<NodeDrainView>,
}

impl NodeView {
    /// `node` with the memory reserved on it and its drain.
    pub(super) fn new(node: NodeRecord, reserved_mb: i64, drain: Option<DrainRecord>) -> NodeView {
        NodeView {
            id: node.id,
            state: node.state,
            gateway: node.gateway,
            ownership_token: node.ownership_token,
            version: node.version,
            host_id: node.host_id,
            labels: node.labels,
            resources: node.resources.map(NodeResourcesView::from),
            isolation: node.isolation.map(|i| NodeIsolationView {
                run_as: i.run_as,
                limits: i.limits,
                resource_limits: i.resource_limits,
            }),
            connected_at_ms: node.connected_at_ms,
            last_heartbeat_ms: node.last_heartbeat_ms,
            disconnected_at_ms: node.disconnected_at_ms,
            cordoned: node.cordoned,
            reserved_mb,
            drain: drain.map(NodeDrainView::from),
        }
    }
}

/// What the node's daemon reports about its host.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeResourcesView {
    pub(crate) memory_total_mb: i64,
    /// What placements may reserve.
    pub(crate) memory_allocatable_mb: i64,
    pub(crate) memory_available_mb: i64,
    pub(crate) cpu_cores: i64,
    pub(crate) load_average_1m: f64,
}

impl From<NodeResources> for NodeResourcesView {
    fn from(r: NodeResources) -> NodeResourcesView {
        NodeResourcesView {
            memory_total_mb: r.memory_total_mb,
            memory_allocatable_mb: r.memory_allocatable_mb,
            memory_available_mb: r.memory_available_mb,
            cpu_cores: r.cpu_cores,
            load_average_1m: r.load_average_1m,
        }
    }
}

/// How a node's daemon keeps its servers apart, in words.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeIsolationView {
    /// The users servers run as (e.g. "one uid per server from 200000-200999").
    pub(crate) run_as: String,
    /// Per-server resource limits ("cgroup v2 at …", or "unavailable: <reason>").
    pub(crate) limits: String,
    /// Whether servers get memory limits on this node.
    pub(crate) resource_limits: bool,
}

/// A node's drain.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeDrainView {
    #[schema(value_type = String, example = "DRAINING")]
    pub(crate) state: DrainState,
    /// How long the instances get to stop before they are killed.
    pub(crate) timeout_ms: i64,
    /// Shut the daemon down once the node is empty.
    pub(crate) shutdown: bool,
    pub(crate) requested_by: String,
    pub(crate) requested_at_ms: i64,
    /// The workflow lease scope it runs under.
    pub(crate) workflow: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shutdown_requested_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shutdown_token: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cancelled_by: Option<String>,
}

impl From<DrainRecord> for NodeDrainView {
    fn from(d: DrainRecord) -> NodeDrainView {
        NodeDrainView {
            state: d.state,
            timeout_ms: d.timeout_ms,
            shutdown: d.shutdown,
            requested_by: d.requested_by,
            requested_at_ms: d.requested_at_ms,
            workflow: d.workflow,
            started_at_ms: d.started_at_ms,
            holder: d.holder,
            shutdown_requested_at_ms: d.shutdown_requested_at_ms,
            shutdown_token: d.shutdown_token,
            finished_at_ms: d.finished_at_ms,
            cancelled_by: d.cancelled_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Bson, Document, doc};
    use serde_json::json;

    use super::*;

    fn decode<T: serde::de::DeserializeOwned>(doc: Document) -> T {
        mongodb::bson::from_document(doc).unwrap()
    }

    #[test]
    fn a_node_shows_as_its_stored_record_with_allocation_and_drain() {
        let node = doc! {
            "_id": "node-1", "state": "ONLINE", "gateway": "gw-1", "ownershipToken": 3_i64,
            "version": "0.1.0", "hostId": "h1", "labels": { "zone": "a" },
            "resources": {
                "memoryTotalMb": 8192_i64, "memoryAllocatableMb": 6144_i64,
                "memoryAvailableMb": 4000_i64, "cpuCores": 4_i64, "loadAverage1m": 0.25,
            },
            "isolation": {
                "runAs": "one uid per server from 200000-200999",
                "limits": "cgroup v2 at /sys/fs/cgroup/system.slice/prexor-daemon.service/instances (memory)",
                "resourceLimits": true,
            },
            "connectedAtMs": 1_i64, "lastHeartbeatMs": 2_i64, "disconnectedAtMs": 0_i64,
            "cordoned": true, "_fence": { "scope": "node:node-1", "token": 3_i64 },
        };
        let drain = doc! {
            "_id": "node-1", "state": "DRAINING", "timeoutMs": 600_000_i64, "shutdown": false,
            "requestedBy": "admin", "requestedAtMs": 5_i64, "workflow": "workflow:drain-node-1",
            "startedAtMs": 6_i64, "holder": "workflow:drain-node-1",
        };
        let view = NodeView::new(decode(node), 512, Some(decode(drain)));
        let shown = json!({
            "id": "node-1", "state": "ONLINE", "gateway": "gw-1", "ownershipToken": 3,
            "version": "0.1.0", "hostId": "h1", "labels": { "zone": "a" },
            "resources": {
                "memoryTotalMb": 8192, "memoryAllocatableMb": 6144,
                "memoryAvailableMb": 4000, "cpuCores": 4, "loadAverage1m": 0.25,
            },
            "isolation": {
                "runAs": "one uid per server from 200000-200999",
                "limits": "cgroup v2 at /sys/fs/cgroup/system.slice/prexor-daemon.service/instances (memory)",
                "resourceLimits": true,
            },
            "connectedAtMs": 1, "lastHeartbeatMs": 2, "disconnectedAtMs": 0,
            "cordoned": true, "reservedMb": 512,
            "drain": {
                "state": "DRAINING", "timeoutMs": 600_000, "shutdown": false,
                "requestedBy": "admin", "requestedAtMs": 5, "workflow": "workflow:drain-node-1",
                "startedAtMs": 6, "holder": "workflow:drain-node-1",
            },
        });
        assert_eq!(serde_json::to_value(view).unwrap(), shown);
    }

    #[test]
    fn a_node_without_resources_allocation_or_drain() {
        let node = doc! {
            "_id": "node-2", "state": "OFFLINE", "gateway": "gw-1", "ownershipToken": 1_i64,
            "version": "0.1.0", "hostId": "h2", "labels": {}, "resources": Bson::Null,
            "connectedAtMs": 1_i64, "lastHeartbeatMs": 2_i64,
        };
        let view = NodeView::new(decode(node), 0, None);
        let shown = json!({
            "id": "node-2", "state": "OFFLINE", "gateway": "gw-1", "ownershipToken": 1,
            "version": "0.1.0", "hostId": "h2", "labels": {}, "resources": null,
            "isolation": null, "connectedAtMs": 1, "lastHeartbeatMs": 2,
            "cordoned": false, "reservedMb": 0, "drain": null,
        });
        assert_eq!(serde_json::to_value(view).unwrap(), shown);
    }
}
