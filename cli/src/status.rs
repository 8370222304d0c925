use std::process::ExitCode;

use serde::Deserialize;
use serde_json::Value;

use crate::Output;
use prexor_client::Client;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    replicas: Vec<Replica>,
    coordination: Coordination,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Replica {
    kind: String,
    id: String,
    version: String,
    http_address: String,
    grpc_address: Option<String>,
    ready: bool,
    leases_held: u64,
    heartbeat_age_ms: u64,
    #[serde(default)]
    notes: Vec<String>,
    clock: Clock,
    /// Whether the replica's Valkey is the cluster's coordination store.
    #[serde(default)]
    coordination: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Clock {
    synchronized: bool,
    skew_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Coordination {
    store: String,
    backend: String,
    error: Option<String>,
}

/// `prexorctl status`.
pub async fn status(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let raw: Value = client.get("/system/status").await?;
    let status: Status = serde_json::from_value(raw.clone())?;
    let healthy = status.coordination.store == "available"
        && !status.replicas.is_empty()
        && status.replicas.iter().all(|r| {
            r.ready
                && r.clock.synchronized
                && r.coordination.as_deref().is_none_or(|c| c == "available")
        });
    match output {
        _ if !output.human() => crate::render::object(&raw, output)?,
        Output::Name => {
            for r in &status.replicas {
                println!("{}", r.id);
            }
        }
        _ => {
            let headers = [
                "KIND",
                "ID",
                "VERSION",
                "ADDRESS",
                "READY",
                "HEARTBEAT",
                "LEASES",
                "STORE",
                "CLOCK",
                "NOTES",
            ];
            let mut rows = Vec::new();
            for r in &status.replicas {
                let address = match &r.grpc_address {
                    Some(grpc) => format!("{} (grpc {grpc})", r.http_address),
                    None => r.http_address.clone(),
                };
                rows.push(vec![
                    r.kind.clone(),
                    r.id.clone(),
                    r.version.clone(),
                    address,
                    if r.ready { "yes".into() } else { "NO".into() },
                    format!("{:.1}s ago", r.heartbeat_age_ms as f64 / 1000.0),
                    r.leases_held.to_string(),
                    r.coordination.clone().unwrap_or_else(|| "-".into()),
                    match (r.clock.synchronized, r.clock.skew_ms) {
                        (true, Some(skew)) => format!("synchronized ({skew:+} ms)"),
                        (false, Some(skew)) => format!("NOT synchronized ({skew:+} ms)"),
                        (_, None) => "not measured".into(),
                    },
                    if r.notes.is_empty() {
                        "-".into()
                    } else {
                        r.notes.join("; ")
                    },
                ]);
            }
            println!("{}", crate::render::table(&headers, &rows));
            println!(
                "coordination.store = {} ({}){}",
                status.coordination.store,
                status.coordination.backend,
                status
                    .coordination
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if healthy {
        Ok(ExitCode::SUCCESS)
    } else {
        if output.human() {
            eprintln!(
                "unhealthy: a replica is not ready, a clock is not synchronized (clock.synchronized=false: run chronyd or systemd-timesyncd), or the coordination store is unavailable or mismatched (all replicas must use the same Valkey)"
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `prexorctl system info`.
pub async fn info(client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let info: Value = client.get("/system/info").await?;
    crate::render::object(&info, output)?;
    Ok(ExitCode::SUCCESS)
}
