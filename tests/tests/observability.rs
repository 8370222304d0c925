//! The metrics of a real cluster (docs/observability.md, "Metrics"): a CA, two gateways, a
//! daemon, an api and a scheduler, with a group running, each scraped on `/metrics`:
//!
//! - every name of `compose/observability/metrics.txt` is exported by at least one process (a
//!   histogram with `_bucket` series), every process exports the `process_*` metrics;
//! - histograms are histograms (buckets with `le`), never summaries;
//! - every series carries the process's `service` and `replica`, and no label carries a value
//!   that grows with the cluster (no `scope` label, no group name anywhere);
//!
//! then scraped by a real Prometheus server (Debian's `prometheus`, which `compose/dev install`
//! extracts into `.svc/prometheus/`; without it the test fails, it never skips), which must see
//! every target up and samples of every service.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use prexor_acceptance::{
    Cluster, Proc, Prometheus, create_group, listed_metrics, running, scenario_tests, spec_of,
    system,
};
use prexor_testkit::{Series, series};

const WITHIN: Duration = Duration::from_secs(60);

/// The group the test runs: its name must not appear in any label.
const GROUP: &str = "obs-lobby";

/// What every process exports about itself.
const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_threads",
    "process_start_time_seconds",
];

/// One process and what it says it is (`/healthz`): the `service` and `replica` of its series.
struct Target<'a> {
    proc: &'a Proc,
    service: String,
    replica: String,
}

async fn target(proc: &Proc) -> anyhow::Result<Target<'_>> {
    let (status, body) = proc.get("/healthz").await?;
    ensure!(status == 200, "{}: /healthz {status} {body}", proc.name);
    let health: serde_json::Value = serde_json::from_str(&body)?;
    let field = |name: &str| {
        health[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: /healthz without {name}: {body}", proc.name))
    };
    Ok(Target {
        proc,
        service: field("kind")?,
        replica: field("replicaId")?,
    })
}

/// The names of `listed` that no page exports (a histogram counts by its `_bucket` series).
fn missing(listed: &[String], pages: &[Vec<Series>]) -> Vec<String> {
    let exported: BTreeSet<&str> = pages.iter().flatten().map(|s| s.name.as_str()).collect();
    listed
        .iter()
        .filter(|name| {
            !exported.contains(name.as_str())
                && !exported.contains(format!("{name}_bucket").as_str())
        })
        .cloned()
        .collect()
}

/// The checks every page passes: labels, histograms, process metrics.
fn check_page(target: &Target<'_>, page: &str) -> anyhow::Result<()> {
    let name = &target.proc.name;
    let samples = series(page);
    ensure!(!samples.is_empty(), "{name}: an empty /metrics page");
    for sample in &samples {
        ensure!(
            sample.labels.get("service") == Some(&target.service)
                && sample.labels.get("replica") == Some(&target.replica),
            "{name}: {sample:?} lacks service={} replica={}",
            target.service,
            target.replica
        );
        ensure!(
            !sample.labels.contains_key("scope"),
            "{name}: {sample:?} is labelled by scope (unbounded)"
        );
        ensure!(
            sample.labels.values().all(|v| !v.contains(GROUP)),
            "{name}: {sample:?} names a group in a label (unbounded)"
        );
    }
    for (metric, kind) in page.lines().filter_map(|l| {
        let mut words = l.strip_prefix("# TYPE ")?.split_whitespace();
        Some((words.next()?, words.next()?))
    }) {
        ensure!(
            kind != "summary",
            "{name}: {metric} is a summary, not a histogram"
        );
        if kind == "histogram" {
            let bucket = format!("{metric}_bucket");
            ensure!(
                samples
                    .iter()
                    .any(|s| s.name == bucket && s.labels.get("le").is_some_and(|le| le == "+Inf")),
                "{name}: histogram {metric} without buckets"
            );
        }
    }
    for metric in PROCESS_METRICS {
        ensure!(
            samples.iter().any(|s| s.name == *metric),
            "{name}: no {metric}"
        );
    }
    Ok(())
}

async fn metrics_of_a_real_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    let system = system(cluster, &["node-1"], 1).await?;
    // Work for every part: a group placed and running (placements, node commands through the
    // gateways, reports), REST requests by route and one no route matches.
    create_group(&system.rest, GROUP, spec_of(GROUP, 1, &[])?).await?;
    running(cluster, &[&format!("{GROUP}-1")]).await?;
    let (status, body) = system.rest.get(&format!("/groups/{GROUP}")).await?;
    ensure!(status == 200, "GET /groups/{GROUP}: {status} {body}");
    let (status, body) = system.rest.get("/no-such-resource/1").await?;
    ensure!(status == 404, "an unknown path: {status} {body}");

    let procs: Vec<&Proc> = [&system.fleet.ca]
        .into_iter()
        .chain(&system.fleet.gateways)
        .chain(&system.fleet.daemons)
        .chain([&system.api])
        .chain(&system.schedulers)
        .collect();
    let mut targets = Vec::new();
    for proc in &procs {
        targets.push(target(proc).await?);
    }
    let services: BTreeSet<&str> = targets.iter().map(|t| t.service.as_str()).collect();
    ensure!(
        services == BTreeSet::from(["api", "ca", "daemon", "gateway", "scheduler"]),
        "{services:?}"
    );

    // (a) Every listed name is exported somewhere (some only after a tick or a heartbeat).
    let listed = listed_metrics()?;
    let deadline = Instant::now() + WITHIN;
    let pages = loop {
        let mut pages = Vec::new();
        for target in &targets {
            pages.push(target.proc.metrics_page().await?);
        }
        let parsed: Vec<Vec<Series>> = pages.iter().map(|p| series(p)).collect();
        let absent = missing(&listed, &parsed);
        if absent.is_empty() {
            break pages;
        }
        if Instant::now() > deadline {
            bail!("no process exports {absent:?} (compose/observability/metrics.txt)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (target, page) in targets.iter().zip(&pages) {
        check_page(target, page)?;
    }

    // (b) A real Prometheus scrapes every process and has samples of every service.
    let mut jobs: BTreeMap<String, Vec<&Proc>> = BTreeMap::new();
    for target in &targets {
        jobs.entry(target.service.clone())
            .or_default()
            .push(target.proc);
    }
    let prometheus = Prometheus::start(cluster, &jobs)?;
    prometheus
        .wait_for("up", targets.len(), WITHIN, |s| s["value"][1] == "1")
        .await?;
    for service in &services {
        for metric in [
            "prexor_replica_ready",
            "process_resident_memory_bytes",
            "prexor_http_request_duration_seconds_bucket",
        ] {
            let query = format!("{metric}{{service=\"{service}\"}}");
            prometheus.wait_for(&query, 1, WITHIN, |_| true).await?;
        }
    }
    prometheus
        .wait_for(
            "prexor_scheduler_tick_seconds_bucket{le=\"+Inf\"}",
            1,
            WITHIN,
            |s| s["metric"]["job"] == "prexor-scheduler",
        )
        .await?;
    drop(prometheus);

    system.finish(cluster, 0).await
}

scenario_tests! {
    every_listed_metric_is_exported_and_scraped_by_prometheus: metrics_of_a_real_cluster,
}
