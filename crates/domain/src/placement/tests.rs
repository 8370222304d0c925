//! Hand-written cases and properties of [`solve`], and the helpers the scale and churn tests
//! share: a brute-force oracle of the rules, and what the fenced write does with a choice.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;

use proptest::prelude::*;

use super::{Cluster, NoFit, NodeView, Placement, PortDomain, Request, explain, solve, solve_many};

pub(super) fn node(id: &str, allocatable_mb: i64) -> NodeView {
    NodeView {
        id: id.to_owned(),
        online: true,
        cordoned: false,
        host: None,
        labels: BTreeMap::new(),
        allocatable_mb: Some(allocatable_mb),
        reserved_mb: 0,
        group_instances: 0,
        instances: 0,
    }
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn request(memory_mb: i64, ports: RangeInclusive<u16>) -> Request {
    Request {
        affinity: BTreeMap::new(),
        anti_affinity: BTreeMap::new(),
        memory_mb,
        first_port: *ports.start(),
        ports,
    }
}

fn cluster(nodes: Vec<NodeView>) -> Cluster {
    Cluster::new(nodes, [])
}

/// Why `node` cannot take the instance, judged on its own (`None`: it can); the reasons are
/// ordered as [`solve`] reports them.
pub(super) fn unfit(cluster: &Cluster, request: &Request, node: &NodeView) -> Option<NoFit> {
    if !node.online || node.cordoned {
        return Some(NoFit::Nodes);
    }
    let has = |k: &String, v: &String| node.labels.get(k) == Some(v);
    if !request.affinity.iter().all(|(k, v)| has(k, v))
        || request.anti_affinity.iter().any(|(k, v)| has(k, v))
    {
        return Some(NoFit::Labels);
    }
    match node.allocatable_mb {
        Some(allocatable) if allocatable - node.reserved_mb >= request.memory_mb => {}
        _ => return Some(NoFit::Memory),
    }
    let held = cluster.ports_in_use.get(&node.ports());
    let free = request
        .ports
        .clone()
        .any(|port| held.is_none_or(|held| !held.contains(&port)));
    (!free).then_some(NoFit::Ports)
}

/// What [`solve`] must answer, computed another way: the first of the best-ranked nodes that fit
/// (`min_by_key` keeps the first of equals), else the furthest rule any node got to ([`NoFit`]'s
/// variants are in the order the rules apply).
pub(super) fn oracle(cluster: &Cluster, request: &Request) -> Result<(String, u16), NoFit> {
    let best = cluster
        .nodes
        .iter()
        .filter(|n| unfit(cluster, request, n).is_none())
        .min_by_key(|n| {
            let free = n.allocatable_mb.unwrap_or_default() - n.reserved_mb;
            (n.group_instances, Reverse(free), n.instances)
        });
    match best {
        Some(node) => {
            // The free port after the group's first one, else the lowest free one.
            let held = cluster.ports_in_use.get(&node.ports());
            let port = request
                .ports
                .clone()
                .filter(|port| held.is_none_or(|held| !held.contains(port)))
                .min_by_key(|port| (*port < request.first_port, *port))
                .expect("a node that fits has a free port");
            Ok((node.id.clone(), port))
        }
        None => {
            let furthest = cluster
                .nodes
                .iter()
                .filter_map(|n| unfit(cluster, request, n))
                .max_by_key(|reason| *reason as u8);
            Err(furthest.unwrap_or(NoFit::Nodes))
        }
    }
}

/// Asserts that `placement` satisfies every rule on `cluster` (before it is applied).
pub(super) fn assert_fits(cluster: &Cluster, request: &Request, placement: &Placement) {
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.id == placement.node)
        .expect("the chosen node is in the view");
    assert_eq!(unfit(cluster, request, node), None, "{node:?} does not fit");
    assert_eq!(Some(placement.allocatable_mb), node.allocatable_mb);
    assert!(request.ports.contains(&placement.port));
    let held = cluster.ports_in_use.get(&node.ports());
    assert!(
        held.is_none_or(|held| !held.contains(&placement.port)),
        "port {} is in use on {:?}",
        placement.port,
        node.ports()
    );
}

fn chosen(cluster: &Cluster, request: &Request) -> (String, u16) {
    let placement = solve(cluster, request).expect("a node fits");
    (placement.node, placement.port)
}

#[test]
fn a_node_without_the_affinity_labels_is_not_chosen() {
    let mut a = node("a", 4096);
    a.labels = labels(&[("zone", "eu")]);
    let mut b = node("b", 1024);
    b.labels = labels(&[("zone", "us"), ("tier", "fast")]);
    let mut wants = request(512, 25565..=25565);
    wants.affinity = labels(&[("zone", "us")]);
    assert_eq!(chosen(&cluster(vec![a.clone(), b]), &wants).0, "b");

    wants.affinity = labels(&[("zone", "ap")]);
    assert_eq!(solve(&cluster(vec![a.clone()]), &wants), Err(NoFit::Labels));
    // Every affinity label must match, not one of them.
    wants.affinity = labels(&[("zone", "eu"), ("tier", "fast")]);
    assert_eq!(solve(&cluster(vec![a]), &wants), Err(NoFit::Labels));
}

#[test]
fn any_anti_affinity_label_excludes_a_node() {
    let mut a = node("a", 8192);
    a.labels = labels(&[("zone", "eu"), ("disk", "hdd")]);
    let mut b = node("b", 1024);
    b.labels = labels(&[("zone", "eu"), ("disk", "ssd")]);
    let mut wants = request(512, 25565..=25565);
    wants.anti_affinity = labels(&[("disk", "hdd"), ("gpu", "none")]);
    assert_eq!(chosen(&cluster(vec![a.clone(), b]), &wants).0, "b");
    assert_eq!(solve(&cluster(vec![a]), &wants), Err(NoFit::Labels));
}

#[test]
fn a_node_without_the_memory_free_is_not_chosen() {
    let mut full = node("full", 4096);
    full.reserved_mb = 3584;
    let unreported = NodeView {
        allocatable_mb: None,
        ..node("unreported", 0)
    };
    let wants = request(1024, 25565..=25565);
    assert_eq!(
        solve(&cluster(vec![full.clone(), unreported.clone()]), &wants),
        Err(NoFit::Memory)
    );
    // Exactly the memory free is enough.
    let exact = request(512, 25565..=25565);
    assert_eq!(chosen(&cluster(vec![unreported, full]), &exact).0, "full");
}

#[test]
fn a_node_whose_host_has_no_port_of_the_range_free_is_not_chosen() {
    let mut a = node("a", 8192);
    a.host = Some("h1".into());
    let mut b = node("b", 1024);
    b.host = Some("h1".into());
    let c = node("c", 512);
    let wants = request(512, 25565..=25566);
    // The ports a's neighbour holds are a's too.
    let held = [("b".to_owned(), 25565), ("b".to_owned(), 25566)];
    let view = Cluster::new(vec![a.clone(), b.clone(), c], held.clone());
    assert_eq!(chosen(&view, &wants), ("c".into(), 25565));
    let view = Cluster::new(vec![a, b], held);
    assert_eq!(solve(&view, &wants), Err(NoFit::Ports));
    // An empty range (`from` above `to`) has no port to give.
    let (from, to) = (25566, 25565);
    assert_eq!(
        solve(&cluster(vec![node("d", 4096)]), &request(512, from..=to)),
        Err(NoFit::Ports)
    );
}

#[test]
fn the_first_free_port_from_the_groups_start_is_chosen() {
    let held = [("a".to_owned(), 25565), ("a".to_owned(), 25567)];
    let view = Cluster::new(vec![node("a", 4096)], held);
    assert_eq!(chosen(&view, &request(512, 25565..=25570)).1, 25566);
    // From a start further up the range, wrapping around to its beginning.
    let from_25567 = Request {
        first_port: 25567,
        ..request(512, 25565..=25570)
    };
    assert_eq!(chosen(&view, &from_25567).1, 25568);
    let held = (25567..=25570).map(|port| ("a".to_owned(), port));
    let view = Cluster::new(vec![node("a", 4096)], held);
    assert_eq!(chosen(&view, &from_25567).1, 25565);
    // A reservation of a node that is gone holds a port of that node id only.
    let view = Cluster::new(vec![node("a", 4096)], [("gone".to_owned(), 25565)]);
    assert_eq!(chosen(&view, &request(512, 25565..=25570)).1, 25565);
}

#[test]
fn cordoned_and_offline_nodes_are_excluded() {
    let cordoned = NodeView {
        cordoned: true,
        ..node("cordoned", 65536)
    };
    let offline = NodeView {
        online: false,
        ..node("offline", 65536)
    };
    let wants = request(512, 25565..=25565);
    let view = cluster(vec![cordoned.clone(), offline.clone(), node("small", 1024)]);
    assert_eq!(chosen(&view, &wants).0, "small");
    assert_eq!(
        solve(&cluster(vec![cordoned, offline]), &wants),
        Err(NoFit::Nodes)
    );
    assert_eq!(solve(&Cluster::default(), &wants), Err(NoFit::Nodes));
}

#[test]
fn spread_comes_before_free_memory_which_comes_before_total_instances() {
    let wants = request(512, 25565..=25565);
    // Two nodes as (instances of the group, free memory, instances in all), and which is chosen.
    let cases = [
        ((1, 65536, 1), (0, 1024, 9), "second"),
        ((0, 1024, 9), (0, 2048, 20), "second"),
        ((0, 2048, 3), (0, 2048, 2), "second"),
        ((0, 2048, 2), (0, 2048, 2), "first"),
    ];
    for (first, second, expected) in cases {
        let nodes =
            [("first", first), ("second", second)].map(|(id, (group, free, all))| NodeView {
                group_instances: group,
                instances: all,
                ..node(id, free)
            });
        let choice = chosen(&cluster(nodes.to_vec()), &wants).0;
        assert_eq!(choice, expected, "{first:?} against {second:?}");
    }
}

#[test]
fn equal_nodes_keep_the_order_they_were_read_in() {
    let wants = request(512, 25565..=25565);
    let view = cluster(vec![node("b", 2048), node("a", 2048), node("c", 2048)]);
    assert_eq!(chosen(&view, &wants).0, "b");
    // Free memory is what counts, not the allocatable total.
    let reserved = NodeView {
        reserved_mb: 3072,
        ..node("reserved", 4096)
    };
    assert_eq!(
        chosen(&cluster(vec![reserved, node("plain", 2048)]), &wants).0,
        "plain"
    );
}

#[test]
fn a_lost_race_moves_to_the_next_port_then_the_next_node() {
    let wants = request(512, 25565..=25570);
    let mut view = cluster(vec![node("a", 8192), node("b", 4096)]);
    assert_eq!(chosen(&view, &wants), ("a".into(), 25565));
    view.hold_port("a", 25565);
    assert_eq!(chosen(&view, &wants), ("a".into(), 25566));
    view.exclude("a");
    assert_eq!(chosen(&view, &wants), ("b".into(), 25565));
}

/// Small clusters with few labels, hosts and ports, so that every rule both passes and fails.
fn node_strategy(index: usize) -> impl Strategy<Value = NodeView> {
    let label = prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))];
    (
        (prop::bool::weighted(0.9), prop::bool::weighted(0.1)),
        prop::option::of(0..3_u8),
        (label.clone(), label),
        prop::option::weighted(0.9, 0..8_i64),
        0..8_i64,
        (0..3_usize, 0..6_usize),
    )
        .prop_map(
            move |((online, cordoned), host, (zone, disk), allocatable, reserved, counts)| {
                let mut labels = BTreeMap::new();
                for (key, value) in [("zone", zone), ("disk", disk)] {
                    if let Some(value) = value {
                        labels.insert(key.to_owned(), value.to_owned());
                    }
                }
                NodeView {
                    id: format!("n{index}"),
                    online,
                    cordoned,
                    host: host.map(|h| format!("h{h}")),
                    labels,
                    allocatable_mb: allocatable.map(|gb| gb * 1024),
                    reserved_mb: reserved * 512,
                    group_instances: counts.0,
                    instances: counts.0 + counts.1,
                }
            },
        )
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    (0..10_usize)
        .prop_flat_map(|len| (0..len).map(node_strategy).collect::<Vec<_>>())
        .prop_flat_map(|nodes| {
            // Some reservations belong to a node that is gone.
            let mut ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
            ids.push("gone".into());
            let held = prop::collection::vec((prop::sample::select(ids), 0..6_u16), 0..12);
            (Just(nodes), held)
        })
        .prop_map(|(nodes, held)| {
            Cluster::new(
                nodes,
                held.into_iter().map(|(node, port)| (node, 25565 + port)),
            )
        })
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let selector = prop::collection::btree_map(
        prop_oneof![Just("zone".to_owned()), Just("disk".to_owned())],
        prop_oneof![Just("a".to_owned()), Just("b".to_owned())],
        0..2,
    );
    (
        selector.clone(),
        selector,
        0..6_i64,
        0..6_u16,
        0..4_u16,
        0..4_u16,
    )
        .prop_map(
            |(affinity, anti_affinity, memory, from, len, first)| Request {
                affinity,
                anti_affinity,
                memory_mb: memory * 512,
                ports: 25565 + from..=25565 + from + len,
                first_port: 25565 + from + first.min(len),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A choice satisfies every rule; if any node fits a node is chosen, the best-ranked one,
    /// with the lowest free port; and when none fits the reason is the furthest rule reached.
    #[test]
    fn solve_agrees_with_the_rules(cluster in cluster_strategy(), request in request_strategy()) {
        let solved = solve(&cluster, &request);
        if let Ok(placement) = &solved {
            assert_fits(&cluster, &request, placement);
        }
        let any_fits = cluster.nodes.iter().any(|n| unfit(&cluster, &request, n).is_none());
        prop_assert_eq!(solved.is_ok(), any_fits);
        prop_assert_eq!(solved.map(|p| (p.node, p.port)), oracle(&cluster, &request));
    }

    /// The explanation calls exactly the nodes eligible that fit by the rules, the first of them
    /// where [`solve`] places, and gives every other node the first rule it fails.
    #[test]
    fn explain_agrees_with_solve(cluster in cluster_strategy(), request in request_strategy()) {
        let verdicts = explain(&cluster, &request);
        prop_assert_eq!(verdicts.len(), cluster.nodes.len());
        for verdict in &verdicts {
            let node = cluster.nodes.iter().find(|n| n.id == verdict.node).expect("a node of the view");
            let unfit = unfit(&cluster, &request, node);
            prop_assert_eq!(verdict.eligible, unfit.is_none(), "{:?}", verdict);
            let expected = match unfit {
                None => "eligible",
                Some(NoFit::Nodes) => if node.online { "cordoned" } else { "offline" },
                Some(NoFit::Labels) => "label",
                Some(NoFit::Memory) => "memory",
                Some(NoFit::Ports) => "no port",
            };
            prop_assert!(verdict.reason.contains(expected), "{:?}", verdict);
        }
        let first = verdicts.first().filter(|v| v.eligible).map(|v| v.node.clone());
        prop_assert_eq!(first, solve(&cluster, &request).ok().map(|p| p.node));
    }

    /// Placing instances one after another, each recorded before the next is solved, never
    /// gives a port of a host twice nor reserves more memory than a node has.
    #[test]
    fn successive_placements_never_share_a_port_or_overcommit(
        mut cluster in cluster_strategy(),
        request in request_strategy(),
    ) {
        let before = cluster.clone();
        let mut given: HashSet<(PortDomain, u16)> = HashSet::new();
        // Bounded: with no memory asked the ports run out first.
        for _ in 0..64 {
            let Ok(placement) = solve(&cluster, &request) else { break };
            assert_fits(&cluster, &request, &placement);
            let node = cluster.nodes.iter().find(|n| n.id == placement.node).expect("in view");
            prop_assert!(given.insert((node.ports(), placement.port)), "port given twice");
            cluster.commit(&placement, request.memory_mb);
        }
        prop_assert!(solve(&cluster, &request).is_err() || given.len() == 64);
        // A batch decides the same as those placements one by one.
        let mut batch = before.clone();
        let (choices, why) = solve_many(&mut batch, &request, given.len());
        prop_assert_eq!(choices.len(), given.len());
        prop_assert!(why.is_none());
        prop_assert_eq!(&batch.nodes, &cluster.nodes);
        prop_assert_eq!(&batch.ports_in_use, &cluster.ports_in_use);
        for (node, was) in cluster.nodes.iter().zip(&before.nodes) {
            if node.reserved_mb != was.reserved_mb {
                prop_assert!(node.reserved_mb <= node.allocatable_mb.unwrap_or_default());
            }
        }
    }
}

#[test]
fn a_groups_first_port_is_fixed_by_its_name_and_inside_the_range() {
    let range = 20_000..=29_999;
    let firsts: HashSet<u16> = (0..100)
        .map(|g| super::first_port(&format!("group-{g}"), &range))
        .collect();
    assert!(firsts.iter().all(|port| range.contains(port)));
    // Spread over the range (groups sharing it rarely start at the same port)...
    assert!(firsts.len() > 95, "{} distinct starts", firsts.len());
    // ...the same for the same name, and a one-port range has one choice.
    assert_eq!(
        super::first_port("lobby", &range),
        super::first_port("lobby", &range)
    );
    assert_eq!(super::first_port("lobby", &(25565..=25565)), 25565);
}

#[test]
fn a_batch_spreads_over_the_nodes_and_stops_with_the_reason() {
    let mut cluster = cluster(vec![node("a", 1024), node("b", 1024)]);
    let request = request(512, 25565..=25600);
    let (choices, why) = solve_many(&mut cluster, &request, 5);
    let chosen: Vec<(&str, u16)> = choices.iter().map(|c| (c.node.as_str(), c.port)).collect();
    assert_eq!(
        chosen,
        [("a", 25565), ("b", 25565), ("a", 25566), ("b", 25566)]
    );
    assert_eq!(why, Some(NoFit::Memory));
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.reserved_mb == 1024 && n.group_instances == 2)
    );
}
