//! The OpenAPI document is served, and schemathesis (from PyPI) fuzzes every operation it
//! describes against a running replica: no input, however malformed, gets a 5xx, and every
//! answer matches the response schema the document declares for it.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, scenario_tests, stop_all};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

async fn fuzz(cluster: &Cluster) -> anyhow::Result<()> {
    let password = cluster.bootstrap_admin("admin")?;
    // A cluster with its CA, so that join tokens and certificate requests are served for real.
    let mut ca = cluster.service("ca", "ca-1", &cluster.ca_extra("ca-1"))?;
    ca.wait_ready(READY_WITHIN).await?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let token = api.login("admin", &password).await?;
    let (status, body) = api.get("/api/v1/openapi.json").await?;
    ensure!(status == 200, "openapi.json: {status}");
    let document: serde_json::Value = serde_json::from_str(&body)?;
    let paths = document["paths"].as_object().context("paths")?;
    for expected in [
        "/api/v1/groups",
        "/api/v1/nodes/{id}/cert-issue",
        "/api/v1/events",
    ] {
        ensure!(paths.contains_key(expected), "{expected} is documented");
    }

    prexor_testkit::ensure_installed()?;
    let schemathesis = prexor_testkit::workspace_root().join(".svc/fuzz-venv/bin/schemathesis");
    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", api.http))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Every answer is checked against the document's typed response schemas too: the
        // OpenAPI document describes what the handlers really return.
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,fuzzing"])
        // More with FUZZ_EXAMPLES (CI keeps it short).
        .args([
            "--max-examples",
            &std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| "12".into()),
        ])
        .args(["--request-timeout", "10"])
        // Streams never end, and a logout would end the fuzzer's own session.
        .args(["--exclude-path-regex", "(/events|/console|/auth/logout)$"])
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("running {}", schemathesis.display()))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    ensure!(
        !report.contains("Server error"),
        "a 5xx slipped through:\n{report}"
    );
    stop_all([&mut api, &mut ca], EXIT_WITHIN).await
}

scenario_tests! {
    schemathesis_finds_no_server_errors: fuzz,
}
