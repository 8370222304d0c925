//! Platform modules with two schedulers: versions uploaded through the API, installed as a
//! mutation under `platform-module`, attached to a group (its instances get the module's files);
//! an upgrade whose holder is SIGKILLed right after the request converges on the peer to the new
//! version, active, applied exactly once; one mutation at a time; refusals name the problem.

use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::Document;
use prexor_acceptance::{
    Cluster, create_group, holder_of, module_active, refused_group, running, scenario_tests,
    spec_of, system, tar_gz,
};
use serde_json::json;

const EXIT_WITHIN: Duration = Duration::from_secs(20);

fn history(module: &Document, action: &str) -> Vec<Document> {
    module
        .get_array("history")
        .map(|h| {
            h.iter()
                .filter_map(|e| e.as_document().cloned())
                .filter(|e| e.get_str("action") == Ok(action))
                .collect()
        })
        .unwrap_or_default()
}

async fn modules(cluster: &Cluster) -> anyhow::Result<()> {
    let mut system = system(cluster, &["node-1"], 2).await?;
    let rest = system.rest.clone();

    for version in ["1.0", "2.0"] {
        let layer = tar_gz(&[("plugins/essentials.txt", &format!("essentials {version}\n"))])?;
        let (status, body) = rest
            .put_bytes(&format!("/modules/essentials/versions/{version}"), layer)
            .await?;
        ensure!(status == 201, "upload {version}: {status} {body}");
    }
    let (status, clash) = rest
        .put_bytes(
            "/modules/essentials/versions/1.0",
            tar_gz(&[("plugins/other.txt", "x")])?,
        )
        .await?;
    ensure!(
        status == 409,
        "a different artifact under an existing version: {status} {clash}"
    );

    // A group cannot attach a module that is not installed.
    let mut spec = spec_of("hub", 1, &[])?;
    spec["modules"] = json!(["essentials"]);
    refused_group(&rest, "hub", spec.clone(), "modules[0]").await?;

    // Install 1.0; a second mutation while it is in flight is refused.
    let (status, body) = rest
        .post("/modules/essentials/install", json!({ "version": "1.0" }))
        .await?;
    ensure!(status == 202, "{status} {body}");
    let (status, busy) = rest
        .post("/modules/essentials/install", json!({ "version": "2.0" }))
        .await?;
    ensure!(
        status == 409 && busy["message"].as_str().unwrap_or("").contains("in flight"),
        "a second mutation while one is in flight: {status} {busy}"
    );
    module_active(cluster, "essentials", "1.0").await?;

    // Attached: the instance's plan carries the module, and its files are on the node.
    create_group(&rest, "hub", spec).await?;
    let hub = running(cluster, &["hub-1"]).await?.remove(0);
    let layers = format!(
        "{:?}",
        prexor_acceptance::plan_of(cluster, &hub)
            .await?
            .get_array("layers")?
    );
    ensure!(layers.contains("module essentials@1.0"), "{layers}");
    let file = cluster
        .dir
        .join("node-1-servers/hub-1/plugins/essentials.txt");
    let content =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    ensure!(content == "essentials 1.0\n", "{content:?}");
    let (status, _) = rest
        .post("/modules/essentials/uninstall", json!({}))
        .await?;
    ensure!(status == 409, "uninstalling an attached module: {status}");

    // Upgrade, and kill the platform-module holder right away: the peer converges.
    let (status, body) = rest
        .post("/modules/essentials/upgrade", json!({ "version": "2.0" }))
        .await?;
    ensure!(status == 202, "{status} {body}");
    let holder = holder_of(&system.schedulers, "platform-module")
        .await?
        .context("no scheduler holds platform-module")?;
    system.schedulers[holder].signal(libc::SIGKILL);
    let mut dead = system.schedulers.remove(holder);
    dead.wait_exit(EXIT_WITHIN).await?;
    let module = module_active(cluster, "essentials", "2.0").await?;
    let upgrades = history(&module, "upgrade");
    ensure!(
        upgrades.len() == 1 && upgrades[0].get_str("result") == Ok("DONE"),
        "applied exactly once: {upgrades:?}"
    );
    let (_, pending) = rest.get("/modules/mutation").await?;
    ensure!(pending.is_null(), "nothing left in flight: {pending}");

    // A restart of the instance gets 2.0.
    let (status, _) = rest.post("/instances/hub-1/stop", json!({})).await?;
    ensure!(status == 202, "{status}");
    prexor_acceptance::wait_plan(cluster, "hub-1", "running 2.0", |d, plan| {
        d.get_str("state") == Ok("RUNNING")
            && format!("{:?}", plan.get_array("layers")).contains("module essentials@2.0")
    })
    .await?;

    system.finish(cluster, 0).await
}

scenario_tests! {
    a_module_upgrade_converges_when_its_holder_is_killed: modules,
}
