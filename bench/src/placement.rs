//! The placement decision alone ([`prexor_domain::placement`]), without stores or processes: a
//! cluster of 1,000 nodes (three zones, a slow tier, a tenth of the ports of a shared range held)
//! and groups of several selectors, each placement recorded in the view before the next as the
//! fenced write would record it. What is left of a placement's cost in `scheduler`'s benchmark is
//! the store's.

use std::collections::BTreeMap;
use std::time::Instant;

use prexor_domain::placement::{Cluster, NodeView, Request, solve, solve_many};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::report::{Metric, Samples};

const NODES: usize = 1_000;
const ZONES: [&str; 3] = ["eu", "us", "ap"];

/// `n` single placements and `n / 10` batches of ten, over a fresh 1,000-node view each run.
pub fn run(n: usize) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(1_000);
    let cluster = cluster(&mut rng);
    let groups = groups();
    let mut singles = Vec::with_capacity(n);
    let mut view = cluster.clone();
    for i in 0..n {
        let request = &groups[i % groups.len()];
        let started = Instant::now();
        let choice = solve(&view, request);
        singles.push(started.elapsed().as_secs_f64() * 1000.0);
        match choice {
            Ok(choice) => view.commit(&choice, request.memory_mb),
            // The range ran out on every node: start again from the initial view.
            Err(_) => view = cluster.clone(),
        }
    }
    let mut batches = Vec::with_capacity(n / 10);
    for i in 0..(n / 10).max(10) {
        let mut view = cluster.clone();
        let request = &groups[i % groups.len()];
        let started = Instant::now();
        let (choices, why) = solve_many(&mut view, request, 10);
        batches.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(choices.len() == 10, "a batch of ten did not fit: {why:?}");
    }
    let singles = Samples::from_ms(singles);
    let per_second = 1000.0 / singles.percentile(50.0);
    print_us(
        "placement decision, 1,000 nodes (p50)",
        &singles,
        &format!("pure function over the view; {per_second:.0} decisions/s on one core"),
    );
    print_us(
        "placement decision, a batch of 10 on 1,000 nodes (p50)",
        &Samples::from_ms(batches),
        "one group's placements of a tick",
    );
    Ok(())
}

/// The median of `samples` (ms) in microseconds, with the p95 in the note.
fn print_us(name: &str, samples: &Samples, note: &str) {
    let mut metric = Metric::floor(name, samples.percentile(50.0) * 1000.0);
    metric.unit = "us";
    metric.target = Some(format!(
        "{note}; p95 {:.0} us",
        samples.percentile(95.0) * 1000.0
    ));
    metric.print();
}

/// 1,000 online nodes in three zones (every tenth a slow tier), of 16–64 GiB with some of it
/// reserved, a few instances each, and a tenth of the shared range's ports held on each host.
fn cluster(rng: &mut StdRng) -> Cluster {
    let nodes: Vec<NodeView> = (0..NODES)
        .map(|i| {
            let mut labels = BTreeMap::from([("zone".to_owned(), ZONES[i % 3].to_owned())]);
            if i % 10 == 0 {
                labels.insert("tier".into(), "slow".into());
            }
            let allocatable = 16_384 * rng.random_range(1..=4_i64);
            NodeView {
                id: format!("node-{i:04}"),
                online: true,
                cordoned: i % 97 == 0,
                host: Some(format!("host-{:04}", i / 2)),
                labels,
                allocatable_mb: Some(allocatable),
                reserved_mb: rng.random_range(0..allocatable / 2),
                group_instances: rng.random_range(0..3),
                instances: rng.random_range(0..20),
            }
        })
        .collect();
    let held: Vec<(String, u16)> = (0..NODES)
        .flat_map(|i| (0..10).map(move |k| (format!("node-{i:04}"), 25_565 + k * 10)))
        .collect();
    Cluster::new(nodes, held)
}

/// Groups of 1–4 GiB on a shared range of 100 ports: no selector, a zone, not the slow tier.
fn groups() -> Vec<Request> {
    (0..12)
        .map(|g| {
            let ports = 25_565..=25_664;
            let mut request = Request {
                affinity: BTreeMap::new(),
                anti_affinity: BTreeMap::new(),
                memory_mb: 1024 << (g % 3),
                first_port: prexor_domain::placement::first_port(&format!("group-{g}"), &ports),
                ports,
            };
            match g % 3 {
                1 => {
                    request
                        .affinity
                        .insert("zone".into(), ZONES[g % 3].to_owned());
                }
                2 => {
                    request.anti_affinity.insert("tier".into(), "slow".into());
                }
                _ => {}
            }
            request
        })
        .collect()
}
