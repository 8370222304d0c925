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
        admin.create_group(&name, &spec).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .map_err(|_| anyhow::anyhow!("no GROUP_CREATED for {name} within 10 s"))??
                .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            if event.json::<serde_json::Value>()?["subject"] == name.as_str() {
                break;
            }
        }
        // The first tenth warms up and is not recorded.
        if i >= n / 10 {
            timings.push(started.elapsed().as_secs_f64() * 1000.0);
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

    // GET /groups under wrk.
    match wrk(&format!("{}{API_PREFIX}/groups?bench", a.http), &token) {
        Ok((rps, p99)) => {
            Metric {
                name: "authenticated GET /groups throughput (wrk, 2 threads, 32 connections)"
                    .into(),
                value: rps,
                unit: "req/s",
                baseline: None,
                target: None,
            }
            .print();
            Metric::floor("authenticated GET /groups p99 under that load", p99).print();
        }
        Err(err) => eprintln!("GET /groups throughput not measured: {err:#}"),
    }
    print_rss(
        &a,
        "api RSS after the GET /groups load",
        "PrexorCloud sizes ~1 GiB heap + 1 MiB per instance per controller",
    )?;
    drop(b);
    Ok(())
}

/// Runs wrk for 10 s; (requests per second, p99 latency in ms).
fn wrk(url: &str, token: &str) -> anyhow::Result<(f64, f64)> {
    let output = Command::new("wrk")
        .args(["-t2", "-c32", "-d10s", "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}); install it: apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::to_owned);
    anyhow::ensure!(
        non_2xx.is_none(),
        "wrk saw errors: {}",
        non_2xx.unwrap_or_default()
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_wrk_duration(v.trim()))
        .ok_or_else(|| anyhow::anyhow!("no 99% latency in wrk output: {text}"))?;
    Ok((rps, p99))
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations() {
        assert_eq!(super::parse_wrk_duration("1.50ms"), Some(1.5));
        assert_eq!(super::parse_wrk_duration("500.00us"), Some(0.5));
        assert_eq!(super::parse_wrk_duration("1.00s"), Some(1000.0));
        assert_eq!(super::parse_wrk_duration("junk"), None);
    }
}
