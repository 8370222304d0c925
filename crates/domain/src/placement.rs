//! Where an instance goes, decided without I/O: [`solve`] takes a typed view of the candidate
//! nodes and what the instance needs, and returns the node and port (or why nothing fits). The
//! group's lease holder (prexor-scheduler, `services/scheduler/src/groups/placement.rs`) reads
//! the view from the store and writes the choice in one fenced transaction; the rules are
//! docs/scheduling.md, "Placement". `prexor-bench placement` measures it at 1,000 nodes.
//!
//! Keeping the decision pure lets it be tested at scale and under churn without stores (the
//! `tests` and `scale_tests` submodules), in the way the control plane's acceptance tests cannot.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::RangeInclusive;

use crate::GroupSpec;

#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    /// A daemon session is open (`state` ONLINE); nothing is placed on a node without one.
    pub online: bool,
    /// An operator (or a drain) took the node out of placement.
    pub cordoned: bool,
    /// The host the node runs on (`hostId`); `None` when it reported none.
    pub host: Option<String>,
    /// The node's string-valued labels (a label of another type matches no selector).
    pub labels: BTreeMap<String, String>,
    /// `resources.memoryAllocatableMb`; `None` until the node reports it, and then nothing fits.
    pub allocatable_mb: Option<i64>,
    /// Memory reserved by the instances placed on the node (`node_allocations.reservedMb`).
    pub reserved_mb: i64,
    /// Active instances on the node: of the group being placed, and of all groups.
    pub group_instances: usize,
    pub instances: usize,
}

impl NodeView {
    fn schedulable(&self) -> bool {
        self.online && !self.cordoned
    }

    fn free_mb(&self) -> Option<i64> {
        Some(self.allocatable_mb? - self.reserved_mb)
    }

    /// Which set of ports the node draws from.
    pub fn ports(&self) -> PortDomain {
        match &self.host {
            Some(host) => PortDomain::Host(host.clone()),
            None => PortDomain::Node(self.id.clone()),
        }
    }
}

/// One set of ports: nodes reporting the same `hostId` share their host's ports; a node without
/// one has its own (docs/scheduling.md, "Placement").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortDomain {
    Host(String),
    Node(String),
}

/// What placement sees of the cluster: every node, in the order the store returned them (the
/// last tie-breaker), and the ports held in each port domain.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub nodes: Vec<NodeView>,
    pub ports_in_use: HashMap<PortDomain, BTreeSet<u16>>,
}

impl Cluster {
    /// The view of `nodes` with `reservations` (node id, port) held in their nodes' port domains.
    /// A reservation of a node not in `nodes` holds the port of that node id alone.
    pub fn new(
        nodes: Vec<NodeView>,
        reservations: impl IntoIterator<Item = (String, u16)>,
    ) -> Self {
        let domains: HashMap<&str, PortDomain> =
            nodes.iter().map(|n| (n.id.as_str(), n.ports())).collect();
        let mut ports_in_use: HashMap<PortDomain, BTreeSet<u16>> = HashMap::new();
        for (node, port) in reservations {
            let domain = match domains.get(node.as_str()) {
                Some(domain) => domain.clone(),
                None => PortDomain::Node(node),
            };
            ports_in_use.entry(domain).or_default().insert(port);
        }
        Cluster {
            nodes,
            ports_in_use,
        }
    }

    /// Counts `port` as held on `node`'s host, e.g. after another replica reserved it first.
    pub fn hold_port(&mut self, node: &str, port: u16) {
        if let Some(domain) = self
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(NodeView::ports)
        {
            self.ports_in_use.entry(domain).or_default().insert(port);
        }
    }

    /// Counts `choice` as made for an instance needing `memory_mb`: its port held, its memory
    /// reserved, one more instance (of the group) on its node. The next [`solve`] sees it.
    pub fn commit(&mut self, choice: &Placement, memory_mb: i64) {
        self.hold_port(&choice.node, choice.port);
        if let Some(node) = self.nodes.iter_mut().find(|n| n.id == choice.node) {
            node.reserved_mb += memory_mb;
            node.group_instances += 1;
            node.instances += 1;
        }
    }

    /// Leaves `node` out of the choices that follow.
    pub fn exclude(&mut self, node: &str) {
        self.nodes.retain(|n| n.id != node);
    }

    fn is_free(&self, domain: &PortDomain, port: u16) -> bool {
        self.ports_in_use
            .get(domain)
            .is_none_or(|held| !held.contains(&port))
    }
}

/// What one instance needs: the group's selector, memory and port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Labels the node must carry, each with this value.
    pub affinity: BTreeMap<String, String>,
    /// Labels that exclude a node carrying any of them with this value.
    pub anti_affinity: BTreeMap<String, String>,
    pub memory_mb: i64,
    pub ports: RangeInclusive<u16>,
    /// The port of the range the search for a free one starts at (it wraps around to the
    /// range's start): fixed per group by [`Request::of`], so that groups sharing a range, placed
    /// at the same time by different replicas or side by side in one tick, rarely race for the
    /// same port.
    pub first_port: u16,
}

impl Request {
    /// What an instance of group `group` needs.
    pub fn of(group: &str, spec: &GroupSpec) -> Request {
        let ports = spec.port_range.from..=spec.port_range.to;
        Request {
            affinity: spec.affinity.clone(),
            anti_affinity: spec.anti_affinity.clone(),
            memory_mb: spec.memory_mb as i64,
            first_port: first_port(group, &ports),
            ports,
        }
    }

    /// The ports of the range in the order they are tried: from `first_port` to the end, then
    /// from the start.
    pub fn port_order(&self) -> impl Iterator<Item = u16> + '_ {
        let (start, end) = (*self.ports.start(), *self.ports.end());
        let first = self.first_port.clamp(start, end.max(start));
        (first..=end).chain(start..first)
    }

    fn selects(&self, node: &NodeView) -> bool {
        let has = |k: &String, v: &String| node.labels.get(k) == Some(v);
        self.affinity.iter().all(|(k, v)| has(k, v))
            && !self.anti_affinity.iter().any(|(k, v)| has(k, v))
    }
}

/// The choice: a node and a port of the range that is free on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub port: u16,
    /// The node's allocatable memory, which the fenced write checks the reservation against.
    pub allocatable_mb: i64,
}

/// Why nothing fits: the rule that left no node standing (the rules apply in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFit {
    /// No node is online and uncordoned.
    Nodes,
    /// No node carries the affinity labels without an anti-affinity one.
    Labels,
    /// Nodes with the labels have too little memory free (or have not reported any).
    Memory,
    /// Nodes with the labels and the memory have no port of the range free on their host.
    Ports,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoFit::Nodes => "no node is online and uncordoned",
            NoFit::Labels => {
                "no node carries the group's affinity labels without its anti-affinity ones"
            }
            NoFit::Memory => "no node with the group's labels has the memory free",
            NoFit::Ports => {
                "no node with the labels and memory has a port of the group's range free"
            }
        })
    }
}

/// Whether one node could take an instance of a request now, and why (or why not), for
/// `GET /api/v1/groups/{name}/explain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdict {
    pub node: String,
    pub eligible: bool,
    pub reason: String,
}

/// Every node of `cluster` judged by [`solve`]'s rules in their order, eligible ones first
/// in the order [`solve`] ranks them (the first is where the next instance goes).
pub fn explain(cluster: &Cluster, request: &Request) -> Vec<NodeVerdict> {
    let (from, to) = (request.ports.start(), request.ports.end());
    let mut eligible = Vec::new();
    let mut refused = Vec::new();
    for node in &cluster.nodes {
        let missing = request
            .affinity
            .iter()
            .find(|(k, v)| node.labels.get(*k) != Some(*v));
        let excluded = request
            .anti_affinity
            .iter()
            .find(|(k, v)| node.labels.get(*k) == Some(*v));
        let why_not = if !node.online {
            Some("offline: no daemon session".to_owned())
        } else if node.cordoned {
            Some("cordoned (by an operator or a drain)".to_owned())
        } else if let Some((k, v)) = missing {
            Some(format!("lacks the affinity label {k}={v}"))
        } else if let Some((k, v)) = excluded {
            Some(format!("carries the anti-affinity label {k}={v}"))
        } else {
            match node.free_mb() {
                None => Some("has not reported its memory yet".to_owned()),
                Some(free) if free < request.memory_mb => Some(format!(
                    "{free} MB of memory free of {} MB allocatable; an instance needs {} MB",
                    node.allocatable_mb.unwrap_or(0),
                    request.memory_mb
                )),
                Some(_)
                    if !request
                        .port_order()
                        .any(|port| cluster.is_free(&node.ports(), port)) =>
                {
                    Some(format!("no port of {from}..{to} is free on its host"))
                }
                Some(_) => None,
            }
        };
        match why_not {
            Some(reason) => refused.push(NodeVerdict {
                node: node.id.clone(),
                eligible: false,
                reason,
            }),
            None => eligible.push(node),
        }
    }
    eligible.sort_by_key(|n| (n.group_instances, Reverse(n.free_mb()), n.instances));
    eligible
        .into_iter()
        .map(|n| NodeVerdict {
            node: n.id.clone(),
            eligible: true,
            reason: format!(
                "eligible: {} of the group's instances, {} MB free, {} instances in all",
                n.group_instances,
                n.free_mb().unwrap_or(0),
                n.instances
            ),
        })
        .chain(refused)
        .collect()
}

/// Places up to `count` instances of one request, each seeing the ones before it (spread,
/// memory and ports as if each were already written); stops at the first that does not fit.
pub fn solve_many(
    cluster: &mut Cluster,
    request: &Request,
    count: usize,
) -> (Vec<Placement>, Option<NoFit>) {
    let mut choices = Vec::with_capacity(count);
    for _ in 0..count {
        match solve(cluster, request) {
            Ok(choice) => {
                cluster.commit(&choice, request.memory_mb);
                choices.push(choice);
            }
            Err(why) => return (choices, Some(why)),
        }
    }
    (choices, None)
}

/// Where group `group` starts looking for a free port in `ports`: a point of the range fixed by
/// the group's name ([`crate::fnv1a`]), the same on every replica and across restarts.
pub fn first_port(group: &str, ports: &RangeInclusive<u16>) -> u16 {
    let (start, end) = (*ports.start(), *ports.end());
    if end <= start {
        return start;
    }
    let len = u64::from(end - start) + 1;
    start + (crate::fnv1a(group) % len) as u16
}

/// Picks the node and port for one instance. Nodes that fit (online and uncordoned, labels,
/// memory, a free port) are ranked by the fewest instances of the group (spread), then the most
/// free memory, then the fewest instances in all, then their order in `cluster`; the port is the
/// first free one on the chosen node's host in [`Request::port_order`].
pub fn solve(cluster: &Cluster, request: &Request) -> Result<Placement, NoFit> {
    let schedulable: Vec<&NodeView> = cluster.nodes.iter().filter(|n| n.schedulable()).collect();
    if schedulable.is_empty() {
        return Err(NoFit::Nodes);
    }
    let selected: Vec<&NodeView> = schedulable
        .into_iter()
        .filter(|n| request.selects(n))
        .collect();
    if selected.is_empty() {
        return Err(NoFit::Labels);
    }
    let mut roomy: Vec<(&NodeView, i64)> = selected
        .into_iter()
        .filter_map(|n| {
            let free = n.free_mb()?;
            (free >= request.memory_mb).then_some((n, free))
        })
        .collect();
    if roomy.is_empty() {
        return Err(NoFit::Memory);
    }
    // A stable sort: equal nodes keep the store's order.
    roomy.sort_by_key(|(n, free)| (n.group_instances, Reverse(*free), n.instances));
    roomy
        .into_iter()
        .find_map(|(node, _)| {
            let domain = node.ports();
            let port = request
                .port_order()
                .find(|port| cluster.is_free(&domain, *port))?;
            Some(Placement {
                node: node.id.clone(),
                port,
                allocatable_mb: node.allocatable_mb?,
            })
        })
        .ok_or(NoFit::Ports)
}
