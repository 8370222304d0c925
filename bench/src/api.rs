//! The REST API with real replicas:
//!
//! - cold start: process start → first 200 on `/api/v1/system/status` (signed in), median of
//!   several starts (PrexorCloud targets 8 s);
//! - event latency: `POST /groups` on replica A → `GROUP_CREATED` at an SSE client on replica B
//!   (PrexorCloud targets p50 50 ms / p95 200 ms), next to the raw Valkey round trip;
//! - authenticated `GET /groups` under `wrk` on loopback: requests per second and p99.

use std::process::Command;
use std::time::{Duration, Instant};

use prexor_client::{API_PREFIX, Body, Client, GroupSpec, Method};
use serde_json::json;

use crate::Servers;
use crate::procs::{Proc, Scratch, binary, print_rss, ready, replica};
use crate::report::{Metric, Samples};

const COLD_STARTS: usize = 7;

/// Runs `prexor-api bootstrap-admin` with `api`'s configuration; the admin password.
pub(crate) fn bootstrap(api: &Proc, dir: &std::path::Path) -> anyhow::Result<String> {
    let file = dir.join("admin.password");
    let output = Command::new(binary("prexor-api")?)
        .arg("--config")
        .arg(api.config())
        .args(["bootstrap-admin", "--password-file"])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "bootstrap-admin failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(std::fs::read_to_string(file)?)
}

/// A REST client for `api`, signed in as the admin.
pub(crate) async fn login(api: &Proc, password: &str) -> anyhow::Result<Client> {
    let client = Client::builder(&api.http).build()?;
    let session = client.login("admin", password).await?;
    Ok(client.with_token(Some(session.token)))
}

/// A MANUAL group of the fake server that never starts anything by itself.
fn idle_spec() -> anyhow::Result<GroupSpec> {
    Ok(serde_json::from_value(json!({
        "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 64,
        "portRange": { "from": 40000, "to": 40009 }, "minInstances": 0, "maxInstances": 1,
        "scaling": "MANUAL",
    }))?)
}

pub async fn run(servers: &Servers, n: usize) -> anyhow::Result<()> {
    let dir = Scratch::new("api")?;
    let a = ready(replica(servers, &dir.0, "api", "api-a", "")?).await?;
    let b = ready(replica(servers, &dir.0, "api", "api-b", "")?).await?;
    let password = bootstrap(&a, &dir.0)?;
    let admin = login(&a, &password).await?;
    let token = admin.token().unwrap_or_default().to_owned();

    // Cold start.
    let mut starts = Vec::new();
    for i in 0..COLD_STARTS {
        let started = Instant::now();
        let mut cold = replica(servers, &dir.0, "api", &format!("api-cold-{i}"), "")?.start()?;
        let on_cold = admin.with_controller(&cold.http)?;
        loop {
            let ok = on_cold
                .status_of(Method::GET, "/system/status", Body::Empty)
                .await
                .is_ok_and(|status| (200..300).contains(&status));
            if ok {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "api-cold-{i} did not answer"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        starts.push(started.elapsed().as_secs_f64() * 1000.0);
        cold.kill();
    }
    starts.sort_by(f64::total_cmp);
    let mut cold = Metric::floor(
        "api cold start to first 200 on /api/v1/system/status (median)",
        starts[starts.len() / 2],
    );
    cold.target = Some("PrexorCloud 8000 ms; ours < 500 ms".into());
    cold.print();
    Metric::floor("api cold start (min)", starts[0]).print();
    Metric::floor("api cold start (max)", starts[starts.len() - 1]).print();

    // Event latency, cross-replica.
    let floors = crate::stack::run(servers, n).await?;
    let mut events = admin
        .with_controller(&b.http)?
        .events("/events?types=GROUP_CREATED", None)
        .await?;
    let spec = idle_spec()?;
    let mut timings = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let name = format!("bench-{i}");
        let started = Instant::now();
        // The event is timed from the request, not from its answer: the answer also waits for
        // the audit entry, which the event does not.
        let post = tokio::spawn({
            let (admin, name, spec) = (admin.clone(), name.clone(), spec.clone());
            async move { admin.create_group(&name, &spec).await }
        });
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .map_err(|_| anyhow::anyhow!("no GROUP_CREATED for {name} within 10 s"))??
                .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            if event.json::<serde_json::Value>()?["subject"] == name.as_str() {
                break;
            }
        }
        let seen = started.elapsed().as_secs_f64() * 1000.0;
        post.await??;
        // The first tenth warms up and is not recorded.
        if i >= n / 10 {
            timings.push(seen);
        }
    }
    let samples = Samples::from_ms(timings);
    Metric::against(
        "POST /groups on A -> GROUP_CREATED over SSE on B p50",
        samples.percentile(50.0),
        &floors.valkey_set_get_p50,
        "PrexorCloud 50 ms; ours <= 5 ms",
    )
    .print();
    Metric::against(
        "POST /groups on A -> GROUP_CREATED over SSE on B p95",
        samples.percentile(95.0),
        &floors.valkey_set_get_p95,
        "PrexorCloud 200 ms; ours <= 20 ms",
    )
    .print();
    // What the path cannot go below: the group's insert (durable before it is announced), then
    // one Valkey round trip each way (XADD on A, XREAD on B).
    let durable_then_told = Metric::floor(
        "mongo_insert_p50 + valkey_set_get_p50",
        floors.mongo_insert_p50.value + floors.valkey_set_get_p50.value,
    );
    Metric::against(
        "POST /groups on A -> GROUP_CREATED over SSE on B p50, against a durable write and a Valkey round trip",
        samples.percentile(50.0),
        &durable_then_told,
        "HTTP, validation and the SSE hop on top of the insert and the Valkey round trip",
    )
    .print();

    // GET /groups under wrk (a benchmark that cannot run fails, it never drops a row).
    let load = crate::wrk::run(
        &format!("{}{API_PREFIX}/groups?bench", a.http),
        Some(&token),
    )?;
    Metric {
        name: "authenticated GET /groups throughput (wrk, 32 connections)".into(),
        value: load.rps,
        unit: "req/s",
        baseline: None,
        target: None,
    }
    .print();
    Metric::floor("authenticated GET /groups p99 under that load", load.p99_ms).print();
    print_rss(
        &a,
        "api RSS after the GET /groups load",
        "PrexorCloud sizes ~1 GiB heap + 1 MiB per instance per controller",
    )?;
    drop(b);
    Ok(())
}
