//! The scheduler with real processes:
//!
//! - tick duration in steady state: one `prexor-scheduler` holding N groups (MANUAL, so nothing is
//!   placed) plus the platform-module scope; each tick's duration read from its metrics;
//! - placement throughput: two replicas placing STATIC groups on (recorded) nodes: plans
//!   persisted with memory and port reserved, per second;
//! - failover: SIGKILL of a group's holder → the group's fence raised by the new holder (TTL +
//!   one tick), and SIGTERM → hand-over (about one tick).

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use crate::Servers;
use crate::procs::{Proc, READY_WITHIN, Scratch, metric, print_rss, ready, replica};
use crate::report::Metric;

/// One value of a metric without labels from a Prometheus text page.
pub async fn run(servers: &Servers, sizes: &[usize], ticks: usize) -> anyhow::Result<()> {
    for &size in sizes {
        let dir = Scratch::new("scheduler")?;
        let db = mongodb::Client::with_uri_str(&servers.mongo_uri)
            .await?
            .database(&servers.database);
        db.collection::<Document>("groups")
            .delete_many(doc! {})
            .await?;
        fake_nodes(&db, 10).await?;
        db.collection::<Document>("instances")
            .delete_many(doc! {})
            .await?;
        seed_idle(&db, "bench", size).await?;
        let id = format!("scheduler-bench-{size}");
        let scheduler = ready(replica(servers, &dir.0, "scheduler", &id, "")?).await?;

        // Every scope held, nothing acquired any more. For CONVERGENCE_GRACE after taking a group
        // a replica judges it every tick; then only the groups whose inputs changed (and a tenth
        // of the settled ones). The ticks judging every group are reported on their own.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let page = scheduler.metrics_page().await?;
            if metric(&page, "prexor_scheduler_scopes_held") == Some((size + 1) as f64) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the scheduler never held all {size} groups"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut judging_all: Vec<f64> = Vec::new();
        let mut settled = false;
        let mut samples = Vec::new();
        let mut last_tick = None;
        let deadline = Instant::now() + Duration::from_secs(ticks as u64 * 5 + 60);
        while samples.len() < ticks {
            let page = scheduler.metrics_page().await?;
            let count = metric(&page, "prexor_scheduler_ticks_total");
            if count.is_some() && count != last_tick {
                if last_tick.is_some()
                    && let Some(took) = metric(&page, "prexor_scheduler_last_tick_seconds")
                {
                    let judged = metric(&page, "prexor_scheduler_groups_judged").unwrap_or(0.0);
                    // Settled: about the tenth re-judged each tick, no longer most of them.
                    settled |= judged <= size as f64 / 4.0;
                    if settled {
                        samples.push(took * 1000.0);
                    } else {
                        judging_all.push(took * 1000.0);
                    }
                }
                last_tick = count;
            }
            anyhow::ensure!(Instant::now() < deadline, "too few ticks observed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(worst) = judging_all.iter().copied().reduce(f64::max) {
            let mut m = Metric::floor(
                &format!("scheduler_tick_{size}_groups_taking_over_max"),
                worst,
            );
            m.target = Some(format!(
                "the {} ticks after taking the groups, judging most of them (the 5 s convergence grace); not steady state",
                judging_all.len()
            ));
            m.print();
        }
        samples.sort_by(f64::total_cmp);
        let pick = |p: f64| samples[((p / 100.0) * samples.len() as f64).ceil() as usize - 1];
        let target = match size {
            1000 => Some("p50 <= 5 ms, p95 <= 30 ms (PrexorCloud publishes 50 / 150 ms)"),
            10000 => Some("<= 10x the 1,000-group tick"),
            _ => None,
        };
        for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
            let mut m = Metric::floor(&format!("scheduler_tick_{size}_groups_{label}"), pick(p));
            m.target = target.map(|t| format!("{t}; {} ticks", samples.len()));
            m.print();
        }
        print_rss(
            &scheduler,
            &format!("scheduler RSS at {size} groups / {size} instances"),
            "PrexorCloud sizes ~1 GiB heap + 1 MiB per instance per controller",
        )?;
        // Where the last tick's time went.
        let page = scheduler.metrics_page().await?;
        for phase in [
            "sync",
            "scopes",
            "leases",
            "snapshot",
            "groups",
            "workflows",
        ] {
            let name = format!("prexor_scheduler_tick_phase_seconds{{phase=\"{phase}\"}}");
            if let Some(took) = metric(&page, &name) {
                Metric::floor(
                    &format!("scheduler_tick_{size}_groups_phase_{phase}"),
                    took * 1000.0,
                )
                .print();
            }
        }
        drop(scheduler);
        for collection in ["groups", "instances", "nodes"] {
            db.collection::<Document>(collection)
                .delete_many(doc! {})
                .await?;
        }
    }
    Ok(())
}

/// `count` MANUAL groups `<prefix>-00000`… (nothing is ever placed for them) with one RUNNING
/// instance record each, spread over ten nodes, so a tick or a list reads and judges them too.
pub(crate) async fn seed_idle(
    db: &mongodb::Database,
    prefix: &str,
    count: usize,
) -> anyhow::Result<()> {
    let spec = doc! {
        "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256_i64,
        "portRange": { "from": 30000, "to": 30099 },
        "minInstances": 0_i64, "maxInstances": 1_i64, "scaling": "MANUAL",
    };
    let groups: Vec<Document> = (0..count)
        .map(
            |i| doc! { "_id": format!("{prefix}-{i:05}"), "revision": 1_i64, "spec": spec.clone() },
        )
        .collect();
    let running: Vec<Document> = (0..count)
        .map(|i| {
            doc! {
                "_id": format!("{prefix}-{i:05}-1"), "group": format!("{prefix}-{i:05}"),
                "nodeId": format!("bench-node-{}", i % 10), "state": "RUNNING",
                "planHash": "bench", "port": 30000_i64 + (i / 10) as i64, "memoryMb": 256_i64,
                "attempt": 1_i64, "reported": { "state": "RUNNING", "planHash": "bench" },
            }
        })
        .collect();
    for chunk in groups.chunks(1000) {
        db.collection::<Document>("groups")
            .insert_many(chunk.to_vec())
            .await?;
    }
    for chunk in running.chunks(1000) {
        db.collection::<Document>("instances")
            .insert_many(chunk.to_vec())
            .await?;
    }
    Ok(())
}

async fn db(servers: &Servers) -> anyhow::Result<mongodb::Database> {
    Ok(mongodb::Client::with_uri_str(&servers.mongo_uri)
        .await?
        .database(&servers.database))
}

/// Nodes as a gateway records them (online, room for everything), so the schedulers place on them.
async fn fake_nodes(db: &mongodb::Database, count: usize) -> anyhow::Result<()> {
    let nodes = db.collection::<Document>("nodes");
    for i in 0..count {
        nodes
            .insert_one(doc! {
                "_id": format!("bench-node-{i}"),
                "state": "ONLINE",
                "labels": {},
                "resources": { "memoryAllocatableMb": 100_000_000_i64 },
            })
            .await?;
    }
    Ok(())
}

fn static_spec(min: i64) -> Document {
    doc! {
        "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 64_i64,
        "portRange": { "from": 20000, "to": 29999 },
        "minInstances": min, "maxInstances": min, "scaling": "STATIC",
    }
}

/// Placements per second with two scheduler replicas: `groups` STATIC groups of `per_group`,
/// written at once while both replicas run, on four recorded nodes without daemons (each start
/// is dispatched and deferred: no gateway has a session with them).
pub async fn placements(servers: &Servers, groups: usize, per_group: usize) -> anyhow::Result<()> {
    let servers = &servers.fresh("placements");
    let dir = Scratch::new("placements")?;
    let db = db(servers).await?;
    fake_nodes(&db, 4).await?;
    // Both replicas up and sharing the (only) platform scope first, so the groups are split
    // between them from the start and nothing is handed over mid-way.
    let replicas = [
        ready(replica(servers, &dir.0, "scheduler", "place-a", "")?).await?,
        ready(replica(servers, &dir.0, "scheduler", "place-b", "")?).await?,
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = 0;
        for replica in &replicas {
            held += replica.leases_held().await?.len();
        }
        if held == 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the platform scope was never held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let docs: Vec<Document> = (0..groups)
        .map(|i| doc! { "_id": format!("place-{i:03}"), "revision": 1_i64, "spec": static_spec(per_group as i64) })
        .collect();
    let created_ms = prexor_domain::now_ms();
    db.collection::<Document>("groups")
        .insert_many(docs)
        .await?;
    let total = (groups * per_group) as u64;
    let instances = db.collection::<Document>("instances");
    let deadline = Instant::now() + Duration::from_secs(600);
    while instances
        .count_documents(doc! { "planHash": { "$exists": true } })
        .await?
        < total
    {
        anyhow::ensure!(Instant::now() < deadline, "not every instance was placed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // From the first plan persisted to the last, as the schedulers stamped them.
    let mut times: Vec<i64> = Vec::new();
    let mut cursor = instances.find(doc! {}).await?;
    while cursor.advance().await? {
        if let Ok(at) = cursor.deserialize_current()?.get_i64("scheduledAtMs") {
            times.push(at);
        }
    }
    times.sort_unstable();
    let span_s = (times[times.len() - 1] - times[0]).max(1) as f64 / 1000.0;
    let since_created_s = (times[times.len() - 1] - created_ms).max(1) as f64 / 1000.0;
    let ports: std::collections::HashSet<(String, i64)> = db
        .collection::<Document>("port_reservations")
        .find(doc! {})
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("nodeId").ok()?.to_owned(),
                d.get_i64("port").ok()?,
            ))
        })
        .collect();
    anyhow::ensure!(
        ports.len() as u64 == total,
        "every placement holds its own port ({} for {total})",
        ports.len()
    );
    Metric {
        name: "placements per second (2 scheduler replicas)".into(),
        value: (total - 1) as f64 / span_s,
        unit: "placements/s",
        baseline: None,
        target: Some(format!("{groups} groups x {per_group}, first plan persisted to last; each group's placements of a tick (plans, memory, ports) in one fenced transaction; Agones ~300-400 allocations/s")),
    }
    .print();
    Metric {
        name: format!("{groups} groups x {per_group}: groups written -> every plan persisted"),
        value: since_created_s,
        unit: "s",
        baseline: None,
        target: Some("includes waiting for the schedulers' next tick (1 s here)".into()),
    }
    .print();
    Ok(())
}

/// The fence mark of `scope` (raised by every acquisition).
async fn mark(db: &mongodb::Database, scope: &str) -> anyhow::Result<i64> {
    Ok(db
        .collection::<Document>("fences")
        .find_one(doc! { "_id": scope })
        .await?
        .and_then(|d| d.get_i64("mark").ok())
        .unwrap_or(0))
}

/// Waits until `scope`'s mark exceeds `above`; the time it took.
async fn raised(
    db: &mongodb::Database,
    scope: &str,
    above: i64,
    since: Instant,
) -> anyhow::Result<f64> {
    loop {
        if mark(db, scope).await? > above {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(60),
            "{scope} was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGKILL → takeover and SIGTERM → hand-over of one group, `rounds` times each.
pub async fn failover(servers: &Servers, rounds: usize) -> anyhow::Result<()> {
    let servers = &servers.fresh("failover");
    let dir = Scratch::new("failover")?;
    let db = db(servers).await?;
    db.collection::<Document>("groups")
        .insert_one(doc! { "_id": "fo", "revision": 1_i64, "spec": static_spec(0) })
        .await?;
    let scope = "group:fo";
    let mut replicas = vec![
        ready(replica(servers, &dir.0, "scheduler", "fo-a", "")?).await?,
        ready(replica(servers, &dir.0, "scheduler", "fo-b", "")?).await?,
    ];
    let (mut kills, mut terms) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let holder = loop {
            if let Some(i) = holder_of(scope, &replicas).await {
                break i;
            }
            anyhow::ensure!(Instant::now() < deadline, "nobody holds {scope}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let before = mark(&db, scope).await?;
        let started = Instant::now();
        if round % 2 == 0 {
            replicas[holder].kill();
            kills.push(raised(&db, scope, before, started).await?);
        } else {
            replicas[holder].sigterm();
            replicas[holder].wait_exit(READY_WITHIN).await?;
            terms.push(raised(&db, scope, before, started).await?);
        }
        replicas[holder].restart(READY_WITHIN).await?;
    }
    for (name, samples) in [
        ("group takeover after SIGKILL of its holder", kills),
        ("group hand-over after SIGTERM of its holder", terms),
    ] {
        let samples = crate::report::Samples::from_ms(samples);
        for (label, p) in [("median", 50.0), ("p95", 95.0)] {
            let mut m = Metric::floor(&format!("{name} ({label})"), samples.percentile(p));
            m.target = Some(format!(
                "TTL + one tick after SIGKILL, about one tick after SIGTERM; min {:.0} / max {:.0} ms over {} rounds",
                samples.percentile(0.0),
                samples.percentile(100.0),
                rounds
            ));
            m.print();
        }
    }
    // Writes a deposed holder still sent and MongoDB refused, as the live replicas count them.
    // With self-fencing a holder that loses its lease stops before writing, so this stays 0
    // unless a replica paused mid-write (tests/tests/gc_pause.rs provokes exactly that).
    let mut stale = 0.0;
    for replica in &replicas {
        let page = replica.metrics_page().await?;
        stale += metric(&page, "prexor_fenced_writes_total{result=\"stale\"}").unwrap_or(0.0);
    }
    Metric {
        name: "stale fenced writes refused during the failovers".into(),
        value: stale,
        unit: "writes",
        baseline: None,
        target: Some("deposed holders fence themselves off before writing".into()),
    }
    .print();
    Ok(())
}

/// The replica holding `scope` (from each replica's status).
async fn holder_of(scope: &str, replicas: &[Proc]) -> Option<usize> {
    for (i, replica) in replicas.iter().enumerate() {
        if replica
            .leases_held()
            .await
            .is_ok_and(|held| held.iter().any(|l| l == scope))
        {
            return Some(i);
        }
    }
    None
}
