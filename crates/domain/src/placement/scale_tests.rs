//! [`solve`] at the scale of a large network and under churn: a simulated cluster where every
//! choice is recorded as the fenced write would record it, checked against the rules' oracle at
//! every placement and against the cluster's invariants (no port of a host given twice, no node
//! overcommitted, nothing on a node that is gone). Correctness only: speed is `prexor-bench`'s.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::{assert_fits, labels, node, oracle, request};
use super::{Cluster, NoFit, NodeView, Placement, Request, solve};

const SEED: u64 = 20_240_522;
const ZONES: [&str; 3] = ["eu", "us", "ap"];
const NODES_PER_HOST: usize = 4;

/// An instance the simulated cluster runs.
struct Live {
    group: usize,
    node: String,
    port: u16,
    memory_mb: i64,
}

/// The cluster as the store would hold it: the nodes' view (kept up to date as the fenced
/// writes would), what runs, and the groups' requests.
struct World {
    cluster: Cluster,
    live: Vec<Live>,
    groups: Vec<Request>,
    /// Instances per node, per group (what `group_instances` is read from for each group).
    per_group: HashMap<String, Vec<usize>>,
    next_node: usize,
    gone: HashSet<String>,
}

impl World {
    fn new(nodes: usize, rng: &mut StdRng) -> World {
        let mut world = World {
            cluster: Cluster::default(),
            live: Vec::new(),
            groups: groups(),
            per_group: HashMap::new(),
            next_node: 0,
            gone: HashSet::new(),
        };
        for _ in 0..nodes {
            world.add_node(rng);
        }
        world
    }

    /// A node on the host of the nodes before it (a fifth of them on no host), in a zone, a few
    /// cordoned, offline or without reported memory.
    fn add_node(&mut self, rng: &mut StdRng) {
        let index = self.next_node;
        self.next_node += 1;
        let mut node = node(&format!("node-{index}"), 1024 * rng.random_range(8..=64));
        if rng.random_range(0..5) > 0 {
            node.host = Some(format!("host-{}", index / NODES_PER_HOST));
        }
        let zone = ZONES[rng.random_range(0..ZONES.len())];
        let tier = if rng.random_bool(0.5) { "fast" } else { "slow" };
        node.labels = labels(&[("zone", zone), ("tier", tier)]);
        node.cordoned = rng.random_bool(0.02);
        node.online = !rng.random_bool(0.02);
        if rng.random_bool(0.01) {
            node.allocatable_mb = None;
        }
        self.per_group
            .insert(node.id.clone(), vec![0; self.groups.len()]);
        self.cluster.nodes.push(node);
    }

    /// A node leaves with everything on it (its records are gone with it).
    fn remove_node(&mut self, rng: &mut StdRng) {
        if self.cluster.nodes.is_empty() {
            return;
        }
        let id = self.cluster.nodes[rng.random_range(0..self.cluster.nodes.len())]
            .id
            .clone();
        let (leaving, staying) = std::mem::take(&mut self.live)
            .into_iter()
            .partition(|i| i.node == id);
        self.live = staying;
        for instance in leaving {
            self.release(&instance);
        }
        self.cluster.exclude(&id);
        self.per_group.remove(&id);
        self.gone.insert(id);
    }

    fn node_mut(&mut self, id: &str) -> &mut NodeView {
        self.cluster
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("a live instance's node is in the cluster")
    }

    /// What ending `instance` writes: its port and memory are given back.
    fn release(&mut self, instance: &Live) {
        let node = self.node_mut(&instance.node);
        node.reserved_mb -= instance.memory_mb;
        node.instances -= 1;
        let domain = node.ports();
        self.per_group.get_mut(&instance.node).expect("counted")[instance.group] -= 1;
        let held = self.cluster.ports_in_use.get_mut(&domain).expect("held");
        assert!(held.remove(&instance.port), "the port was held");
    }

    fn stop_one(&mut self, rng: &mut StdRng) {
        if self.live.is_empty() {
            return;
        }
        let instance = self.live.swap_remove(rng.random_range(0..self.live.len()));
        self.release(&instance);
    }

    /// Solves a placement of `group` on the current view, checks it against the oracle and the
    /// rules, and records it as the fenced write would.
    fn place(&mut self, group: usize) -> Result<Placement, NoFit> {
        for node in &mut self.cluster.nodes {
            node.group_instances = self.per_group[&node.id][group];
        }
        let request = &self.groups[group];
        let solved = solve(&self.cluster, request);
        assert_eq!(
            solved.clone().map(|p| (p.node, p.port)),
            oracle(&self.cluster, request)
        );
        let placement = solved?;
        assert_fits(&self.cluster, request, &placement);
        assert!(!self.gone.contains(&placement.node));
        let memory_mb = request.memory_mb;
        self.cluster.commit(&placement, request.memory_mb);
        self.per_group.get_mut(&placement.node).expect("counted")[group] += 1;
        self.live.push(Live {
            group,
            node: placement.node.clone(),
            port: placement.port,
            memory_mb,
        });
        Ok(placement)
    }

    /// The invariants, recomputed from what runs: every instance on a node that exists, no port
    /// of a port domain given twice, the view's reservations equal to what runs and within each
    /// node's memory.
    fn check(&self) {
        let nodes: HashMap<&str, &NodeView> = self
            .cluster
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n))
            .collect();
        let mut ports = HashSet::new();
        let mut memory: HashMap<&str, i64> = HashMap::new();
        let mut held: HashMap<_, usize> = HashMap::new();
        for instance in &self.live {
            let node = nodes[instance.node.as_str()];
            assert!(
                ports.insert((node.ports(), instance.port)),
                "port {} given twice on {:?}",
                instance.port,
                node.ports()
            );
            *memory.entry(node.id.as_str()).or_default() += instance.memory_mb;
            *held.entry(node.ports()).or_default() += 1;
        }
        for node in &self.cluster.nodes {
            let used = memory.get(node.id.as_str()).copied().unwrap_or(0);
            assert_eq!(node.reserved_mb, used, "{}'s reservation", node.id);
            assert!(
                used <= node.allocatable_mb.unwrap_or(0),
                "{} overcommitted",
                node.id
            );
        }
        for (domain, ports) in &self.cluster.ports_in_use {
            assert_eq!(ports.len(), held.get(domain).copied().unwrap_or(0));
        }
    }
}

/// Groups of several sizes and selectors, drawing on three shared port ranges.
fn groups() -> Vec<Request> {
    let ranges = [25565..=25664, 30000..=30049, 40000..=40199];
    (0..12)
        .map(|g| {
            let mut group = request(512 << (g % 4), ranges[g % ranges.len()].clone());
            match g % 6 {
                1 => group.affinity = labels(&[("zone", ZONES[g % ZONES.len()])]),
                2 => group.anti_affinity = labels(&[("tier", "slow")]),
                3 => {
                    group.affinity = labels(&[("zone", "eu")]);
                    group.anti_affinity = labels(&[("tier", "slow")]);
                }
                _ => {}
            }
            group
        })
        .collect()
}

/// A thousand nodes, thousands of placements of a dozen groups: every one correct, every one
/// placed while there is room, and then one range drained until nothing fits.
#[test]
fn thousands_of_placements_on_a_thousand_nodes() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut world = World::new(1_000, &mut rng);
    for round in 0..4_000 {
        let group = round % world.groups.len();
        if let Err(why) = world.place(group) {
            panic!("placement {round} of group {group} failed with room left: {why}");
        }
        if round % 500 == 0 {
            world.check();
        }
    }
    world.check();

    // Two ports per host, for a zone's nodes: the ports run out before the memory does.
    let mut tiny = request(256, 50000..=50001);
    tiny.affinity = labels(&[("zone", "ap")]);
    world.groups.push(tiny);
    for per_group in world.per_group.values_mut() {
        per_group.push(0);
    }
    let group = world.groups.len() - 1;
    let mut placed = 0;
    let why = loop {
        match world.place(group) {
            Ok(_) => placed += 1,
            Err(why) => break why,
        }
        assert!(
            placed <= 2 * world.cluster.nodes.len(),
            "ports never ran out"
        );
    };
    assert_eq!(why, NoFit::Ports);
    assert!(placed > 0);
    world.check();
}

/// Nodes join and leave, are cordoned and go offline, instances end, between placements: a
/// choice never lands on a node that is gone, cordoned or offline, and the invariants hold after
/// every round.
#[test]
fn placements_under_churn() {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let mut world = World::new(300, &mut rng);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        for _ in 0..rng.random_range(0..3) {
            world.add_node(&mut rng);
        }
        for _ in 0..rng.random_range(0..3) {
            world.remove_node(&mut rng);
        }
        if !world.cluster.nodes.is_empty() {
            let len = world.cluster.nodes.len();
            let node = &mut world.cluster.nodes[rng.random_range(0..len)];
            node.cordoned = !node.cordoned;
            let node = &mut world.cluster.nodes[rng.random_range(0..len)];
            node.online = !node.online;
        }
        for _ in 0..rng.random_range(0..6) {
            world.stop_one(&mut rng);
        }
        for _ in 0..rng.random_range(1..12) {
            let group = rng.random_range(0..world.groups.len());
            let outcome = match world.place(group) {
                Ok(_) => "placed".to_owned(),
                Err(why) => format!("{why:?}"),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        world.check();
    }
    assert!(
        outcomes.get("placed").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(!world.gone.is_empty());
}
