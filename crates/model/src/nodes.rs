//! Nodes (`nodes`: one record per daemon host, its session and resources), what is allocated on
//! them (`node_allocations`, `port_reservations`) and operator drains (`node_drains`).

use std::collections::BTreeMap;

use mongodb::bson::{Bson, Document};
use serde::{Deserialize, Deserializer, Serialize};

/// One record per node (`_id` = node id): [`NodeRecord`].
pub const NODES: &str = "nodes";
/// Memory allocated per node by placements (`_id` = node id).
pub const NODE_ALLOCATIONS: &str = "node_allocations";
/// One record per port in use on a node (`_id` = `<node>:<port>`), so two placements can never
/// take the same port.
pub const PORT_RESERVATIONS: &str = "port_reservations";
/// One drain per node (`_id` = node id): requested by the API, carried out under
/// [`prexor_domain::Scope::drain`].
pub const NODE_DRAINS: &str = "node_drains";

stored_state! {
    /// Whether a node's daemon is connected (`nodes.state`).
    pub enum NodeState("node") {
        /// A daemon session is open on some gateway replica.
        Online = "ONLINE",
        /// The daemon said goodbye.
        Offline = "OFFLINE",
        /// The session ended without a goodbye (network, crash).
        Unreachable = "UNREACHABLE",
    }
}

stored_state! {
    /// Where a node's drain stands (`node_drains.state`).
    pub enum DrainState("drain") {
        /// Requested; no scheduler has cordoned the node yet.
        Pending = "PENDING",
        /// Cordoned; its instances are being stopped.
        Draining = "DRAINING",
        /// Every instance stopped (or the timeout passed).
        Done = "DONE",
        /// Undrained by an operator before it finished.
        Cancelled = "CANCELLED",
    }
}

impl DrainState {
    /// The drains a scheduler still works on.
    pub const OPEN: &'static [DrainState] = &[DrainState::Pending, DrainState::Draining];

    pub fn is_open(self) -> bool {
        DrainState::OPEN.contains(&self)
    }

    /// `{ "$in": [open states] }`, for filters on `state`.
    pub fn open_filter() -> Bson {
        Bson::Document(mongodb::bson::doc! { "$in": DrainState::any_of(DrainState::OPEN) })
    }
}

/// Whether a `node_drains` record is still being worked on.
pub fn drain_is_open(drain: &Document) -> bool {
    DrainState::of(drain, "state").is_some_and(DrainState::is_open)
}

/// Whether a `nodes` record says its daemon is connected.
pub fn node_is_online(node: &Document) -> bool {
    NodeState::of(node, "state") == Some(NodeState::Online)
}

/// A node record as stored. The owning gateway writes the first block when a session opens;
/// heartbeats refresh `lastHeartbeatMs`, `state` and `resources`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub state: NodeState,
    /// The gateway replica holding (or that last held) its session.
    #[serde(default)]
    pub gateway: String,
    /// The node-scope lease token of that session.
    #[serde(default)]
    pub ownership_token: i64,
    /// The daemon's version.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub host_id: String,
    /// The daemon's labels; a value that is not a string (written by hand) is left out, so
    /// it matches no selector instead of making the whole node unreadable.
    #[serde(default, deserialize_with = "string_labels")]
    pub labels: BTreeMap<String, String>,
    /// Null until the daemon reports them.
    #[serde(default)]
    pub resources: Option<NodeResources>,
    /// How the daemon keeps servers apart (null from daemons that do not report it).
    #[serde(default)]
    pub isolation: Option<NodeIsolation>,
    #[serde(default)]
    pub connected_at_ms: i64,
    #[serde(default)]
    pub last_heartbeat_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at_ms: Option<i64>,
    /// No new placements (an operator, or a drain).
    #[serde(default)]
    pub cordoned: bool,
}

impl NodeRecord {
    /// Its daemon is connected.
    pub fn is_online(&self) -> bool {
        self.state == NodeState::Online
    }
}

fn string_labels<'de, D: Deserializer<'de>>(
    labels: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = Option::<BTreeMap<String, Bson>>::deserialize(labels)?;
    Ok(labels
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| match value {
            Bson::String(value) => Some((key, value)),
            _ => None,
        })
        .collect())
}

/// What a daemon reports about its host (`nodes.resources`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    #[serde(default)]
    pub memory_total_mb: i64,
    /// What placements may reserve.
    #[serde(default)]
    pub memory_allocatable_mb: i64,
    #[serde(default)]
    pub memory_available_mb: i64,
    #[serde(default)]
    pub cpu_cores: i64,
    #[serde(default)]
    pub load_average_1m: f64,
}

/// How a daemon keeps its servers apart (`nodes.isolation`), in words.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIsolation {
    /// The users servers run as.
    #[serde(default)]
    pub run_as: String,
    /// Per-server resource limits ("cgroup v2 at …" or "unavailable: <reason>").
    #[serde(default)]
    pub limits: String,
    #[serde(default)]
    pub resource_limits: bool,
}

/// Memory reserved on a node by placements (`node_allocations`, `_id` = node id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAllocation {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub reserved_mb: i64,
}

/// A port taken on a node (`port_reservations`, `_id` = `<node>:<port>`): by an instance, or
/// blocked for a while because a foreign process holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReservation {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_until_ms: Option<i64>,
}

/// A node's drain (`node_drains`, `_id` = node id). The API writes the first block when it is
/// requested (replacing a finished one); its workflow's holder and an undrain add the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub state: DrainState,
    /// How long the instances get to stop before they are killed (ten minutes in a record
    /// written without one).
    #[serde(default = "default_drain_timeout_ms")]
    pub timeout_ms: i64,
    /// Shut the daemon down once the node is empty.
    #[serde(default)]
    pub shutdown: bool,
    #[serde(default)]
    pub requested_by: String,
    #[serde(default)]
    pub requested_at_ms: i64,
    /// The workflow lease scope it runs under.
    #[serde(default)]
    pub workflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// The scope of the holder that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_requested_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_token: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

fn default_drain_timeout_ms() -> i64 {
    600_000
}

impl DrainRecord {
    /// Still being worked on.
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn a_node_reads_without_its_reports_and_drops_labels_that_are_not_strings() {
        let node: NodeRecord = bson::from_document(doc! {
            "_id": "a", "state": "ONLINE", "labels": { "zone": "eu", "weight": 3_i64 },
            "resources": null,
        })
        .unwrap();
        assert!(node.is_online() && !node.cordoned);
        assert_eq!(node.labels, BTreeMap::from([("zone".into(), "eu".into())]));
        assert!(node.resources.is_none());
    }

    #[test]
    fn a_drain_written_without_a_timeout_gets_ten_minutes() {
        let drain: DrainRecord =
            bson::from_document(doc! { "_id": "a", "state": "PENDING" }).unwrap();
        assert_eq!(drain.timeout_ms, 600_000);
        assert!(drain.is_open() && !drain.shutdown);
    }
}
