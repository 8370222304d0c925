//! Foundation: every service starts against real stores, reports health and readiness (also to
//! its own `--probe` and to systemd's notification socket), registers itself, exposes metrics and
//! gRPC health, and stops cleanly on SIGTERM. Bad configuration fails at boot with every problem
//! listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use prexor_acceptance::{
    Cluster, Rest, binary, free_port, grpc_health, run_ok, scenario_tests, wait_unready_because,
};
use prexor_proto::v1::GetStatusRequest;
use prexor_proto::v1::replica_status_client::ReplicaStatusClient;
use serde_json::Value;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn replica_ids(api: &Rest) -> anyhow::Result<Vec<String>> {
    let (status, value) = api.get("/system/status").await?;
    ensure!(status == 200, "system/status answered {status}: {value}");
    ensure!(value["coordination"]["store"] == "available", "{value}");
    let mut ids: Vec<String> = value["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Polls `system/status` until it lists exactly `expected` (heartbeats are asynchronous).
async fn wait_for_replicas(api: &Rest, expected: &[&str]) -> anyhow::Result<()> {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let mut last = Vec::new();
    for _ in 0..200 {
        last = replica_ids(api).await?;
        if last == expected {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("system/status lists {last:?}, expected {expected:?}")
}

/// A stand-in for systemd's notification socket (`NOTIFY_SOCKET`): every datagram a process
/// sends to it.
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> anyhow::Result<NotifySocket> {
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let got = got.clone();
            async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok(n) = socket.recv(&mut buffer).await {
                    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    got.lock().expect("notify lock").push(message);
                }
            }
        });
        Ok(NotifySocket { path, got, task })
    }

    /// Waits until a message with the line `line` arrived; every message so far.
    async fn wait_for(&self, line: &str) -> anyhow::Result<Vec<String>> {
        for _ in 0..100 {
            let got = self.got.lock().expect("notify lock").clone();
            if got.iter().any(|m| m.lines().any(|l| l == line)) {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "no {line} on the notification socket: {:?}",
            self.got.lock().expect("notify lock")
        )
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `<binary> --probe --config <its configuration>`: whether it said ready, and what it said.
fn probe(proc: &prexor_acceptance::Proc, kind: &str) -> anyhow::Result<(bool, String)> {
    let out = Command::new(binary(&format!("prexor-{kind}"))?)
        .arg("--probe")
        .arg("--config")
        .arg(proc.config())
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

async fn every_service(cluster: &Cluster) -> anyhow::Result<()> {
    let systemd = NotifySocket::bind(cluster.dir.join("notify.sock"))?;
    let notify_socket = systemd.path.display().to_string();
    let mut procs = vec![
        cluster.service("api", "api-1", "")?,
        cluster.service("api", "api-2", "")?,
        cluster.service("gateway", "gateway-1", "")?,
        cluster.service("gateway", "gateway-2", "")?,
        cluster.service("scheduler", "scheduler-1", "")?,
        // Started as by a `Type=notify` unit.
        cluster.service_with_env(
            "scheduler",
            "scheduler-2",
            &[("NOTIFY_SOCKET", notify_socket.as_str())],
        )?,
        cluster.service(
            "ca",
            "ca-1",
            &format!("[ca]\ndataDir = \"{}\"\n", cluster.dir.join("ca").display()),
        )?,
    ];
    for proc in &mut procs {
        proc.wait_ready(READY_WITHIN).await?;
    }
    let all = [
        "api-1",
        "api-2",
        "ca-1",
        "gateway-1",
        "gateway-2",
        "scheduler-1",
        "scheduler-2",
    ];

    for proc in &procs {
        let (status, body) = proc.get("/healthz").await?;
        ensure!(status == 200, "{}: /healthz {status}", proc.name);
        let health: Value = serde_json::from_str(&body)?;
        ensure!(health["replicaId"] == proc.name.as_str(), "{body}");
        let (status, body) = proc.get("/readyz").await?;
        ensure!(
            status == 200 && body.contains("\"ready\":true"),
            "{}: /readyz {status} {body}",
            proc.name
        );
        let (status, metrics) = proc.get("/metrics").await?;
        ensure!(status == 200, "{}: /metrics {status}", proc.name);
        ensure!(
            metrics.contains("prexor_build_info{"),
            "{}: {metrics}",
            proc.name
        );
        if let Some(grpc) = &proc.grpc {
            // The internal port completes handshakes once the replica has its certificate,
            // which a scheduler (serving nothing of its own) may get just after it is ready.
            let mut health = String::from("never asked");
            for _ in 0..100 {
                health = match grpc_health(cluster.internal_channel(proc).await?).await {
                    Ok(status) => status,
                    Err(err) => format!("{err:#}"),
                };
                if health == "SERVING" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ensure!(health == "SERVING", "{}: gRPC health: {health}", proc.name);
            // The internal port speaks only TLS: a plaintext call gets no answer.
            let plain =
                tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect_lazy();
            ensure!(
                grpc_health(plain).await.is_err(),
                "{}: plaintext gRPC was answered",
                proc.name
            );
        }
    }

    // Each is ready to its own probe (the healthcheck of its container); scheduler-2 told
    // systemd once it was.
    for (proc, kind) in procs.iter().zip([
        "api",
        "api",
        "gateway",
        "gateway",
        "scheduler",
        "scheduler",
        "ca",
    ]) {
        let (ready, said) = probe(proc, kind)?;
        ensure!(
            ready && said.starts_with("ready ("),
            "{}: {said}",
            proc.name
        );
    }
    let told = systemd.wait_for("READY=1").await?;
    ensure!(
        told.iter().any(|m| m.lines().any(|l| l == "STATUS=ready")),
        "{told:?}"
    );

    let scheduler = &procs[4];
    let mut client = ReplicaStatusClient::new(cluster.internal_channel(scheduler).await?);
    let report = client.get_status(GetStatusRequest {}).await?.into_inner();
    ensure!(
        report.kind == "scheduler" && report.replica_id == "scheduler-1",
        "{report:?}"
    );
    ensure!(report.ready && report.profile == "production", "{report:?}");
    ensure!(
        report.checks.iter().any(|c| c.name == "mongo" && c.ok),
        "{report:?}"
    );

    // Any api replica lists every replica of every service (to a signed-in operator).
    let password = cluster.bootstrap_admin("admin")?;
    let token = procs[0].login("admin", &password).await?;
    let (status, _) = procs[1].get("/api/v1/system/status").await?;
    ensure!(
        status == 401,
        "system/status without a session answered {status}"
    );
    wait_for_replicas(&procs[1].rest(&token), &all).await?;
    let info: Value = serde_json::from_str(&procs[0].get("/api/v1/system/info").await?.1)?;
    ensure!(
        info["profile"] == "production" && info["replicaId"] == "api-1",
        "{info}"
    );
    let (status, body) = procs[0].get("/api/v1/nope").await?;
    ensure!(
        status == 404 && body.contains("\"code\":\"NOT_FOUND\""),
        "{status} {body}"
    );

    // prexorctl shows the same, and exits 0 while everything is healthy.
    let ctl = Command::new(binary("prexorctl")?)
        .args(["--controller", &procs[1].http, "--token", &token, "status"])
        .env("PREXORCTL_CONFIG", cluster.dir.join("prexorctl.json"))
        .output()?;
    let table = String::from_utf8_lossy(&ctl.stdout);
    ensure!(
        ctl.status.success(),
        "prexorctl status failed: {table} {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    ensure!(all.iter().all(|id| table.contains(id)), "{table}");
    ensure!(table.contains("coordination.store = available"), "{table}");
    let ctl = Command::new(binary("prexorctl")?)
        .args([
            "--controller",
            &procs[0].http,
            "-o",
            "json",
            "system",
            "info",
        ])
        .env("PREXORCTL_CONFIG", cluster.dir.join("prexorctl.json"))
        .output()?;
    let json: Value = serde_json::from_slice(&ctl.stdout)?;
    ensure!(json["version"].is_string(), "{json}");

    // SIGTERM: a clean exit, and the replica leaves the registry at once.
    let mut scheduler_2 = procs.remove(5);
    scheduler_2.stop(EXIT_WITHIN).await?;
    ensure!(
        scheduler_2.log_text().contains("stopped"),
        "{}",
        scheduler_2.log_text()
    );
    systemd.wait_for("STOPPING=1").await?;
    let (ready, said) = probe(&scheduler_2, "scheduler")?;
    ensure!(
        !ready && said.contains("not answering at http://"),
        "{said}"
    );
    let left: Vec<&str> = all.into_iter().filter(|id| *id != "scheduler-2").collect();
    wait_for_replicas(&procs[0].rest(&token), &left).await?;

    for proc in &procs {
        proc.sigterm();
    }
    for proc in &mut procs {
        let status = proc.wait_exit(EXIT_WITHIN).await?;
        ensure!(
            status.success(),
            "{} exited with {status}:\n{}",
            proc.name,
            proc.log_text()
        );
    }
    Ok(())
}

async fn unreachable_stores(cluster: &Cluster) -> anyhow::Result<()> {
    // Nothing listens on this port: the replica must stay up, unready, and say why.
    let dead_mongo = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
    let base = cluster
        .common_toml("scheduler-deadmongo")
        .replace(&cluster.stores.mongo_uri, &dead_mongo)
        .replace("[mongo]\n", "[mongo]\ntimeout = \"300ms\"\n");
    let mut proc = cluster.service_from("scheduler", "scheduler-deadmongo", &base, "")?;
    wait_unready_because(&proc, &format!("waiting for MongoDB at {dead_mongo}")).await?;
    ensure!(
        proc.get("/healthz").await?.0 == 200,
        "the process itself is healthy"
    );
    // Its probe (a container's healthcheck) fails, saying why.
    let (ready, said) = probe(&proc, "scheduler")?;
    ensure!(
        !ready && said.contains("not ready") && said.contains("waiting for MongoDB"),
        "{said}"
    );
    // A replica stopped while waiting exits cleanly.
    proc.stop(EXIT_WITHIN).await?;

    // Production with MongoDB up but Valkey unreachable.
    let dead_valkey = format!("redis://127.0.0.1:{}", free_port());
    let base = cluster
        .common_toml("scheduler-deadvalkey")
        .replace(&cluster.stores.valkey_url, &dead_valkey);
    let mut proc = cluster.service_from("scheduler", "scheduler-deadvalkey", &base, "")?;
    wait_unready_because(&proc, &format!("waiting for Valkey at {dead_valkey}")).await?;
    proc.stop(EXIT_WITHIN).await?;
    Ok(())
}

async fn bad_config(cluster: &Cluster) -> anyhow::Result<()> {
    // `name --config FILE ARGS…` (with `env` added) refuses its configuration: exit 2; its stderr.
    let refused = |name: &str, config: &Path, args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(binary(name)?)
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("PREXOR_CONFIG")
            .envs(env.iter().copied())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.code() == Some(2),
            "{name}: exit {:?}: {stderr}",
            out.status
        );
        anyhow::Ok(stderr)
    };
    let bad = cluster.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[runtime]\nprofile = \"staging\"\n[scheduler]\nevaluationIntervalSeconds = 0\n",
    )?;
    let stderr = refused("prexor-scheduler", &bad, &[], &[])?;
    for needle in [
        "invalid configuration (3 problems)",
        "runtime.profile: unknown profile \"staging\"",
        "mongo.uri: is required",
        "scheduler.evaluationIntervalSeconds: is 0",
    ] {
        ensure!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }

    std::fs::write(
        &bad,
        "runtime.profile = \"production\"\nmongo.uri = \"mongodb://127.0.0.1:1/\"\n",
    )?;
    let stderr = refused("prexor-api", &bad, &[], &[])?;
    ensure!(
        stderr.contains("valkey.uri: is required when runtime.profile = \"production\""),
        "{stderr}"
    );

    let good = cluster.dir.join("good.toml");
    std::fs::write(&good, cluster.common_toml("api-check"))?;
    run_ok(
        Command::new(binary("prexor-api")?)
            .arg("--config")
            .arg(&good)
            .arg("--check-config"),
        "prexor-api --check-config",
    )?;
    let env = [("PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS", "-1")];
    let stderr = refused("prexor-api", &good, &["--check-config"], &env)?;
    ensure!(
        stderr.contains("set by PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS"),
        "{stderr}"
    );
    Ok(())
}

async fn development_single_writer(cluster: &Cluster) -> anyhow::Result<()> {
    // A development-profile scheduler replica `id` on ports `http` and `grpc`.
    let dev = |id: &str, (http, grpc): (u16, u16)| {
        let toml = format!(
            "[replica]\nid = \"{id}\"\n[mongo]\nuri = \"{}\"\ndatabase = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n",
            cluster.stores.mongo_uri, cluster.stores.database
        );
        cluster.spawn(
            "prexor-scheduler",
            id,
            &toml,
            http,
            Some(grpc),
            &BTreeMap::new(),
            &[],
        )
    };
    let (ports_1, ports_2) = ((free_port(), free_port()), (free_port(), free_port()));
    let mut first = dev("dev-1", ports_1)?;
    first.wait_ready(READY_WITHIN).await?;
    let (_, body) = first.get("/readyz").await?;
    ensure!(body.contains("\"ready\":true"), "{body}");
    let mut second = dev("dev-2", ports_2)?;
    let status = second.wait_exit(READY_WITHIN).await?;
    let log = second.log_text();
    ensure!(status.code() == Some(1), "{status}: {log}");
    ensure!(
        log.contains("another scheduler replica (dev-1) is already running against database"),
        "{log}"
    );

    first.stop(EXIT_WITHIN).await?;
    // The slot was released on the clean stop: a new development replica starts at once.
    let mut third = dev("dev-3", ports_2)?;
    third.wait_ready(READY_WITHIN).await?;
    third.stop(EXIT_WITHIN).await?;
    Ok(())
}

scenario_tests! {
    every_service_starts_registers_and_stops_cleanly: every_service,
    unreachable_stores_make_a_replica_unready_not_dead: unreachable_stores,
    bad_configuration_fails_at_boot_listing_every_problem: bad_config,
    the_development_profile_refuses_a_second_replica: development_single_writer,
}
