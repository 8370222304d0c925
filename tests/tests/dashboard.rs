//! The dashboard (`/ui/`) in a real browser: Debian's Chromium, driven by `playwright-core`
//! (`tests/browser/`, pinned with its lock file), against two api replicas, a scheduler and a
//! node running fake servers. The browser script signs in, reads the overview and its live
//! events, forges requests the server must refuse, creates a group in the form and watches its
//! instances come up, uses an instance's console through the other replica, kills an instance
//! from the list and watches it heal, checks what a viewer sees and may do, cordons and
//! uncordons node-1 from its page and creates a join token, uploads template versions and rolls
//! one back, installs, upgrades and uninstalls a module, reads the overview's charts, manages
//! users, roles and API tokens, reads the audit log, creates, verifies, downloads and restores a
//! backup, and signs out on one replica to check that the other no longer takes the session.
//! Screenshots of each page go to `target/dashboard-screenshots/`.
//!
//! Without Chromium or the script's packages the test fails, naming what to install
//! (`compose/dev install` does both): it never skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use prexor_acceptance::{
    Cluster, Proc, group_spec, nodes, scenario_tests, schedulers, spec_of, stop_all,
};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// The whole browser script, Chromium's start included.
const BROWSER_WITHIN: Duration = Duration::from_secs(420);
const CHROMIUM: &str = "/usr/bin/chromium";

/// What the browser script checks, each by the name it reports.
const CHECKS: &[&str] = &[
    "sign in; the session cookie is not readable from page script",
    "the overview lists both api replicas and follows events live",
    "a POST without the CSRF token or from another origin is refused",
    "create a group in the form; its instances appear live without a reload",
    "an instance's console on replica B answers a command",
    "kill an instance from the list; its row changes state live and it is healed",
    "a viewer sees no write controls and a forged POST gets 403",
    "a deployment is paused, resumed and rolled back from the group's page",
    "the nodes page lists node-1; cordon and uncordon it from its page",
    "a join token is shown once; a bad validity is refused with its reason",
    "the overview charts players and live instances over time",
    "upload a template version and roll it back",
    "install, upgrade and uninstall a module from its page",
    // Users, roles and API tokens (access.mjs).
    "create a user with a role in the form; a bad password is refused with its reason; the new user signs in",
    "disable a user from its page, which ends its session; enable it and reset its password",
    "create a custom role and give it to the user; delete it refused while assigned",
    "an API token is shown once and works as a Bearer token; revoked it is refused",
    // The audit log and backups (admin.mjs).
    "the audit log lists the groups created earlier; filters and paging work",
    "create a backup, verify it, download it; a restore shows its dry run first and then restores",
    "a viewer sees neither the audit log nor backups; its requests get 403",
    "logout on replica A ends the session on replica B",
];

/// The viewer the script signs in as.
const VIEWER: (&str, &str) = ("vera", "viewer-password-1");

scenario_tests! {
    dashboard_in_a_real_browser: dashboard,
}

/// `tests/browser`, once Chromium and the script's packages are there (an error naming what to
/// install otherwise).
fn browser_scripts() -> anyhow::Result<PathBuf> {
    let dir = prexor_testkit::workspace_root().join("tests/browser");
    ensure!(
        Path::new(CHROMIUM).exists(),
        "no Chromium at {CHROMIUM}: the dashboard's browser tests need Debian's chromium \
         (compose/dev install, or apt-get install chromium)"
    );
    ensure!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in {}: run `npm ci` there (compose/dev install does)",
        dir.display()
    );
    Ok(dir)
}

async fn dashboard(cluster: &Cluster) -> anyhow::Result<()> {
    let scripts = browser_scripts()?;
    let password = cluster.bootstrap_admin("admin")?;
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler = schedulers(cluster, 1).await?.remove(0);
    // Samples for the overview's charts every second (not every minute).
    let history = "[api]\ntls = \"off\"\nhistoryEvery = \"1s\"\n";
    let mut a = cluster.service("api", "api-1", history)?;
    let mut b = cluster.service("api", "api-2", history)?;
    a.wait_ready(READY_WITHIN).await?;
    b.wait_ready(READY_WITHIN).await?;
    let token = b.login("admin", &password).await?;
    let group = json!({ "name": "lobby", "spec": group_spec(0)? });
    // What the script types into the group form: the fake server and free ports.
    let form_spec = spec_of("web", 2, &[])?;
    let (status, body) = b
        .rest(&token)
        .post(
            "/users",
            json!({ "username": VIEWER.0, "password": VIEWER.1, "roles": ["viewer"] }),
        )
        .await?;
    ensure!(status == 201, "creating the viewer: {status} {body}");
    let shots = prexor_testkit::bin_dir()
        .parent()
        .context("the target directory")?
        .join("dashboard-screenshots");
    // Only this run's pictures (a failed check leaves one named after it).
    let _ = std::fs::remove_dir_all(&shots);

    let run = Browse {
        password: &password,
        token: &token,
        group: &group,
        form_spec: &form_spec,
        shots: &shots,
    };
    let result = run.run(&scripts, &a, &b).await?;
    let failed = result["failed"].as_array().cloned().unwrap_or_default();
    if !failed.is_empty() {
        let listed: Vec<String> = failed
            .iter()
            .map(|f| format!("- {}\n{}", f["name"], f["error"].as_str().unwrap_or("")))
            .collect();
        bail!(
            "browser checks failed (screenshots in {}):\n{}",
            shots.display(),
            listed.join("\n")
        );
    }
    let passed: Vec<&str> = result["passed"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        passed == CHECKS,
        "the browser ran {passed:?}, expected {CHECKS:?}"
    );
    for page in [
        "sign-in-refused",
        "overview",
        "forged-post-refused",
        "group-form-errors",
        "group-form-conflict",
        "group",
        "groups",
        "console",
        "instances-healed",
        "instance",
        "viewer-instances",
        "group-deployment",
        "nodes",
        "node",
        "node-join-token",
        "overview-charts",
        "templates",
        "template",
        "module",
        // access.mjs
        "users",
        "user",
        "roles",
        "role",
        "tokens",
        // admin.mjs
        "audit",
        "backups",
        "backup-dry-run",
        "backup-restored",
        "signed-out",
    ] {
        let file = shots.join(format!("{page}.png"));
        ensure!(file.exists(), "no screenshot {}", file.display());
    }
    stop_all([&mut a, &mut b], EXIT_WITHIN).await?;
    fleet.stop_with(&mut scheduler).await
}

/// What the browser script is given besides the replicas.
struct Browse<'a> {
    password: &'a str,
    token: &'a str,
    group: &'a Value,
    form_spec: &'a Value,
    shots: &'a Path,
}

impl Browse<'_> {
    /// Runs `tests/browser/dashboard.mjs` against replicas `a` and `b`; its JSON result.
    async fn run(&self, scripts: &Path, a: &Proc, b: &Proc) -> anyhow::Result<Value> {
        let run = tokio::process::Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(scripts)
            .env("PREXOR_API_A", &a.http)
            .env("PREXOR_API_B", &b.http)
            .env("PREXOR_REPLICAS", format!("{},{}", a.name, b.name))
            .env("PREXOR_USER", "admin")
            .env("PREXOR_PASSWORD", self.password)
            .env("PREXOR_VIEWER", format!("{}:{}", VIEWER.0, VIEWER.1))
            .env("PREXOR_TOKEN", self.token)
            .env("PREXOR_GROUP", self.group.to_string())
            .env("PREXOR_FORM_SPEC", self.form_spec.to_string())
            .env("PREXOR_SHOTS", self.shots)
            .kill_on_drop(true)
            .output();
        finish(run).await
    }
}

/// The script's JSON result, once it ends.
async fn finish(
    run: impl Future<Output = std::io::Result<std::process::Output>>,
) -> anyhow::Result<Value> {
    let output = tokio::time::timeout(BROWSER_WITHIN, run)
        .await
        .with_context(|| format!("the browser script ran longer than {BROWSER_WITHIN:?}"))?
        .context("running node (is Node.js installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    let Some(result) = last.and_then(|l| serde_json::from_str::<Value>(l).ok()) else {
        bail!(
            "the browser script gave no result ({}):\n{stdout}\n{stderr}",
            output.status
        );
    };
    if !output.status.success() && result["failed"].as_array().is_none_or(Vec::is_empty) {
        bail!(
            "the browser script failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
    }
    Ok(result)
}
