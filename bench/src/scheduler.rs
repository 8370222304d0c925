//! Scheduler tick duration in steady state: one real `prexor-scheduler` holding N groups
//! (MANUAL, so nothing is placed) plus the platform-module scope. Each tick renews nothing itself
//! (the keeper does), lists the scopes and replicas and takes one snapshot of the held groups;
//! the benchmark reads each tick's duration from the scheduler's metrics.

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};

use crate::Servers;
use crate::procs::{Proc, Scratch};
use crate::report::Metric;

/// One value of a metric without labels from a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_page(proc: &Proc) -> anyhow::Result<String> {
    Ok(
        reqwest::get(format!("http://127.0.0.1:{}/metrics", proc.http))
            .await?
            .text()
            .await?,
    )
}

pub async fn run(servers: &Servers, sizes: &[usize], ticks: usize) -> anyhow::Result<()> {
    for &size in sizes {
        let dir = Scratch::new("scheduler")?;
        let db = mongodb::Client::with_uri_str(&servers.mongo_uri)
            .await?
            .database(&servers.database);
        let groups = db.collection::<Document>("groups");
        groups.delete_many(doc! {}).await?;
        let spec = doc! {
            "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256_i64,
            "portRange": { "from": 30000, "to": 30099 },
            "minInstances": 0_i64, "maxInstances": 1_i64, "scaling": "MANUAL",
        };
        let docs: Vec<Document> = (0..size)
            .map(|i| doc! { "_id": format!("bench-{i:05}"), "revision": 1_i64, "spec": spec.clone() })
            .collect();
        for chunk in docs.chunks(1000) {
            groups.insert_many(chunk.to_vec()).await?;
        }
        let id = format!("scheduler-bench-{size}");
        let scheduler = Proc::service(servers, &dir.0, "scheduler", &id, "", &[]).await?;

        // Steady state: every scope held, nothing acquired any more.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let page = metrics_page(&scheduler).await?;
            if metric(&page, "prexor_scheduler_scopes_held") == Some((size + 1) as f64) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the scheduler never held all {size} groups"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut samples = Vec::new();
        let mut last_tick = None;
        let deadline = Instant::now() + Duration::from_secs(ticks as u64 * 5 + 30);
        while samples.len() < ticks {
            let page = metrics_page(&scheduler).await?;
            let count = metric(&page, "prexor_scheduler_ticks_total");
            if count.is_some() && count != last_tick {
                if last_tick.is_some()
                    && let Some(took) = metric(&page, "prexor_scheduler_last_tick_seconds")
                {
                    samples.push(took * 1000.0);
                }
                last_tick = count;
            }
            anyhow::ensure!(Instant::now() < deadline, "too few ticks observed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples.sort_by(f64::total_cmp);
        let pick = |p: f64| samples[((p / 100.0) * samples.len() as f64).ceil() as usize - 1];
        let target = match size {
            1000 => Some("p50 <= 10 ms, p95 <= 30 ms (PrexorCloud publishes 50 / 150 ms)"),
            _ => None,
        };
        for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
            let mut m = Metric::floor(&format!("scheduler_tick_{size}_groups_{label}"), pick(p));
            m.target = target.map(|t| format!("{t}; {} ticks", samples.len()));
            m.print();
        }
        // Where the last tick's time went.
        let page = metrics_page(&scheduler).await?;
        for phase in ["scopes", "leases", "snapshot", "groups"] {
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
        groups.delete_many(doc! {}).await?;
    }
    Ok(())
}
